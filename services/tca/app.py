"""Composition root of TCA (STYLE 2)."""

from __future__ import annotations

import asyncio

from libs import sessions
from libs.runtime.runner import Deps, Service, processor_for
from services.tca import api, consumers, handlers, store
from services.tca.state import TcaState


async def build(deps: Deps) -> Service:
    """Wire shortfall measurement to its consumers, table and views."""
    await asyncio.to_thread(sessions.load)  # the calendar, before the first record or calibration needs it
    processor = await processor_for(deps, TcaState(), project=store.project)
    # TCA's watermark for the bar its inputs stand at, in case that was never said (a state from
    # before TCA had one): marketdata's lockstep, restarted at that bar, waits for it
    ctx = processor.ctx()
    await processor.commit(lambda s: handlers.own_watermark(s, [], ctx))
    return Service(
        consumers=consumers.consumers(deps.bus.subjects, processor), router=api.router(processor, deps.store)
    )
