"""The broker request budget's own cost: token acquisitions per second, beside the bare KV round trip.

Work measured: `RateLimiter.acquire` (libs/errors/ratelimit.py) on a JetStream KV bucket with a
budget too large to ever wait (so only the bookkeeping is timed: read the bucket, take a token,
compare-and-set it back), by one client and by `--clients` clients sharing one account key at
once (the compare-and-set races, lost rounds are retried). Execution pays one acquisition per
broker request.

Bare limit, measured in the same run on the same server: a `kv.get` followed by a `kv.update` of
the same key with its revision (the two round trips an uncontended acquisition cannot avoid), by
one client. Only the ratios travel (these machines are noisy).

Uses `KEEL_NATS_URL` when set, else nats://127.0.0.1:4222; drops its bucket. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import os  # noqa: E402

import nats  # noqa: E402
import nats.js.errors  # noqa: E402

from libs.errors.ratelimit import RateLimiter, RatePolicy, account_key  # noqa: E402

BUCKET = "bench_rl"
# never waits: the bucket refills far faster than any client can spend it
POLICY = RatePolicy(rate_per_min=1e12, capacity=1e9)


async def bare(kv, n: int) -> float:  # type: ignore[no-untyped-def]
    await kv.put("bare", b"0")
    started = time.perf_counter()
    for i in range(n):
        entry = await kv.get("bare")
        await kv.update("bare", str(i).encode(), last=entry.revision)
    return n / (time.perf_counter() - started)


async def acquire(kv, key: str, n: int, clients: int) -> tuple[float, int]:  # type: ignore[no-untyped-def]
    limiters = [RateLimiter(kv, key, POLICY, time.time_ns) for _ in range(clients)]
    per = n // clients

    async def run(limiter: RateLimiter) -> int:
        taken = 0
        for _ in range(per):
            got = await limiter.acquire(max_wait_sec=0)
            taken += got.taken
        return taken

    started = time.perf_counter()
    taken = await asyncio.gather(*(run(lim) for lim in limiters))
    return per * clients / (time.perf_counter() - started), sum(taken)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    nc = await nats.connect(os.environ.get("KEEL_NATS_URL", "nats://127.0.0.1:4222"))
    js = nc.jetstream()
    try:
        await js.delete_key_value(BUCKET)
    except nats.js.errors.NotFoundError:
        pass  # no bucket left from an earlier run
    kv = await js.create_key_value(bucket=BUCKET, history=1)
    bare_rates, one, many, taken_all = [], [], [], True
    try:
        for r in range(args.rounds):
            bare_rates.append(await bare(kv, args.calls))
            rate, taken = await acquire(kv, account_key(f"bench-one-{r}"), args.calls, 1)
            one.append(rate)
            rate_many, taken_many = await acquire(kv, account_key(f"bench-many-{r}"), args.calls, args.clients)
            many.append(rate_many)
            taken_all = taken_all and taken == args.calls and taken_many == args.calls // args.clients * args.clients
    finally:
        await js.delete_key_value(BUCKET)
        await nc.close()
    b, o, m = (statistics.median(x) for x in (bare_rates, one, many))
    print(
        json.dumps(
            {
                "bench": "ratelimit",
                "calls": args.calls,
                "clients": args.clients,
                "bare_get_update_per_s": round(b),
                "acquire_per_s_one_client": round(o),
                "acquire_per_s_shared_key": round(m),
                "one_client_vs_bare": round(b / o, 2),
                "shared_key_vs_bare": round(b / m, 2),
                "every_acquire_took_a_token": taken_all,
            }
        )
    )


if __name__ == "__main__":
    asyncio.run(main())
