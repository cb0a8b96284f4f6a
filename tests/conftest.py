"""Shared fixtures: real NATS and Postgres (env, else testcontainers, else embedded), namespaces."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import asyncpg
import nats
import pytest

from tests.support.processes import Cluster
from tests.support.servers import (
    Namespace,
    cleanup_namespace,
    migrate,
    nats_server,
    new_namespace,
    postgres_server,
)

# Server fixtures stay synchronous: they only read the environment or start processes, so they
# can be session-scoped without tying a session-wide event loop to them. Every async fixture is
# function-scoped and runs on the test's own loop.


@pytest.fixture(scope="session")
def nats_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Yield the URL of a NATS server with JetStream, shared by the whole session."""
    with nats_server(tmp_path_factory.mktemp("nats")) as url:
        yield url


@pytest.fixture(scope="session")
def database_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Yield an asyncpg-usable Postgres DSN, shared by the whole session."""
    with postgres_server(tmp_path_factory.mktemp("postgres")) as url:
        yield url


@pytest.fixture
async def namespace(request: pytest.FixtureRequest, nats_url: str, database_url: str) -> AsyncIterator[Namespace]:
    """Yield this test's subject/stream/bucket and schema prefixes; delete what they own after."""
    ns = new_namespace(request.node.nodeid)
    yield ns
    await cleanup_namespace(ns, nats_url=nats_url, database_url=database_url)


@pytest.fixture
async def nc(nats_url: str) -> AsyncIterator[nats.NATS]:
    """Yield a connected NATS client, closed after the test."""
    client = await nats.connect(nats_url)
    yield client
    if not client.is_closed:
        await client.close()


@pytest.fixture
async def pg(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    """Yield an asyncpg connection, closed after the test."""
    conn = await asyncpg.connect(database_url)
    yield conn
    if not conn.is_closed():
        await conn.close()


@pytest.fixture
async def cluster(namespace: Namespace, nats_url: str, database_url: str, tmp_path) -> AsyncIterator[Cluster]:  # type: ignore[no-untyped-def]
    """Yield real service processes for this namespace (migrated); every child is stopped after."""
    await asyncio.to_thread(migrate, database_url, namespace.schema_prefix)
    c = Cluster(namespace, nats_url, database_url, tmp_path)
    try:
        yield c
    finally:
        await asyncio.to_thread(c.stop_all)
