"""Composition root of the OMS (STYLE 2)."""

from __future__ import annotations

import asyncio
import logging

from libs import sessions
from libs.runtime.runner import Deps, Service, processor_for
from services.oms import api, consumers, store
from services.oms.config import OmsConfig
from services.oms.state import OmsState

log = logging.getLogger(__name__)


async def build(deps: Deps) -> Service:
    """Wire the OMS core to its log, consumers and views; re-assert the halt flag at start."""
    cfg: OmsConfig = deps.section
    await asyncio.to_thread(sessions.load)  # the calendar, before the first request or bar needs it
    if cfg.canary_symbols:
        # seed 000 §F: canary mode is said at start, and every other symbol's intent is denied
        log.warning(
            "CANARY_MODE_ACTIVE: only %s may trade", ",".join(cfg.canary_symbols),
            extra={"reason": "CANARY_MODE_ACTIVE", "canary_symbols": list(cfg.canary_symbols)},
        )  # fmt: skip
    processor = await processor_for(deps, OmsState(), project=store.project)
    await consumers.sync_halt_flag(deps.bus, processor.state)
    breakers = await deps.breakers()
    return Service(
        consumers=consumers.consumers(
            deps.bus, processor, breakers, fallback_allowed=deps.common.data_fallback_allowed
        ),
        router=api.router(processor, deps.store),
    )
