"""Read-only views of the OMS: state, open intents, positions."""

from __future__ import annotations

from fastapi import APIRouter

from libs.db import Store
from libs.runtime.processor import Processor
from libs.runtime.runner import state_router


def router(processor: Processor, store: Store) -> APIRouter:  # type: ignore[type-arg]
    """Return GET /state, /intents?status=..., /positions."""
    r = state_router(processor)

    @r.get("/intents")
    async def intents(status: str | None = None, limit: int = 100) -> list[dict[str, object]]:
        rows = await store.pool.fetch(
            f"SELECT intent_id, client_order_id, symbol, side, qty, status, reason, filled_qty, "
            f"avg_fill_price::text, broker_order_id, order_type, order_class, parent_intent_id, leg_role "
            f"FROM {store.schema}.intents "
            "WHERE ($1::text IS NULL OR status = $1) ORDER BY last_seq DESC LIMIT $2",
            status,
            min(limit, 1000),
        )
        return [dict(r) for r in rows]

    @r.get("/positions")
    async def positions() -> list[dict[str, object]]:
        rows = await store.pool.fetch(
            f"SELECT symbol, qty, avg_price::text, realized_pnl::text FROM {store.schema}.positions ORDER BY symbol"
        )
        return [dict(r) for r in rows]

    return r
