"""A 429 storm opens the broker_submit breaker for every process; orders are blocked, then trade again.

One cluster of real processes: the local exchange (admin API on, every POST /v2/orders answered
429 while the storm lasts), the OMS and execution on it (alpaca-py); real NATS and Postgres, the
breaker state in the deployment's JetStream key-value bucket. The short window opens the breaker
after 3 failures; its open time is shortened to OPEN_SEC so the recovery fits in a test. The
breaker is a wall-clock matter (real dependencies fail in real time), read here as any process would.
"""

from __future__ import annotations

import asyncio
import time

import httpx
import nats
import pytest
from prometheus_client.parser import text_string_to_metric_families

from libs.bus import Bus
from libs.contracts.subjects import Subjects
from libs.errors.breakers import BreakerPolicy, Breakers
from services.oms import state as oms
from tests.factories import Events
from tests.support.exchange import AUTH_HEADERS, add_fault, clear_faults, list_faults
from tests.support.pipeline import settle, start_pipeline
from tests.support.processes import Cluster
from tests.support.servers import Namespace

pytestmark = pytest.mark.timeout(120)

OPEN_SEC = 3.0
SETTLE_SEC = 15.0
PRICE = "50"
STORM, BLOCKED, AFTER = "AAPL", "AMZN", "META"


async def posts_refused(exchange) -> int:  # type: ignore[no-untyped-def]
    """The POST /v2/orders the venue answered with the injected 429 so far (its fault counter)."""
    rules = await list_faults(exchange)
    return sum(r["fired"] for r in rules)


async def breaker_gauges(cluster: Cluster) -> dict[str, float]:
    """keel_breaker_open{dependency="broker_submit"} on the OMS's and execution's /metrics."""
    shown: dict[str, float] = {}
    async with httpx.AsyncClient(timeout=5) as http:
        for name in ("oms", "execution"):
            text = (await http.get(f"{cluster[name].url}/metrics")).text
            for family in text_string_to_metric_families(text):
                for sample in family.samples:
                    if sample.name == "keel_breaker_open" and sample.labels.get("dependency") == "broker_submit":
                        shown[name] = sample.value
    return shown


async def test_breaker_when_429_storm_then_orders_blocked_circuit_open_and_trading_resumes_after(
    cluster: Cluster, namespace: Namespace, nats_url: str, nc: nats.NATS
):
    seen = await start_pipeline(
        cluster,
        namespace,
        nc,
        KEEL_EXEC_POLL_INTERVAL_SEC="0.2",
        KEEL_BREAKER_SHORT_OPEN_SEC=str(OPEN_SEC),
    )
    exchange = cluster["exchange"]
    bus = await Bus.connect(nats_url, Subjects(namespace.prefix), service="risk")
    f = Events(seed=131)

    async def statuses() -> dict[str, str]:
        rows = await cluster["oms"].get_json("/intents?limit=1000")
        return {r["symbol"]: r["status"] for r in rows}  # type: ignore[union-attr]

    breakers = Breakers(await bus.breakers_kv(), BreakerPolicy(), time.time_ns)  # as another process sees it

    try:
        for s in (STORM, BLOCKED, AFTER):
            await bus.publish(f.bar(s, 1, PRICE))
        storm = await add_fault(exchange, kind="status", status=429, method="POST", path="/v2/orders", count=0)
        # one order: its POST gets 429 (unknown), the lookup proves it absent, the re-send gets
        # 429 again... the third failure within a minute opens the breaker, and re-sends stop
        await bus.publish(f.intent(STORM, "buy", 10, PRICE, n=1))
        # each 429 carries Retry-After: 1, which holds the breaker open that long; the third
        # failure within a minute opens it for OPEN_SEC
        opened = await settle(
            lambda: breakers.state("broker_submit"),
            lambda b: len(b.failures) >= 3 and b.is_open(time.time_ns()),
            SETTLE_SEC,
        )
        unknown = await statuses()
        # every process shows the shared breaker on its /metrics, the OMS too (it never failed)
        shown = await settle(lambda: breaker_gauges(cluster), lambda g: g == {"oms": 1.0, "execution": 1.0}, SETTLE_SEC)
        await bus.publish(f.intent(BLOCKED, "buy", 10, PRICE, n=1))
        blocked = await settle(statuses, lambda st: st.get(BLOCKED) == oms.REJECTED, SETTLE_SEC)
        posts_while_open = await posts_refused(exchange)
        await asyncio.sleep(1.0)
        no_resend_while_open = await posts_refused(exchange) == posts_while_open

        await clear_faults(exchange)
        # the open time runs out; the poller then sends the unknown order again (the venue never
        # had it: every POST was refused) and it is accepted
        resumed = await settle(statuses, lambda st: st.get(STORM) == oms.ACKED, OPEN_SEC + SETTLE_SEC)
        await bus.publish(f.intent(AFTER, "buy", 10, PRICE, n=1))
        after = await settle(statuses, lambda st: st.get(AFTER) == oms.ACKED, SETTLE_SEC)
        for s in (STORM, AFTER):
            await bus.publish(f.bar(s, 2, PRICE))
        filled = await settle(statuses, lambda st: st.get(STORM) == st.get(AFTER) == oms.FILLED, SETTLE_SEC)
        closed = await settle(
            lambda: breaker_gauges(cluster), lambda g: g == {"oms": 0.0, "execution": 0.0}, SETTLE_SEC
        )
        async with httpx.AsyncClient(base_url=exchange.url, headers=AUTH_HEADERS, timeout=5) as http:
            venue = (await http.get("/v2/orders", params={"status": "all", "limit": 500})).json()
    finally:
        await bus.close()

    assert storm["kind"] == "status"
    assert unknown.get(STORM) == oms.UNKNOWN
    assert opened.is_open(opened.opened_at_ns) and opened.reason == "RATE_LIMIT_RETRY"
    assert len(opened.failures) == 3  # it opened on the third, and nothing was sent after
    # Retry-After honoured: no POST came back sooner than the venue asked
    gaps = [b - a for a, b in zip(opened.failures, opened.failures[1:], strict=False)]
    assert all(gap >= 1_000_000_000 for gap in gaps), gaps
    assert no_resend_while_open
    assert (shown, closed) == ({"oms": 1.0, "execution": 1.0}, {"oms": 0.0, "execution": 0.0})
    # the next order never left: the OMS denied it with the seed's reason code (it reads the shared
    # breakers before its checks; execution would refuse it again at the hand-over)
    assert blocked.get(BLOCKED) == oms.REJECTED
    (refusal,) = [r for r in seen.reports if r["symbol"] == BLOCKED and r["type"] == "exec.submit_skipped.v1"]
    assert (refusal["reason_code"], refusal["stage"]) == ("CIRCUIT_OPEN_broker_submit", "oms")
    assert refusal["details"]["dependency"] == "broker_submit"
    circuit = [a for a in seen.alerts if a["code"] == "CIRCUIT_OPEN"]
    # one alert per open episode (each Retry-After hold, then the window's opening), none twice
    assert circuit and {(a["severity"], a["details"]["dependency"]) for a in circuit} == {("critical", "broker_submit")}
    assert len({a["event_id"] for a in circuit}) == len(circuit) <= 3
    # recovered: the stormed order and a new one trade, each exactly once at the venue
    assert (resumed.get(STORM), after.get(AFTER)) == (oms.ACKED, oms.ACKED)
    assert (filled.get(STORM), filled.get(AFTER)) == (oms.FILLED, oms.FILLED)
    cids = [o["client_order_id"] for o in venue]
    assert sorted(o["symbol"] for o in venue) == sorted((STORM, AFTER)) and len(cids) == len(set(cids))
