"""Composition root of execution (STYLE 2): the broker adapter and its trade_updates stream,
consumers, the order poller (the stream's backstop) and the stream watchdog."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from typing import cast

import requests
from alpaca.common.exceptions import APIError

from libs.bus import Bus
from libs.config import ConfigError, load
from libs.contracts import subjects as sj
from libs.errors import DependencyFailed, DependencyUnavailable, calling, dependency_of
from libs.errors.breakers import Breakers
from libs.errors.handle import ErrorHandler
from libs.errors.ratelimit import RateLimiter, RatePolicy, account_key
from libs.errors.retry import CircuitOpen, retry_idempotent
from libs.obs import tracing
from libs.runtime.processor import Processor
from libs.runtime.runner import Deps, Service, Task, processor_for
from services.execution import api, consumers, handlers
from services.execution.broker import AlpacaBroker, AlpacaStream, StreamWatch, stream_url
from services.execution.capabilities import BROKERS, BrokerCapabilities, OrderPolicy, check_capabilities
from services.execution.config import ExecConfig
from services.execution.state import PRE_ACK, BrokerOrder, ExecState
from services.risk.config import SECTION_PREFIX as RISK_PREFIX
from services.risk.config import RiskConfig

log = logging.getLogger(__name__)


def check_order_policy(cfg: ExecConfig, env: Mapping[str, str] | None = None) -> BrokerCapabilities:
    """Refuse to start when the order policy asks what the configured broker cannot do."""
    # the policy is the risk service's KEEL_RISK_* order keys: read the same keys risk reads, so
    # a policy the broker cannot take stops paper/live here, not at the first rejected order
    try:
        risk = cast(RiskConfig, load(RiskConfig, section_prefix=RISK_PREFIX, env=env).section)
    except ConfigError as e:
        raise DependencyUnavailable(f"order policy: {e}") from e
    policy = OrderPolicy(
        order_type=risk.order_type,
        order_class=risk.order_class,
        time_in_force=risk.time_in_force,
        allow_market=risk.allow_market,
    )
    caps = BROKERS[cfg.broker]
    problems = check_capabilities(policy, caps)
    if problems:
        raise DependencyUnavailable("; ".join(problems))
    return caps


async def connect_broker(cfg: ExecConfig, mode: str) -> AlpacaBroker:
    """Build the broker adapter and prove it answers with these keys (fail fast at start)."""
    if not cfg.api_key_id or not cfg.api_secret_key:
        raise DependencyUnavailable("KEEL_EXEC_API_KEY_ID / KEEL_EXEC_API_SECRET_KEY: expected broker keys, were empty")
    broker = AlpacaBroker(
        api_key=cfg.api_key_id,
        secret_key=cfg.api_secret_key,
        paper=mode != "live",
        base_url=cfg.base_url,
        timeout=cfg.http_timeout_sec,
        venue=cfg.broker,
    )
    try:
        await broker.check()
    except APIError as e:
        if e.status_code in (401, 403):
            raise DependencyUnavailable(
                f"broker at {broker.name} refused the keys KEEL_EXEC_API_KEY_ID / KEEL_EXEC_API_SECRET_KEY: "
                f"GET /v2/account answered {e.status_code} {e}"
            ) from e
        raise DependencyUnavailable(
            f"broker at {broker.name} answered GET /v2/account with {e.status_code}: {e}"
        ) from e
    except (requests.RequestException, OSError) as e:
        raise DependencyUnavailable(f"broker at {broker.name} did not answer GET /v2/account: {e}") from e
    return broker


# Alpaca does not list `held` orders as open (a bracket's legs waiting for their entry, a
# stop-loss leg waiting for its trigger), so each needs a GET of its own: while the stream carries
# their changes, that GET goes at most this often per leg, so brackets do not eat the rate limit
HELD_LOOKUP_SEC = 30.0


async def poll_once(
    processor: Processor,
    broker: AlpacaBroker,
    bus: Bus,
    live: consumers.Live,
    breakers: Breakers,
    errors: ErrorHandler,
    *,
    held_lookup_sec: float = 0.0,
) -> None:
    """Compare every order we hold with the broker and report what changed.

    An order of unknown status is resolved only by GET by client_order_id (broker.recover):
    found, it is adopted; 404, it is sent again under the same id, except while trading is
    halted; no answer, it stays unknown. Orders with a broker call under way are left alone.
    """
    orders = {cid: o for cid, o in processor.state.orders.items() if cid not in live.inflight}
    if processor.common.lockstep:
        # the exchange's FillsDone reads acknowledged orders back, in the order they changed; a
        # poll in state order could report two of them the other way round (DESIGN: lockstep)
        orders = {cid: o for cid, o in orders.items() if o.broker_status in PRE_ACK}
    if not orders:
        return
    pre_ack = any(o.broker_status in PRE_ACK for o in orders.values())
    resend = await consumers.resend_allowed(bus, breakers) if pre_ack else False
    acked = any(o.broker_status not in PRE_ACK for o in orders.values())
    open_orders: dict[str, BrokerOrder] | None = {}
    if acked:
        try:
            open_orders = await retry_idempotent(
                broker.open_orders,
                dep="broker_open_orders",
                breakers=breakers,
                jitter=live.jitter,
                max_attempts=2,
                max_total_seconds=2.0,
            )
        except CircuitOpen as e:
            # the listing's breaker is open: acknowledged orders wait for a later round (the
            # stream still carries them); orders of unknown status are still looked up below
            open_orders = None
            if processor.metrics:
                processor.metrics.decision("poll_listing_skipped", e.reason_code)
    for cid, order in orders.items():
        if cid in live.inflight:
            continue  # a submit took it while this poll was under way
        ctx = processor.ctx()
        with tracing.span("execution poll", parent_headers={sj.H_TRACEPARENT: order.traceparent}):
            if order.broker_status in PRE_ACK:
                await recover_one(processor, broker, bus, live, breakers, errors, cid, resend=resend)
                continue
            if open_orders is None:
                continue
            bo: BrokerOrder | None = open_orders.get(order.broker_cid)
            if bo is None and order.broker_status == "held" and not live.due(cid, held_lookup_sec):
                continue
            if bo is None or (order.legs_pending and not bo.legs):
                # closed (not listed as open), or its exit legs not yet seen: ask for it by id,
                # legs rolled up under it
                bo = await calling("broker_open_orders", broker.order(order.broker_order_id))
                if bo is None:
                    continue  # the broker cannot tell: ask again next poll
            if bo.status == order.broker_status and bo.filled_qty == order.cum_qty and not order.legs_pending:
                continue
            await processor.commit(lambda s, cid=cid, bo=bo, ctx=ctx: handlers.on_broker_order(s, cid, bo, ctx))
    live.looked_up = {c: t for c, t in live.looked_up.items() if c in processor.state.orders}


async def recover_one(
    processor: Processor,
    broker: AlpacaBroker,
    bus: Bus,
    live: consumers.Live,
    breakers: Breakers,
    errors: ErrorHandler,
    cid: str,
    *,
    resend: bool,
) -> None:
    """Resolve one order of unknown status by its client_order_id and record the answer."""
    async with live.calling(cid):
        order = processor.state.orders.get(cid)
        if order is None or order.broker_status not in PRE_ACK:
            return  # resolved meanwhile
        outcome = await broker.recover(order, resend=resend)
        ctx = processor.ctx()
        await processor.commit(lambda s: handlers.on_outcome(s, cid, outcome, ctx))
        await consumers.count_submit(processor, breakers, errors, outcome)
        await consumers.halt_if_needed(bus, processor, cid, outcome)
    await consumers.after_call(processor, live, cid)


def poll_interval(cfg: ExecConfig, watch: StreamWatch, state: ExecState, live: consumers.Live) -> float:
    """Poll slowly while the stream carries the fills, fast while it cannot or an order is unknown."""
    unresolved = any(o.broker_status in PRE_ACK and cid not in live.inflight for cid, o in state.orders.items())
    if unresolved or not watch.trusted:
        return cfg.poll_interval_sec
    return cfg.stream_poll_interval_sec


async def _wait_any(timeout: float, *events: asyncio.Event) -> None:
    waiters = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()


async def poller(
    processor: Processor,
    broker: AlpacaBroker,
    bus: Bus,
    live: consumers.Live,
    breakers: Breakers,
    errors: ErrorHandler,
    interval: Callable[[], float],
    stop: asyncio.Event,
    held_lookup_sec: Callable[[], float] = lambda: 0.0,
) -> None:
    """Poll the broker for fills and status changes until stopped; woken early by live.wake."""
    while not stop.is_set():
        try:
            await poll_once(processor, broker, bus, live, breakers, errors, held_lookup_sec=held_lookup_sec())
        except Exception as e:  # handled: the poll is tried again next round, whatever failed
            dependency = e.dependency if isinstance(e, DependencyFailed) else dependency_of(e, "broker_open_orders")
            # a halt of this minute is one episode (a later one, after a resume, halts again)
            episode = f"broker poll:{int(time.time() // 60)}"  # wall clock: operational
            await errors.handle(e, dependency=dependency, context="broker poll", key=episode)
        await _wait_any(interval(), stop, live.wake)
        live.wake.clear()


async def watchdog(
    processor: Processor,
    watch: StreamWatch,
    live: consumers.Live,
    errors: ErrorHandler,
    observe: Callable[[], None],
    stop: asyncio.Event,
    *,
    stream: str,
    tick: float = 0.25,
) -> None:
    """Re-assess the stream's health every tick; raise one STREAM_STALE alert per stale episode.

    Turning stale wakes the poller, which then runs at the fast interval until the stream is
    trusted again (STREAM_RECOVERED).
    """
    episode = ""  # key of the current stale episode, '' while the stream is trusted
    alerted = False  # this episode's STREAM_STALE is stored
    while not stop.is_set():
        # only orders the broker acknowledged make frames: one of unknown status may never have
        # reached it (and is polled fast anyway)
        reason = watch.check(any(o.broker_status not in PRE_ACK for o in processor.state.orders.values()))
        if reason and not episode:
            episode, alerted = f"stream-stale:{time.time_ns()}", False  # wall clock: operational
            live.wake.set()
            log.warning(
                "STREAM_STALE: trade_updates stream %s; polling fast",
                reason,
                extra={"reason": "STREAM_STALE", "why": reason, "stream": stream},
            )
        if reason and not alerted:
            msg = f"trade_updates stream {reason} for {watch.stale_sec:g}s or more; polling the broker fast"
            alerted = await _alert(
                processor, errors, "STREAM_STALE", "warning", msg, episode, why=reason, stream=stream
            )
        elif not reason and episode:
            msg = "trade_updates stream trusted again"
            if not alerted or await _alert(processor, errors, "STREAM_RECOVERED", "info", msg, f"{episode}:recovered"):
                log.info(msg, extra={"reason": "STREAM_RECOVERED", "stream": stream})
                episode, alerted = "", False
        observe()
        await _wait_any(tick, stop)


async def _alert(
    processor: Processor, errors: ErrorHandler, code: str, severity: str, message: str, key: str, **details: str
) -> bool:
    ctx = processor.ctx()
    alert = handlers.alert(code, severity, message, key, ctx, **details)
    try:
        await processor.commit(lambda s: (s, [alert]))
    except Exception as e:  # handled: an alert that cannot be stored now is tried again next tick
        info = await errors.handle(e, dependency=dependency_of(e, "db"), context=f"store alert {code}", key=key)
        if not info.retryable:
            raise
        return False
    return True


def make_stream(
    cfg: ExecConfig,
    mode: str,
    processor: Processor,
    live: consumers.Live,
    watch: StreamWatch,
    metrics: api.ExecMetrics,
    errors: ErrorHandler,
) -> AlpacaStream:
    """Build the trade_updates stream: every frame feeds the watch, every update the handlers."""

    async def on_update(bo: BrokerOrder) -> None:
        try:
            await consumers.on_trade_update(processor, live, bo)
        except Exception as e:  # handled: the frame is lost (alpaca-py would only log it), so poll now
            cid = bo.client_order_id
            await errors.handle(e, dependency=dependency_of(e, "db"), context=f"apply trade update of {cid}", key=cid)
            live.wake.set()

    def on_frame(stream: str) -> None:
        watch.frame()
        metrics.frames.labels(metrics.service, stream or "?").inc()

    def on_connection(up: bool) -> None:
        was = watch.connected
        watch.connection(up)
        if up != was:
            # after a (re)connect or a drop, frames may have been missed: reconcile by REST now
            live.wake.set()
            log.log(logging.INFO if up else logging.WARNING, "trade_updates stream %s", "connected" if up else "closed")

    return AlpacaStream(
        api_key=cfg.api_key_id,
        secret_key=cfg.api_secret_key,
        paper=mode != "live",
        url=stream_url(cfg.stream_url, cfg.base_url),
        on_update=on_update,
        on_frame=on_frame,
        on_connection=on_connection,
    )


async def build(deps: Deps) -> Service:
    """Wire execution to its broker, stream, consumers, poller, watchdog and views."""
    cfg: ExecConfig = deps.section
    check_order_policy(cfg)
    broker = await connect_broker(cfg, deps.common.execution_mode)
    if cfg.rate_limit_per_min:
        policy = RatePolicy(rate_per_min=cfg.rate_limit_per_min, capacity=cfg.rate_limit_burst)
        # operational pacing, so the wall clock (replay's clock would stand still between bars)
        broker.limiter = RateLimiter(await deps.bus.limits_kv(), account_key(cfg.api_key_id), policy, time.time_ns)
        broker.read_wait_sec = cfg.rate_limit_read_wait_sec
    processor = await processor_for(deps, ExecState())
    breakers = await deps.breakers()
    errors = await deps.errors()
    live = consumers.Live()
    metrics = api.ExecMetrics(deps.metrics)
    watch = StreamWatch(cfg.stream_stale_sec, enabled=cfg.stream_enabled)
    stream = (
        make_stream(cfg, deps.common.execution_mode, processor, live, watch, metrics, errors)
        if cfg.stream_enabled
        else None
    )
    name = stream.name if stream is not None else "disabled"
    await consumers.startup_snapshot(processor, broker, errors)

    def interval() -> float:
        return poll_interval(cfg, watch, processor.state, live)

    def observe() -> None:
        metrics.observe(watch, processor.state, interval())

    tasks: list[Task] = [
        lambda stop: poller(
            processor,
            broker,
            deps.bus,
            live,
            breakers,
            errors,
            interval,
            stop,
            lambda: HELD_LOOKUP_SEC if watch.trusted else 0.0,
        ),
        lambda stop: watchdog(processor, watch, live, errors, observe, stop, stream=name),
    ]
    if stream is not None:
        tasks.append(stream.serve)
    return Service(
        consumers=consumers.consumers(
            deps.bus,
            processor,
            broker,
            live,
            breakers,
            errors,
            fallback_allowed=deps.common.data_fallback_allowed,
            submit_wait_sec=cfg.rate_limit_submit_wait_sec,
            cancel_on_kill=cfg.cancel_all_on_kill,
            snapshot_every_bars=cfg.snapshot_every_bars,
        ),
        tasks=tasks,
        router=api.router(processor, watch, name),
    )
