"""Statuses only a live venue sets reach execution through the real stream and leave the OMS right.

One cluster of real processes: the local exchange with its admin API on, the OMS and execution on
it (alpaca-py's TradingClient and TradingStream); real NATS and Postgres. Each order is accepted,
then the venue puts it in one of its own statuses (POST /admin/orders/{id}/status, streamed as a
trade_update of that name): a hold keeps it open with no fill until released, after which it fills
on the next bar; a rejection after acceptance ends it. Every case runs before anything is asserted.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import httpx
import nats
import pytest

from libs.bus import Bus
from libs.contracts.subjects import Subjects
from services.exchange.state import VENUE_HOLDS
from services.oms import state as oms
from tests.factories import Events
from tests.support.exchange import AUTH_HEADERS, set_venue_status
from tests.support.pipeline import settle, start_pipeline
from tests.support.processes import Cluster
from tests.support.servers import Namespace

pytestmark = pytest.mark.timeout(120)

SETTLE_SEC = 12.0
PRICE = "50"
HOLDS = sorted(VENUE_HOLDS)
SYMBOLS = ("AAPL", "MSFT", "NVDA", "AMZN", "META", "TSLA")  # one per hold
REJECTED_SYMBOL = "INTC"
ACCEPTED = "exec.order_accepted.v1"
FILLED = "exec.order_filled.v1"
REJECTED = "exec.order_rejected.v1"


async def test_venue_status_when_each_is_set_then_execution_follows_it_and_the_oms_ends_right(
    cluster: Cluster, namespace: Namespace, nats_url: str, nc: nats.NATS
):
    assert len(SYMBOLS) == len(HOLDS)
    seen = await start_pipeline(
        cluster,
        namespace,
        nc,
        # the stream carries every status: the poller stays slow, so it cannot be what saw them
        KEEL_EXEC_STREAM_POLL_INTERVAL_SEC="30",
    )
    bus = await Bus.connect(nats_url, Subjects(namespace.prefix), service="risk")
    f = Events(seed=97)
    exchange, execution = cluster["exchange"], cluster["execution"]

    async def intents() -> dict[str, dict]:
        rows = await cluster["oms"].get_json("/intents?limit=1000")
        return {r["client_order_id"]: r for r in rows}  # type: ignore[union-attr]

    async def held_by_execution() -> dict[str, dict]:
        return (await execution.get_json("/state"))["orders"]  # type: ignore[index]

    async def until(probe: Callable, done: Callable) -> object:  # type: ignore[type-arg]
        return await settle(probe, done, SETTLE_SEC)

    try:
        stream = await until(lambda: execution.get_json("/stream"), lambda v: v["connected"])
        assert stream["connected"], stream  # type: ignore[index]
        # Arrange: one market buy per symbol, accepted (a fill is due on the next bar)
        symbols = (*SYMBOLS, REJECTED_SYMBOL)
        for s in symbols:
            await bus.publish(f.bar(s, 1, PRICE))
        orders = {s: f.intent(s, "buy", 10, PRICE, n=1) for s in symbols}
        for intent in orders.values():
            await bus.publish(intent)
        cids = [o.client_order_id for o in orders.values()]
        acked = await until(intents, lambda rows: all(rows.get(c, {}).get("status") == oms.ACKED for c in cids))
        broker_ids = {s: acked[orders[s].client_order_id]["broker_order_id"] for s in symbols}  # type: ignore[index]

        # Act: the venue's own statuses, then a bar (no fill while held), then release and a bar
        for s, hold in zip(SYMBOLS, HOLDS, strict=True):
            await set_venue_status(exchange, broker_ids[s], hold)
        # bad requests are refused with Alpaca's 422 and change nothing
        async with httpx.AsyncClient(base_url=exchange.url, headers=AUTH_HEADERS, timeout=5) as http:
            target = f"/admin/orders/{broker_ids[REJECTED_SYMBOL]}/status"
            refused = [
                (r.status_code, r.json()["code"])
                for r in [
                    await http.post(target, json={"status": "filled"}),
                    await http.post(target, json={"state": "suspended"}),
                    await http.post(target, content=b"{not json"),
                    await http.post("/admin/orders/no-such-order/status", json={"status": "suspended"}),
                ]
            ]
        untouched = (await held_by_execution())[orders[REJECTED_SYMBOL].client_order_id]["broker_status"]
        await set_venue_status(exchange, broker_ids[REJECTED_SYMBOL], "rejected")
        want_held = {orders[s].client_order_id: hold for s, hold in zip(SYMBOLS, HOLDS, strict=True)}
        followed = await until(
            held_by_execution, lambda held: {c: o["broker_status"] for c, o in held.items()} == want_held
        )
        for s in symbols:
            await bus.publish(f.bar(s, 2, PRICE))
        await asyncio.sleep(1.0)  # a fill, if the hold let one through, would be in by now
        during = {c: r["status"] for c, r in (await intents()).items()}
        for s in SYMBOLS:
            await set_venue_status(exchange, broker_ids[s], "new")
            await bus.publish(f.bar(s, 3, PRICE))
        ended = await until(
            intents, lambda rows: all(rows[orders[s].client_order_id]["status"] == oms.FILLED for s in SYMBOLS)
        )
        held_at_end = await held_by_execution()
    finally:
        await bus.close()

    # Assert: execution followed each status from the stream; the OMS kept the held orders open
    assert {c: o["broker_status"] for c, o in followed.items()} == want_held  # type: ignore[union-attr]
    assert during == {
        **dict.fromkeys((orders[s].client_order_id for s in SYMBOLS), oms.ACKED),
        orders[REJECTED_SYMBOL].client_order_id: oms.REJECTED,
    }
    assert {c: r["status"] for c, r in ended.items()} == {  # type: ignore[union-attr]
        **dict.fromkeys((orders[s].client_order_id for s in SYMBOLS), oms.FILLED),
        orders[REJECTED_SYMBOL].client_order_id: oms.REJECTED,
    }
    assert [seen.kinds(orders[s].client_order_id)[1:] for s in SYMBOLS] == [(ACCEPTED, FILLED)] * len(SYMBOLS)
    rejected = seen.about(orders[REJECTED_SYMBOL].client_order_id, REJECTED)
    assert [r["reason"] for r in rejected] == ["broker status rejected"]
    assert held_at_end == {}
    assert refused == [(422, 40010001), (422, 40010001), (422, 40010001), (404, 40410000)]
    assert untouched == "new"
    assert [(a["code"], a["message"]) for a in seen.alerts if a["source"] == "oms"] == []
