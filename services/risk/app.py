"""Composition root of the risk service (STYLE 2)."""

from __future__ import annotations

import asyncio

from libs import sessions
from libs.runtime.runner import Deps, Service, processor_for
from services.risk import api, consumers
from services.risk.state import RiskState


async def build(deps: Deps) -> Service:
    """Wire netting and caps to their consumers and read-only views."""
    await asyncio.to_thread(sessions.load)  # the calendar (the cost model's age), before the first target
    processor = await processor_for(deps, RiskState())
    return Service(
        consumers=consumers.consumers(deps.bus.subjects, processor, lockstep=deps.common.lockstep),
        router=api.router(processor),
    )
