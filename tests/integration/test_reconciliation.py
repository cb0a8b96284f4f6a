"""Reconciliation against the real local exchange (issue 5 §4): a foreign order found open when
execution starts is alerted and, with STARTUP_CLEANUP on, canceled at the venue; a position the
broker holds and keel's log does not explain halts trading with RECON_MISMATCH.

Real processes (exchange, OMS, execution), real NATS and Postgres. The "foreign" orders are
placed straight at the exchange over its Alpaca API, as a person with the same keys would.
"""

from __future__ import annotations

import asyncio
import json

import asyncpg
import httpx
import nats
import pytest

from libs.bus import Bus
from libs.contracts.subjects import Subjects
from libs.db import schema_name
from tests.factories import Events, minute
from tests.support.exchange import AUTH_HEADERS
from tests.support.pipeline import current, settle, start_pipeline
from tests.support.processes import Cluster
from tests.support.servers import Namespace

pytestmark = pytest.mark.timeout(120)
PRICE = "50"


async def place(cluster: Cluster, cid: str, **order: object) -> dict:
    body = {"symbol": "AAPL", "qty": "7", "side": "buy", "time_in_force": "day", "client_order_id": cid, **order}
    async with httpx.AsyncClient(timeout=5, headers=AUTH_HEADERS) as client:
        r = await client.post(f"{cluster['exchange'].url}/v2/orders", json=body)
        r.raise_for_status()
        return r.json()


async def venue_order(cluster: Cluster, order_id: str) -> dict:
    async with httpx.AsyncClient(timeout=5, headers=AUTH_HEADERS) as client:
        r = await client.get(f"{cluster['exchange'].url}/v2/orders/{order_id}")
        r.raise_for_status()
        return r.json()


async def test_recon_when_foreign_order_at_start_then_alerted_and_canceled_and_unexplained_position_halts(
    cluster: Cluster, namespace: Namespace, nats_url: str, nc: nats.NATS
):
    # Arrange: the pipeline with start-up cleanup on; the exchange's clock at minute 1
    seen = await start_pipeline(cluster, namespace, nc, KEEL_OMS_STARTUP_CLEANUP="true")
    bus = await Bus.connect(nats_url, Subjects(namespace.prefix), service="risk")
    f = Events(seed=71)
    try:
        await bus.publish(f.bar("AAPL", 1, PRICE))
        resting = await place(cluster, "placed-by-hand-1", type="limit", limit_price="40")

        # Act 1: execution restarts and reconciles at start
        await cluster.restart("execution")
        canceled = await settle(
            lambda: venue_order(cluster, resting["id"]), lambda o: o["status"] == "canceled", timeout=20
        )
        foreign = [a for a in seen.alerts if a["code"] == "FOREIGN_ORDER"]

        # Act 2: a foreign market order fills; two periodic snapshots later the books still differ
        await place(cluster, "placed-by-hand-2", type="market")
        await bus.publish(f.bar("AAPL", 2, PRICE))
        filled = await settle(
            lambda: venue_order_by_cid(cluster, "placed-by-hand-2"), lambda o: o["status"] == "filled", timeout=20
        )
        for n in (2, 3, 4):
            await bus.publish(f.watermark("risk", minute(n)))
        halt = await settle(bus.halt_state, lambda h: h is not None and h.halted, timeout=20)
        mismatch = await settle(
            lambda: current([a for a in seen.alerts if a["code"] == "RECON_MISMATCH"]), bool, timeout=10
        )
    finally:
        await bus.close()

    # Assert
    assert canceled["status"] == "canceled", f"the foreign order was not canceled at start: {canceled}"
    assert [a["details"]["client_order_id"] for a in foreign] == ["placed-by-hand-1"]
    assert filled["status"] == "filled"
    assert halt is not None and halt.halted and halt.reason.startswith("RECON_MISMATCH: AAPL position 7"), halt
    assert [(a["severity"], a["details"]["broker_qty"], a["details"]["keel_qty"]) for a in mismatch] == [
        ("critical", "7", "0")
    ]


async def venue_order_by_cid(cluster: Cluster, cid: str) -> dict:
    async with httpx.AsyncClient(timeout=5, headers=AUTH_HEADERS) as client:
        r = await client.get(f"{cluster['exchange'].url}/v2/orders:by_client_order_id", params={"client_order_id": cid})
        r.raise_for_status()
        return r.json()


async def test_recon_when_an_acked_order_fills_while_execution_has_lost_it_then_looked_up_and_books_agree(
    cluster: Cluster, namespace: Namespace, nats_url: str, database_url: str, nc: nats.NATS
):
    """An order keel holds as acknowledged ends at the broker, and execution no longer follows it
    (its state lost the order: what a bug would leave); no report will ever come. The OMS finds it
    open in its log, not listed at the broker, not followed, over two snapshots: it alerts
    RECON_ORDER_ENDED_UNSEEN and asks execution to look it up, and the fill comes in. Without the
    lookup the position difference halts trading (RECON_MISMATCH)."""
    # Arrange: a market order acknowledged (it fills on the next bar)
    seen = await start_pipeline(cluster, namespace, nc)
    bus = await Bus.connect(nats_url, Subjects(namespace.prefix), service="risk")
    f = Events(seed=73)
    intent = f.intent("AAPL", "buy", 9, PRICE, n=1)
    cid = intent.client_order_id
    try:
        await bus.publish(f.bar("AAPL", 1, PRICE))
        await bus.publish(intent)
        acked = await settle(
            lambda: oms_intent(cluster, cid), lambda i: i is not None and i["status"] == "ACKED", timeout=20
        )

        # execution goes down and comes back without the order; meanwhile the venue fills it
        await asyncio.to_thread(cluster["execution"].stop)
        forgotten = await forget_order(database_url, namespace, cid)
        await bus.publish(f.bar("AAPL", 2, PRICE))
        venue = await settle(lambda: venue_order_by_cid(cluster, cid), lambda o: o["status"] == "filled", timeout=20)
        await cluster.start_with("execution")

        # Act: bars end (each brings a broker snapshot) until the OMS has the fill
        for n in (2, 3, 4):
            await bus.publish(f.watermark("risk", minute(n)))
        ended = await settle(
            lambda: oms_intent(cluster, cid), lambda i: i is not None and i["status"] == "FILLED", timeout=30
        )
        for n in (5, 6, 7):  # more snapshots: the books agree now, nothing more is said
            await bus.publish(f.watermark("risk", minute(n)))
        await settle(
            lambda: cluster["execution"].get_json("/state"), lambda s: s["last_watermark"] >= minute(7), timeout=20
        )  # type: ignore[index]
        position = next((p["qty"] for p in await cluster["oms"].get_json("/positions") if p["symbol"] == "AAPL"), 0)  # type: ignore[union-attr]
        halt = await bus.halt_state()
    finally:
        await bus.close()

    # Assert
    assert (acked or {}).get("status") == "ACKED" and forgotten == 1
    assert (venue["status"], venue["filled_qty"]) == ("filled", "9")
    assert (ended or {}).get("status") == "FILLED", ended
    assert position == 9
    codes = [a["code"] for a in seen.alerts if a["source"] == "oms"]
    assert codes == ["RECON_ORDER_ENDED_UNSEEN"], codes
    assert halt is None or not halt.halted
    assert seen.kinds(cid)[-1] == "exec.order_filled.v1"


async def oms_intent(cluster: Cluster, cid: str) -> dict | None:
    rows = await cluster["oms"].get_json("/intents?limit=1000")
    return next((r for r in rows if r["client_order_id"] == cid), None)  # type: ignore[union-attr]


async def forget_order(database_url: str, namespace: Namespace, cid: str) -> int:
    """Drop one order from execution's stored state (execution stopped): return how many states had it."""
    conn = await asyncpg.connect(database_url)
    try:
        table = f"{schema_name(namespace.schema_prefix, 'execution')}.snapshot"
        changed = 0
        for row in await conn.fetch(f"SELECT name, data FROM {table}"):
            state = json.loads(bytes(row["data"]))
            if cid in state.get("orders", {}):
                del state["orders"][cid]
                await conn.execute(
                    f"UPDATE {table} SET data = $1 WHERE name = $2", json.dumps(state).encode(), row["name"]
                )
                changed += 1
        return changed
    finally:
        await conn.close()
