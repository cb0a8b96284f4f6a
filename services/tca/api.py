"""Read-only views of TCA."""

from __future__ import annotations

from fastapi import APIRouter

from libs.db import Store
from libs.runtime.processor import Processor
from libs.runtime.runner import state_router


def router(processor: Processor, store: Store) -> APIRouter:  # type: ignore[type-arg]
    """Return GET /state and GET /records?symbol=..."""
    r = state_router(processor)

    @r.get("/records")
    async def records(symbol: str | None = None, limit: int = 100) -> list[dict[str, object]]:
        rows = await store.pool.fetch(
            f"SELECT execution_id, client_order_id, symbol, side, qty, arrival_price::text, fill_price::text, "
            f"shortfall_bps::text, strategy, ts_event FROM {store.schema}.records "
            "WHERE ($1::text IS NULL OR symbol = $1) ORDER BY ts_event DESC LIMIT $2",
            symbol,
            min(limit, 1000),
        )
        return [dict(r) for r in rows]

    return r
