"""Hand-made TCA rows and frames for the execution-report tests: one session's `Day` from a few dicts.

Sessions are EST dates (New York = UTC-5) written YYYY-MM-DD; every builder takes the session it
belongs to, and leaves out what the test does not care about (ORDER_DEFAULTS and the block
defaults in `make_day` fill in the rest).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import polars as pl

from services.tca import report
from services.tca.report import Day

# an order's columns a test rarely cares about: a final, filled, market day order with zero costs
ORDER_DEFAULTS: dict[str, Any] = {
    "intent_id": "i",
    "revision": 1,
    "final": True,
    "status": "filled",
    "strategy": "s",
    "sleeve": "mom",
    "trading_profile": "balanced",
    "order_type": "market",
    "order_class": "simple",
    "time_in_force": "day",
    "provider": "sim",
    "benchmark": "decision",
    "spread_bps_at_arrival": "0",
    "spread_is_proxy": True,
    "decision_ts": 0,
    "submit_ts": 0,
    "first_fill_ts": 0,
    "end_ts": 0,
    "filled_qty": 0,
    "fees": "0",
    "fees_estimated": False,
    "partial_fill": False,
    "shortfall_bps": "0",
    "explicit_bps": "0",
    "delay_bps": "0",
    "execution_bps": "0",
    "opportunity_bps": "0",
    "shortfall_usd": "0",
    "cancel_rate": "0",
    "reason": "",
    "ts_event": 0,
}
# a block's columns a test rarely cares about (besides its session)
BLOCK_DEFAULTS: dict[str, Any] = {
    "stage": "risk",
    "side": "buy",
    "qty": 1,
    "client_order_id": "",
    "strategy": "",
    "sleeve": "mom",
    "order_type": "market",
}


def ns(session: str, hh: int, mm: int) -> int:
    """New York wall time hh:mm of an EST session (YYYY-MM-DD) as ns UTC."""
    y, m, d = (int(x) for x in session.split("-"))
    return int(datetime(y, m, d, hh + 5, mm, tzinfo=UTC).timestamp()) * 1_000_000_000


def frame(
    rows: Sequence[dict[str, Any]], schema: dict[str, Any], defaults: dict[str, Any] | None = None
) -> pl.DataFrame:
    """`rows` as a frame of exactly `schema`'s columns: a row's value, else the default, else null."""
    full = [{c: {**(defaults or {}), **r}.get(c) for c in schema} for r in rows]
    return pl.DataFrame(full, schema=schema, orient="row")


def order(
    cid: str, symbol: str, side: str, qty: int, decision: str, *, shortfall: str | None = None, **kw: Any
) -> dict[str, Any]:
    """An order decided (and arrived) at `decision`; `shortfall` sets shortfall_bps, `kw` any other column."""
    row: dict[str, Any] = {
        "client_order_id": cid,
        "symbol": symbol,
        "side": side,
        "qty": qty,
        "decision_price": decision,
        "arrival_price": decision,
    }
    if shortfall is not None:
        row["shortfall_bps"] = shortfall
    return row | kw


def fill(eid: str, cid: str, symbol: str, side: str, qty: int, decision: str, px: str, fee: str, ts: int) -> dict:
    return {
        "execution_id": eid,
        "client_order_id": cid,
        "symbol": symbol,
        "side": side,
        "qty": qty,
        "arrival_price": decision,
        "fill_price": px,
        "fee": fee,
        "ts_event": ts,
    }


def block(session: str, eid: str, symbol: str, reason: str, **kw: Any) -> dict[str, Any]:
    """A risk block at 10:00 of `session`; `kw` sets other columns (sleeve, order_type, ...)."""
    return {"event_id": eid, "symbol": symbol, "reason": reason, "ts_event": ns(session, 10, 0), **kw}


def make_day(
    session: str,
    orders: Sequence[dict[str, Any]] = (),
    fills: Sequence[dict[str, Any]] = (),
    blocks: Sequence[dict[str, Any]] = (),
    marks: Sequence[dict[str, Any]] = (),
    carry: Sequence[dict[str, Any]] = (),
) -> Day:
    """`session`'s Day; orders and blocks take their session and ORDER_DEFAULTS / BLOCK_DEFAULTS."""
    return Day(
        session=session,
        orders=frame(orders, report.ORDER_SCHEMA, {**ORDER_DEFAULTS, "session": session}),
        fills=frame(fills, report.FILL_SCHEMA),
        blocks=frame(blocks, report.BLOCK_SCHEMA, {**BLOCK_DEFAULTS, "session": session}),
        marks=frame(marks, report.MARK_SCHEMA),
        carry=frame(carry, report.CARRY_SCHEMA),
    )
