"""Breaker state lives in the deployment's JetStream bucket: every process sees and adds to it."""

from __future__ import annotations

import asyncio
import itertools
import time

from libs.bus import Bus
from libs.cli import control
from libs.contracts.subjects import Subjects
from libs.errors.breakers import NS, BreakerPolicy, Breakers
from tests.support.servers import Namespace

T0 = 1_700_000_000 * NS


async def test_breakers_when_two_processes_fail_concurrently_then_every_failure_counts_once(
    namespace: Namespace, nats_url: str
):
    ticks = itertools.count()
    now = lambda: T0 + next(ticks) * 1_000_000  # noqa: E731 - 1 ms apart, all inside one window
    a = await Bus.connect(nats_url, Subjects(namespace.prefix), service="execution")
    b = await Bus.connect(nats_url, Subjects(namespace.prefix), service="marketdata")
    try:
        policy = BreakerPolicy(short_failures=50, long_failures=50)
        first = Breakers(await a.breakers_kv(), policy, now)
        second = Breakers(await b.breakers_kv(), policy, now)

        results = await asyncio.gather(*(br.record_failure("data_primary", "NET_RETRY") for br in [first, second] * 10))
        seen_by_second = await second.state("data_primary")
        untouched = await first.state("broker_submit")
        opening = await first.record_failure("data_primary", "NET_RETRY")
        remaining = [await first.record_failure("data_primary", "NET_RETRY") for _ in range(29)]
    finally:
        await a.close()
        await b.close()

    # compare-and-set on the key's revision: 20 concurrent failures from two processes, 20 counted
    assert len(seen_by_second.failures) == 20 and not any(opened for _, opened in results)
    assert untouched.failures == () and not untouched.is_open(T0)
    # the 50th opens it, and says so once
    assert opening[1] is False and len(opening[0].failures) == 21
    assert [opened for _, opened in remaining] == [False] * 28 + [True]
    assert remaining[-1][0].is_open(remaining[-1][0].opened_at_ns)


async def test_keel_status_when_a_breaker_is_open_then_it_lists_it_with_reason_and_end(
    namespace: Namespace, nats_url: str
) -> None:
    bus = await Bus.connect(nats_url, Subjects(namespace.prefix), service="test")
    try:
        breakers = Breakers(await bus.breakers_kv(), BreakerPolicy(), time.time_ns)
        for _ in range(3):
            state, _ = await breakers.record_failure("data_primary", "NET_RETRY")
        await breakers.record_failure("broker_open_orders", "NET_RETRY")  # one failure: still closed
    finally:
        await bus.close()

    shown = await control.status({"nats_url": nats_url, "prefix": namespace.prefix})

    assert shown["breakers_open"] == {
        "data_primary": {"reason": "NET_RETRY", "open_until_ns": state.open_until_ns},
    }


async def test_breakers_when_many_tasks_of_two_processes_fail_at_once_then_none_is_raced_out(
    namespace: Namespace, nats_url: str
):
    # a broker outage with one task per symbol: every order's failure is counted, none raises
    ticks = itertools.count()
    now = lambda: T0 + next(ticks) * 1_000  # noqa: E731 - all inside one window
    a = await Bus.connect(nats_url, Subjects(namespace.prefix), service="execution")
    b = await Bus.connect(nats_url, Subjects(namespace.prefix), service="oms")
    try:
        policy = BreakerPolicy(short_failures=1000, long_failures=1000)
        first = Breakers(await a.breakers_kv(), policy, now)
        second = Breakers(await b.breakers_kv(), policy, now)
        await asyncio.gather(*(br.record_failure("broker_submit", "NET_RETRY") for br in [first, second] * 48))
        after = await first.state("broker_submit")
    finally:
        await a.close()
        await b.close()

    assert len(after.failures) == 96
