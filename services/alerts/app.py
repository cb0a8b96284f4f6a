"""Composition root of alerts (STYLE 2): consumers plus the heartbeat watchdog."""

from __future__ import annotations

import asyncio

import msgspec
from nats.aio.msg import Msg

from libs.contracts import subjects as sj
from libs.contracts.ops import Heartbeat
from libs.runtime.processor import Processor
from libs.runtime.runner import Deps, Service, processor_for
from services.alerts import api, consumers, handlers
from services.alerts.config import AlertsConfig
from services.alerts.state import AlertsState

_hb_decoder = msgspec.json.Decoder(Heartbeat)


async def watchdog(deps: Deps, processor: Processor, stop: asyncio.Event) -> None:
    """Track heartbeats on core NATS and alert when a service goes quiet or comes back."""
    cfg: AlertsConfig = deps.section
    last_seen: dict[str, tuple[int, int]] = {}

    async def on_heartbeat(msg: Msg) -> None:
        try:
            hb = _hb_decoder.decode(msg.data)
        except (msgspec.ValidationError, msgspec.DecodeError):
            deps.metrics.errors.labels(deps.name, "BAD_DATA", "BAD_HEARTBEAT").inc()
            return  # heartbeats are not stored; a bad one is counted and the next one decides
        if hb.service != deps.name:
            last_seen[hb.service] = (deps.clock.now_ns(), hb.seq)

    sub = await deps.bus.nc.subscribe(f"{deps.bus.subjects.prefix}.{sj.HB}.>", cb=on_heartbeat)
    timeout_ns = int(cfg.heartbeat_timeout_sec * 1e9)
    try:
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), timeout=cfg.check_interval_sec)
            except TimeoutError:
                ctx = processor.ctx()
                await processor.commit(
                    lambda s, ctx=ctx: handlers.heartbeat_check(s, last_seen, ctx.now_ns, timeout_ns, ctx)
                )
    finally:
        await sub.unsubscribe()


async def build(deps: Deps) -> Service:
    """Wire alert rules to their consumers, the watchdog and views."""
    processor = await processor_for(deps, AlertsState())
    return Service(
        consumers=consumers.consumers(deps.bus, processor),
        tasks=[lambda stop: watchdog(deps, processor, stop)],
        router=api.router(processor, deps.store),
    )
