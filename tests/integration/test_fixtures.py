"""Per-test namespaces isolate NATS streams and Postgres schemas, and cleanup removes them."""

from __future__ import annotations

import asyncio
import re

import asyncpg
import nats
import nats.js.errors
import pytest

from tests.support.servers import (
    Namespace,
    cleanup_namespace,
    downgrade,
    migrate,
    new_namespace,
)


async def _schemas(pg: asyncpg.Connection, prefix: str) -> list[str]:
    rows = await pg.fetch(
        "SELECT nspname FROM pg_namespace WHERE nspname = $1 OR starts_with(nspname, $2) ORDER BY nspname",
        prefix,
        prefix + "_",
    )
    return [r["nspname"] for r in rows]


def test_namespace_when_created_then_readable_and_unique(request: pytest.FixtureRequest):
    first = new_namespace(request.node.nodeid)
    second = new_namespace(request.node.nodeid)

    assert re.fullmatch(r"t[0-9a-f]{8}", first.prefix)
    assert first.schema_prefix == first.prefix
    assert str(first) == first.prefix and first.prefix in repr(first)
    assert first.prefix != second.prefix


async def test_streams_when_two_namespaces_then_neither_sees_the_other(
    namespace: Namespace, nc: nats.NATS, nats_url: str, database_url: str, request
):
    other = new_namespace(request.node.nodeid)
    js = nc.jetstream()
    try:
        for ns in (namespace, other):
            await js.add_stream(name=f"{ns.stream_prefix}EVENTS", subjects=[f"{ns.prefix}.keel.>"])
            await js.create_key_value(bucket=f"{ns.bucket_prefix}halt")

        await js.publish(f"{namespace.prefix}.keel.bar", b"mine")
        await (await js.key_value(f"{namespace.bucket_prefix}halt")).put("state", b"halted")

        mine = await js.stream_info(f"{namespace.stream_prefix}EVENTS")
        theirs = await js.stream_info(f"{other.stream_prefix}EVENTS")
        assert (mine.state.messages, theirs.state.messages) == (1, 0)
        other_kv = await js.key_value(f"{other.bucket_prefix}halt")
        with pytest.raises(nats.js.errors.KeyNotFoundError):
            await other_kv.get("state")
    finally:
        await cleanup_namespace(other, nats_url=nats_url, database_url=database_url)


async def test_cleanup_when_called_then_streams_buckets_and_schemas_removed_and_others_kept(
    namespace: Namespace, nc: nats.NATS, pg: asyncpg.Connection, nats_url: str, database_url: str
):
    doomed = new_namespace("cleanup-target")
    js = nc.jetstream()
    await js.add_stream(name=f"{doomed.stream_prefix}X", subjects=[f"{doomed.prefix}.x.>"])
    await js.create_key_value(bucket=f"{doomed.bucket_prefix}kv")
    await js.add_stream(name=f"{namespace.stream_prefix}X", subjects=[f"{namespace.prefix}.x.>"])
    await pg.execute(f"CREATE SCHEMA {doomed.schema_prefix}")
    await pg.execute(f"CREATE SCHEMA {doomed.schema_prefix}_x")
    await pg.execute(f"CREATE TABLE {doomed.schema_prefix}_x.t (n int)")
    await pg.execute(f"CREATE SCHEMA {namespace.schema_prefix}_x")

    await cleanup_namespace(doomed, nats_url=nats_url, database_url=database_url)
    # A second cleanup finds nothing left and must not fail.
    await cleanup_namespace(doomed, nats_url=nats_url, database_url=database_url)

    for gone in (f"{doomed.stream_prefix}X", f"KV_{doomed.bucket_prefix}kv"):
        with pytest.raises(nats.js.errors.NotFoundError):
            await js.stream_info(gone)
    assert await _schemas(pg, doomed.schema_prefix) == []
    assert (await js.stream_info(f"{namespace.stream_prefix}X")).config.name
    assert await _schemas(pg, namespace.schema_prefix) == [f"{namespace.schema_prefix}_x"]


async def test_migrate_when_upgraded_then_versioned_and_downgrade_empties_version(
    namespace: Namespace, pg: asyncpg.Connection, database_url: str
):
    meta = f"{namespace.schema_prefix}_meta"

    await asyncio.to_thread(migrate, database_url, namespace.schema_prefix)
    upgraded = await pg.fetchval(f"SELECT version_num FROM {meta}.alembic_version")
    oms_present = await pg.fetchval(
        "SELECT count(*) FROM pg_namespace WHERE nspname = $1", f"{namespace.schema_prefix}_oms"
    )
    await asyncio.to_thread(downgrade, database_url, namespace.schema_prefix)
    remaining = await pg.fetchval(f"SELECT count(*) FROM {meta}.alembic_version")

    assert upgraded and oms_present == 1
    assert remaining == 0
