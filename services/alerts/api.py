"""Read-only views of alerts."""

from __future__ import annotations

from fastapi import APIRouter

from libs.db import Store
from libs.runtime.processor import Processor
from libs.runtime.runner import state_router


def router(processor: Processor, store: Store) -> APIRouter:  # type: ignore[type-arg]
    """Return GET /state and GET /alerts?code=..."""
    r = state_router(processor)

    @r.get("/alerts")
    async def alerts(code: str | None = None, limit: int = 100) -> list[dict[str, object]]:
        rows = await store.pool.fetch(
            f"SELECT event_id, code, severity, source, message, details::text, ts_event FROM {store.schema}.alerts "
            "WHERE ($1::text IS NULL OR code = $1) ORDER BY recorded_at DESC LIMIT $2",
            code,
            min(limit, 1000),
        )
        return [dict(r) for r in rows]

    return r
