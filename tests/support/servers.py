"""Resolve real NATS and Postgres servers for tests, isolate tests by namespace, run migrations."""

from __future__ import annotations

import functools
import hashlib
import itertools
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import asyncpg
import nats
import nats.js.errors

from libs.runtime.embedded import start_nats, start_postgres
from libs.runtime.migrate import alembic_config, downgrade, migrate  # noqa: F401  (re-exported for tests)

if TYPE_CHECKING:
    pass

REPO_ROOT = Path(__file__).resolve().parents[2]

ENV_NATS_URL = "KEEL_TEST_NATS_URL"
ENV_DATABASE_URL = "KEEL_TEST_DATABASE_URL"

NATS_IMAGE = "nats:2.10"
POSTGRES_IMAGE = "postgres:16"
DOCKER_PING_TIMEOUT_S = 2

# Cleanup waits at most this long for a lock held by a connection the test left open, then fails
# the teardown instead of hanging the run.
CLEANUP_LOCK_TIMEOUT = "10s"


@dataclass(frozen=True)
class Namespace:
    """Per-test isolation: a NATS subject/stream/bucket prefix and a Postgres schema prefix."""

    prefix: str
    schema_prefix: str

    @property
    def stream_prefix(self) -> str:
        """Return the prefix every stream name of this namespace starts with."""
        return self.prefix.upper() + "_"

    @property
    def bucket_prefix(self) -> str:
        """Return the prefix every KV or object-store bucket name of this namespace starts with."""
        return self.prefix + "_"

    def __str__(self) -> str:
        return self.prefix


_namespace_counter = itertools.count()
# Fixed once per process: two runs on the same long-lived server never share a prefix even when
# the OS hands out the same pid (containers often start pytest as the same low pid).
_run_token = f"{os.getpid()}:{time.time_ns()}"


def new_namespace(nodeid: str) -> Namespace:
    """Return a fresh namespace for the test `nodeid`, unique within and across runs."""
    seed = f"{nodeid}|{_run_token}|{next(_namespace_counter)}"
    prefix = "t" + hashlib.sha256(seed.encode()).hexdigest()[:8]
    return Namespace(prefix=prefix, schema_prefix=prefix)


@functools.cache
def docker_engine_answers() -> bool:
    """Return whether a Docker engine answers a ping within a couple of seconds."""
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    if host.startswith("unix://") and not Path(host.removeprefix("unix://")).exists():
        # Answer without docker-py: it leaks the socket of a failed unix connect (ResourceWarning).
        return False
    import docker
    import requests

    try:
        client = docker.from_env(timeout=DOCKER_PING_TIMEOUT_S)
    except docker.errors.DockerException:
        return False
    try:
        return bool(client.ping())
    except (docker.errors.DockerException, requests.RequestException):
        return False
    finally:
        client.close()


@contextmanager
def nats_server(work_dir: Path) -> Iterator[str]:
    """Yield a JetStream NATS URL: from env, else testcontainers, else embedded in `work_dir`."""
    url = os.environ.get(ENV_NATS_URL)
    if url:
        yield url
    elif docker_engine_answers():
        from testcontainers.community.nats import NatsContainer

        with NatsContainer(NATS_IMAGE, jetstream=True) as container:
            yield container.nats_uri()
    else:
        with start_nats(work_dir / "nats" / "jetstream") as server:
            yield server.url


@contextmanager
def postgres_server(work_dir: Path) -> Iterator[str]:
    """Yield a Postgres DSN: from env, else testcontainers, else embedded in `work_dir`."""
    url = os.environ.get(ENV_DATABASE_URL)
    if url:
        yield url
    elif docker_engine_answers():
        from testcontainers.community.postgres import PostgresContainer

        with PostgresContainer(POSTGRES_IMAGE, driver=None) as container:
            yield container.get_connection_url()
    else:
        with start_postgres(work_dir / "pgdata", cleanup_mode="delete") as server:
            yield server.url


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


async def stream_names(js: nats.js.JetStreamContext) -> list[str]:
    """Return the names of every stream on the server, following STREAM.LIST pages."""
    names: list[str] = []
    while True:
        page = await js.streams_info(offset=len(names))
        if not page:
            return names
        names.extend(info.config.name for info in page if info.config.name)


def owned_by(ns: Namespace, stream: str) -> bool:
    """Return whether `stream` belongs to `ns` (its own streams, KV and object-store buckets)."""
    # KV buckets are streams named KV_<bucket>, object stores OBJ_<bucket> (NATS ADR-8, ADR-20).
    return stream.startswith((ns.stream_prefix, "KV_" + ns.bucket_prefix, "OBJ_" + ns.bucket_prefix))


async def delete_namespace_streams(nc: nats.NATS, ns: Namespace) -> list[str]:
    """Delete every stream and bucket of `ns`; return the names deleted."""
    js = nc.jetstream()
    deleted = []
    for name in await stream_names(js):
        if not owned_by(ns, name):
            continue
        try:
            await js.delete_stream(name)
        except nats.js.errors.NotFoundError:
            continue  # already gone: deleted by the test itself between listing and now
        deleted.append(name)
    return deleted


async def drop_namespace_schemas(conn: asyncpg.Connection, ns: Namespace) -> list[str]:
    """Drop every schema named `schema_prefix` or starting with `schema_prefix_`; return them."""
    rows = await conn.fetch(
        "SELECT nspname FROM pg_namespace WHERE nspname = $1 OR starts_with(nspname, $2) ORDER BY nspname",
        ns.schema_prefix,
        ns.schema_prefix + "_",
    )
    dropped = [row["nspname"] for row in rows]
    async with conn.transaction():
        await conn.execute(f"SET LOCAL lock_timeout = '{CLEANUP_LOCK_TIMEOUT}'")
        for name in dropped:
            # IF EXISTS: a schema dropped since the listing is not a cleanup failure.
            await conn.execute(f"DROP SCHEMA IF EXISTS {_quote_ident(name)} CASCADE")
    return dropped


async def cleanup_namespace(ns: Namespace, *, nats_url: str, database_url: str) -> None:
    """Delete `ns`'s streams and buckets and drop its schemas, on fresh connections."""
    nc = await nats.connect(nats_url, allow_reconnect=False)
    try:
        await delete_namespace_streams(nc, ns)
    finally:
        await nc.close()
    conn = await asyncpg.connect(database_url)
    try:
        await drop_namespace_schemas(conn, ns)
    finally:
        await conn.close()
