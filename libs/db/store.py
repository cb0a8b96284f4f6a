"""A service's own Postgres schema: tracking rows, outbox and state snapshot in one transaction.

STYLE 19: the tracking row (consumer, stream_seq) commits in the same transaction as the state
and outbox rows it produced; a conflict on it means "already applied". The tables themselves
are created by alembic (migrations/), never at run time (STYLE 22).
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import AsyncIterator, Sequence

import asyncpg

from libs.errors import DependencyUnavailable

_IDENT = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


class DatabaseUnavailable(DependencyUnavailable):
    """Postgres could not be reached, or the service's schema is not migrated."""


def schema_name(schema_prefix: str, service: str) -> str:
    """Return a service's schema, e.g. keel_oms; refuse anything that is not an identifier."""
    name = f"{schema_prefix}_{service}"
    if not _IDENT.match(name):
        raise ValueError(f"expected a lower-case SQL identifier for the schema, was {name!r}")
    return name


async def connect_pool(url: str, *, min_size: int = 1, max_size: int = 4) -> asyncpg.Pool:
    """Open a pool or raise DatabaseUnavailable naming the URL's host (fail fast at start)."""
    try:
        pool = await asyncpg.create_pool(url, min_size=min_size, max_size=max_size, timeout=5)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as e:
        host = url.split("@")[-1]
        raise DatabaseUnavailable(f"Postgres at {host} is unreachable: {e}") from e
    assert pool is not None
    return pool


class UnitOfWork:
    """One transaction of one service; write through it, commit by leaving the block."""

    def __init__(self, conn: asyncpg.Connection, schema: str) -> None:
        self.conn = conn
        self.schema = schema
        self.outbox_rows = 0

    async def track(self, consumer: str, stream_seqs: Sequence[int]) -> set[int]:
        """Record tracking rows; return the sequences not applied before."""
        rows = await self.conn.fetch(
            f"INSERT INTO {self.schema}.tracking (consumer, stream_seq) "
            "SELECT $1, s FROM unnest($2::bigint[]) AS s "
            "ON CONFLICT DO NOTHING RETURNING stream_seq",
            consumer,
            list(stream_seqs),
        )
        return {r["stream_seq"] for r in rows}

    async def add_outbox(self, rows: Sequence[tuple[str, str, bytes, dict[str, str]]]) -> None:
        """Queue events (event_id, subject, data, headers) for the relay; duplicates are ignored."""
        if not rows:
            return
        await self.conn.execute(
            f"INSERT INTO {self.schema}.outbox (event_id, subject, data, headers) "
            "SELECT * FROM unnest($1::text[], $2::text[], $3::bytea[], $4::jsonb[]) "
            "ON CONFLICT (event_id) DO NOTHING",
            [r[0] for r in rows],
            [r[1] for r in rows],
            [r[2] for r in rows],
            [json.dumps(r[3]) for r in rows],
        )
        self.outbox_rows += len(rows)

    async def save_snapshot(self, name: str, data: bytes) -> None:
        """Replace a named state snapshot."""
        await self.conn.execute(
            f"INSERT INTO {self.schema}.snapshot (name, data, updated_at) VALUES ($1, $2, now()) "
            "ON CONFLICT (name) DO UPDATE SET data = excluded.data, updated_at = now()",
            name,
            data,
        )


class Store:
    """A service's schema over a pool."""

    def __init__(self, pool: asyncpg.Pool, schema: str) -> None:
        self.pool = pool
        self.schema = schema

    async def check_migrated(self) -> None:
        """Raise DatabaseUnavailable when the schema's tables are missing."""
        found = await self.pool.fetchval(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = $1 "
            "AND table_name IN ('tracking', 'outbox', 'snapshot')",
            self.schema,
        )
        if found != 3:
            raise DatabaseUnavailable(
                f"schema {self.schema} is not migrated (run `keel migrate` or `alembic upgrade head`)"
            )

    @contextlib.asynccontextmanager
    async def unit(self) -> AsyncIterator[UnitOfWork]:
        """Open a transaction; it commits when the block ends without error."""
        async with self.pool.acquire() as conn, conn.transaction():
            yield UnitOfWork(conn, self.schema)

    async def load_snapshot(self, name: str) -> bytes | None:
        """Return a named snapshot or None."""
        return await self.pool.fetchval(f"SELECT data FROM {self.schema}.snapshot WHERE name = $1", name)

    async def pending_outbox(self, limit: int = 1000) -> list[asyncpg.Record]:
        """Return unpublished outbox rows in insertion order."""
        return await self.pool.fetch(
            f"SELECT id, subject, data, headers FROM {self.schema}.outbox "
            "WHERE published_at IS NULL ORDER BY id LIMIT $1",
            limit,
        )

    async def mark_published(self, ids: Sequence[int]) -> None:
        """Mark outbox rows as published."""
        await self.pool.execute(
            f"UPDATE {self.schema}.outbox SET published_at = now() WHERE id = ANY($1::bigint[])",
            list(ids),
        )

    async def is_tracked(self, consumer: str, stream_seq: int) -> bool:
        """Return True when a consumer already applied a message."""
        found = await self.pool.fetchval(
            f"SELECT 1 FROM {self.schema}.tracking WHERE consumer = $1 AND stream_seq = $2",
            consumer,
            stream_seq,
        )
        return found is not None

    async def has_outbox_event(self, event_id: str) -> bool:
        """Return True when this service has ever committed an event with this id."""
        found = await self.pool.fetchval(f"SELECT 1 FROM {self.schema}.outbox WHERE event_id = $1", event_id)
        return found is not None

    async def ping(self) -> None:
        """Run a trivial query (readiness)."""
        await self.pool.fetchval("SELECT 1")
