"""Read-only views of marketdata: feed state and this run's progress."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from libs.runtime.processor import Processor
from libs.runtime.runner import state_router


def router(processor: Processor, progress: Any) -> APIRouter:  # type: ignore[type-arg]
    """Return GET /state and GET /progress."""
    r = state_router(processor)

    @r.get("/progress")
    async def get_progress() -> dict[str, object]:
        return {
            "emitted_this_run": processor.state.emitted - processor.state.run_start,
            "done": progress.done,
            "last_ts": processor.state.last_ts,
            "session": processor.state.session,
            "emitted_total": processor.state.emitted,
        }

    return r
