"""Replay at scale: CPU per bar and state sizes from 10 thousand to a million bars, in process.

Every service's pure core in the lockstep's order (tests/support/inproc.py: the same handlers
the processes run, without NATS, Postgres or HTTP), over synthetic bars. Printed: CPU time per
bar over the first 10k bars after the first session and over the last 10k, each service's
encoded state (what a process snapshots per batch) at those two points, the exchange's orders
in memory (the most at any window) beside all it took, and the bare limit measured in the same run: generating the same bars alone.

    python -m bench.replay_scale [--symbols 100] [--bars 1000000]
"""

from __future__ import annotations

import argparse
import json
import resource
import time

from libs import sessions
from services.marketdata.config import MdConfig
from services.marketdata.handlers import bars_for, next_timestamp
from services.marketdata.state import INITIAL
from tests.support.inproc import Pipeline

WINDOW = 10_000


class _Clock:
    now_ns = 0


def bare(cfg: MdConfig, bars: int) -> float:
    """CPU seconds per bar of generating the bars alone (the floor of any replay of them)."""
    state, done, start = INITIAL, 0, time.process_time()
    while done < bars and (ts := next_timestamp(state, cfg)) is not None:
        state, out, _ = bars_for(state, ts, cfg, _Clock())
        done += len(out)
    return (time.process_time() - start) / done


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--symbols", type=int, default=100)
    parser.add_argument("--bars", type=int, default=1_000_000)
    args = parser.parse_args()
    sessions.load()
    symbols = tuple(f"S{i:03d}" for i in range(args.symbols))
    minutes = -(-args.bars // args.symbols)
    cfg = MdConfig(symbols=symbols, start_date="2026-01-05", minutes=minutes)
    p = Pipeline(md=cfg)
    skip = 390 * args.symbols  # the first session warms every service up
    done, windows = 0, []
    t0 = at = time.process_time()
    since = 0
    while n := p.step():
        done += n
        if done - since >= WINDOW:
            now = time.process_time()
            windows.append({"bars": done, "cpu_per_bar_us": round((now - at) / (done - since) * 1e6, 1),
                            "state": p.state_bytes()})  # fmt: skip
            at, since = now, done
    first = next((w for w in windows if w["bars"] > skip + WINDOW), windows[0])
    last = windows[-1]
    floor = bare(cfg, min(args.bars, 200_000)) * 1e6
    out = {
        "symbols": args.symbols,
        "bars": done,
        "total_cpu_s": round(time.process_time() - t0, 1),
        "first_window": first,
        "last_window": last,
        "growth_last_over_first": round(last["cpu_per_bar_us"] / first["cpu_per_bar_us"], 2),
        "bare_generate_us_per_bar": round(floor, 1),
        "pipeline_over_bare": round(last["cpu_per_bar_us"] / floor, 1),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        # the exchange keeps open orders and recent days in memory, whatever it took in all
        "exchange_orders_in_memory_max": max(w["state"]["exchange_orders"] for w in windows),
        "exchange_orders_taken": last["state"]["exchange_accepted"],
        "windows_us_per_bar": [w["cpu_per_bar_us"] for w in windows],
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
