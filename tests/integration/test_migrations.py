"""Alembic migrations against real Postgres: upgrade/downgrade, the append-only intent log, seq order."""

from __future__ import annotations

import asyncio
import json
import time

import asyncpg
import pytest

from migrations.naming import SERVICES
from tests.support.servers import Namespace, downgrade, migrate

SERVICE_TABLES = {"tracking", "outbox", "snapshot"}
OMS_TABLES = {"intent_events", "intents", "positions"}


async def _tables(pg: asyncpg.Connection, schema: str) -> set[str]:
    rows = await pg.fetch("SELECT table_name FROM information_schema.tables WHERE table_schema = $1", schema)
    return {r["table_name"] for r in rows}


async def _schemas(pg: asyncpg.Connection, prefix: str) -> set[str]:
    rows = await pg.fetch("SELECT nspname FROM pg_namespace WHERE starts_with(nspname, $1)", prefix + "_")
    return {r["nspname"] for r in rows}


async def _insert_intent_event(conn: asyncpg.Connection, schema: str, event_id: str) -> int:
    return await conn.fetchval(
        f"INSERT INTO {schema}.intent_events (event_id, intent_id, client_order_id, event_type, ts_event, payload) "
        "VALUES ($1, $2, $3, 'risk.order_intent.v1', 1, $4::jsonb) RETURNING seq",
        event_id,
        f"intent-{event_id}",
        f"cid-{event_id}",
        json.dumps({"event_id": event_id}),
    )


@pytest.fixture
async def oms_schema(namespace: Namespace, database_url: str) -> str:
    """Migrate the test's namespace to head and return its OMS schema."""
    await asyncio.to_thread(migrate, database_url, namespace.schema_prefix)
    return f"{namespace.schema_prefix}_oms"


async def test_upgrade_when_head_then_every_schema_and_table_exists_and_downgrade_base_removes_them(
    namespace: Namespace, database_url: str, pg: asyncpg.Connection
):
    p = namespace.schema_prefix

    await asyncio.to_thread(migrate, database_url, p)

    expected_schemas = {f"{p}_{s}" for s in SERVICES} | {f"{p}_meta"}
    assert await _schemas(pg, p) == expected_schemas
    for service in SERVICES:
        assert SERVICE_TABLES <= await _tables(pg, f"{p}_{service}"), service
    assert await _tables(pg, f"{p}_oms") == SERVICE_TABLES | OMS_TABLES
    assert {"account", "orders", "positions", "marks", "calibration"} <= await _tables(pg, f"{p}_exchange")
    assert {"records", "orders", "blocks", "marks", "cost_models"} <= await _tables(pg, f"{p}_tca")
    assert "alerts" in await _tables(pg, f"{p}_alerts")
    assert await _tables(pg, f"{p}_meta") == {"alembic_version", "run_manifests"}
    assert await pg.fetchval(f"SELECT version_num FROM {p}_meta.alembic_version") == "0007"
    intent_columns = await pg.fetch(
        "SELECT column_name FROM information_schema.columns WHERE table_schema = $1 AND table_name = 'intents'",
        f"{p}_oms",
    )
    assert {"order_class", "stop_price", "parent_intent_id", "leg_role"} <= {r[0] for r in intent_columns}

    await asyncio.to_thread(downgrade, database_url, p)

    # only alembic's own bookkeeping remains, and it records no revision
    assert await _schemas(pg, p) == {f"{p}_meta"}
    assert await _tables(pg, f"{p}_meta") == {"alembic_version"}
    assert await pg.fetchval(f"SELECT count(*) FROM {p}_meta.alembic_version") == 0
    assert (
        await pg.fetchval(
            "SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = $1",
            f"{p}_oms",
        )
        == 0
    )

    # and the round trip is repeatable
    await asyncio.to_thread(migrate, database_url, p)
    assert await _tables(pg, f"{p}_oms") == SERVICE_TABLES | OMS_TABLES


@pytest.mark.parametrize(
    ("verb", "sql"),
    [
        ("UPDATE", "UPDATE {s}.intent_events SET event_type = 'tampered'"),
        ("DELETE", "DELETE FROM {s}.intent_events"),
        ("TRUNCATE", "TRUNCATE {s}.intent_events"),
    ],
)
async def test_change_intent_log_when_update_delete_or_truncate_then_database_refuses(
    oms_schema: str, pg: asyncpg.Connection, verb: str, sql: str
):
    await _insert_intent_event(pg, oms_schema, "e1")

    with pytest.raises(asyncpg.exceptions.InsufficientPrivilegeError, match=f"append-only: {verb} refused"):
        await pg.execute(sql.format(s=oms_schema))

    rows = await pg.fetch(f"SELECT event_id, event_type FROM {oms_schema}.intent_events")
    assert [(r["event_id"], r["event_type"]) for r in rows] == [("e1", "risk.order_intent.v1")]


async def test_append_when_a_change_was_refused_then_the_log_still_appends_in_order(
    oms_schema: str, pg: asyncpg.Connection
):
    first = await _insert_intent_event(pg, oms_schema, "e1")
    with pytest.raises(asyncpg.exceptions.InsufficientPrivilegeError):
        await pg.execute(f"DELETE FROM {oms_schema}.intent_events WHERE event_id = 'e1'")

    second = await _insert_intent_event(pg, oms_schema, "e2")

    assert second > first
    assert await pg.fetchval(f"SELECT count(*) FROM {oms_schema}.intent_events") == 2


async def _wait_until_blocked_on_lock(pg: asyncpg.Connection, pid: int, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        waiting = await pg.fetchval("SELECT wait_event_type FROM pg_stat_activity WHERE pid = $1", pid)
        if waiting == "Lock":
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"backend {pid} never waited for the intent_events lock")


async def test_append_when_two_transactions_lock_the_log_then_seq_follows_commit_order(
    oms_schema: str, database_url: str, pg: asyncpg.Connection
):
    early = await asyncpg.connect(database_url)  # starts first, commits second
    late = await asyncpg.connect(database_url)  # starts second, commits first
    early_tx = early.transaction()
    late_tx = late.transaction()
    try:
        await early_tx.start()
        await early.fetchval("SELECT txid_current()")  # the transaction really is open
        await late_tx.start()
        await late.execute(f"LOCK TABLE {oms_schema}.intent_events IN EXCLUSIVE MODE")
        late_seq = await _insert_intent_event(late, oms_schema, "late")

        async def append_early() -> int:
            await early.execute(f"LOCK TABLE {oms_schema}.intent_events IN EXCLUSIVE MODE")
            return await _insert_intent_event(early, oms_schema, "early")

        early_append = asyncio.create_task(append_early())
        await _wait_until_blocked_on_lock(pg, early.get_server_pid())
        assert not early_append.done()

        await late_tx.commit()
        early_seq = await asyncio.wait_for(early_append, timeout=5)
        await early_tx.commit()
    finally:
        await early.close()
        await late.close()

    assert late_seq < early_seq
    rows = await pg.fetch(f"SELECT event_id FROM {oms_schema}.intent_events ORDER BY seq")
    assert [r["event_id"] for r in rows] == ["late", "early"]


async def test_round_trip_when_data_is_present_then_rows_survive_a_step_down_and_up_and_base_removes_them(
    namespace: Namespace, database_url: str, pg: asyncpg.Connection
):
    p = namespace.schema_prefix
    s = f"{p}_oms"
    await asyncio.to_thread(migrate, database_url, p)
    seq = await _insert_intent_event(pg, s, "e-1")
    await pg.execute(
        f"INSERT INTO {s}.intents (intent_id, client_order_id, symbol, side, qty, order_type, time_in_force, "
        "arrival_price, bar_ts, strategy, status, last_seq, order_class, parent_intent_id, leg_role) "
        "VALUES ('i-1', 'cid-1', 'AAPL', 'buy', 10, 'limit', 'gtc', 50.25, 1, 'keel', 'ACKED', $1, "
        "'bracket', '', ''), ('i-1:tp', 'cid-1:tp', 'AAPL', 'sell', 10, 'limit', 'gtc', 51, 1, 'keel', "
        "'ACKED', $1, 'simple', 'i-1', 'take_profit')",
        seq,
    )

    # one step down (0005 -> 0004): the exit-leg columns go, every row and its older columns stay
    await asyncio.to_thread(downgrade, database_url, p, "0004")
    down = await pg.fetch(f"SELECT intent_id, arrival_price, status FROM {s}.intents ORDER BY intent_id")
    columns = {r[0] for r in await pg.fetch(
        "SELECT column_name FROM information_schema.columns WHERE table_schema = $1 AND table_name = 'intents'", s
    )}  # fmt: skip
    events = await pg.fetchval(f"SELECT count(*) FROM {s}.intent_events")

    # and up again: the rows are there, the new columns at their defaults
    await asyncio.to_thread(migrate, database_url, p)
    up = await pg.fetch(f"SELECT intent_id, order_class, parent_intent_id, leg_role FROM {s}.intents ORDER BY 1")
    appended = await _insert_intent_event(pg, s, "e-2")

    assert [(r["intent_id"], str(r["arrival_price"]), r["status"]) for r in down] == [
        ("i-1", "50.25", "ACKED"),
        ("i-1:tp", "51", "ACKED"),
    ]
    assert not {"order_class", "parent_intent_id", "leg_role", "stop_price"} & columns and events == 1
    assert [tuple(r) for r in up] == [("i-1", "simple", "", ""), ("i-1:tp", "simple", "", "")]
    assert appended > seq  # the append-only log keeps appending in order after the round trip

    # all the way down with data present: nothing of keel's is left
    await asyncio.to_thread(downgrade, database_url, p)
    assert await _schemas(pg, p) == {f"{p}_meta"}
