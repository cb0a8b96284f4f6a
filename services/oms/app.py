"""Composition root of the OMS (STYLE 2)."""

from __future__ import annotations

from libs.runtime.runner import Deps, Service, processor_for
from services.oms import api, consumers, store
from services.oms.state import OmsState


async def build(deps: Deps) -> Service:
    """Wire the OMS core to its log, consumers and views; re-assert the halt flag at start."""
    processor = await processor_for(deps, OmsState(), project=store.project)
    await consumers.sync_halt_flag(deps.bus, processor.state)
    return Service(consumers=consumers.consumers(deps.bus, processor), router=api.router(processor, deps.store))
