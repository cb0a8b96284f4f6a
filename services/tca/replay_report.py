"""The report of a replay run over several sessions: JSON and a self-contained HTML page.

Built on the daily execution report (services/tca/report.py): `load_run` reads every session with
`report.load_day` in one snapshot, `build` (pure) runs `report.build` on each session, so every
per-day figure equals that session's execution report, and adds the run's figures; `write`
renders and writes `replay-report.json` and `replay-report.html`.

Definitions (sessions in date order; "fills" are the rows of `records`, one per execution):

- per_day: orders, fills, filled_notional, blocks, pnl_before_costs, pnl_after_costs and
  cost_of_execution are the `totals` of `report.build(day)` unchanged (PnL includes the carried
  position's, as there); flips, gross_position_usd and turnover as below.
- trades_per_day: the run's fills / sessions (null without sessions).
- Positions: per symbol, a session opens with its carried position (`Day.carry`: the signed
  shares of every earlier session's fills, 0 at the first session of a fresh replay schema) and
  moves by the signed shares of the session's fills.
- turnover (TURNOVER_DEFINITION): filled_notional / gross_position_usd, where gross_position_usd =
  (G_open + G_close) / 2 and G = sum over symbols of |position| * C, with the positions at the
  session's open and close and C the session's close as `report.build` marks it (the close, else
  the last fill price of the session, else the latest earlier close; a symbol with none is left
  out); null when gross_position_usd is 0. turnover_mean: the mean over sessions with a turnover.
- flip (FLIP_DEFINITION): a session's orders with fills are taken in the order of their first
  fill, each applying its fills' signed shares at once; an order flips when the position after
  it is non-zero and of the opposite sign to the last non-zero position before it (its opening
  position, or if that is flat, the last non-zero one earlier in the run: long -> flat -> short
  through two orders is one flip, on the second). flip_rate.rate = flips / orders with fills,
  in total and per symbol (null without orders with fills).
- blocks_by_reason: the sessions' blocks_by_reason summed.
- shortfall_bps: over every session's final order records (`final` true, shortfall_bps known;
  an unfilled order's shortfall is its opportunity cost): count, mean, min, max, p10, p50, p90,
  p99 (linear interpolation between the closest ranks, as report.py) and report.py's histogram
  (min(30, ceil(sqrt n)) equal bins over [min, max]; the daily chart takes filled orders only).
- pnl: the per-day before_costs, after_costs and cost_of_execution summed.
- max_drawdown_usd: the largest fall from a running peak of the run's cumulative after-cost PnL,
  which starts at 0 and, session after session, first moves by the carried position's PnL, then
  along `report.cumulative_pnl(day)` (the session's fills in time order, each marked to the
  close); session n starts where session n-1 ended, so the curve ends at pnl.after_costs.
- cumulative_pnl: the run's cumulative before- and after-cost PnL at the end of each session.

Money is float (research math, STYLE 14), every float rounded by `report._num` (4 decimals, as
the daily report): the same rows give the same bytes.
"""

from __future__ import annotations

import html
import json
from collections import Counter
from pathlib import Path
from typing import Any

import asyncpg
import polars as pl

from services.tca import report

JSON_NAME = "replay-report.json"
HTML_NAME = "replay-report.html"
CHART_ID = "replay-cumulative-pnl"
PERCENTILES = (("p10", 0.1), ("p50", 0.5), ("p90", 0.9), ("p99", 0.99))
TURNOVER_DEFINITION = (
    "filled_notional / gross_position_usd; gross_position_usd = (G_open + G_close) / 2, "
    "G = sum over symbols of |position| * the session's close (report.py's mark), "
    "positions at the session's open (carried) and close; null when gross_position_usd is 0"
)
FLIP_DEFINITION = (
    "an order whose fills leave the symbol's position non-zero and of the opposite sign to the last "
    "non-zero position before it (flat positions skipped, across sessions); "
    "rate = flips / orders with fills"
)
_PER_DAY = ("orders", "fills", "filled_notional", "blocks", "pnl_before_costs", "pnl_after_costs", "cost_of_execution")


async def load_run(conn: asyncpg.Connection, schema: str, sessions: list[str]) -> list[report.Day]:
    """Read every session of the run with `report.load_day`, in the order given, in one snapshot."""
    if conn.is_in_transaction():
        return [await report.load_day(conn, schema, s) for s in sessions]
    # one snapshot for the whole run, as load_day takes one for its own queries
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        return [await report.load_day(conn, schema, s) for s in sessions]


# ---------------------------------------------------------------- pure part


def _sign(x: int) -> int:
    return (x > 0) - (x < 0)


def _rate(n: int, d: int) -> float | None:
    return report._num(n / d) if d else None


def _day_positions(
    fills: pl.DataFrame, closes: pl.DataFrame, last_sign: dict[str, int], flips: Counter[str], orders: Counter[str]
) -> tuple[int, float]:
    # counts into flips / orders and updates last_sign; returns the session's flips and gross position USD
    position = {s: int(p) for s, p in zip(closes["symbol"], closes["pos_open"], strict=True)}
    for s, p in position.items():
        if p:
            last_sign[s] = _sign(p)
    per_order = fills.group_by("client_order_id", maintain_order=True).agg(
        pl.col("symbol").first(), pl.col("signed_qty").sum()
    )  # fills come sorted by (ts_event, execution_id): orders in the order of their first fill
    day_flips = 0
    for symbol, qty in zip(per_order["symbol"], per_order["signed_qty"], strict=True):
        before = position.get(symbol, 0)
        after = before + int(qty)
        last = _sign(before) or last_sign.get(symbol, 0)
        orders[symbol] += 1
        if after and last and _sign(after) != last:
            flips[symbol] += 1
            day_flips += 1
        if after:
            last_sign[symbol] = _sign(after)
        position[symbol] = after
    close = dict(zip(closes["symbol"], closes["close"], strict=True))
    opening = dict(zip(closes["symbol"], closes["pos_open"], strict=True))
    g_open = sum(abs(int(opening[s])) * float(close[s]) for s in opening if close[s] is not None)
    g_close = sum(abs(p) * float(close[s]) for s, p in position.items() if close.get(s) is not None)
    return day_flips, (g_open + g_close) / 2


def _curve_drawdown(curve: pl.Series, peak: float, drawdown: float) -> tuple[float, float]:
    if curve.len() == 0:
        return peak, drawdown
    peaks = curve.cum_max().clip(lower_bound=peak)
    return max(peak, float(curve.max())), max(drawdown, float((peaks - curve).max()))


def _shortfall(days: list[report.Day]) -> dict[str, Any]:
    frames = [d.orders.filter(pl.col("final")).select(pl.col("shortfall_bps").cast(pl.Float64)) for d in days]
    values = pl.concat(frames)["shortfall_bps"].drop_nulls().sort() if frames else pl.Series([], dtype=pl.Float64)
    out: dict[str, Any] = {"count": values.len()}
    stats: dict[str, Any] = {"mean": values.mean(), "min": values.min(), "max": values.max()}
    stats |= {name: values.quantile(q, "linear") for name, q in PERCENTILES}
    out |= {k: report._num(v) if values.len() else None for k, v in stats.items()}
    out["histogram"] = report._histogram(values.to_list())
    return out


def build(days: list[report.Day]) -> dict[str, Any]:
    """Return the run's replay report as JSON-able data, every day's figures from `report.build`."""
    days = sorted(days, key=lambda d: d.session)
    sessions = [d.session for d in days]
    if len(set(sessions)) != len(sessions):
        raise ValueError(f"expected distinct sessions, was {sessions}")

    per_day: list[dict[str, Any]] = []
    blocks: Counter[str] = Counter()
    flips: Counter[str] = Counter()
    orders_with_fills: Counter[str] = Counter()
    last_sign: dict[str, int] = {}
    cumulative: list[dict[str, Any]] = []
    before_end = after_end = peak = drawdown = 0.0
    for day in days:
        totals = report.build(day)["totals"]
        fills, closes = report._fills_frame(day)
        day_flips, gross = _day_positions(fills, closes, last_sign, flips, orders_with_fills)
        filled_notional = float(totals["filled_notional"] or 0.0)
        per_day.append(
            {
                "session": day.session,
                **{k: totals[k] for k in _PER_DAY},
                "flips": day_flips,
                "gross_position_usd": report._num(gross),
                "turnover": report._num(filled_notional / gross) if gross else None,
            }
        )
        blocks.update(totals["blocks_by_reason"])

        carry = float(closes["carry_pnl"].sum())
        cum = report.cumulative_pnl(day)
        curve = pl.concat(
            [pl.Series("v", [after_end + carry]), (after_end + carry + cum["cum_after_costs"]).alias("v")]
        )
        peak, drawdown = _curve_drawdown(curve, peak, drawdown)
        after_end = float(curve[-1])
        before_end += carry + (float(cum["cum_before_costs"][-1]) if cum.height else 0.0)
        cumulative.append(
            {"session": day.session, "before_costs": report._num(before_end), "after_costs": report._num(after_end)}
        )

    def total(key: str) -> float:
        return report._num(sum(float(r[key] or 0.0) for r in per_day)) or 0.0

    n_fills = sum(r["fills"] for r in per_day)
    turnovers = [r["turnover"] for r in per_day if r["turnover"] is not None]
    before, after = total("pnl_before_costs"), total("pnl_after_costs")
    symbols = sorted(orders_with_fills)
    return {
        "report": "replay",
        "sessions": sessions,
        "turnover_definition": TURNOVER_DEFINITION,
        "flip_definition": FLIP_DEFINITION,
        "counts": {
            "sessions": len(days),
            "orders": sum(r["orders"] for r in per_day),
            "fills": n_fills,
            "blocks": sum(r["blocks"] for r in per_day),
            "filled_notional": total("filled_notional"),
        },
        "per_day": per_day,
        "trades_per_day": _rate(n_fills, len(days)),
        "turnover_mean": report._num(sum(turnovers) / len(turnovers)) if turnovers else None,
        "flip_rate": {
            "flips": sum(flips.values()),
            "orders_with_fills": sum(orders_with_fills.values()),
            "rate": _rate(sum(flips.values()), sum(orders_with_fills.values())),
            "by_symbol": [
                {
                    "symbol": s,
                    "flips": flips[s],
                    "orders_with_fills": orders_with_fills[s],
                    "rate": _rate(flips[s], orders_with_fills[s]),
                }
                for s in symbols
            ],
        },
        "blocks_by_reason": dict(sorted(blocks.items())),
        "shortfall_bps": _shortfall(days),
        "pnl": {
            "before_costs": before,
            "after_costs": after,
            "cost_of_execution": total("cost_of_execution"),
            "profitable_before_costs_losing_after": before > 0 and after < 0,
        },
        "max_drawdown_usd": report._num(drawdown),
        "cumulative_pnl": cumulative,
    }


# ---------------------------------------------------------------- rendering


def render_json(rep: dict[str, Any]) -> str:
    """Return the report as indented JSON with sorted keys."""
    return json.dumps(rep, indent=2, sort_keys=True) + "\n"


def _chart(rep: dict[str, Any]) -> str:
    with report._RENDER_LOCK:
        fig, ax = report._figure("Cumulative PnL of the run at each session's close: before vs after costs")
        points = rep["cumulative_pnl"]
        if points:
            x = list(range(len(points) + 1))
            style = {"marker": "o", "markersize": 3, "linewidth": 1.4}
            before = [0.0, *(p["before_costs"] for p in points)]
            after = [0.0, *(p["after_costs"] for p in points)]
            ax.plot(x, before, color="#4c72b0", label="before costs", gid="replay-before", **style)
            ax.plot(x, after, color="#c44e52", label="after costs", gid="replay-after", **style)
            ax.axhline(0, color="black", linewidth=0.6)
            labels = ["start", *(p["session"] for p in points)]
            step = max(1, len(labels) // 20)  # at most ~20 labels: a long run stays readable
            ax.set_xticks(x[::step], labels[::step], rotation=45, ha="right", fontsize=8)
            ax.set_ylabel("USD")
            ax.legend(loc="best", fontsize=8)
        else:
            report._empty(ax)
        return report._svg(fig, CHART_ID)


def _td(v: Any) -> str:
    return f"<td>{html.escape(report._cell(v))}</td>"


def _table(name: str, head: list[str], rows: list[list[Any]]) -> str:
    th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(_td(v) for v in r) + "</tr>" for r in rows)
    return f'<table class="{html.escape(name)}"><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>'


def _headline(rep: dict[str, Any]) -> str:
    p, f = rep["pnl"], rep["flip_rate"]
    usd = report._usd
    cls = ' class="bad"' if p["profitable_before_costs_losing_after"] else ""
    rate = "n/a" if f["rate"] is None else f"{f['rate']:.2%}"
    turnover = "n/a" if rep["turnover_mean"] is None else f"{rep['turnover_mean']:,.2f}"
    trades = "n/a" if rep["trades_per_day"] is None else f"{rep['trades_per_day']:,.2f}"
    items = [
        f"<li{cls}>PnL before costs {usd(p['before_costs'])}, after costs {usd(p['after_costs'])}, "
        f"cost of execution {usd(p['cost_of_execution'])}</li>",
        f"<li>Max drawdown (after costs): {usd(rep['max_drawdown_usd'])}</li>",
        f"<li>Trades per day: {trades}</li>",
        f"<li>Flip rate: {rate} ({f['flips']} flips in {f['orders_with_fills']} orders with fills)</li>",
        f"<li>Mean daily turnover: {turnover}</li>",
    ]
    return '<ul class="headline">' + "".join(items) + "</ul>"


def render_html(rep: dict[str, Any]) -> str:
    """Return a self-contained HTML page: headline, per-day, blocks and shortfall tables, PnL chart."""
    sessions = rep["sessions"]
    span = f"{sessions[0]} to {sessions[-1]}" if sessions else "no sessions"
    c = rep["counts"]
    day_cols = ["session", *_PER_DAY, "flips", "gross_position_usd", "turnover"]
    per_day = _table("per-day", day_cols, [[r[k] for k in day_cols] for r in rep["per_day"]])
    blocks = _table("blocks", ["reason", "blocks"], [[k, n] for k, n in rep["blocks_by_reason"].items()])
    sb = rep["shortfall_bps"]
    stat_cols = ["count", "mean", "min", *(name for name, _ in PERCENTILES), "max"]
    shortfall = _table("shortfall", stat_cols, [[sb[k] for k in stat_cols]])
    flips = _table(
        "flips",
        ["symbol", "flips", "orders_with_fills", "rate"],
        [[r["symbol"], r["flips"], r["orders_with_fills"], r["rate"]] for r in rep["flip_rate"]["by_symbol"]],
    )
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>keel replay report {html.escape(span)}</title><style>{report._CSS}</style></head><body>"
        f"<h1>Replay report, {html.escape(span)}</h1>"
        f"<p>{c['sessions']} sessions, {c['orders']} orders, {c['fills']} fills, {c['blocks']} blocks.</p>"
        f'<section id="headline">{_headline(rep)}</section>'
        f'<section id="charts"><figure class="chart" id="chart-{CHART_ID}">'
        f"<figcaption>Cumulative PnL, before vs after costs</figcaption>{_chart(rep)}</figure></section>"
        f'<section id="per-day"><h2>Per session</h2>{per_day}'
        f"<p>turnover: {html.escape(rep['turnover_definition'])}</p></section>"
        f'<section id="blocks"><h2>Blocks by reason</h2>{blocks}</section>'
        f'<section id="shortfall"><h2>Shortfall, bps (final order records)</h2>{shortfall}</section>'
        f'<section id="flips"><h2>Flips by symbol</h2>{flips}'
        f"<p>flip: {html.escape(rep['flip_definition'])}</p></section>"
        "</body></html>\n"
    )


def write(rep: dict[str, Any], out_dir: Path) -> list[Path]:
    """Write replay-report.json and replay-report.html into `out_dir`; return the paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {out_dir / JSON_NAME: render_json(rep), out_dir / HTML_NAME: render_html(rep)}
    for path, text in files.items():
        path.write_text(text, encoding="utf-8")
    return list(files)
