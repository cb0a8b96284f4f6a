"""Composition root of marketdata (STYLE 2): the feed loop, lockstep and views.

Each bar timestamp is committed as one unit (all symbols' bars, the watermark and the feed
state, through the outbox), so a crash never emits half a timestamp or the same one twice.
With `wait_for` set, the next timestamp is released only when each of those services' watermarks
shows everything of the previous one is done (DESIGN: lockstep) - no sleep-based pacing. In a
replay (`control_path`), the recorded operator commands placed between two bars are published
before the second and applied by every control consumer before it goes out.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from decimal import Decimal

import msgspec
from fastapi import APIRouter
from opentelemetry.trace import SpanKind

from libs import sessions
from libs.contracts.control import ScheduledCommand
from libs.contracts.marketdata import BarClosed
from libs.contracts.ops import Watermark
from libs.errors import BadData, InvariantViolation
from libs.errors.handle import ErrorHandler
from libs.obs import tracing
from libs.runtime.processor import Processor
from libs.runtime.runner import Deps, Service, processor_for
from services.marketdata import api, feeds, handlers, providers
from services.marketdata.config import MdConfig
from services.marketdata.consumers import ControlWait, WatermarkWatch, publish_commands
from services.marketdata.providers import AlpacaBars
from services.marketdata.state import FeedState

log = logging.getLogger(__name__)


class Progress:
    """What this run of the feed has done (for `keel up` progress and exit-when-done)."""

    def __init__(self) -> None:
        self.done = False  # the run's minutes are emitted (the counts are in the feed state)


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), timeout=seconds)
    except TimeoutError:
        return  # paced: the next bar is due


async def provider_cycle(
    cfg: MdConfig, source: AlpacaBars, errors: ErrorHandler, ts: int, ctx_now: int
) -> tuple[list[BarClosed], bool]:
    """Fetch and check every symbol's bar closing at ts; (bars, True), or ([], False) when no
    provider could answer (the minute is asked for again).

    A bar that fails its checks is not published: a bad one is skipped with its reason, an
    impossible one (NaN, inf, price <= 0) halts trading too (the error handler's action).
    """
    got = await source.fetch(ts)
    if got is None:
        return [], False
    provider, rows = got
    bars = []
    for symbol in cfg.symbols:
        bar = rows.get(symbol)
        if bar is None:
            continue  # no trade in that minute at this feed: no bar, as the provider says
        try:
            bars.append(
                handlers.provider_bar(
                    symbol,
                    ts,
                    ctx_now,
                    values=providers.values_of(bar),
                    spread_bps=Decimal(repr(cfg.spread_bps)),
                    source=provider.source,
                )
            )
        except (InvariantViolation, BadData) as e:
            await errors.handle(e, dependency=provider.dependency, context=f"bar of {symbol} closing {ts}",
                                symbol=symbol, key=f"{symbol}:{ts}")  # fmt: skip
    return bars, True


async def _until_published(stop: asyncio.Event, ts: int, lag_sec: float) -> None:
    # live: a provider has a minute's bar only after the minute closed; history needs no wait
    wait = (ts + int(lag_sec * 1e9) - time.time_ns()) / 1e9  # wall clock: pacing, never a decision
    if wait > 0:
        await _sleep_or_stop(stop, wait)


async def feed(
    deps: Deps,
    processor: Processor,
    watches: list[WatermarkWatch],
    progress: Progress,
    stop: asyncio.Event,
    source: AlpacaBars | None = None,
    errors: ErrorHandler | None = None,
    commands: Sequence[ScheduledCommand] = (),
) -> None:
    """Emit bar timestamps until the configured minutes are done (or forever)."""
    cfg: MdConfig = deps.section
    await asyncio.to_thread(sessions.load)  # the calendar, before the first request or bar needs it
    await processor.commit(lambda s: (handlers.start_run(s, cfg), []))
    end = processor.state.run_end  # the run's last emitted count (0 = unbounded)
    run_cfg = msgspec.structs.replace(cfg, minutes=end)
    timeout = cfg.watermark_timeout_sec or None
    speed = cfg.speed_multiplier
    file_groups = feeds.file_feed(cfg.file_path, processor.ctx()) if cfg.feed == "file" else None
    control_wait = ControlWait(deps.bus)
    while not stop.is_set():
        state: FeedState = processor.state
        if state.last_ts and watches:
            # every service at once, under one timeout (not one timeout per service in turn)
            reached = await asyncio.gather(*(w.wait_until(state.last_ts, timeout) for w in watches))
            late = [w.service for w, ok in zip(watches, reached, strict=True) if not ok]
            if late:
                log.warning(
                    "watermark timeout; releasing the next bar anyway",
                    extra={"waiting_for": late, "bar_ts": state.last_ts},
                )
        if file_groups is not None:
            group = next((g for g in file_groups if g[1].bar_ts > state.last_ts), None)
            if group is None or (end and state.emitted >= end):
                break
            bars, wm = group
            if commands:
                await _say_commands(processor, control_wait, commands, wm.bar_ts, timeout, stop)
                if stop.is_set():
                    break

            def advance(s: FeedState, bars: list[BarClosed] = bars, wm: Watermark = wm) -> tuple[FeedState, list]:
                new = msgspec.structs.replace(
                    s, last_ts=wm.bar_ts, session=bars[0].session if bars else s.session, emitted=s.emitted + 1
                )
                return new, [*bars, wm]
        elif source is not None and errors is not None:
            ts = handlers.next_timestamp(state, run_cfg)
            if ts is None:
                break
            await _until_published(stop, ts, cfg.data_lag_sec)
            if stop.is_set():
                break
            now = processor.ctx().now_ns
            fetched, answered = await provider_cycle(cfg, source, errors, ts, now)
            if not answered:
                await _sleep_or_stop(stop, cfg.data_retry_sec)
                continue
            last = bool(end) and state.emitted + 1 >= end

            def advance(  # type: ignore[no-untyped-def]
                s: FeedState, bars: list[BarClosed] = fetched, ts: int = ts, now: int = now, last: bool = last
            ) -> tuple[FeedState, list]:
                day = sessions.session_of(ts)
                new = msgspec.structs.replace(
                    s, last_ts=ts, session=day.isoformat() if day else s.session, emitted=s.emitted + 1
                )
                return new, [*bars, handlers.watermark(ts, now, final=last)]
        else:
            ts = handlers.next_timestamp(state, run_cfg)
            if ts is None:
                break
            ctx = processor.ctx()

            def advance(s: FeedState, ts: int = ts, ctx=ctx) -> tuple[FeedState, list]:  # type: ignore[no-untyped-def]
                new, bars, wm = handlers.bars_for(s, ts, run_cfg, ctx)
                return new, [*bars, wm]

        # each bar timestamp starts a trace that its bars carry to every hop down to the fills
        with tracing.span("marketdata cycle", kind=SpanKind.PRODUCER):
            await processor.commit(advance)
        if speed is not None:
            await _sleep_or_stop(stop, 60.0 / speed)
    progress.done = True
    done = processor.state
    log.info("feed finished", extra={"emitted_this_run": done.emitted - done.run_start, "last_ts": done.last_ts})
    await stop.wait()


async def _say_commands(
    processor: Processor,
    wait: ControlWait,
    commands: Sequence[ScheduledCommand],
    next_ts: int,
    timeout: float | None,
    stop: asyncio.Event,
) -> None:
    """Publish a replay's operator commands placed before the bars of `next_ts`, then wait until
    every control consumer has applied them: a halt, resume or cancel-all takes effect between
    the same two bars in every replay, whatever the processes' timing. They count as sent only
    once applied: a restart during the wait says them again (the stream drops the repeat within
    its duplicate window) and waits again."""
    due = handlers.due_commands(commands, processor.state.control_sent, next_ts)
    if not due:
        return
    seq = await publish_commands(wait.bus, due)
    behind = await wait.wait(seq, timeout, stop)
    if stop.is_set():
        return
    if behind:
        log.warning(
            "control commands not yet applied; releasing the next bar anyway",
            extra={"waiting_for": behind, "bar_ts": next_ts},
        )
    await processor.commit(lambda s: (msgspec.structs.replace(s, control_sent=s.control_sent + len(due)), []))
    log.info("control commands replayed", extra={"verbs": [c.verb for c in due], "before_bar_ts": next_ts})


async def build(deps: Deps) -> Service:
    """Wire the feed to its state, lockstep watch and views."""
    cfg: MdConfig = deps.section
    processor = await processor_for(deps, FeedState())
    watches = [WatermarkWatch(deps.bus, service) for service in cfg.waits(lockstep=deps.common.lockstep)]
    for watch in watches:
        await watch.start()
    progress = Progress()
    source = errors = None
    if cfg.feed == "alpaca":
        errors = await deps.errors()
        source = providers.AlpacaBars(
            cfg, fallback_allowed=deps.common.data_fallback_allowed, breakers=await deps.breakers(), errors=errors
        )
        first = handlers.next_timestamp(processor.state, cfg)
        if first is not None:
            await source.check(first)  # fail fast: a provider must answer with these keys
    # a bad line stops marketdata at start, before any bar
    commands = feeds.load_control(cfg.control_path) if cfg.control_path else []
    router: APIRouter = api.router(processor, progress)
    return Service(
        tasks=[lambda stop: feed(deps, processor, watches, progress, stop, source, errors, commands)], router=router
    )
