"""Embedded NATS and Postgres start, serve, stop and resume their data on the same directory."""

from __future__ import annotations

from pathlib import Path

import asyncpg
import nats

from libs.runtime.embedded import start_nats, start_postgres


async def test_nats_restart_when_same_store_dir_then_stream_message_persists(tmp_path: Path):
    store = tmp_path / "nats" / "jetstream"
    with start_nats(store) as first:
        nc = await nats.connect(first.url)
        js = nc.jetstream()
        await js.add_stream(name="EMBEDDED_T", subjects=["embedded.t.>"])
        ack = await js.publish("embedded.t.bar", b"persist me")
        await nc.close()
    assert not first.running

    with start_nats(store) as second:
        nc = await nats.connect(second.url)
        msg = await nc.jetstream().get_msg("EMBEDDED_T", ack.seq)
        await nc.close()

    assert second.pid != first.pid
    assert (msg.subject, msg.data) == ("embedded.t.bar", b"persist me")
    assert (tmp_path / "nats" / "nats-server.log").stat().st_size > 0


async def test_postgres_restart_when_same_data_dir_then_table_rows_persist(tmp_path: Path):
    data_dir = tmp_path / "pgdata"
    with start_postgres(data_dir, cleanup_mode="stop") as first:
        conn = await asyncpg.connect(first.url)
        await conn.execute("CREATE TABLE kept (n int)")
        await conn.execute("INSERT INTO kept VALUES (42)")
        await conn.close()

    with start_postgres(data_dir, cleanup_mode="delete") as second:
        conn = await asyncpg.connect(second.url)
        rows = await conn.fetch("SELECT n FROM kept")
        await conn.close()

    assert [r["n"] for r in rows] == [42]
    assert not data_dir.exists()
