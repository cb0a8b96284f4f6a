"""Composition root of the signal service (STYLE 2)."""

from __future__ import annotations

from libs.runtime.runner import Deps, Service, processor_for
from services.signal import api, consumers
from services.signal.state import SignalState


async def build(deps: Deps) -> Service:
    """Wire the sleeve's pure core to its consumer and read-only views."""
    processor = await processor_for(deps, SignalState())
    return Service(consumers=consumers.consumers(deps.bus.subjects, processor), router=api.router(processor))
