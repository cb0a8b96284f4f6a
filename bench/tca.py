"""TCA at scale: cost model calibration and the daily report per fill at 10k, 100k and 1M fills.

Linear in fills means a flat ns/fill from the smallest size to the largest.

Work measured: reducing one session's fills to per-symbol sufficient statistics
(`libs.costmodel.accumulate`, the bulk path; and folding `observe` one fill at a time, the
immutable path) plus `calibrate` of that session into the model of the one before, over 5
sessions of seeded synthetic fills across 100 symbols (the fill simulator's cost formula on a
random walk per symbol, so every run sees the same inputs).

Bare limit, measured in the same run on the same fills (these machines are noisy, so only the
ratios travel): a plain loop reading the same fields of each fill and summing them as floats,
i.e. what any calibration pays just to look at its inputs.

The daily report (services/tca/report.py `build`, the pure part of `keel report`) runs on one
session holding all of a size's fills (orders of 2 fills each, 100 symbols, 5 sleeves, 3 order
types, 2 providers, blocks), beside a bare polars group-by summing notional per symbol over the
same fills frame. Rendering (charts and tables) is timed apart: it draws aggregates, so it
should not grow with fills at all.

Runs with `python bench/tca.py` or `python -m bench.tca`; prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import sys
import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

if __package__ in (None, ""):
    # run as a script: make the repository root importable, as `python -m bench.tca` does
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import polars as pl  # noqa: E402

from libs import costmodel  # noqa: E402
from libs.contracts.tca import SymbolCost  # noqa: E402
from services.tca import report  # noqa: E402

D = Decimal
SESSIONS = 5
SYMBOLS = 100


def session_fills(seed: int, size: int, session: int) -> list[costmodel.Observation]:
    """Return one session's share of `size` synthetic fills (seeded by size and session)."""
    rng = random.Random(f"bench.tca|{seed}|{size}|{session}")
    prices = [50.0 + 10.0 * i for i in range(SYMBOLS)]
    symbols = [f"S{i:03d}" for i in range(SYMBOLS)]
    out = []
    for _ in range(size // SESSIONS):
        i = rng.randrange(SYMBOLS)
        prices[i] *= math.exp(rng.gauss(0.0, 0.001))
        mid = prices[i]
        sigma = rng.uniform(1.0, 40.0)
        volume = 0 if rng.random() < 0.02 else rng.randint(5_000, 2_000_000)
        qty = rng.randint(1, 20_000)
        spread = rng.uniform(1.0, 8.0)
        impact = 0.7 * sigma * math.sqrt(min(qty / volume, 1.0)) if volume else 0.0
        cost = spread / 2 + 0.5 + 0.1 * sigma * abs(rng.gauss(0.0, 1.0)) + impact
        side = "buy" if rng.random() < 0.5 else "sell"
        sign = 1.0 if side == "buy" else -1.0
        out.append(
            costmodel.Observation(
                symbol=symbols[i],
                side=side,
                qty=qty,
                mid=D(f"{mid:.4f}"),
                fill_px=D(f"{mid * (1 + sign * cost / 1e4):.2f}"),
                spread_bps=D(f"{spread:.2f}"),
                spread_is_proxy=rng.random() < 0.3,
                sigma_bps=D(f"{sigma:.4f}"),
                bar_volume=volume,
            )
        )
    return out


def run_bare(fills: list[costmodel.Observation]) -> int:
    """Read and sum the fields the calibration reads; return elapsed ns."""
    t0 = time.perf_counter_ns()
    total = 0.0
    for o in fills:
        total += float(o.fill_px) - float(o.mid) + float(o.spread_bps) + float(o.sigma_bps) + o.qty + o.bar_volume
    elapsed = time.perf_counter_ns() - t0
    if not math.isfinite(total):
        raise RuntimeError(f"expected a finite sum, was {total}")
    return elapsed


def run_accumulate(
    fills: list[costmodel.Observation], params: costmodel.Params
) -> tuple[int, dict[str, costmodel.DayStats]]:
    """Reduce the fills with the bulk path; return (elapsed ns, statistics)."""
    t0 = time.perf_counter_ns()
    stats = costmodel.accumulate(fills, params)
    return time.perf_counter_ns() - t0, stats


def run_fold(fills: list[costmodel.Observation], params: costmodel.Params) -> tuple[int, dict[str, costmodel.DayStats]]:
    """Reduce the fills by folding `observe`; return (elapsed ns, statistics)."""
    observe, empty = costmodel.observe, costmodel.DayStats()
    t0 = time.perf_counter_ns()
    stats: dict[str, costmodel.DayStats] = {}
    for o in fills:
        stats[o.symbol] = observe(stats.get(o.symbol, empty), o, params)
    return time.perf_counter_ns() - t0, stats


def median_ns(run: Callable[[], int], repeat: int) -> float:
    return statistics.median(run() for _ in range(repeat))


def measure(seed: int, size: int, repeat: int, params: costmodel.Params) -> dict[str, object]:
    """Calibrate 5 sessions of `size` fills in all; return the timings per fill."""
    prev: dict[str, SymbolCost] = {}
    default = params.prior
    bare = accumulate = fold = calibrate = 0.0
    out_of_bounds = 0
    for session in range(SESSIONS):
        fills = session_fills(seed, size, session)
        bare += median_ns(lambda f=fills: run_bare(f), repeat)
        accumulate += median_ns(lambda f=fills: run_accumulate(f, params)[0], repeat)
        fold += median_ns(lambda f=fills: run_fold(f, params)[0], repeat)
        stats = costmodel.accumulate(fills, params)
        if run_fold(fills, params)[1] != stats:
            raise RuntimeError("expected observe folded to equal accumulate, was different")
        t0 = time.perf_counter_ns()
        cal = costmodel.calibrate(prev, default, stats, params)
        calibrate += time.perf_counter_ns() - t0
        prev, default = {c.symbol: c for c in cal.symbols}, cal.default
        out_of_bounds += len(cal.out_of_bounds)
    n = SESSIONS * (size // SESSIONS)
    return {
        "fills": n,
        "ns_per_fill": {
            "bare": round(bare / n, 1),
            "accumulate": round(accumulate / n, 1),
            "observe_fold": round(fold / n, 1),
            "accumulate_calibrate": round((accumulate + calibrate) / n, 1),
            "observe_fold_calibrate": round((fold + calibrate) / n, 1),
            "calibrate_only": round(calibrate / n, 2),
        },
        "ratio_accumulate_to_bare": round(accumulate / bare, 2),
        "ratio_accumulate_calibrate_to_bare": round((accumulate + calibrate) / bare, 2),
        "ratio_fold_to_bare": round((fold + calibrate) / bare, 2),
        "calibrate_ms_per_session": round(calibrate / SESSIONS / 1e6, 2),
        "out_of_bounds": out_of_bounds,
        "final_default": {f: str(getattr(default, f)) for f in costmodel.FIELDS},
    }


DAY = "2026-03-02"
T_OPEN = 1_772_461_800_000_000_000  # 2026-03-02 14:30 UTC, the session's open


def report_day(seed: int, fills: int) -> report.Day:
    """Return one session of `fills` fills (2 per order) with their orders, blocks and marks."""
    rng = random.Random(f"bench.tca.report|{seed}|{fills}")
    n_orders = fills // 2
    symbols = [f"S{rng.randrange(SYMBOLS):03d}" for _ in range(n_orders)]
    sides = [rng.choice(("buy", "sell")) for _ in range(n_orders)]
    prices = [50.0 + 10.0 * int(s[1:]) for s in symbols]
    decided = [T_OPEN + rng.randrange(390) * 60_000_000_000 for _ in range(n_orders)]
    statuses = [rng.choices(("filled", "canceled", "rejected", "partially_filled"), (90, 6, 2, 2))[0] for _ in symbols]
    sb = [rng.gauss(4.0, 6.0) for _ in range(n_orders)]
    cids = [f"c{i}" for i in range(n_orders)]
    orders = pl.DataFrame(
        {
            "client_order_id": cids,
            "intent_id": cids,
            "revision": [1] * n_orders,
            "final": [True] * n_orders,
            "status": statuses,
            "session": [DAY] * n_orders,
            "symbol": symbols,
            "side": sides,
            "qty": [200] * n_orders,
            "strategy": ["keel"] * n_orders,
            "sleeve": [f"sleeve{i % 5}" for i in range(n_orders)],
            "trading_profile": ["balanced"] * n_orders,
            "order_type": [("market", "limit", "stop")[i % 3] for i in range(n_orders)],
            "order_class": ["simple"] * n_orders,
            "time_in_force": ["day"] * n_orders,
            "provider": [("alpaca", "local")[i % 2] for i in range(n_orders)],
            "benchmark": ["decision"] * n_orders,
            "arrival_price": [f"{p:.2f}" for p in prices],
            "decision_price": [f"{p:.2f}" for p in prices],
            "submit_price": [f"{p:.2f}" for p in prices],
            "mid_at_arrival": [f"{p:.2f}" for p in prices],
            "bid_at_arrival": [None] * n_orders,
            "ask_at_arrival": [None] * n_orders,
            "spread_bps_at_arrival": ["12"] * n_orders,
            "spread_is_proxy": [True] * n_orders,
            "decision_ts": decided,
            "submit_ts": decided,
            "first_fill_ts": [t + 60_000_000_000 for t in decided],
            "end_ts": [t + 120_000_000_000 for t in decided],
            "filled_qty": [200] * n_orders,
            "fill_vwap": [f"{p * (1 + b / 1e4):.4f}" for p, b in zip(prices, sb, strict=True)],
            "fees": ["0.05"] * n_orders,
            "fees_estimated": [True] * n_orders,
            "partial_fill": [s == "partially_filled" for s in statuses],
            "end_price": [None] * n_orders,
            "shortfall_bps": [f"{b:.4f}" for b in sb],
            "explicit_bps": ["0.1"] * n_orders,
            "delay_bps": ["0"] * n_orders,
            "execution_bps": [f"{b - 0.1:.4f}" for b in sb],
            "opportunity_bps": ["0"] * n_orders,
            "shortfall_usd": [f"{b * 200 * p / 1e4:.4f}" for b, p in zip(sb, prices, strict=True)],
            "spread_paid_bps": [f"{b:.4f}" for b in sb],
            "fill_latency_ms": [60_000] * n_orders,
            "cancel_rate": ["0"] * n_orders,
            "expected_cost_bps": ["4"] * n_orders,
            "reason": [""] * n_orders,
            "ts_event": decided,
        },
        schema=report.ORDER_SCHEMA,
    )
    k = [i // 2 for i in range(2 * n_orders)]
    fills_frame = pl.DataFrame(
        {
            "execution_id": [f"x{i}" for i in range(2 * n_orders)],
            "client_order_id": [cids[j] for j in k],
            "symbol": [symbols[j] for j in k],
            "side": [sides[j] for j in k],
            "qty": [100] * (2 * n_orders),
            "arrival_price": [f"{prices[j]:.2f}" for j in k],
            "fill_price": [f"{prices[j] * (1 + sb[j] / 1e4):.4f}" for j in k],
            "fee": ["0.025"] * (2 * n_orders),
            "ts_event": [decided[j] + 60_000_000_000 + (i % 2) * 1_000_000 for i, j in enumerate(k)],
        },
        schema=report.FILL_SCHEMA,
    ).sort("ts_event", "execution_id")
    n_blocks = max(n_orders // 50, 1)
    blocks = pl.DataFrame(
        {
            "event_id": [f"b{i}" for i in range(n_blocks)],
            "session": [DAY] * n_blocks,
            "ts_event": [T_OPEN + i for i in range(n_blocks)],
            "stage": ["oms"] * n_blocks,
            "reason": [("PRICE_COLLAR_BLOCK", "COST_GATE_BLOCK")[i % 2] for i in range(n_blocks)],
            "symbol": [f"S{i % SYMBOLS:03d}" for i in range(n_blocks)],
            "side": ["buy"] * n_blocks,
            "qty": [100] * n_blocks,
            "client_order_id": [""] * n_blocks,
            "strategy": ["keel"] * n_blocks,
            "sleeve": ["sleeve0"] * n_blocks,
            "order_type": ["market"] * n_blocks,
        },
        schema=report.BLOCK_SCHEMA,
    )
    marks = pl.DataFrame(
        {
            "session": [DAY] * SYMBOLS,
            "symbol": [f"S{i:03d}" for i in range(SYMBOLS)],
            "close": [f"{50.0 + 10.0 * i:.2f}" for i in range(SYMBOLS)],
        },
        schema=report.MARK_SCHEMA,
    )
    carry = pl.DataFrame({"symbol": [], "pos_open": []}, schema=report.CARRY_SCHEMA)
    return report.Day(session=DAY, orders=orders, fills=fills_frame, blocks=blocks, marks=marks, carry=carry)


def measure_report(seed: int, size: int, repeat: int) -> dict[str, object]:
    """Time the daily report's build and rendering over one session of `size` fills."""
    day = report_day(seed, size)

    def bare() -> int:
        t0 = time.perf_counter_ns()
        f = day.fills
        out = f.group_by("symbol").agg(
            (pl.col("qty") * pl.col("fill_price").cast(pl.Float64)).sum().alias("notional"), pl.len()
        )
        elapsed = time.perf_counter_ns() - t0
        if out.height == 0:
            raise RuntimeError("expected symbols in the bare aggregation, was none")
        return elapsed

    built: dict[str, object] = {}

    def build() -> int:
        t0 = time.perf_counter_ns()
        built["report"] = report.build(day)
        return time.perf_counter_ns() - t0

    bare_ns, build_ns = median_ns(bare, repeat), median_ns(build, repeat)
    t0 = time.perf_counter_ns()
    html = report.render_html(built["report"], day)  # type: ignore[arg-type]
    render_ns = time.perf_counter_ns() - t0
    n = day.fills.height
    got = built["report"]["counts"]["fills"]  # type: ignore[index]
    if got != n:
        raise RuntimeError(f"expected the report to count {n} fills, was {got}")
    return {
        "fills": n,
        "orders": day.orders.height,
        "ns_per_fill": {"bare_group_by": round(bare_ns / n, 1), "build": round(build_ns / n, 1)},
        "ratio_build_to_bare": round(build_ns / bare_ns, 2),
        "render_ms": round(render_ns / 1e6, 1),
        "html_bytes": len(html),
    }


def main() -> None:
    """Measure every size and print one JSON line."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="10000,100000,1000000", help="total fills per run, comma separated")
    parser.add_argument("--repeat", type=int, default=3, help="repeats per session; the median is reported")
    parser.add_argument("--seed", type=int, default=1, help="seed of the synthetic fills")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    params = costmodel.Params()
    run_accumulate(session_fills(args.seed, 10_000, 0), params)  # warm-up

    results = {}
    reports: dict[str, dict[str, object]] = {}
    for size in sizes:
        results[str(size)] = measure(args.seed, size, args.repeat, params)
        reports[str(size)] = measure_report(args.seed, size, args.repeat)
    lo, hi = results[str(min(sizes))], results[str(max(sizes))]
    per_fill_lo, per_fill_hi = lo["ns_per_fill"], hi["ns_per_fill"]
    assert isinstance(per_fill_lo, dict) and isinstance(per_fill_hi, dict)
    summary = {
        "symbols": SYMBOLS,
        "sessions": SESSIONS,
        "repeat": args.repeat,
        "sizes": results,
        "ratio_ns_per_fill_largest_to_smallest": {
            k: round(per_fill_hi[k] / per_fill_lo[k], 2)
            for k in ("bare", "accumulate", "observe_fold", "accumulate_calibrate", "observe_fold_calibrate")
        },
    }
    r_lo, r_hi = reports[str(min(sizes))]["ns_per_fill"], reports[str(max(sizes))]["ns_per_fill"]
    assert isinstance(r_lo, dict) and isinstance(r_hi, dict)
    summary["report"] = {
        "sizes": reports,
        "ratio_ns_per_fill_largest_to_smallest": {k: round(r_hi[k] / r_lo[k], 2) for k in ("bare_group_by", "build")},
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
