"""Orders per second the local paper exchange accepts through alpaca-py, beside its bare round trip.

Work measured: `TradingClient.submit_order(LimitOrderRequest(...))` against `python -m
services.exchange` (a child process on real NATS and Postgres, as users run it), each answered
only once the order is committed to the exchange's schema. One bar per symbol is published first,
so the exchange has marks and the buying-power check runs on every submit against an account with
plenty of cash (nothing is refused). The orders are day buy limits at half the mark: they rest.
- sequential: one client, --sequential submits back to back;
- concurrent: --threads threads, each with its own client, --concurrent submits in all.
Between the two the open orders are canceled, so each mode starts with an empty book; they are
not canceled within a mode (the book grows to N resting orders: see `orders_per_s_by_round`).

Bare limit, measured in the same run with the same clients (alpaca-py over requests, same
sessions, same threads): the same number of `get_clock()` calls, GET /v2/clock, the lightest
authenticated call (key check middleware, in-memory state, a small JSON answer parsed into a
model by alpaca-py). Each mode runs in --rounds rounds of bare calls then submits, so drift on a
noisy machine lands on both; the ratios are submit / bare (per call, p50, p99).

Uses `KEEL_NATS_URL` / `KEEL_DATABASE_URL` when set, else embedded servers; a unique subject and
schema prefix per run, whose streams and schemas are deleted at the end.
Runs with `python -m bench.exchange_orders`; prints one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import asyncpg
from alpaca.trading.client import TradingClient
from alpaca.trading.enums import OrderSide, OrderStatus, TimeInForce
from alpaca.trading.requests import LimitOrderRequest

from bench._servers import cleanup
from libs import sessions
from libs.bus import Bus
from libs.contracts.base import derive_id
from libs.contracts.marketdata import BarClosed
from libs.contracts.subjects import Subjects
from libs.runtime.embedded import start_nats, start_postgres
from libs.runtime.migrate import migrate
from libs.runtime.process import ServiceProcess

KEY = "bench-key"
SECRET = "bench-secret"
ACCOUNT = "bench-account"
CASH = "1000000000"  # buying power far above what the resting orders reserve
SYMBOLS = [f"S{i:02d}" for i in range(20)]
MARK = Decimal(100)
LIMIT = 50.0  # buy limits at half the mark: they rest
SESSION_DAY = datetime(2024, 3, 5).date()
OPEN_NS, _ = sessions.session_open_close(SESSION_DAY)
BAR_TS = OPEN_NS + sessions.MINUTE_NS  # the bar closing at 09:31 ET
WARMUP_CALLS = 20  # per client, of each kind, before anything is timed
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 20.0


def pct(values: list[float], q: float) -> float:
    """Return the q-quantile (0..1) of values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# --- setup -----------------------------------------------------------------------------------


def bar(symbol: str) -> BarClosed:
    """Return the one bar of `symbol` (close = MARK) that gives the exchange its mark and clock."""
    return BarClosed(
        event_id=derive_id("bench.exchange_orders", symbol, BAR_TS),
        correlation_id=derive_id("bench.exchange_orders", BAR_TS),
        causation_id=derive_id("bench.exchange_orders", BAR_TS),
        ts_event=BAR_TS,
        ts_init=BAR_TS,
        symbol=symbol,
        bar_start=BAR_TS - sessions.MINUTE_NS,
        session=SESSION_DAY.isoformat(),
        open=MARK,
        high=MARK + 1,
        low=MARK - 1,
        close=MARK,
        volume=100_000,
        spread_bps=Decimal(5),
    )


async def provision(url: str, prefix: str) -> None:
    """Create the prefix's streams (before the exchange binds its consumer)."""
    bus = await Bus.connect(url, Subjects(prefix), service="marketdata")
    try:
        await bus.provision()
    finally:
        await bus.close()


async def publish_bars(url: str, prefix: str) -> None:
    """Publish one bar per symbol, as the marketdata service."""
    bus = await Bus.connect(url, Subjects(prefix), service="marketdata")
    try:
        for symbol in SYMBOLS:
            await bus.publish(bar(symbol))
    finally:
        await bus.close()


def exchange_process(nats_url: str, database_url: str, prefix: str, log_path: Path) -> ServiceProcess:
    """Return `python -m services.exchange` (keel up's ServiceProcess) with the bench's keys only."""
    # only the bench's KEEL_ keys: the child refuses keys it does not know
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEEL_")}
    env.update(
        KEEL_NATS_URL=nats_url,
        KEEL_DATABASE_URL=database_url,
        KEEL_PREFIX=prefix,
        KEEL_SCHEMA_PREFIX=prefix,
        KEEL_EXCHANGE_API_KEY_ID=KEY,
        KEEL_EXCHANGE_API_SECRET_KEY=SECRET,
        KEEL_EXCHANGE_ACCOUNT_ID=ACCOUNT,
        KEEL_EXCHANGE_INITIAL_CASH=CASH,
        PYTHONUNBUFFERED="1",
    )
    return ServiceProcess("exchange", env, log_path)


def wait_for_bars(client: TradingClient, timeout: float = 30.0) -> None:
    """Wait until the exchange's event clock reads the bars' time (it consumed them)."""
    want = datetime.fromtimestamp(BAR_TS / 1e9, tz=UTC)
    deadline = time.monotonic() + timeout
    while client.get_clock().timestamp != want:
        if time.monotonic() > deadline:
            raise SystemExit(f"exchange did not consume the bars within {timeout}s")
        time.sleep(0.05)


async def count_orders(database_url: str, prefix: str) -> int:
    """Return how many orders the exchange's schema holds."""
    conn = await asyncpg.connect(database_url)
    try:
        return await conn.fetchval(f'SELECT count(*) FROM "{prefix}_exchange".orders')
    finally:
        await conn.close()


# --- measurement -----------------------------------------------------------------------------

Call = Callable[[], object]


def run_calls(calls: list[Call], latencies: list[float]) -> None:
    """Run the calls back to back, appending each one's latency in ms."""
    clock = time.perf_counter_ns
    for call in calls:
        t0 = clock()
        call()
        latencies.append((clock() - t0) / 1e6)


def run_batch(per_client: list[list[Call]]) -> tuple[float, list[float]]:
    """Run each client's calls in its own thread (inline for one client); return (wall s, latencies ms)."""
    if len(per_client) == 1:
        latencies: list[float] = []
        t0 = time.perf_counter()
        run_calls(per_client[0], latencies)
        return time.perf_counter() - t0, latencies
    start = threading.Barrier(len(per_client) + 1)
    results: list[list[float]] = [[] for _ in per_client]
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        start.wait()
        try:
            run_calls(per_client[i], results[i])
        except BaseException as e:  # reported after the join
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(per_client))]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if errors:
        raise errors[0]
    return wall, [x for r in results for x in r]


class Submitter:
    """Prebuilt order requests for one client (construction stays outside the timed loop)."""

    def __init__(self, client: TradingClient, tag: str) -> None:
        self.client = client
        self.tag = tag
        self.n = 0
        self.accepted = 0

    def calls(self, count: int) -> list[Call]:
        """Return `count` submit calls of fresh, resting buy limits."""
        out: list[Call] = []
        for _ in range(count):
            request = LimitOrderRequest(
                symbol=SYMBOLS[self.n % len(SYMBOLS)],
                qty=1,
                side=OrderSide.BUY,
                time_in_force=TimeInForce.DAY,
                limit_price=LIMIT,
                client_order_id=f"{self.tag}-{self.n}",
            )
            self.n += 1
            out.append(lambda r=request: self._submit(r))
        return out

    def _submit(self, request: LimitOrderRequest) -> None:
        order = self.client.submit_order(request)
        if order.status != OrderStatus.NEW:  # type: ignore[union-attr]
            raise SystemExit(f"expected a resting order, was {order!r}")
        self.accepted += 1


def measure_mode(url: str, name: str, threads: int, total: int, rounds: int) -> dict[str, object]:
    """Alternate bare get_clock and submit rounds on `threads` clients; return the mode's figures."""
    clients = [TradingClient(KEY, SECRET, url_override=url) for _ in range(threads)]
    submitters = [Submitter(c, f"bench-{name}-{i}") for i, c in enumerate(clients)]
    # warm-up: connections open, code paths loaded (these orders are not counted)
    run_batch([[c.get_clock] * WARMUP_CALLS for c in clients])
    run_batch([s.calls(WARMUP_CALLS // 4) for s in submitters])
    warm = sum(s.accepted for s in submitters)
    for s in submitters:
        s.accepted = 0

    per_round = [total // rounds + (1 if r < total % rounds else 0) for r in range(rounds)]
    bare_s = submit_s = 0.0
    bare_ms: list[float] = []
    submit_ms: list[float] = []
    by_round: list[int] = []
    bare_by_round: list[int] = []
    for count in per_round:
        shares = [count // threads + (1 if i < count % threads else 0) for i in range(threads)]
        wall, lat = run_batch([[c.get_clock] * k for c, k in zip(clients, shares, strict=True)])
        bare_s += wall
        bare_ms += lat
        bare_by_round.append(round(count / wall))
        wall, lat = run_batch([s.calls(k) for s, k in zip(submitters, shares, strict=True)])
        submit_s += wall
        submit_ms += lat
        by_round.append(round(count / wall))
    accepted = sum(s.accepted for s in submitters)
    if accepted != total:
        raise SystemExit(f"expected {total} orders accepted, was {accepted}")
    canceled = len(clients[0].cancel_orders())  # every open order: the next mode starts empty
    return {
        "clients": threads,
        "submits": total,
        "accepted": accepted,
        "warmup_orders": warm,
        "canceled_after": canceled,
        "orders_per_s": round(total / submit_s),
        "orders_per_s_by_round": by_round,
        "submit_ms": {"p50": round(pct(submit_ms, 0.5), 3), "p99": round(pct(submit_ms, 0.99), 3)},
        "bare_clock_per_s": round(total / bare_s),
        "bare_clock_per_s_by_round": bare_by_round,
        "bare_clock_ms": {"p50": round(pct(bare_ms, 0.5), 3), "p99": round(pct(bare_ms, 0.99), 3)},
        "ratio_submit_to_bare": {
            "per_call": round(submit_s / bare_s, 1),
            "p50": round(pct(submit_ms, 0.5) / pct(bare_ms, 0.5), 1),
            "p99": round(pct(submit_ms, 0.99) / pct(bare_ms, 0.99), 1),
        },
    }


def main() -> None:
    """Start the servers and the exchange, measure both modes, clean up, print one JSON line."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--sequential", type=int, default=2000, help="submits by one client")
    parser.add_argument("--concurrent", type=int, default=4000, help="submits in all by the concurrent clients")
    parser.add_argument("--threads", type=int, default=8, help="concurrent clients, one thread each")
    parser.add_argument("--rounds", type=int, default=4, help="bare/submit alternations per mode")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        nats_url = os.environ.get("KEEL_NATS_URL", "")
        database_url = os.environ.get("KEEL_DATABASE_URL", "")
        servers = []
        if not nats_url:
            servers.append(start_nats(Path(tmp) / "nats"))
            nats_url = servers[-1].url
        if not database_url:
            servers.append(start_postgres(Path(tmp) / "pg", cleanup_mode="delete"))
            database_url = servers[-1].url
        prefix = f"bench{os.getpid()}x{time.time_ns() % 10**9}"
        log_path = Path(tmp) / "exchange.log"
        exchange = exchange_process(nats_url, database_url, prefix, log_path)
        try:
            migrate(database_url, prefix)
            asyncio.run(provision(nats_url, prefix))
            exchange.start()
            asyncio.run(exchange.wait_ready(START_TIMEOUT_S))
            url = exchange.url
            asyncio.run(publish_bars(nats_url, prefix))
            wait_for_bars(TradingClient(KEY, SECRET, url_override=url))
            sequential = measure_mode(url, "seq", 1, args.sequential, args.rounds)
            concurrent = measure_mode(url, "conc", args.threads, args.concurrent, args.rounds)
            stored = asyncio.run(count_orders(database_url, prefix))
        except BaseException:
            if exchange.process is not None:
                print(exchange.log_tail(), file=sys.stderr)
            raise
        finally:
            exchange.stop(STOP_TIMEOUT_S)
            asyncio.run(cleanup(nats_url, database_url, prefix))
            for s in servers:
                s.stop()

    result = {
        "symbols": len(SYMBOLS),
        "order": "day buy limit, qty 1, at half the mark (rests)",
        "bare_call": "TradingClient.get_clock (GET /v2/clock)",
        "orders_stored": stored,
        "sequential": sequential,
        "concurrent": concurrent,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
