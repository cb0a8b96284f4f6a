"""Fill simulator throughput: `match` calls per second over a mix of orders, beside bare limits.

Work measured: `libs.fillsim.match` for a fixed mix of working orders (market, resting and
marketable limits, stops, stop limits, trailing stops by price and by percent; day, ioc, fok, opg
and cls) against one synthetic XNYS session of one-minute bars (a seeded random walk, so every run
sees the same inputs). Each call gets the bar's whole participation capacity.

Bare limits, measured in the same run on the same inputs (these machines are noisy, so only the
ratios travel):
- `construct`: building the Working and the BarClosed of one call (msgspec structs; BarClosed
  validates its prices), i.e. what any simulator pays just to be handed its inputs;
- `price_math`: the Decimal arithmetic of one taker price, mid * (1 + cost) rounded to the cent.

Runs with `python bench/fillsim.py` or `python -m bench.fillsim`; prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from datetime import date
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path

if __package__ in (None, ""):
    # run as a script: make the repository root importable, as `python -m bench.fillsim` does
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from libs import fillsim, sessions  # noqa: E402
from libs.contracts.base import derive_id  # noqa: E402
from libs.contracts.marketdata import BarClosed  # noqa: E402

D = Decimal
SESSION = date(2024, 3, 5)
CENT = D("0.01")


def bar_fields(seed: int) -> list[dict[str, object]]:
    """Return the constructor arguments of one session of seeded random-walk minute bars."""
    rng = random.Random(seed)
    open_ns, close_ns = sessions.session_open_close(SESSION)
    out: list[dict[str, object]] = []
    px = 100.0
    for start in range(open_ns, close_ns, sessions.MINUTE_NS):
        o = px
        c = o * (1 + rng.gauss(0.0, 0.0008))
        hi = max(o, c) * (1 + abs(rng.gauss(0.0, 0.0004)))
        lo = min(o, c) * (1 - abs(rng.gauss(0.0, 0.0004)))
        ts = start + sessions.MINUTE_NS
        out.append(
            {
                "event_id": derive_id("bench.fillsim", ts),
                "correlation_id": derive_id("bench.fillsim.cycle", ts),
                "causation_id": derive_id("bench.fillsim.cycle", ts),
                "ts_event": ts,
                "ts_init": ts,
                "symbol": "BENCH",
                "bar_start": start,
                "session": SESSION.isoformat(),
                "open": D(f"{o:.2f}"),
                "high": D(f"{hi:.2f}"),
                "low": D(f"{lo:.2f}"),
                "close": D(f"{c:.2f}"),
                "volume": rng.randint(20_000, 400_000),
                "spread_bps": D(f"{rng.uniform(1.0, 8.0):.2f}"),
                "spread_is_proxy": rng.random() < 0.3,
            }
        )
        px = c
    return out


def order_fields() -> list[dict[str, object]]:
    """Return the constructor arguments of the order mix (one of each, cycled over the calls)."""
    mix: list[dict[str, object]] = [
        {"type": "market", "side": "buy", "time_in_force": "day"},
        {"type": "market", "side": "sell", "time_in_force": "day"},
        {"type": "market", "side": "buy", "time_in_force": "ioc"},
        {"type": "market", "side": "sell", "time_in_force": "fok"},
        {"type": "limit", "side": "buy", "time_in_force": "day", "limit_price": D("99.80")},
        {"type": "limit", "side": "sell", "time_in_force": "gtc", "limit_price": D("100.20")},
        {"type": "limit", "side": "buy", "time_in_force": "day", "limit_price": D("101.00")},
        {"type": "stop", "side": "buy", "time_in_force": "day", "stop_price": D("100.10")},
        {"type": "stop", "side": "sell", "time_in_force": "day", "stop_price": D("99.90")},
        {
            "type": "stop_limit",
            "side": "buy",
            "time_in_force": "day",
            "stop_price": D("100.10"),
            "limit_price": D("100.30"),
        },
        {"type": "trailing_stop", "side": "sell", "time_in_force": "gtc", "trail_price": D("0.50"), "hwm": D("100.40")},
        {"type": "trailing_stop", "side": "buy", "time_in_force": "gtc", "trail_percent": D("0.5"), "hwm": D("99.60")},
        {"type": "market", "side": "buy", "time_in_force": "opg"},
        {"type": "market", "side": "sell", "time_in_force": "cls"},
    ]
    return [{"order_id": f"bench-{i}", "leaves_qty": 100 * (1 + i % 5), **m} for i, m in enumerate(mix)]


def run_match(
    bars: list[BarClosed], orders: list[fillsim.Working], calls: int, model: fillsim.CostModel
) -> tuple[int, int]:
    """Match `calls` (order, bar) pairs; return (elapsed ns, executions)."""
    caps = [fillsim.capacity(b, model) for b in bars]
    nb, no = len(bars), len(orders)
    match = fillsim.match
    fills = 0
    t0 = time.perf_counter_ns()
    for i in range(calls):
        j = i % nb
        if match(orders[i % no], bars[j], caps[j], model).execution is not None:
            fills += 1
    return time.perf_counter_ns() - t0, fills


def run_construct(bar_args: list[dict[str, object]], order_args: list[dict[str, object]], calls: int) -> int:
    """Build the Working and the BarClosed of `calls` calls; return elapsed ns."""
    nb, no = len(bar_args), len(order_args)
    working, closed = fillsim.Working, BarClosed
    t0 = time.perf_counter_ns()
    for i in range(calls):
        closed(**bar_args[i % nb])
        working(**order_args[i % no])
    return time.perf_counter_ns() - t0


def run_price_math(bars: list[BarClosed], calls: int) -> int:
    """Compute one taker price per call (mid * (1 + 3 bps) to the cent); return elapsed ns."""
    nb = len(bars)
    one_plus_cost = 1 + D(3) / D(10_000)
    t0 = time.perf_counter_ns()
    for i in range(calls):
        (bars[i % nb].open * one_plus_cost).quantize(CENT, rounding=ROUND_HALF_EVEN)
    return time.perf_counter_ns() - t0


def main() -> None:
    """Measure `match` and both bare limits, `repeat` times each, and print one JSON line."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=200_000, help="match calls per repeat")
    parser.add_argument("--repeat", type=int, default=3, help="repeats; the median is reported")
    parser.add_argument("--seed", type=int, default=1, help="seed of the synthetic bars and of the cost model")
    args = parser.parse_args()

    bar_args, order_args = bar_fields(args.seed), order_fields()
    bars = [BarClosed(**b) for b in bar_args]  # type: ignore[arg-type]
    orders = [fillsim.Working(**o) for o in order_args]  # type: ignore[arg-type]
    model = fillsim.CostModel(seed=args.seed)
    fillsim.auction_of(bars[0])  # load the XNYS calendar (~0.2 s) outside the timed loops
    run_match(bars, orders, 2_000, model)  # warm-up

    match_ns, construct_ns, math_ns, executions = [], [], [], 0
    for _ in range(args.repeat):
        elapsed, executions = run_match(bars, orders, args.calls, model)
        match_ns.append(elapsed)
        construct_ns.append(run_construct(bar_args, order_args, args.calls))
        math_ns.append(run_price_math(bars, args.calls))

    per_call = {
        "match": statistics.median(match_ns) / args.calls,
        "construct": statistics.median(construct_ns) / args.calls,
        "price_math": statistics.median(math_ns) / args.calls,
    }
    match_s = statistics.median(match_ns) / 1e9
    result = {
        "calls": args.calls,
        "repeat": args.repeat,
        "order_mix": len(orders),
        "bars": len(bars),
        "executions_per_repeat": executions,
        "match_calls_per_s": round(args.calls / match_s),
        "fills_per_s": round(executions / match_s),
        "us_per_call": {k: round(v / 1_000, 3) for k, v in per_call.items()},
        "ratio_match_to_construct": round(per_call["match"] / per_call["construct"], 1),
        "ratio_match_to_price_math": round(per_call["match"] / per_call["price_math"], 1),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
