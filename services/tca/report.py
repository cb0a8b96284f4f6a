"""The daily execution report of one session: JSON, CSV, an HTML page with charts, and JSONL records.

Inputs are the TCA tables of `<prefix>_tca` for one session (YYYY-MM-DD): `orders` (the latest
revision of every order, TcaOrderRecorded), `records` (one row per fill), `blocks` (orders that
never went) and `marks` (each symbol's last close of a session). `load_day` reads them with one
query per table (two on `records`: the day's fills and the positions carried into it), `build`
turns them into the report (pure), `write` renders and writes the files.

Definitions (every *_bps is of the ordered notional `qty * decision_price`; positive = cost):

- Groups: one row per value of each of symbol, sleeve, trading_profile, order_type and provider,
  plus an `all` row. Blocks carry symbol, sleeve and order_type only: in the trading_profile and
  provider groups they count under the value "". Fills take their order's sleeve, profile, type
  and provider (a fill without an order row of the session: ""). The carried position's PnL is
  per symbol: it is in the symbol rows and in `all`; in the other groups it is a row of its own,
  `(carried)`, so the rows of every group add up to `all`.
- orders: the group's order rows of the session (every status, pending ones as of their latest
  revision); filled_orders: those with filled_qty > 0; filled_notional = sum(filled_qty * fill_vwap).
- shortfall_bps p50/p90/p99: percentiles over all the group's orders (an unfilled order's shortfall
  is its opportunity cost), linear interpolation between the closest ranks (numpy's default);
  shortfall_bps_wmean = sum(shortfall_bps * qty * decision_price) / sum(qty * decision_price).
- spread_paid_bps p50/p90: the same percentiles over the group's orders with filled_qty > 0.
- rejects: status rejected or failed; cancels: canceled; expired: expired; partial_fills:
  partial_fill true; blocks: rows of `blocks`, and blocks_by_reason {reason: count}.
- Perold components: <c>_usd = sum(<c>_bps * qty * decision_price / 1e4) and the weighted
  <c>_bps = sum(<c>_usd) / sum(qty * decision_price) * 1e4 for c in explicit, delay, execution,
  opportunity; shortfall_usd = sum of the orders' shortfall_usd.
- Missed-trade opportunity cost: opportunity_usd of the cancels (canceled or expired) and of the
  rejects (rejected or failed): what the price move since the decision cost (or saved) the shares
  that never traded.
- PnL of the day, per fill j with signed qty s (+buy, -sell), fill price p, fee f, decision price
  d and the symbol's close C of the session (`marks`; without one, the symbol's last fill price of
  the day, listed in `marked_at_last_fill`): after_costs = s * (C - p) - f and
  before_costs = s * (C - d); cost_of_execution = before - after. The carried position adds
  pos_open * (C - C_prev) to both, where pos_open is the signed fill qty of every earlier session
  in `records` and C_prev the symbol's close in its latest earlier session in `marks` (no such
  close: no carry; a carried symbol with neither a close nor a fill today is listed in
  `carried_unmarked` and carries 0).
- Charts: shortfall distribution = histogram of shortfall_bps of the orders with filled_qty > 0
  (min(30, ceil(sqrt(n))) equal bins over [min, max]); cost by symbol = shortfall_usd per symbol,
  the 20 largest in absolute value; fills through the day = fills and shares per 5-minute bucket
  of ts_event in America/New_York; cumulative PnL = the day's fills by ts_event, running sums of
  before_costs and after_costs (each fill marked to the close).
- Headline: profitable before costs but losing after (before > 0 and after < 0); the 3 symbols and
  sleeves with the largest positive shortfall_usd; the missed-trade opportunity cost.

Money is float here (research math, STYLE 14), rounded to 4 decimals in the output; the JSONL
export keeps the database's exact numerics as strings.
"""

from __future__ import annotations

import csv
import html
import io
import json
import math
import re
import threading
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import asyncpg
import polars as pl

DIMENSIONS = ("symbol", "sleeve", "trading_profile", "order_type", "provider")
CARRIED = "(carried)"
TZ = "America/New_York"
TOP_SHORTFALL = 3
COST_CHART_SYMBOLS = 20
MAX_BINS = 30
ROUND = 4
CHART_IDS = ("shortfall-distribution", "cost-by-symbol", "fills-through-day", "cumulative-pnl")
# rc_context changes matplotlib's process-wide rcParams: one rendering at a time (the API renders in threads)
_RENDER_LOCK = threading.Lock()
_SESSION = re.compile(r"^\d{4}-\d{2}-\d{2}$")

# numerics travel as text (exact for the JSONL export) and are cast to Float64 for the math
ORDER_SCHEMA: dict[str, pl.DataType | type[pl.DataType]] = {
    "client_order_id": pl.String,
    "intent_id": pl.String,
    "revision": pl.Int64,
    "final": pl.Boolean,
    "status": pl.String,
    "session": pl.String,
    "symbol": pl.String,
    "side": pl.String,
    "qty": pl.Int64,
    "strategy": pl.String,
    "sleeve": pl.String,
    "trading_profile": pl.String,
    "order_type": pl.String,
    "order_class": pl.String,
    "time_in_force": pl.String,
    "provider": pl.String,
    "benchmark": pl.String,
    "arrival_price": pl.String,
    "decision_price": pl.String,
    "submit_price": pl.String,
    "mid_at_arrival": pl.String,
    "bid_at_arrival": pl.String,
    "ask_at_arrival": pl.String,
    "spread_bps_at_arrival": pl.String,
    "spread_is_proxy": pl.Boolean,
    "decision_ts": pl.Int64,
    "submit_ts": pl.Int64,
    "first_fill_ts": pl.Int64,
    "end_ts": pl.Int64,
    "filled_qty": pl.Int64,
    "fill_vwap": pl.String,
    "fees": pl.String,
    "fees_estimated": pl.Boolean,
    "partial_fill": pl.Boolean,
    "end_price": pl.String,
    "shortfall_bps": pl.String,
    "explicit_bps": pl.String,
    "delay_bps": pl.String,
    "execution_bps": pl.String,
    "opportunity_bps": pl.String,
    "shortfall_usd": pl.String,
    "spread_paid_bps": pl.String,
    "fill_latency_ms": pl.Int64,
    "cancel_rate": pl.String,
    "expected_cost_bps": pl.String,
    "reason": pl.String,
    "ts_event": pl.Int64,
}
FILL_SCHEMA: dict[str, pl.DataType | type[pl.DataType]] = {
    "execution_id": pl.String,
    "client_order_id": pl.String,
    "symbol": pl.String,
    "side": pl.String,
    "qty": pl.Int64,
    "arrival_price": pl.String,  # the decision price
    "fill_price": pl.String,
    "fee": pl.String,
    "ts_event": pl.Int64,
}
BLOCK_SCHEMA: dict[str, pl.DataType | type[pl.DataType]] = {
    "event_id": pl.String,
    "session": pl.String,
    "ts_event": pl.Int64,
    "stage": pl.String,
    "reason": pl.String,
    "symbol": pl.String,
    "side": pl.String,
    "qty": pl.Int64,
    "client_order_id": pl.String,
    "strategy": pl.String,
    "sleeve": pl.String,
    "order_type": pl.String,
}
MARK_SCHEMA: dict[str, pl.DataType | type[pl.DataType]] = {
    "session": pl.String,
    "symbol": pl.String,
    "close": pl.String,
}
CARRY_SCHEMA: dict[str, pl.DataType | type[pl.DataType]] = {"symbol": pl.String, "pos_open": pl.Int64}

_ORDER_FLOATS = (
    "decision_price",
    "fill_vwap",
    "shortfall_bps",
    "explicit_bps",
    "delay_bps",
    "execution_bps",
    "opportunity_bps",
    "shortfall_usd",
    "spread_paid_bps",
)
_COMPONENTS = ("explicit", "delay", "execution", "opportunity")
_CANCELED = ("canceled", "expired")
_REJECTED = ("rejected", "failed")


@dataclass(frozen=True)
class Day:
    """One session's TCA rows as polars frames (numerics as text or numbers)."""

    session: str
    orders: pl.DataFrame  # ORDER_SCHEMA
    fills: pl.DataFrame  # FILL_SCHEMA
    blocks: pl.DataFrame  # BLOCK_SCHEMA
    marks: pl.DataFrame  # MARK_SCHEMA: the session's closes and each symbol's latest earlier one
    carry: pl.DataFrame  # CARRY_SCHEMA: signed shares of every earlier session's fills


def parse_session(text: str) -> str:
    """Return `text` when it is a calendar date written YYYY-MM-DD, else raise ValueError."""
    if not _SESSION.fullmatch(text):
        raise ValueError(f"expected a date as YYYY-MM-DD, was {text!r}")
    try:
        date.fromisoformat(text)
    except ValueError as e:
        raise ValueError(f"expected a date as YYYY-MM-DD, was {text!r} ({e})") from e
    return text


def _select(schema: dict[str, Any]) -> str:
    return ", ".join(f"{c}::text AS {c}" if t == pl.String and c in _NUMERIC_TEXT else c for c, t in schema.items())


# columns stored as numeric in Postgres (selected as text)
_NUMERIC_TEXT = frozenset(
    {
        "arrival_price",
        "decision_price",
        "submit_price",
        "mid_at_arrival",
        "bid_at_arrival",
        "ask_at_arrival",
        "spread_bps_at_arrival",
        "fill_vwap",
        "fees",
        "end_price",
        "shortfall_bps",
        "explicit_bps",
        "delay_bps",
        "execution_bps",
        "opportunity_bps",
        "shortfall_usd",
        "spread_paid_bps",
        "cancel_rate",
        "expected_cost_bps",
        "fill_price",
        "fee",
        "close",
    }
)


def _frame(rows: list[asyncpg.Record], schema: dict[str, Any]) -> pl.DataFrame:
    return pl.DataFrame([tuple(r) for r in rows], schema=schema, orient="row")


async def load_day(pool_or_conn: asyncpg.Pool | asyncpg.Connection, schema: str, session: str) -> Day:
    """Read one session's orders, fills, blocks and marks, and the positions carried into it."""
    session = parse_session(session)
    if isinstance(pool_or_conn, asyncpg.Pool):
        async with pool_or_conn.acquire() as conn:
            return await _load(conn, schema, session)
    return await _load(pool_or_conn, schema, session)


async def _load(conn: asyncpg.Connection, schema: str, session: str) -> Day:
    if conn.is_in_transaction():
        return await _queries(conn, schema, session)
    # one snapshot for the five queries: a fill committed between two of them cannot appear in one only
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        return await _queries(conn, schema, session)


async def _queries(conn: asyncpg.Connection, schema: str, session: str) -> Day:
    orders = await conn.fetch(
        f"SELECT {_select(ORDER_SCHEMA)} FROM {schema}.orders WHERE session = $1 ORDER BY decision_ts, client_order_id",
        session,
    )
    fills = await conn.fetch(
        f"SELECT {_select(FILL_SCHEMA)} FROM {schema}.records WHERE session = $1 ORDER BY ts_event, execution_id",
        session,
    )
    # rows written before records had a session ('') cannot be placed in time: they carry nothing
    carry = await conn.fetch(
        f"""SELECT symbol, sum(CASE WHEN side = 'buy' THEN qty ELSE -qty END)::bigint AS pos_open
            FROM {schema}.records WHERE session <> '' AND session < $1 GROUP BY symbol ORDER BY symbol""",
        session,
    )
    blocks = await conn.fetch(
        f"SELECT {_select(BLOCK_SCHEMA)} FROM {schema}.blocks WHERE session = $1 ORDER BY ts_event, event_id", session
    )
    # per symbol: the session's close (if any) and the close of its latest earlier session (if any)
    marks = await conn.fetch(
        f"""SELECT DISTINCT ON (symbol, session = $1) session, symbol, close::text AS close
            FROM {schema}.marks WHERE session <= $1 ORDER BY symbol, session = $1, session DESC""",
        session,
    )
    return Day(
        session=session,
        orders=_frame(orders, ORDER_SCHEMA),
        fills=_frame(fills, FILL_SCHEMA),
        blocks=_frame(blocks, BLOCK_SCHEMA),
        marks=_frame(marks, MARK_SCHEMA),
        carry=_frame(carry, CARRY_SCHEMA),
    )


# ---------------------------------------------------------------- pure part


def _num(x: Any) -> float | None:
    if x is None:
        return None
    v = round(float(x), ROUND)
    if math.isnan(v):
        return None
    return v + 0.0  # -0.0 -> 0.0


def _orders_frame(day: Day) -> pl.DataFrame:
    o = day.orders.with_columns(pl.col(c).cast(pl.Float64) for c in _ORDER_FLOATS)
    notional = pl.col("qty") * pl.col("decision_price")
    return o.with_columns(
        notional.alias("notional"),
        (pl.col("filled_qty") * pl.col("fill_vwap").fill_null(0.0)).alias("filled_notional"),
        *((pl.col(f"{c}_bps") * notional / 10_000).alias(f"{c}_usd") for c in _COMPONENTS),
        (pl.col("shortfall_bps") * notional).alias("_sb_x_notional"),
    )


def _closes(day: Day, fills: pl.DataFrame) -> pl.DataFrame:
    """Per symbol with fills today or a carried position: close, its source, prev close, pos_open."""
    marks = day.marks.with_columns(pl.col("close").cast(pl.Float64))
    today = marks.filter(pl.col("session") == day.session).select("symbol", "close")
    prev = (
        marks.filter(pl.col("session") < day.session)
        .sort("symbol", "session")
        .group_by("symbol", maintain_order=True)
        .agg(pl.col("close").last().alias("prev_close"), pl.col("session").last().alias("prev_session"))
    )
    last_fill = (
        fills.sort("ts_event", "execution_id")
        .group_by("symbol", maintain_order=True)
        .agg(pl.col("fill_price").last().alias("last_fill_price"))
    )
    carry = day.carry.filter(pl.col("pos_open") != 0)
    symbols = pl.concat([fills.select("symbol"), carry.select("symbol")]).unique().sort("symbol")
    out = (
        symbols.join(today, on="symbol", how="left")
        .join(last_fill, on="symbol", how="left")
        .join(prev, on="symbol", how="left")
        .join(carry, on="symbol", how="left")
        .with_columns(pl.col("pos_open").fill_null(0))
    )
    source = (
        pl.when(pl.col("close").is_not_null())
        .then(pl.lit("mark"))
        .when(pl.col("last_fill_price").is_not_null())
        .then(pl.lit("last_fill"))
        .when(pl.col("prev_close").is_not_null())
        .then(pl.lit("previous_close"))
        .otherwise(pl.lit("none"))
    )
    out = out.with_columns(
        source.alias("close_source"),
        pl.coalesce("close", "last_fill_price", "prev_close").alias("close"),
    )
    return out.with_columns(
        pl.when(pl.col("prev_close").is_not_null())
        .then(pl.col("pos_open") * (pl.col("close") - pl.col("prev_close")))
        .otherwise(0.0)
        .alias("carry_pnl")
    )


def _fills_frame(day: Day) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Return the day's fills with their PnL and group values, and the per-symbol closes."""
    f = day.fills.with_columns(pl.col(c).cast(pl.Float64) for c in ("arrival_price", "fill_price", "fee"))
    closes = _closes(day, f)
    dims = day.orders.select("client_order_id", *DIMENSIONS[1:])
    signed = pl.when(pl.col("side") == "buy").then(pl.col("qty")).otherwise(-pl.col("qty"))
    f = (
        f.join(dims, on="client_order_id", how="left")
        .with_columns(pl.col(d).fill_null("") for d in DIMENSIONS[1:])
        .join(closes.select("symbol", pl.col("close").alias("_close")), on="symbol", how="left")
        .with_columns(signed.alias("signed_qty"))
        .with_columns(
            (pl.col("signed_qty") * (pl.col("_close") - pl.col("fill_price")) - pl.col("fee")).alias("after_costs"),
            (pl.col("signed_qty") * (pl.col("_close") - pl.col("arrival_price"))).alias("before_costs"),
        )
        .sort("ts_event", "execution_id")
    )
    return f, closes


def _pct(col: str, q: float, when: pl.Expr | None = None) -> pl.Expr:
    e = pl.col(col) if when is None else pl.col(col).filter(when)
    return e.quantile(q, "linear")


def _order_aggs() -> list[pl.Expr]:
    filled = pl.col("filled_qty") > 0
    return [
        pl.len().alias("orders"),
        filled.sum().alias("filled_orders"),
        pl.col("filled_qty").sum().alias("filled_qty"),
        pl.col("filled_notional").sum().alias("filled_notional"),
        pl.col("notional").sum().alias("ordered_notional"),
        _pct("shortfall_bps", 0.5).alias("shortfall_bps_p50"),
        _pct("shortfall_bps", 0.9).alias("shortfall_bps_p90"),
        _pct("shortfall_bps", 0.99).alias("shortfall_bps_p99"),
        pl.col("_sb_x_notional").sum().alias("_sb_x_notional"),
        _pct("spread_paid_bps", 0.5, filled).alias("spread_paid_bps_p50"),
        _pct("spread_paid_bps", 0.9, filled).alias("spread_paid_bps_p90"),
        pl.col("status").is_in(list(_REJECTED)).sum().alias("rejects"),
        (pl.col("status") == "canceled").sum().alias("cancels"),
        (pl.col("status") == "expired").sum().alias("expired"),
        pl.col("partial_fill").sum().alias("partial_fills"),
        pl.col("shortfall_usd").sum().alias("shortfall_usd"),
        *(pl.col(f"{c}_usd").sum().alias(f"{c}_usd") for c in _COMPONENTS),
        pl.col("opportunity_usd").filter(pl.col("status").is_in(list(_CANCELED))).sum().alias("_missed_cancels"),
        pl.col("opportunity_usd").filter(pl.col("status").is_in(list(_REJECTED))).sum().alias("_missed_rejects"),
    ]


def _fill_aggs() -> list[pl.Expr]:
    return [
        pl.len().alias("fills"),
        pl.col("before_costs").sum().alias("before"),
        pl.col("after_costs").sum().alias("after"),
    ]


def _total(df: pl.DataFrame, aggs: list[pl.Expr]) -> dict[str, Any] | None:
    return df.select(aggs).row(0, named=True) if df.height else None


def _by(df: pl.DataFrame, key: str, aggs: list[pl.Expr]) -> dict[str, dict[str, Any]]:
    return {r[key]: r for r in df.group_by(key, maintain_order=True).agg(aggs).iter_rows(named=True)}


def _blocks_by(blocks: pl.DataFrame, key: str) -> dict[str, dict[str, int]]:
    if blocks.height == 0:
        return {}
    keys = ["reason"] if key == "" else [key, "reason"]
    out: dict[str, dict[str, int]] = {}
    for r in blocks.group_by(keys).agg(pl.len().alias("n")).sort(keys).iter_rows(named=True):
        out.setdefault("all" if key == "" else r[key], {})[r["reason"]] = int(r["n"])
    return out


def _row(group: str, value: str, o: dict[str, Any] | None, f: dict[str, Any] | None, b: dict[str, int], carry: float):
    o = o or {}
    f = f or {}
    notional = float(o.get("ordered_notional") or 0.0)

    def wbps(usd: Any) -> float | None:
        return _num(float(usd) / notional * 10_000) if notional else None

    before = float(f.get("before") or 0.0) + carry
    after = float(f.get("after") or 0.0) + carry
    row: dict[str, Any] = {
        "group": group,
        "value": value,
        "orders": int(o.get("orders") or 0),
        "filled_orders": int(o.get("filled_orders") or 0),
        "filled_qty": int(o.get("filled_qty") or 0),
        "filled_notional": _num(o.get("filled_notional") or 0.0),
        "ordered_notional": _num(notional),
        "shortfall_bps_p50": _num(o.get("shortfall_bps_p50")),
        "shortfall_bps_p90": _num(o.get("shortfall_bps_p90")),
        "shortfall_bps_p99": _num(o.get("shortfall_bps_p99")),
        "shortfall_bps_wmean": _num(float(o["_sb_x_notional"]) / notional) if notional else None,
        "spread_paid_bps_p50": _num(o.get("spread_paid_bps_p50")),
        "spread_paid_bps_p90": _num(o.get("spread_paid_bps_p90")),
        "rejects": int(o.get("rejects") or 0),
        "cancels": int(o.get("cancels") or 0),
        "expired": int(o.get("expired") or 0),
        "partial_fills": int(o.get("partial_fills") or 0),
        "blocks": sum(b.values()),
        "blocks_by_reason": dict(sorted(b.items())),
        "shortfall_usd": _num(o.get("shortfall_usd") or 0.0),
    }
    for c in _COMPONENTS:
        row[f"{c}_usd"] = _num(o.get(f"{c}_usd") or 0.0)
    for c in _COMPONENTS:
        row[f"{c}_bps"] = wbps(o.get(f"{c}_usd") or 0.0)
    row["missed_opportunity_usd_cancels"] = _num(o.get("_missed_cancels") or 0.0)
    row["missed_opportunity_usd_rejects"] = _num(o.get("_missed_rejects") or 0.0)
    row["fills"] = int(f.get("fills") or 0)
    row["pnl_before_costs"] = _num(before)
    row["pnl_after_costs"] = _num(after)
    row["cost_of_execution"] = _num(before - after)
    return row


def _histogram(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"orders": 0, "edges": [], "counts": []}
    lo, hi = min(values), max(values)
    if lo == hi:
        lo, hi = lo - 0.5, hi + 0.5
    bins = min(MAX_BINS, max(1, math.ceil(math.sqrt(len(values)))))
    width = (hi - lo) / bins
    counts = [0] * bins
    for v in values:
        counts[min(bins - 1, int((v - lo) / width))] += 1
    edges = [_num(lo + i * width) for i in range(bins)] + [_num(hi)]
    return {"orders": len(values), "edges": edges, "counts": counts}


def _fills_through_day(fills: pl.DataFrame) -> list[dict[str, Any]]:
    if fills.height == 0:
        return []
    bucket = (
        pl.from_epoch("ts_event", "ns")
        .dt.replace_time_zone("UTC")
        .dt.convert_time_zone(TZ)
        .dt.truncate("5m")
        .dt.strftime("%H:%M")
        .alias("bucket")
    )
    per = fills.group_by(bucket).agg(pl.len().alias("fills"), pl.col("qty").sum().alias("shares")).sort("bucket")
    return [
        {"bucket": r["bucket"], "fills": int(r["fills"]), "shares": int(r["shares"])} for r in per.iter_rows(named=True)
    ]


def build(day: Day) -> dict[str, Any]:
    """Return the session's execution report as JSON-able data (deterministic key order)."""
    orders = _orders_frame(day)
    fills, closes = _fills_frame(day)
    blocks = day.blocks
    carry_by_symbol = {r["symbol"]: float(r["carry_pnl"]) for r in closes.iter_rows(named=True)}
    carry_total = sum(carry_by_symbol.values())
    has_carry = bool(closes.filter(pl.col("pos_open") != 0).height)

    total = _row(
        "all",
        "all",
        _total(orders, _order_aggs()),
        _total(fills, _fill_aggs()),
        _blocks_by(blocks, "").get("all", {}),
        carry_total,
    )
    groups: dict[str, list[dict[str, Any]]] = {}
    for dim in DIMENSIONS:
        o = _by(orders, dim, _order_aggs())
        f = _by(fills, dim, _fill_aggs())
        b = _blocks_by(blocks.with_columns(pl.lit("").alias(dim)) if dim not in blocks.columns else blocks, dim)
        values = set(o) | set(f) | set(b)
        if dim == "symbol":
            values |= {s for s, r in zip(closes["symbol"], closes["pos_open"], strict=True) if r != 0}
        rows = [
            _row(dim, v, o.get(v), f.get(v), b.get(v, {}), carry_by_symbol.get(v, 0.0) if dim == "symbol" else 0.0)
            for v in sorted(values)
        ]
        if dim != "symbol" and has_carry:
            rows.append(_row(dim, CARRIED, None, None, {}, carry_total))
        groups[dim] = rows

    by_symbol = []
    fill_pnl = _by(fills, "symbol", _fill_aggs())
    for r in closes.iter_rows(named=True):
        fp = fill_pnl.get(r["symbol"], {})
        before = float(fp.get("before") or 0.0) + float(r["carry_pnl"])
        after = float(fp.get("after") or 0.0) + float(r["carry_pnl"])
        by_symbol.append(
            {
                "symbol": r["symbol"],
                "close": _num(r["close"]),
                "close_source": r["close_source"],
                "prev_close": _num(r["prev_close"]),
                "prev_session": r["prev_session"],
                "pos_open": int(r["pos_open"]),
                "fills": int(fp.get("fills") or 0),
                "fills_before_costs": _num(fp.get("before") or 0.0),
                "fills_after_costs": _num(fp.get("after") or 0.0),
                "carry": _num(r["carry_pnl"]),
                "before_costs": _num(before),
                "after_costs": _num(after),
                "cost_of_execution": _num(before - after),
            }
        )
    pnl = {
        "before_costs": total["pnl_before_costs"],
        "after_costs": total["pnl_after_costs"],
        "cost_of_execution": total["cost_of_execution"],
        "carry": _num(carry_total),
        "marked_at_last_fill": sorted(closes.filter(pl.col("close_source") == "last_fill")["symbol"].to_list()),
        "carried_unmarked": sorted(
            closes.filter(pl.col("close_source").is_in(["previous_close", "none"]) & (pl.col("pos_open") != 0))[
                "symbol"
            ].to_list()
        ),
        "by_symbol": by_symbol,
    }

    def top(dim: str) -> list[dict[str, Any]]:
        rows = [r for r in groups[dim] if r["value"] != CARRIED and (r["shortfall_usd"] or 0) > 0]
        rows.sort(key=lambda r: (-r["shortfall_usd"], r["value"]))
        return [{dim: r["value"], "shortfall_usd": r["shortfall_usd"]} for r in rows[:TOP_SHORTFALL]]

    before, after = total["pnl_before_costs"] or 0.0, total["pnl_after_costs"] or 0.0
    headline = {
        "pnl_before_costs": total["pnl_before_costs"],
        "pnl_after_costs": total["pnl_after_costs"],
        "cost_of_execution": total["cost_of_execution"],
        "profitable_before_costs_losing_after": before > 0 and after < 0,
        "top_shortfall_symbols": top("symbol"),
        "top_shortfall_sleeves": top("sleeve"),
        "missed_opportunity": {
            "cancels": total["cancels"] + total["expired"],
            "cancels_usd": total["missed_opportunity_usd_cancels"],
            "rejects": total["rejects"],
            "rejects_usd": total["missed_opportunity_usd_rejects"],
        },
    }
    filled_sb = orders.filter(pl.col("filled_qty") > 0)["shortfall_bps"].to_list()
    cost = [(r["value"], r["shortfall_usd"]) for r in groups["symbol"] if r["orders"]]
    cost.sort(key=lambda t: (-abs(t[1]), t[0]))
    charts = {
        "shortfall_distribution": _histogram([float(v) for v in filled_sb]),
        "cost_by_symbol": [{"symbol": s, "shortfall_usd": u} for s, u in cost[:COST_CHART_SYMBOLS]],
        "fills_through_day": _fills_through_day(fills),
        "cumulative_pnl": {
            "fills": fills.height,
            "before_costs": _num(fills["before_costs"].sum()) if fills.height else 0.0,
            "after_costs": _num(fills["after_costs"].sum()) if fills.height else 0.0,
        },
    }
    return {
        "report": "execution",
        "session": day.session,
        "counts": {"orders": day.orders.height, "fills": day.fills.height, "blocks": day.blocks.height},
        "headline": headline,
        "totals": total,
        "groups": groups,
        "pnl": pnl,
        "charts": charts,
    }


def cumulative_pnl(day: Day) -> pl.DataFrame:
    """Return the day's fills in time order with running before- and after-cost PnL."""
    fills, _ = _fills_frame(day)
    return fills.select(
        "ts_event",
        pl.col("before_costs").cum_sum().alias("cum_before_costs"),
        pl.col("after_costs").cum_sum().alias("cum_after_costs"),
    )


# ---------------------------------------------------------------- rendering

_SCALARS = (
    "orders",
    "filled_orders",
    "filled_qty",
    "filled_notional",
    "ordered_notional",
    "shortfall_bps_p50",
    "shortfall_bps_p90",
    "shortfall_bps_p99",
    "shortfall_bps_wmean",
    "spread_paid_bps_p50",
    "spread_paid_bps_p90",
    "rejects",
    "cancels",
    "expired",
    "partial_fills",
    "blocks",
    "shortfall_usd",
    *(f"{c}_usd" for c in _COMPONENTS),
    *(f"{c}_bps" for c in _COMPONENTS),
    "missed_opportunity_usd_cancels",
    "missed_opportunity_usd_rejects",
    "fills",
    "pnl_before_costs",
    "pnl_after_costs",
    "cost_of_execution",
)


def _all_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    return [report["totals"], *(r for dim in DIMENSIONS for r in report["groups"][dim])]


def render_json(report: dict[str, Any]) -> str:
    """Return the report as indented JSON."""
    return json.dumps(report, indent=2) + "\n"


def render_csv(report: dict[str, Any]) -> str:
    """Return one CSV row per group row, blocks by reason as blocks_<REASON> columns."""
    rows = _all_rows(report)
    reasons = sorted({k for r in rows for k in r["blocks_by_reason"]})
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["group", "value", *_SCALARS, *(f"blocks_{k}" for k in reasons)])
    for r in rows:
        cells = [r["group"], r["value"], *(r[k] for k in _SCALARS), *(r["blocks_by_reason"].get(k, 0) for k in reasons)]
        w.writerow("" if c is None else c for c in cells)
    return buf.getvalue()


def render_jsonl(day: Day) -> str:
    """Return the day's per-order TCA records, one JSON object a line (numerics as exact strings)."""
    return "".join(json.dumps(r) + "\n" for r in day.orders.iter_rows(named=True))


def _svg(fig: Any, chart: str) -> str:
    import matplotlib

    buf = io.StringIO()
    # a fixed salt and no date: the same report renders to the same bytes
    with matplotlib.rc_context({"svg.hashsalt": f"keel-{chart}", "svg.fonttype": "none"}):
        fig.savefig(buf, format="svg", metadata={"Date": None})
    text = buf.getvalue()
    return text[text.index("<svg") :]


def _figure(title: str) -> tuple[Any, Any]:
    # a bare Figure renders through the Agg/SVG canvases without pyplot's global backend state
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8.0, 3.2), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    ax.set_title(title, fontsize=10)
    return fig, ax


def _empty(ax: Any) -> None:
    ax.text(0.5, 0.5, "no fills", ha="center", va="center", fontsize=14, transform=ax.transAxes)
    ax.set_xticks([])
    ax.set_yticks([])


def _hhmm(x: float, _pos: Any = None) -> str:
    minutes = int(round(x * 60))
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


def charts(report: dict[str, Any], day: Day) -> dict[str, str]:
    """Return the four charts as inline SVG, keyed by chart id."""

    with _RENDER_LOCK:
        return _charts(report, day)


def _charts(report: dict[str, Any], day: Day) -> dict[str, str]:
    from matplotlib.ticker import FuncFormatter

    c = report["charts"]
    out: dict[str, str] = {}

    fig, ax = _figure("Shortfall distribution (orders with fills), bps")
    hist = c["shortfall_distribution"]
    if hist["orders"]:
        edges, counts = hist["edges"], hist["counts"]
        for i, n in enumerate(counts):
            if n:
                ax.bar(
                    edges[i],
                    n,
                    width=edges[i + 1] - edges[i],
                    align="edge",
                    color="#4c72b0",
                    edgecolor="white",
                    gid=f"shortfall-bin-{i}",
                )
        ax.set_xlabel("shortfall, bps (positive = cost)")
        ax.set_ylabel("orders")
    else:
        _empty(ax)
    out["shortfall-distribution"] = _svg(fig, "shortfall-distribution")

    fig, ax = _figure(f"Cost by symbol: shortfall USD (top {COST_CHART_SYMBOLS} by size)")
    cost = c["cost_by_symbol"]
    if cost:
        for i, r in enumerate(cost):
            color = "#c44e52" if r["shortfall_usd"] > 0 else "#55a868"
            ax.bar(i, r["shortfall_usd"], color=color, gid=f"cost-bar-{i}")
        ax.set_xticks(range(len(cost)), [r["symbol"] for r in cost], rotation=45, ha="right", fontsize=8)
        ax.axhline(0, color="black", linewidth=0.6)
        ax.set_ylabel("USD (positive = cost)")
    else:
        _empty(ax)
    out["cost-by-symbol"] = _svg(fig, "cost-by-symbol")

    fig, ax = _figure("Fills through the day (5-minute buckets, America/New_York)")
    buckets = c["fills_through_day"]
    if buckets:
        for b in buckets:
            hh, mm = b["bucket"].split(":")
            x = int(hh) + int(mm) / 60
            ax.bar(x, b["fills"], width=5 / 60, align="edge", color="#8172b2", gid=f"fills-bucket-{hh}{mm}")
        ax.xaxis.set_major_formatter(FuncFormatter(_hhmm))
        ax.set_ylabel("fills")
    else:
        _empty(ax)
    out["fills-through-day"] = _svg(fig, "fills-through-day")

    fig, ax = _figure("Cumulative PnL of the day's fills, marked to the close: before vs after costs")
    # the running sums at the last fill of each second: a step line drawn through them is the same
    # line, and the chart stays a few thousand points whatever the fills (a million would not render)
    cum = (
        cumulative_pnl(day)
        .with_columns((pl.col("ts_event") // 1_000_000_000).alias("_second"))
        .group_by("_second", maintain_order=True)
        .agg(pl.all().last())
        .drop("_second")
    )
    if cum.height:
        local = pl.from_epoch("ts_event", "ns").dt.replace_time_zone("UTC").dt.convert_time_zone(TZ)
        x = cum.select(
            local.dt.hour() + local.dt.minute() / 60 + local.dt.second() / 3600 + local.dt.nanosecond() / 3.6e12
        ).to_series()
        before, after = cum["cum_before_costs"].to_list(), cum["cum_after_costs"].to_list()
        style = {"drawstyle": "steps-post", "linewidth": 1.4}
        ax.plot(x.to_list(), before, color="#4c72b0", label="before costs", gid="cumulative-before", **style)
        ax.plot(x.to_list(), after, color="#c44e52", label="after costs", gid="cumulative-after", **style)
        ax.axhline(0, color="black", linewidth=0.6)
        ax.xaxis.set_major_formatter(FuncFormatter(_hhmm))
        ax.set_ylabel("USD")
        ax.legend(loc="best", fontsize=8)
    else:
        _empty(ax)
    out["cumulative-pnl"] = _svg(fig, "cumulative-pnl")
    return out


_CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5rem; color: #222; }
h1 { font-size: 1.4rem; } h2 { font-size: 1.1rem; margin-top: 2rem; }
.headline li { margin: 0.3rem 0; } .bad { color: #b00020; font-weight: 600; }
figure.chart { margin: 1rem 0; max-width: 820px; } figure.chart svg { width: 100%; height: auto; }
table { border-collapse: collapse; font-size: 0.8rem; margin-bottom: 1rem; }
th, td { border: 1px solid #ccc; padding: 0.2rem 0.4rem; text-align: right; white-space: nowrap; }
th:first-child, td:first-child { text-align: left; }
"""
_TABLE_COLUMNS = (
    "orders",
    "filled_orders",
    "filled_qty",
    "shortfall_bps_p50",
    "shortfall_bps_p90",
    "shortfall_bps_p99",
    "shortfall_bps_wmean",
    "spread_paid_bps_p50",
    "spread_paid_bps_p90",
    "rejects",
    "cancels",
    "expired",
    "partial_fills",
    "blocks",
    "shortfall_usd",
    "pnl_before_costs",
    "pnl_after_costs",
    "cost_of_execution",
)


def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:,.2f}"
    if isinstance(v, dict):
        return ", ".join(f"{k}: {n}" for k, n in v.items())
    return str(v)


def _table(rows: list[dict[str, Any]], group: str) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in ("value", *_TABLE_COLUMNS, "blocks_by_reason"))
    body = "".join(
        "<tr>"
        + f"<td>{html.escape(r['value'] or '(none)')}</td>"
        + "".join(f"<td>{html.escape(_cell(r[c]))}</td>" for c in (*_TABLE_COLUMNS, "blocks_by_reason"))
        + "</tr>"
        for r in rows
    )
    return f'<table class="groups" data-group="{html.escape(group)}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _usd(v: float | None) -> str:
    return f"${(v or 0.0):,.2f}"


def _headline(report: dict[str, Any]) -> str:
    h = report["headline"]
    items = []
    verdict = "yes" if h["profitable_before_costs_losing_after"] else "no"
    cls = ' class="bad"' if h["profitable_before_costs_losing_after"] else ""
    items.append(
        f"<li{cls}>Profitable before costs but losing after: <b>{verdict}</b> "
        f"(before {_usd(h['pnl_before_costs'])}, after {_usd(h['pnl_after_costs'])}, "
        f"cost of execution {_usd(h['cost_of_execution'])})</li>"
    )
    for dim, key in (("symbols", "top_shortfall_symbols"), ("sleeves", "top_shortfall_sleeves")):
        name = "symbol" if dim == "symbols" else "sleeve"
        top = ", ".join(f"{html.escape(r[name] or '(none)')} {_usd(r['shortfall_usd'])}" for r in h[key]) or "none"
        items.append(f"<li>The {dim} that bleed most shortfall: {top}</li>")
    m = h["missed_opportunity"]
    items.append(
        f"<li>Missed-trade opportunity cost: {m['cancels']} canceled or expired orders "
        f"{_usd(m['cancels_usd'])}, {m['rejects']} rejected or failed orders {_usd(m['rejects_usd'])}</li>"
    )
    if report["pnl"]["marked_at_last_fill"]:
        syms = ", ".join(html.escape(s) for s in report["pnl"]["marked_at_last_fill"])
        items.append(f"<li>No close for {syms}: marked at the last fill price of the day.</li>")
    return '<ul class="headline">' + "".join(items) + "</ul>"


_CAPTIONS = {
    "shortfall-distribution": "Shortfall distribution of the orders with fills",
    "cost-by-symbol": "Cost by symbol (shortfall USD)",
    "fills-through-day": "Fills through the day",
    "cumulative-pnl": "Cumulative PnL, before vs after costs",
}


def render_html(report: dict[str, Any], day: Day) -> str:
    """Return a self-contained HTML page: headline, four inline SVG charts and the group tables."""
    session = html.escape(report["session"])
    svgs = charts(report, day)
    figures = "".join(
        f'<figure class="chart" id="chart-{cid}"><figcaption>{html.escape(_CAPTIONS[cid])}</figcaption>{svgs[cid]}</figure>'
        for cid in CHART_IDS
    )
    tables = f"<h2>All</h2>{_table([report['totals']], 'all')}" + "".join(
        f"<h2>By {html.escape(dim.replace('_', ' '))}</h2>{_table(report['groups'][dim], dim)}" for dim in DIMENSIONS
    )
    counts = report["counts"]
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>keel execution report {session}</title><style>{_CSS}</style></head><body>"
        f"<h1>Execution report, session {session}</h1>"
        f"<p>{counts['orders']} orders, {counts['fills']} fills, {counts['blocks']} blocks.</p>"
        f'<section id="headline">{_headline(report)}</section>'
        f'<section id="charts">{figures}</section>'
        f'<section id="groups">{tables}</section>'
        "</body></html>\n"
    )


def write(report: dict[str, Any], day: Day, out_dir: Path) -> list[Path]:
    """Write the report's JSON, CSV and HTML and the day's per-order JSONL; return the paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    s = report["session"]
    files = {
        out_dir / f"execution-report-{s}.json": render_json(report),
        out_dir / f"execution-report-{s}.csv": render_csv(report),
        out_dir / f"execution-report-{s}.html": render_html(report, day),
        out_dir / f"tca-orders-{s}.jsonl": render_jsonl(day),
    }
    for path, text in files.items():
        path.write_text(text, encoding="utf-8")
    return list(files)
