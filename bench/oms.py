"""OMS throughput with exactly-once on: intents decided per second, beside raw Postgres inserts.

Work measured: `python -m services.oms` (a real process) consuming `--intents` OrderIntents
published to JetStream (pipelined, Msg-Id = event_id), each decided by the pre-trade checks and
applied exactly once - tracking row, intent log row, projections, snapshot and outbox in one
Postgres transaction per batch - until its PretradeDecision is published. Intents spread over
one bar per minute and 50 symbols, so no throttle or position limit refuses them (every
decision is an approval, the expensive path).

Bare limit, measured in the same run on the same Postgres: one asyncpg INSERT per transaction
of a row like an intent log row (what one message would cost with no batching), and the same
rows 500 per transaction. Only the ratios travel (these machines are noisy).

Uses `KEEL_NATS_URL` / `KEEL_DATABASE_URL` when set, else nats://127.0.0.1:4222 and
postgresql://postgres@127.0.0.1:5432/test; its own prefix and schemas, dropped at the end.
Prints one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from datetime import date
from decimal import Decimal
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import asyncpg  # noqa: E402
import nats  # noqa: E402

from libs import sessions  # noqa: E402
from libs.bus import Bus  # noqa: E402
from libs.contracts.base import derive_id  # noqa: E402
from libs.contracts.codec import encode  # noqa: E402
from libs.contracts.risk import OrderIntent  # noqa: E402
from libs.contracts.subjects import Subjects  # noqa: E402
from libs.runtime.migrate import downgrade, migrate  # noqa: E402
from libs.runtime.process import ServiceProcess  # noqa: E402

SYMBOLS = [f"S{i:02d}" for i in range(50)]


def intents(n: int) -> list[OrderIntent]:
    closes = [
        ts
        for d in sessions.sessions_between(date(2026, 1, 5), date(2026, 3, 31))
        for ts in sessions.minute_bar_closes(d)[:-1]
    ]
    out = []
    for i in range(n):
        ts, symbol = closes[i], SYMBOLS[i % len(SYMBOLS)]
        cid = f"CIDv2:bench:{symbol}:buy:{i}:1"
        out.append(
            OrderIntent(
                event_id=derive_id("bench.intent", i),
                correlation_id=derive_id("bar", ts),
                causation_id=derive_id("bar", ts),
                ts_event=ts,
                ts_init=ts,
                intent_id=derive_id("intent", cid),
                client_order_id=cid,
                symbol=symbol,
                side="buy",
                qty=1,
                arrival_price=Decimal("50"),
                bar_ts=ts,
                strategy="bench",
                notional=Decimal("50"),
            )
        )
    return out


async def bare_inserts(database_url: str, schema: str, n: int) -> tuple[float, float]:
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(
            f"CREATE TABLE {schema}.bare (seq bigserial PRIMARY KEY, event_id text UNIQUE, payload jsonb)"
        )
        rows = [(derive_id("bare", i), json.dumps({"i": i})) for i in range(n)]
        started = time.perf_counter()
        for event_id, payload in rows:
            async with conn.transaction():
                await conn.execute(
                    f"INSERT INTO {schema}.bare (event_id, payload) VALUES ($1, $2::jsonb)", event_id, payload
                )
        one = n / (time.perf_counter() - started)
        await conn.execute(f"TRUNCATE {schema}.bare")
        started = time.perf_counter()
        for i in range(0, n, 500):
            async with conn.transaction():
                await conn.executemany(
                    f"INSERT INTO {schema}.bare (event_id, payload) VALUES ($1, $2::jsonb)", rows[i : i + 500]
                )
        batched = n / (time.perf_counter() - started)
        await conn.execute(f"DROP TABLE {schema}.bare")
        return one, batched
    finally:
        await conn.close()


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--intents", type=int, default=3000)
    args = parser.parse_args()
    nats_url = os.environ.get("KEEL_NATS_URL", "nats://127.0.0.1:4222")
    database_url = os.environ.get("KEEL_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
    prefix = f"benchoms{os.getpid()}"
    await asyncio.to_thread(migrate, database_url, prefix)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("KEEL_")},
        "KEEL_NATS_URL": nats_url,
        "KEEL_DATABASE_URL": database_url,
        "KEEL_PREFIX": prefix,
        "KEEL_SCHEMA_PREFIX": prefix,
        "KEEL_LOG_LEVEL": "WARNING",
    }
    work = intents(args.intents)
    bus = await Bus.connect(nats_url, Subjects(prefix), service="risk")
    await bus.provision()
    nc = await nats.connect(nats_url)
    decided = 0
    done = asyncio.Event()

    async def on_decision(_msg) -> None:  # type: ignore[no-untyped-def]
        nonlocal decided
        decided += 1
        if decided >= len(work):
            done.set()

    await nc.subscribe(f"{prefix}.oms.pretrade_decision.>", cb=on_decision)
    with tempfile.TemporaryDirectory() as tmp:
        oms = ServiceProcess("oms", env, Path(tmp) / "oms.log")
        oms.start()
        try:
            await oms.wait_ready()
            started = time.perf_counter()
            for intent in work:
                await bus.js.publish(bus.subjects.of(intent), encode(intent), headers={"Nats-Msg-Id": intent.event_id})
            await asyncio.wait_for(done.wait(), timeout=600)
            oms_rate = len(work) / (time.perf_counter() - started)
        finally:
            oms.stop()
            await nc.close()
    one, batched = await bare_inserts(database_url, f"{prefix}_oms", len(work))
    for stream in await bus.js.streams_info():
        if stream.config.name.startswith((prefix.upper() + "_", f"KV_{prefix}_")):
            await bus.js.delete_stream(stream.config.name)
    await bus.close()
    await asyncio.to_thread(downgrade, database_url, prefix)
    print(
        json.dumps(
            {
                "bench": "oms",
                "intents": len(work),
                "oms_intents_per_s": round(oms_rate),
                "bare_insert_one_per_tx_per_s": round(one),
                "bare_insert_500_per_tx_per_s": round(batched),
                "oms_vs_one_per_tx": round(one / oms_rate, 2),
                "oms_vs_500_per_tx": round(batched / oms_rate, 2),
            }
        )
    )


if __name__ == "__main__":
    asyncio.run(main())
