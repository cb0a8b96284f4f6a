"""What several benchmarks share: removing a run's streams, buckets and schemas from the servers."""

from __future__ import annotations

import asyncpg
import nats
import nats.js.errors


async def cleanup(nats_url: str, database_url: str, prefix: str) -> tuple[int, int]:
    """Delete the run's streams and buckets and drop its schemas; return how many of each."""
    nc = await nats.connect(nats_url, allow_reconnect=False)
    js = nc.jetstream()
    owned = (prefix.upper() + "_", f"KV_{prefix}_", f"OBJ_{prefix}_")
    names: list[str] = []
    try:
        while page := await js.streams_info(offset=len(names)):
            names += [s.config.name for s in page if s.config.name]
        streams = [n for n in names if n.startswith(owned)]
        for name in streams:
            try:
                await js.delete_stream(name)
            except nats.js.errors.NotFoundError:
                continue  # gone meanwhile
    finally:
        await nc.close()
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(
            "SELECT nspname FROM pg_namespace WHERE nspname = $1 OR starts_with(nspname, $2)", prefix, prefix + "_"
        )
        for row in rows:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{row["nspname"]}" CASCADE')
    finally:
        await conn.close()
    return len(streams), len(rows)
