"""Execution's own halt check: an order approved before a kill never reaches the broker after it.

Real exchange and execution processes, real alpaca-py in between; the halt flag is written to
the control bucket as the OMS would, and approved decisions are published as the OMS would.
"""

from __future__ import annotations

import asyncio
import json
from decimal import Decimal

import httpx
import msgspec
import nats
import pytest

from libs.bus import Bus
from libs.contracts.control import HaltState
from libs.contracts.subjects import Subjects
from tests.factories import Events
from tests.support.pipeline import settle
from tests.support.processes import Cluster
from tests.support.servers import Namespace

KEYS = {"KEEL_EXCHANGE_API_KEY_ID": "PKTEST", "KEEL_EXCHANGE_API_SECRET_KEY": "test-secret"}


async def next_report(queue: asyncio.Queue, cid: str, timeout: float = 10) -> dict:
    """Return the next execution report (not the hand-off) about one order."""
    async with asyncio.timeout(timeout):
        while True:
            report = await queue.get()
            if report.get("client_order_id") == cid and report["type"] != "exec.order_submitted.v1":
                return report


async def exchange_orders(url: str) -> list[dict]:
    """List every order the exchange holds."""
    headers = {
        "APCA-API-KEY-ID": KEYS["KEEL_EXCHANGE_API_KEY_ID"],
        "APCA-API-SECRET-KEY": KEYS["KEEL_EXCHANGE_API_SECRET_KEY"],
    }
    async with httpx.AsyncClient(timeout=5) as client:
        r = await client.get(f"{url}/v2/orders", params={"status": "all"}, headers=headers)
        r.raise_for_status()
        return r.json()


async def exchange_and_execution(cluster: Cluster, namespace: Namespace, nc: nats.NATS, **env: str) -> asyncio.Queue:
    """Start the exchange, then execution pointed at it; return a queue of execution reports."""
    cluster.env.update(
        KEYS,
        KEEL_EXEC_API_KEY_ID=KEYS["KEEL_EXCHANGE_API_KEY_ID"],
        KEEL_EXEC_API_SECRET_KEY=KEYS["KEEL_EXCHANGE_API_SECRET_KEY"],
        **env,
    )
    await cluster.start("exchange")
    cluster.env["KEEL_EXEC_BASE_URL"] = cluster["exchange"].url
    await cluster.start("execution")
    reports: asyncio.Queue = asyncio.Queue()

    async def on_report(msg) -> None:  # type: ignore[no-untyped-def]
        await reports.put(json.loads(msg.data))

    await nc.subscribe(f"{namespace.prefix}.exec.>", cb=on_report)
    return reports


async def test_submit_when_halt_flag_is_up_then_kill_switch_block_and_nothing_at_the_broker(
    cluster: Cluster, namespace: Namespace, nats_url: str, nc: nats.NATS
):
    f = Events(seed=11)
    reports = await exchange_and_execution(cluster, namespace, nc)
    bus = await Bus.connect(nats_url, Subjects(namespace.prefix), service="test")
    try:
        await bus.publish(f.bar("AAPL", 2, "50"))  # the exchange's clock passes the decision bar
        blocked = f.intent("AAPL", "buy", 10, "50", n=1)
        allowed = f.intent("AAPL", "buy", 10, "50", n=2)

        await bus.put_halt_state(HaltState(halted=True, reason="test kill", since_ns=1))
        await bus.publish(f.decision(blocked))
        refused = await next_report(reports, blocked.client_order_id)

        await bus.put_halt_state(HaltState(halted=False, reason="test resume", since_ns=2))
        await bus.publish(f.decision(allowed))
        accepted = await next_report(reports, allowed.client_order_id)
    finally:
        await bus.close()

    assert (refused["type"], refused["stage"], refused["reason_code"]) == (
        "exec.submit_skipped.v1",
        "execution",
        "KILL_SWITCH_BLOCK",
    )
    assert "test kill" in refused["message"]
    assert accepted["type"] == "exec.order_accepted.v1"
    at_broker = [o["client_order_id"] for o in await exchange_orders(cluster["exchange"].url)]
    assert at_broker == [allowed.client_order_id]


async def test_submit_when_broker_unreachable_then_order_held_unresolved_never_failed_and_resolved_later(
    cluster: Cluster, namespace: Namespace, nats_url: str, nc: nats.NATS
):
    """A submit whose answer is lost is held, not declared failed; a halt stops re-sending it,
    a resume lets the next poll submit it again under the same client_order_id."""
    f = Events(seed=12)
    # the breakers are not this test's subject: with the venue gone the poller's failed listings
    # would open broker_open_orders and the order would be skipped before it is ever handed over
    reports = await exchange_and_execution(
        cluster,
        namespace,
        nc,
        KEEL_EXEC_HTTP_TIMEOUT_SEC="1",
        KEEL_EXEC_POLL_INTERVAL_SEC="0.2",
        KEEL_BREAKER_SHORT_FAILURES="1000",
        KEEL_BREAKER_LONG_FAILURES="1000",
    )
    bus = await Bus.connect(nats_url, Subjects(namespace.prefix), service="test")
    try:
        await bus.publish(f.bar("AAPL", 2, "50"))
        first = f.intent("AAPL", "buy", 10, "50", n=1)
        lost = f.intent("MSFT", "buy", 10, "50", n=1)
        await bus.publish(f.decision(first))
        assert (await next_report(reports, first.client_order_id))["type"] == "exec.order_accepted.v1"

        # Act 1: the broker goes away; the next order is handed over and its answer is lost
        await asyncio.to_thread(cluster["exchange"].stop)
        await bus.publish(f.decision(lost))
        async with asyncio.timeout(10):
            while True:
                handed = await reports.get()
                if handed.get("client_order_id") == lost.client_order_id:
                    break
        assert handed["type"] == "exec.order_submitted.v1"
        unknown = await next_report(reports, lost.client_order_id)
        assert unknown["type"] == "exec.order_status_unknown.v1"  # said once, when it became unknown

        # Act 2: halted, the broker comes back: the order is looked up (absent), never re-sent
        await bus.put_halt_state(HaltState(halted=True, reason="test kill", since_ns=1))
        cluster["exchange"].start()
        await cluster["exchange"].wait_ready()
        await asyncio.sleep(1.5)  # several polls
        assert reports.empty(), "no verdict on an unresolved order while halted"
        assert [o["client_order_id"] for o in await exchange_orders(cluster["exchange"].url)] == [first.client_order_id]
        held = await cluster["execution"].get_json("/state")
        assert held["orders"][lost.client_order_id]["broker_status"] == "unknown"  # type: ignore[index]

        # Act 3: resumed: the next poll submits it again under the same client_order_id
        await bus.put_halt_state(HaltState(halted=False, reason="test resume", since_ns=2))
        resolved = await next_report(reports, lost.client_order_id)
    finally:
        await bus.close()

    assert resolved["type"] == "exec.order_accepted.v1"
    at_broker = sorted(o["client_order_id"] for o in await exchange_orders(cluster["exchange"].url))
    assert at_broker == sorted([first.client_order_id, lost.client_order_id])


@pytest.mark.parametrize(
    ("env", "body", "canceled"),
    [
        ({"KEEL_CANCEL_ALL_ON_KILL": "true"}, {"reason": "desk says stop"}, True),
        ({}, {"reason": "desk says stop", "cancel_all": True}, True),
        ({}, {"reason": "desk says stop"}, False),
    ],
    ids=["KEEL_CANCEL_ALL_ON_KILL", "kill asks", "plain kill"],
)
async def test_kill_when_cancel_all_is_configured_or_asked_then_open_orders_are_canceled(
    cluster: Cluster, namespace: Namespace, nats_url: str, nc: nats.NATS, env: dict, body: dict, canceled: bool
):
    f = Events(seed=12)
    reports = await exchange_and_execution(cluster, namespace, nc, **env)
    bus = await Bus.connect(nats_url, Subjects(namespace.prefix), service="test")
    resting = msgspec.structs.replace(
        f.intent("AAPL", "buy", 10, "50", n=1), order_type="limit", limit_price=Decimal("40")
    )
    try:
        await bus.publish(f.bar("AAPL", 2, "50"))
        await bus.publish(f.decision(resting))
        accepted = await next_report(reports, resting.client_order_id)
        # the NATS CLI recipe's bytes: nats pub keel.ctl.kill '{"reason":...}'
        await nc.publish(f"{namespace.prefix}.ctl.kill", json.dumps(body).encode())
        await nc.flush()

        async def status() -> str:
            orders = await exchange_orders(cluster["exchange"].url)
            return next(o["status"] for o in orders if o["client_order_id"] == resting.client_order_id)

        seen = await settle(status, lambda s: s == "canceled", 10.0 if canceled else 2.0)
    finally:
        await bus.close()

    assert accepted["type"] == "exec.order_accepted.v1"
    assert (seen == "canceled") is canceled, seen
