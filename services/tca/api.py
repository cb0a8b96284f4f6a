"""Read-only views of TCA."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, HTTPException
from fastapi.responses import HTMLResponse, Response

from libs.db import Store
from libs.runtime.processor import Processor
from libs.runtime.runner import state_router
from services.tca import report


def router(processor: Processor, store: Store) -> APIRouter:  # type: ignore[type-arg]
    """Return GET /state, GET /records?symbol=... and GET /report/{date}[.json|.csv]."""
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

    async def day_of(date: str) -> report.Day:
        try:
            session = report.parse_session(date)
        except ValueError as e:
            raise HTTPException(status_code=400, detail=str(e)) from e
        return await report.load_day(store.pool, store.schema, session)

    # the suffixed routes first: /report/{date} would also match "2024-03-05.json"
    @r.get("/report/{date}.json")
    async def report_json(date: str) -> Response:
        day = await day_of(date)
        text = await asyncio.to_thread(lambda: report.render_json(report.build(day)))
        return Response(text, media_type="application/json")

    @r.get("/report/{date}.csv")
    async def report_csv(date: str) -> Response:
        day = await day_of(date)
        text = await asyncio.to_thread(lambda: report.render_csv(report.build(day)))
        return Response(text, media_type="text/csv; charset=utf-8")

    @r.get("/report/{date}", response_class=HTMLResponse)
    async def report_html(date: str) -> HTMLResponse:
        day = await day_of(date)
        # matplotlib renders for a while: off the event loop
        text = await asyncio.to_thread(lambda: report.render_html(report.build(day), day))
        return HTMLResponse(text)

    return r
