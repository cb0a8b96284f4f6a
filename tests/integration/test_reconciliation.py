"""Reconciliation against the real local exchange (issue 5 §4): a foreign order found open when
execution starts is alerted and, with STARTUP_CLEANUP on, canceled at the venue; a position the
broker holds and keel's log does not explain halts trading with RECON_MISMATCH.

Real processes (exchange, OMS, execution), real NATS and Postgres. The "foreign" orders are
placed straight at the exchange over its Alpaca API, as a person with the same keys would.
"""

from __future__ import annotations

import httpx
import nats
import pytest

from libs.bus import Bus
from libs.contracts.subjects import Subjects
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
