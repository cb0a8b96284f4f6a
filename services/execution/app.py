"""Composition root of execution (STYLE 2): the broker adapter, consumers and the order poller."""

from __future__ import annotations

import asyncio
import logging

import requests
from alpaca.common.exceptions import APIError

from libs.bus import Bus
from libs.contracts import subjects as sj
from libs.errors import DependencyUnavailable, classify_exception
from libs.obs import tracing
from libs.runtime.processor import Processor
from libs.runtime.runner import Deps, Service, processor_for
from services.execution import api, consumers, handlers
from services.execution.broker import AlpacaBroker
from services.execution.config import ExecConfig
from services.execution.state import UNRESOLVED, BrokerOrder, ExecState

log = logging.getLogger(__name__)


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
    )
    try:
        await broker.check()
    except (APIError, requests.RequestException, OSError) as e:
        raise DependencyUnavailable(f"broker at {broker.name} did not answer GET /v2/account: {e}") from e
    return broker


async def poll_once(processor: Processor, broker: AlpacaBroker, bus: Bus, inflight: set[str]) -> None:
    """Compare every order we hold with the broker and report what changed.

    An unresolved order (handed over, answer unknown) is submitted again: the client_order_id
    makes that idempotent, so it either creates the order or adopts the one already there. While
    trading is halted it is only looked up, never re-sent.
    """
    orders = {cid: o for cid, o in processor.state.orders.items() if cid not in inflight}
    if not orders:
        return
    open_orders = await broker.open_orders()
    halt = await bus.halt_state()
    halted = halt is not None and halt.halted
    for cid, order in orders.items():
        ctx = processor.ctx()
        with tracing.span("execution poll", parent_headers={sj.H_TRACEPARENT: order.traceparent}):
            if order.broker_status == UNRESOLVED:
                outcome = await (broker.resolve(cid, "halted: looked up only") if halted else broker.submit(order))
                await processor.commit(lambda s, cid=cid, o=outcome, ctx=ctx: handlers.on_outcome(s, cid, o, ctx))
                continue
            bo: BrokerOrder | None = open_orders.get(cid)
            if bo is None:
                found = await broker.lookup(cid)
                if not isinstance(found, BrokerOrder):
                    continue  # the broker cannot tell, or does not list it: ask again next poll
                bo = found
            if bo.status == order.broker_status and bo.filled_qty == order.cum_qty:
                continue
            await processor.commit(lambda s, cid=cid, bo=bo, ctx=ctx: handlers.on_broker_order(s, cid, bo, ctx))


async def poller(
    processor: Processor, broker: AlpacaBroker, bus: Bus, inflight: set[str], interval: float, stop: asyncio.Event
) -> None:
    """Poll the broker for fills and status changes until stopped."""
    while not stop.is_set():
        try:
            await poll_once(processor, broker, bus, inflight)
        except (APIError, requests.RequestException, OSError) as e:
            info = classify_exception(e, dependency="broker_open_orders")
            if processor.metrics:
                processor.metrics.errors.labels(processor.service, info.category.value, info.reason_code).inc()
            log.warning("broker poll failed", extra={"reason": info.reason_code, "error": str(e)[:300]})
        try:
            await asyncio.wait_for(stop.wait(), timeout=interval)
        except TimeoutError:
            continue


async def build(deps: Deps) -> Service:
    """Wire execution to its broker, consumers, poller and views."""
    cfg: ExecConfig = deps.section
    broker = await connect_broker(cfg, deps.common.execution_mode)
    processor = await processor_for(deps, ExecState())
    inflight: set[str] = set()  # submits under way right now: the poller leaves them alone
    return Service(
        consumers=consumers.consumers(deps.bus, processor, broker, inflight),
        tasks=[lambda stop: poller(processor, broker, deps.bus, inflight, cfg.poll_interval_sec, stop)],
        router=api.router(processor),
    )
