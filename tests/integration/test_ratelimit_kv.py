"""A broker account's rate limit lives in the deployment's JetStream bucket: every process spends from it."""

from __future__ import annotations

import asyncio
import math
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from libs.bus import Bus
from libs.contracts.subjects import Subjects
from libs.errors.ratelimit import (
    BROKER_LOCKED,
    NS,
    RATE_LIMITED,
    RateLimiter,
    RatePolicy,
    Throttle,
    account_key,
)
from libs.runtime.clock import FixedClock
from tests.support.servers import Namespace

T0 = 1_700_000_000 * NS
ACCOUNT = account_key("PKTESTACCOUNT0001")


@pytest.fixture
async def buses(namespace: Namespace, nats_url: str) -> AsyncIterator[Callable[[int], Awaitable[list[Bus]]]]:
    """Connect n buses on the test's prefix, one per simulated process; close them all at the end."""
    opened: list[Bus] = []

    async def connect(n: int) -> list[Bus]:
        for i in range(n):
            opened.append(await Bus.connect(nats_url, Subjects(namespace.prefix), service=f"execution-{i}"))
        return opened[-n:]

    yield connect
    for bus in opened:
        await bus.close()


def frozen_clock_sleep(clock: FixedClock) -> Callable[[float], Awaitable[None]]:
    """Return a sleep that moves the fake clock instead of waiting."""

    async def sleep(seconds: float) -> None:
        clock.advance(math.ceil(seconds * NS))
        await asyncio.sleep(0)

    return sleep


async def test_acquire_when_two_processes_share_an_account_then_they_share_its_tokens(buses):
    a, b = await buses(2)
    clock = FixedClock(T0)  # time stands still: no token accrues during the test
    policy = RatePolicy(rate_per_min=200, capacity=5)
    first = RateLimiter(await a.limits_kv(), ACCOUNT, policy, clock.now_ns)
    second = RateLimiter(await b.limits_kv(), ACCOUNT, policy, clock.now_ns)

    results = await asyncio.gather(*(lim.acquire(max_wait_sec=0) for lim in [first, second] * 4))
    seen_by_first = await first.state()

    assert sum(r.taken for r in results) == 5
    refused = [r for r in results if not r.taken]
    assert refused == [Throttle(taken=False, reason=RATE_LIMITED, wait_sec=0.3)] * 3
    assert seen_by_first.tokens == 0.0 and seen_by_first.updated_ns == T0


async def test_acquire_when_another_process_locked_the_account_then_refused_broker_locked_with_its_reason(buses):
    a, b = await buses(2)
    clock = FixedClock(T0)
    policy = RatePolicy(rate_per_min=200, capacity=5)
    locker = RateLimiter(await a.limits_kv(), ACCOUNT, policy, clock.now_ns)
    other = RateLimiter(await b.limits_kv(), ACCOUNT, policy, clock.now_ns)

    await locker.lock(30, "RATE_LIMIT_RETRY")
    refused = await other.acquire(max_wait_sec=10)
    await other.lock(5, "HTTP_503")  # a shorter Retry-After seen later by the other process
    seen = await locker.state()

    assert refused == Throttle(
        taken=False,
        reason=BROKER_LOCKED,
        wait_sec=30.3,  # the lock, then one token: nothing accrued while locked
        locked_until_ns=T0 + 30 * NS,
        lock_reason="RATE_LIMIT_RETRY",
    )
    assert (seen.locked_until_ns, seen.lock_reason, seen.tokens) == (T0 + 30 * NS, "RATE_LIMIT_RETRY", 0.0)


async def test_acquire_when_the_wait_fits_the_limit_then_waits_and_takes_a_token(buses):
    (a,) = await buses(1)
    clock = FixedClock(T0)
    limiter = RateLimiter(
        await a.limits_kv(), ACCOUNT, RatePolicy(capacity=1), clock.now_ns, sleep=frozen_clock_sleep(clock)
    )

    first = await limiter.acquire(max_wait_sec=0)
    paced = await limiter.acquire(max_wait_sec=1)
    await limiter.lock(2, "RATE_LIMIT_RETRY")
    too_soon = await limiter.acquire(max_wait_sec=2)
    after_lock = await limiter.acquire(max_wait_sec=3)

    assert first == Throttle(taken=True)
    assert paced == Throttle(taken=True, waited_sec=0.3)
    assert (too_soon.taken, too_soon.reason, too_soon.wait_sec) == (False, BROKER_LOCKED, 2.3)
    assert after_lock == Throttle(taken=True, waited_sec=2.3)


async def test_acquire_when_many_processes_contend_then_tokens_taken_never_exceed_capacity(buses):
    connected = await buses(4)
    clock = FixedClock(T0)
    policy = RatePolicy(rate_per_min=200, capacity=20)
    limiters = [
        RateLimiter(await bus.limits_kv(), ACCOUNT, policy, clock.now_ns) for bus in connected for _ in range(2)
    ]

    results = await asyncio.gather(*(lim.acquire(max_wait_sec=0) for lim in limiters * 8))
    left = await limiters[0].state()

    assert Counter(r.reason or "TAKEN" for r in results) == {"TAKEN": 20, RATE_LIMITED: 44}
    assert left.tokens == 0.0


async def test_acquire_when_accounts_differ_then_buckets_are_separate(buses):
    (a,) = await buses(1)
    clock = FixedClock(T0)
    policy = RatePolicy(capacity=1)
    kv = await a.limits_kv()
    one = RateLimiter(kv, account_key("PKACCOUNTONE"), policy, clock.now_ns)
    two = RateLimiter(kv, account_key("PKACCOUNTTWO"), policy, clock.now_ns)

    results = [await one.acquire(max_wait_sec=0), await two.acquire(max_wait_sec=0), await one.acquire(max_wait_sec=0)]

    assert [r.taken for r in results] == [True, True, False]


async def test_acquire_when_an_operator_deleted_the_key_then_the_bucket_is_full_again(buses):
    (a,) = await buses(1)
    clock = FixedClock(T0)
    kv = await a.limits_kv()
    limiter = RateLimiter(kv, ACCOUNT, RatePolicy(capacity=1), clock.now_ns)
    await limiter.lock(600, "RATE_LIMIT_RETRY")

    await kv.delete(ACCOUNT)  # `nats kv del <prefix>_rl <key>`
    result = await limiter.acquire(max_wait_sec=0)

    assert result == Throttle(taken=True)
    assert not (await limiter.state()).is_locked(T0)
