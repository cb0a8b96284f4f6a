"""Every intent ends in exactly one outcome, every bar in a cycle summary (seed 002 B-DIAG-01..04).

Real processes: the local exchange (admin API on), the OMS and execution on it through alpaca-py,
real NATS and Postgres; the account's request budget and the dependency breakers live in the
deployment's JetStream key-value buckets, written here as another process would.
"""

from __future__ import annotations

import json
import time
from collections import Counter

import nats
import pytest

from libs.bus import Bus
from libs.contracts.subjects import Subjects
from libs.errors.breakers import BreakerPolicy, Breakers
from tests.factories import Events, minute
from tests.support.exchange import add_fault
from tests.support.pipeline import Seen, current, settle, start_pipeline
from tests.support.processes import Cluster
from tests.support.servers import Namespace

pytestmark = pytest.mark.timeout(120)

PRICE = "50"
SETTLE_SEC = 20.0
OUTCOMES = ("exec.order_submitted.v1", "exec.submit_skipped.v1", "exec.submit_failed.v1")


class Summaries:
    """The cycle summaries execution publishes (ops.cycle_summary)."""

    def __init__(self) -> None:
        self.seen: list[dict] = []

    async def on_msg(self, msg) -> None:  # type: ignore[no-untyped-def]
        self.seen.append(json.loads(msg.data))

    def of(self, bar_ts: int) -> list[dict]:
        return [s for s in self.seen if s["bar_ts"] == bar_ts]


def outcomes(seen: Seen, cid: str) -> list[dict]:
    """The outcome events of one intent (its exit legs have their own ids)."""
    return [r for r in seen.about(cid) if r["type"] in OUTCOMES]


async def run_bar(bus: Bus, f: Events, n: int, intents: list) -> None:  # type: ignore[type-arg]
    for intent in intents:
        await bus.publish(intent)
    await bus.publish(f.watermark("risk", minute(n)))


async def started(cluster: Cluster, namespace: Namespace, nc: nats.NATS, **env: str) -> tuple[Seen, Summaries]:
    seen = await start_pipeline(cluster, namespace, nc, **env)
    summaries = Summaries()
    await nc.subscribe(f"{namespace.prefix}.ops.cycle_summary.>", cb=summaries.on_msg)
    return seen, summaries


async def test_outcomes_when_the_request_budget_runs_out_then_the_rest_are_skipped_rate_limited_and_counted(
    cluster: Cluster, namespace: Namespace, nats_url: str, nc: nats.NATS
):
    # three requests for the whole test, none earned back meanwhile (1 a minute)
    seen, summaries = await started(
        cluster,
        namespace,
        nc,
        KEEL_EXEC_RATE_LIMIT_PER_MIN="1",
        KEEL_EXEC_RATE_LIMIT_BURST="3",
        KEEL_EXEC_RATE_LIMIT_SUBMIT_WAIT_SEC="0",
        KEEL_EXEC_RATE_LIMIT_READ_WAIT_SEC="0",
    )
    bus = await Bus.connect(nats_url, Subjects(namespace.prefix), service="risk")
    f = Events(seed=401)
    symbols = ("AAPL", "MSFT", "AMZN", "META", "NVDA")
    intents = [f.intent(s, "buy", 5, PRICE, n=1) for s in symbols]
    try:
        for s in symbols:
            await bus.publish(f.bar(s, 1, PRICE))
        await run_bar(bus, f, 1, intents)
        summary = await settle(lambda: current(summaries.of(minute(1))), bool, SETTLE_SEC)
    finally:
        await bus.close()

    each = {i.client_order_id: [o["type"] for o in outcomes(seen, i.client_order_id)] for i in intents}
    assert all(len(kinds) == 1 for kinds in each.values()), each  # exactly one outcome per intent
    kinds = Counter(k for (k,) in each.values())
    skipped = [o for i in intents for o in outcomes(seen, i.client_order_id) if o["type"] == OUTCOMES[1]]
    # at most three requests in all (a clock read and a POST per order): most orders cannot go
    assert kinds[OUTCOMES[0]] <= 2 and kinds[OUTCOMES[1]] >= 3, kinds
    assert {(o["reason_code"], o["stage"]) for o in skipped} == {("RATE_LIMITED", "execution")}
    (s,) = summary
    assert s["submitted"] == kinds[OUTCOMES[0]]
    assert s["skipped"] == {"RATE_LIMITED": kinds[OUTCOMES[1]]}
    assert s.get("failed", {}) == {}


async def test_outcomes_when_the_broker_answers_429_with_retry_after_then_failed_then_skipped_broker_locked(
    cluster: Cluster, namespace: Namespace, nats_url: str, nc: nats.NATS
):
    seen, summaries = await started(cluster, namespace, nc, KEEL_EXEC_RATE_LIMIT_SUBMIT_WAIT_SEC="0.5")
    exchange = cluster["exchange"]
    bus = await Bus.connect(nats_url, Subjects(namespace.prefix), service="risk")
    f = Events(seed=402)
    first, second = f.intent("AAPL", "buy", 5, PRICE, n=1), f.intent("MSFT", "buy", 5, PRICE, n=1)
    try:
        for s in ("AAPL", "MSFT"):
            await bus.publish(f.bar(s, 1, PRICE))
        # the broker's clock read before the first order is throttled by the venue for 30 s
        await add_fault(
            exchange, kind="status", status=429, method="GET", path="/v2/clock", count=1, retry_after_sec=30
        )
        await bus.publish(first)
        await settle(lambda: current(outcomes(seen, first.client_order_id)), bool, SETTLE_SEC)
        await run_bar(bus, f, 1, [second])
        summary = await settle(lambda: current(summaries.of(minute(1))), bool, SETTLE_SEC)
    finally:
        await bus.close()

    (failed,) = outcomes(seen, first.client_order_id)
    (skipped,) = outcomes(seen, second.client_order_id)
    assert (failed["type"], failed["category"], failed["reason_code"]) == (
        OUTCOMES[2],
        "RATE_LIMIT",
        "RATE_LIMIT_RETRY",
    )
    assert (skipped["type"], skipped["reason_code"]) == (OUTCOMES[1], "BROKER_LOCKED")
    (s,) = summary
    assert (s["submitted"], s["skipped"], s["failed"]) == (0, {"BROKER_LOCKED": 1}, {"RATE_LIMIT_RETRY": 1})
    # the summary says until when the account may not call the broker, and why
    assert s["broker_locked_until_ns"] > time.time_ns() + 20 * 10**9
    assert s["broker_lock_reason"] == "BROKER_LOCKED: RATE_LIMIT_RETRY"


@pytest.mark.parametrize("dependency", ["broker_open_orders", "data_primary", "db"])
async def test_outcomes_when_a_dependency_breaker_is_open_then_orders_skipped_circuit_open_naming_it(
    cluster: Cluster, namespace: Namespace, nats_url: str, nc: nats.NATS, dependency: str
):
    seen, summaries = await started(cluster, namespace, nc)
    bus = await Bus.connect(nats_url, Subjects(namespace.prefix), service="risk")
    f = Events(seed=403)
    breakers = Breakers(await bus.breakers_kv(), BreakerPolicy(), time.time_ns)  # another process's view
    intent = f.intent("AAPL", "buy", 5, PRICE, n=1)
    try:
        await bus.publish(f.bar("AAPL", 1, PRICE))
        for _ in range(3):  # the short window: 3 failures open it for 60 s
            await breakers.record_failure(dependency, "NET_RETRY")
        await run_bar(bus, f, 1, [intent])
        summary = await settle(lambda: current(summaries.of(minute(1))), bool, SETTLE_SEC)
    finally:
        await bus.close()

    (skipped,) = outcomes(seen, intent.client_order_id)
    assert (skipped["type"], skipped["reason_code"]) == (OUTCOMES[1], f"CIRCUIT_OPEN_{dependency}")
    assert skipped["details"] == {"dependency": dependency, "failure": "NET_RETRY"}
    (s,) = summary
    assert s["skipped"] == {f"CIRCUIT_OPEN_{dependency}": 1} and s["breakers"] == {dependency: "NET_RETRY"}


async def test_outcomes_when_data_primary_open_but_the_fallback_may_serve_then_the_order_goes(
    cluster: Cluster, namespace: Namespace, nats_url: str, nc: nats.NATS
):
    seen, _ = await started(cluster, namespace, nc, KEEL_DATA_FALLBACK_ALLOWED="true")
    bus = await Bus.connect(nats_url, Subjects(namespace.prefix), service="risk")
    f = Events(seed=404)
    breakers = Breakers(await bus.breakers_kv(), BreakerPolicy(), time.time_ns)
    intent = f.intent("AAPL", "buy", 5, PRICE, n=1)
    try:
        await bus.publish(f.bar("AAPL", 1, PRICE))
        for _ in range(3):
            await breakers.record_failure("data_primary", "NET_RETRY")
        await run_bar(bus, f, 1, [intent])
        await settle(lambda: current(outcomes(seen, intent.client_order_id)), bool, SETTLE_SEC)
    finally:
        await bus.close()

    assert [o["type"] for o in outcomes(seen, intent.client_order_id)] == [OUTCOMES[0]]


async def test_outcomes_when_the_oms_denies_then_execution_gives_the_intent_its_skipped_outcome(
    cluster: Cluster, namespace: Namespace, nats_url: str, nc: nats.NATS
):
    seen, summaries = await started(cluster, namespace, nc, KEEL_OMS_MAX_ORDER_SHARES="10")
    bus = await Bus.connect(nats_url, Subjects(namespace.prefix), service="risk")
    f = Events(seed=405)
    small, big = f.intent("AAPL", "buy", 5, PRICE, n=1), f.intent("MSFT", "buy", 50, PRICE, n=1)
    try:
        for s in ("AAPL", "MSFT"):
            await bus.publish(f.bar(s, 1, PRICE))
        await run_bar(bus, f, 1, [small, big])
        summary = await settle(lambda: current(summaries.of(minute(1))), bool, SETTLE_SEC)
    finally:
        await bus.close()

    assert [o["type"] for o in outcomes(seen, small.client_order_id)] == [OUTCOMES[0]]
    (denied,) = outcomes(seen, big.client_order_id)
    assert (denied["type"], denied["stage"], denied["reason_code"]) == (OUTCOMES[1], "oms", "ORDER_SIZE_BLOCK")
    (s,) = summary
    assert (s["submitted"], s["skipped"]) == (1, {"ORDER_SIZE_BLOCK": 1})
