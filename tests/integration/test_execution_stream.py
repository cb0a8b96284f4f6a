"""Execution on the trade_updates stream, its staleness watchdog and orders of unknown status.

Real processes: the local exchange (`python -m services.exchange`, admin API on for fault
injection) and execution (`python -m services.execution`) pointed at it, so alpaca-py's
TradingClient and TradingStream are the real ones; real NATS and Postgres. Approved decisions and
bars are published as the OMS and marketdata would; execution's reports are read from NATS.
"""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import nats
import pytest

from libs.bus import Bus
from libs.contracts.oms import PretradeDecision
from libs.contracts.subjects import Subjects
from tests.factories import Events
from tests.support.exchange import AUTH_HEADERS, KEY, SECRET, add_fault, clear_faults, list_faults
from tests.support.processes import Cluster
from tests.support.servers import Namespace

pytestmark = pytest.mark.timeout(120)

FILLED = "exec.order_filled.v1"
UNKNOWN = "exec.order_status_unknown.v1"
ACCEPTED = "exec.order_accepted.v1"


class Reports:
    """Every execution report and every alert execution raised, as JSON, in arrival order."""

    def __init__(self) -> None:
        self.all: list[dict] = []
        self.alerts: list[dict] = []
        self._arrived = asyncio.Event()

    async def on_report(self, msg) -> None:  # type: ignore[no-untyped-def]
        self.all.append(json.loads(msg.data))
        self._arrived.set()

    async def on_alert(self, msg) -> None:  # type: ignore[no-untyped-def]
        self.alerts.append(json.loads(msg.data))
        self._arrived.set()

    def about(self, cid: str, kind: str | None = None) -> list[dict]:
        """Return the reports about one order (of one type)."""
        return [r for r in self.all if r.get("client_order_id") == cid and (kind is None or r["type"] == kind)]

    def alerted(self, code: str) -> list[dict]:
        """Return the alerts of one code."""
        return [a for a in self.alerts if a["code"] == code]

    async def wait(self, check, timeout: float = 10.0):  # type: ignore[no-untyped-def]
        """Wait until check() returns something truthy; return it."""
        deadline = time.monotonic() + timeout
        while not (result := check()):
            left = deadline - time.monotonic()
            if left <= 0:
                kinds = [(r["type"], r.get("client_order_id", "")[-12:]) for r in self.all]
                raise AssertionError(f"not within {timeout}s; reports so far: {kinds}; alerts: {self.alerts}")
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), min(left, 0.2))
            except TimeoutError:
                pass
        return result


async def start(cluster: Cluster, namespace: Namespace, nc: nats.NATS, **env: str) -> Reports:
    """Start the exchange (admin on), then execution on it with `env`; wait for the stream."""
    cluster.env.update(
        KEEL_EXCHANGE_API_KEY_ID=KEY,
        KEEL_EXCHANGE_API_SECRET_KEY=SECRET,
        KEEL_EXCHANGE_ADMIN_ENABLED="true",
        KEEL_EXEC_API_KEY_ID=KEY,
        KEEL_EXEC_API_SECRET_KEY=SECRET,
        **env,
    )
    await cluster.start("exchange")
    cluster.env["KEEL_EXEC_BASE_URL"] = cluster["exchange"].url
    await cluster.start("execution")
    reports = Reports()
    await nc.subscribe(f"{namespace.prefix}.exec.>", cb=reports.on_report)
    await nc.subscribe(f"{namespace.prefix}.ops.alert_raised.execution", cb=reports.on_alert)
    await stream_view(cluster, lambda v: v["connected"])
    return reports


async def stream_view(cluster: Cluster, check, timeout: float = 10.0) -> dict:  # type: ignore[no-untyped-def]
    """Wait until execution's GET /stream satisfies check; return the view."""
    deadline = time.monotonic() + timeout
    while True:
        view = await cluster["execution"].get_json("/stream")
        if check(view):
            return view  # type: ignore[return-value]
        if time.monotonic() > deadline:
            raise AssertionError(f"stream view not as expected within {timeout}s: {view}")
        await asyncio.sleep(0.05)


async def metric(cluster: Cluster, name: str, **labels: str) -> float:
    """Read one sample from execution's /metrics."""
    async with httpx.AsyncClient(timeout=2.0) as client:
        text = (await client.get(f"{cluster['execution'].url}/metrics")).text
    want = ",".join(f'{k}="{v}"' for k, v in {"service": "execution", **labels}.items())
    for line in text.splitlines():
        if line.startswith(f"{name}{{{want}}} "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def orders_at_exchange(cluster: Cluster) -> list[dict]:
    """List every order the exchange holds."""
    async with httpx.AsyncClient(timeout=5, headers=AUTH_HEADERS) as client:
        r = await client.get(f"{cluster['exchange'].url}/v2/orders", params={"status": "all"})
        r.raise_for_status()
        return r.json()


async def bus_for(nats_url: str, namespace: Namespace) -> Bus:
    return await Bus.connect(nats_url, Subjects(namespace.prefix), service="test")


async def lose_one(exchange, bus: Bus, reports: Reports, f: Events) -> tuple[PretradeDecision, dict]:  # type: ignore[no-untyped-def]
    """Send one AAPL order whose answer is lost at the venue (it takes the order), with lookups
    failing until the faults are cleared; return it and its order_status_unknown report."""
    await add_fault(exchange, kind="lose_response", method="POST", path="/v2/orders", count=1)
    await add_fault(exchange, kind="status", status=503, method="GET", path="/v2/orders:by_client_order_id", count=0)
    await bus.publish(f.bar("AAPL", 2, "50"))
    lost = f.decision(f.intent("AAPL", "buy", 10, "50", n=1))
    await bus.publish(lost)
    (unknown,) = await reports.wait(lambda: reports.about(lost.client_order_id, UNKNOWN))
    return lost, unknown


async def submitted_and_accepted(bus: Bus, reports: Reports, d: PretradeDecision) -> None:
    await bus.publish(d)
    await reports.wait(lambda: reports.about(d.client_order_id, ACCEPTED))


async def test_fill_when_stream_healthy_and_frames_duplicated_then_fill_arrives_by_stream_exactly_once(
    cluster: Cluster, namespace: Namespace, nats_url: str, nc: nats.NATS
):
    f = Events(seed=51)
    # the poller would take a minute: a fill seen within seconds came through the stream
    reports = await start(
        cluster, namespace, nc, KEEL_EXEC_STREAM_POLL_INTERVAL_SEC="60", KEEL_EXEC_STREAM_STALE_SEC="30"
    )
    await add_fault(cluster["exchange"], kind="ws_duplicate", frames=0)  # every frame twice
    bus = await bus_for(nats_url, namespace)
    try:
        await bus.publish(f.bar("AAPL", 2, "50"))
        d = f.decision(f.intent("AAPL", "buy", 10, "50", n=1))
        await submitted_and_accepted(bus, reports, d)
        frames_before = await metric(cluster, "keel_exec_stream_frames_total", stream="trade_updates")

        await bus.publish(f.bar("AAPL", 3, "51"))  # the order fills against the next bar
        started = time.monotonic()
        await reports.wait(lambda: reports.about(d.client_order_id, FILLED))
        took = time.monotonic() - started
        await asyncio.sleep(1.5)  # time for a duplicate to show up, if any would
        slow = await metric(cluster, "keel_exec_poll_interval_seconds")
        frames = await metric(cluster, "keel_exec_stream_frames_total", stream="trade_updates")

        # the stream task stops cleanly (exit 0) and a restarted process reports nothing again
        await cluster.restart("execution")
        await stream_view(cluster, lambda v: v["connected"])
        await asyncio.sleep(1.0)
    finally:
        await bus.close()

    assert took < 10, f"fill took {took:.1f}s: not through the stream"
    assert slow == 60  # the slow cadence held: the poller did not see the fill first
    assert frames - frames_before >= 2, "the fill frame arrived twice"
    kinds = [r["type"] for r in reports.about(d.client_order_id)]
    assert kinds == ["exec.order_submitted.v1", ACCEPTED, FILLED]
    (fill,) = reports.about(d.client_order_id, FILLED)
    assert (fill["cum_qty"], fill["last_qty"], fill["leaves_qty"]) == (10, 10, 0)
    assert (await cluster["execution"].get_json("/state"))["orders"] == {}  # type: ignore[index]
    assert reports.alerted("STREAM_STALE") == []
    (order,) = await orders_at_exchange(cluster)
    assert (order["client_order_id"], order["status"]) == (d.client_order_id, "filled")


async def test_fill_when_stream_goes_silent_then_watchdog_polls_fast_and_fill_arrives_once(
    cluster: Cluster, namespace: Namespace, nats_url: str, nc: nats.NATS
):
    f = Events(seed=52)
    reports = await start(
        cluster,
        namespace,
        nc,
        KEEL_EXEC_STREAM_POLL_INTERVAL_SEC="60",
        KEEL_EXEC_POLL_INTERVAL_SEC="0.2",
        KEEL_EXEC_STREAM_STALE_SEC="1",
    )
    assert await metric(cluster, "keel_exec_stream_stale") == 0
    await add_fault(cluster["exchange"], kind="ws_silent", count=0)  # connected, but no frames
    bus = await bus_for(nats_url, namespace)
    try:
        await bus.publish(f.bar("AAPL", 2, "50"))
        d = f.decision(f.intent("AAPL", "buy", 10, "50", n=1))
        await submitted_and_accepted(bus, reports, d)

        # Act 1: an order is open and nothing arrives for stream_stale_sec: stale, poll fast
        (stale,) = await reports.wait(lambda: reports.alerted("STREAM_STALE"))
        view = await stream_view(cluster, lambda v: v["stale"])
        stale_gauge = await metric(cluster, "keel_exec_stream_stale")
        fast = await metric(cluster, "keel_exec_poll_interval_seconds")

        # Act 2: the order fills; only the poller can see it
        await bus.publish(f.bar("AAPL", 3, "51"))
        await reports.wait(lambda: reports.about(d.client_order_id, FILLED), timeout=5)
        await reports.wait(lambda: reports.alerted("STREAM_RECOVERED"))  # no order open: not stale
        await asyncio.sleep(1.0)
    finally:
        await bus.close()

    assert (stale["severity"], stale["source"], stale["details"]["why"]) == ("warning", "execution", "silent")
    assert (view["connected"], view["reason"], view["trusted"]) == (True, "silent", False)
    assert (stale_gauge, fast) == (1, 0.2)
    assert len(reports.about(d.client_order_id, FILLED)) == 1
    assert len(reports.alerted("STREAM_STALE")) == 1, "one alert per stale episode"
    assert await metric(cluster, "keel_exec_stream_stale") == 0


async def test_submit_when_response_lost_then_unknown_symbol_blocked_until_lookup_adopts_the_one_order(
    cluster: Cluster, namespace: Namespace, nats_url: str, nc: nats.NATS
):
    f = Events(seed=53)
    reports = await start(cluster, namespace, nc, KEEL_EXEC_POLL_INTERVAL_SEC="0.2")
    exchange = cluster["exchange"]
    bus = await bus_for(nats_url, namespace)
    try:
        lost, unknown = await lose_one(exchange, bus, reports, f)
        held = (await cluster["execution"].get_json("/state"))["orders"][lost.client_order_id]  # type: ignore[index]

        # Act 1: another order of the symbol is refused; another symbol is not
        second = f.decision(f.intent("AAPL", "buy", 5, "50", n=2))
        other = f.decision(f.intent("MSFT", "buy", 5, "50", n=2))
        await bus.publish(second)
        await bus.publish(other)
        (refused,) = await reports.wait(lambda: reports.about(second.client_order_id, "exec.submit_skipped.v1"))
        await reports.wait(lambda: reports.about(other.client_order_id, ACCEPTED))
        await asyncio.sleep(1.0)  # several fast polls: their lookups fail, the order stays unknown
        still = (await cluster["execution"].get_json("/state"))["orders"][lost.client_order_id]  # type: ignore[index]
        lookups_failed = [r["fired"] for r in await list_faults(exchange)]

        # Act 2: the lookup answers: the order the venue took is adopted, never sent again
        await clear_faults(exchange)
        (adopted,) = await reports.wait(lambda: reports.about(lost.client_order_id, ACCEPTED))
        after = f.decision(f.intent("AAPL", "buy", 7, "50", n=2))  # the block is lifted
        await submitted_and_accepted(bus, reports, after)
    finally:
        await bus.close()

    assert "504" in unknown["reason"]
    assert (held["broker_status"], still["broker_status"]) == ("unknown", "unknown")
    assert lookups_failed and lookups_failed[0] >= 2
    assert (refused["reason_code"], refused["stage"]) == ("UNKNOWN_ORDER_BLOCK", "execution")
    assert lost.client_order_id in refused["message"]
    assert adopted["broker_order_id"]
    assert [r["type"] for r in reports.about(lost.client_order_id)] == ["exec.order_submitted.v1", UNKNOWN, ACCEPTED]
    at_exchange = [o["client_order_id"] for o in await orders_at_exchange(cluster)]
    assert at_exchange.count(lost.client_order_id) == 1
    assert second.client_order_id not in at_exchange
    assert sorted(at_exchange) == sorted([lost.client_order_id, other.client_order_id, after.client_order_id])


async def test_submit_when_request_timed_out_before_the_venue_then_lookup_404_and_one_resubmit(
    cluster: Cluster, namespace: Namespace, nats_url: str, nc: nats.NATS
):
    f = Events(seed=54)
    reports = await start(cluster, namespace, nc, KEEL_EXEC_POLL_INTERVAL_SEC="0.2", KEEL_EXEC_HTTP_TIMEOUT_SEC="1")
    exchange = cluster["exchange"]
    # the request hangs past execution's 1 s timeout and is never processed
    await add_fault(exchange, kind="timeout", method="POST", path="/v2/orders", count=1, delay_sec=2)
    bus = await bus_for(nats_url, namespace)
    try:
        await bus.publish(f.bar("AAPL", 2, "50"))
        d = f.decision(f.intent("AAPL", "buy", 10, "50", n=1))
        await bus.publish(d)
        await reports.wait(lambda: reports.about(d.client_order_id, ACCEPTED))
        await asyncio.sleep(1.0)
    finally:
        await bus.close()

    kinds = [r["type"] for r in reports.about(d.client_order_id)]
    assert kinds == ["exec.order_submitted.v1", UNKNOWN, ACCEPTED]
    assert "Timeout" in reports.about(d.client_order_id, UNKNOWN)[0]["reason"]
    assert await list_faults(exchange) == []  # the one timed-out POST; the re-submit went through
    at_exchange = [o["client_order_id"] for o in await orders_at_exchange(cluster)]
    assert at_exchange == [d.client_order_id]


async def test_fill_lane_when_an_order_of_unknown_status_fills_then_it_is_adopted_and_reported_before_the_lane_goes_on(
    cluster: Cluster, namespace: Namespace, nats_url: str, nc: nats.NATS
):
    """Under the lockstep, an order whose submit got no answer still fills at the exchange; the
    exchange's FillsDone names it, so execution adopts it (GET by client_order_id) and reports
    its fill before it forwards FillsDone: the next bar's decisions see the fill whatever the
    poller's timing (it is slowed to 10 minutes here, so it cannot be what resolves the order)."""
    f = Events(seed=57)
    reports = await start(
        cluster,
        namespace,
        nc,
        KEEL_LOCKSTEP="1",
        KEEL_EXEC_POLL_INTERVAL_SEC="600",
        KEEL_EXEC_STREAM_POLL_INTERVAL_SEC="600",
    )
    exchange = cluster["exchange"]
    bus = await bus_for(nats_url, namespace)
    try:
        lost, _unknown = await lose_one(exchange, bus, reports, f)
        # the next bar fills it; marketdata's watermark makes the exchange announce it
        await bus.publish(f.bar("AAPL", 3, "50"))
        await bus.publish(f.watermark("marketdata", f.bar("AAPL", 3, "50").ts_event))
        announced = await reports.wait(
            lambda: [r for r in reports.all if r["type"] == "ops.fills_done.v1" and r["source"] == "exchange"]
        )
        await asyncio.sleep(1.5)  # lookups fail: the lane holds, it does not go on without the order
        held = [r for r in reports.all if r["type"] == "ops.fills_done.v1" and r["source"] == "execution"]
        await clear_faults(exchange)
        await reports.wait(
            lambda: [r for r in reports.all if r["type"] == "ops.fills_done.v1" and r["source"] == "execution"]
        )
    finally:
        await bus.close()

    assert announced[0]["orders"] == [lost.client_order_id]
    assert held == [], "the lane went on while the order it named was still unknown"
    order_reports = [r["type"] for r in reports.about(lost.client_order_id)]
    assert order_reports == ["exec.order_submitted.v1", UNKNOWN, ACCEPTED, FILLED]
    # the forward comes after the fill: whatever reads the lane next sees it
    filled = next(i for i, r in enumerate(reports.all) if r is reports.about(lost.client_order_id, FILLED)[0])
    forwarded = next(
        i for i, r in enumerate(reports.all) if r["type"] == "ops.fills_done.v1" and r["source"] == "execution"
    )
    assert filled < forwarded
