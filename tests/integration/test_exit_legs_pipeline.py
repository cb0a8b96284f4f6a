"""Exit legs of bracket, oto and oco orders reach the OMS as child intents, and their fills move positions.

One cluster of real processes: the local exchange, the OMS and execution pointed at it (alpaca-py's
TradingClient and TradingStream); real NATS and Postgres. The test publishes OrderIntents as risk
would and bars as marketdata would. An order fills on the first bar of its symbol after it was
accepted; a bracket's or oto's legs are held until the entry fills and work from the bar after.

Each case runs on its own symbol, one after another, and every case runs before anything is
asserted, so one failure shows the outcome of all of them.
"""

from __future__ import annotations

import functools
from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal
from itertools import count
from typing import Any

import httpx
import msgspec
import nats
import pytest

from libs.bus import Bus
from libs.contracts.base import leg_client_order_id
from libs.contracts.risk import OrderIntent
from libs.contracts.subjects import Subjects
from services.oms import state as oms
from tests.factories import Events
from tests.support import pipeline
from tests.support.exchange import AUTH_HEADERS, add_fault
from tests.support.pipeline import start_pipeline
from tests.support.processes import Cluster
from tests.support.servers import Namespace

pytestmark = pytest.mark.timeout(120)

D = Decimal
SETTLE_SEC = 15.0
QTY = 10  # far below the exchange's participation cap (10 % of a 1,000-share bar): one fill each
PRICE = "50"

SUBMITTED = "exec.order_submitted.v1"
ACCEPTED = "exec.order_accepted.v1"
FILLED = "exec.order_filled.v1"
CANCELED = "exec.order_canceled.v1"
REJECTED = "exec.order_rejected.v1"
UNKNOWN = "exec.order_status_unknown.v1"
SYMBOLS = ("AAPL", "MSFT", "NVDA", "AMZN", "META", "TSLA")


# poll until done or SETTLE_SEC; the last result either way (tests.support.pipeline.settle)
settle = functools.partial(pipeline.settle, timeout=SETTLE_SEC)


@dataclass
class Run:
    cluster: Cluster
    bus: Bus
    f: Events = field(default_factory=lambda: Events(seed=73))
    minutes: count[int] = field(default_factory=lambda: count(2, 4))  # per case: four minutes of its own

    async def intents(self) -> dict[str, dict]:
        rows = await self.cluster["oms"].get_json("/intents?limit=1000")
        return {r["client_order_id"]: r for r in rows}  # type: ignore[union-attr]

    async def statuses(self, cids: list[str]) -> tuple[str, ...]:
        rows = await self.intents()
        return tuple(rows[c]["status"] if c in rows else "absent" for c in cids)

    async def until(self, cids: list[str], want: tuple[str, ...]) -> tuple[str, ...]:
        return await settle(lambda: self.statuses(cids), lambda s: s == want)

    async def position(self, symbol: str) -> tuple[int, Decimal]:
        rows = await self.cluster["oms"].get_json("/positions")
        row = next((r for r in rows if r["symbol"] == symbol), None)  # type: ignore[union-attr]
        return (row["qty"], D(row["realized_pnl"])) if row else (0, D(0))

    async def venue_orders(self, symbol: str) -> list[dict]:
        params = {"status": "all", "limit": "500", "symbols": symbol}
        async with httpx.AsyncClient(timeout=5, headers=AUTH_HEADERS) as client:
            r = await client.get(f"{self.cluster['exchange'].url}/v2/orders", params=params)
            r.raise_for_status()
            return r.json()

    async def bar(self, symbol: str, minute: int, close: str) -> None:
        await self.bus.publish(self.f.bar(symbol, minute, close))

    def intent(self, symbol: str, side: str, minute: int, **family: Any) -> OrderIntent:
        base = self.f.intent(symbol, side, QTY, PRICE, n=minute)
        return msgspec.structs.replace(base, **family)


def family_cids(intent: OrderIntent, *roles: str) -> list[str]:
    return [intent.client_order_id, *(leg_client_order_id(intent.client_order_id, r) for r in roles)]


async def bracket_take_profit(run: Run) -> dict[str, object]:
    """Buy bracket: the entry fills, the take-profit fills on a rally, the stop-loss is canceled."""
    symbol, m = "AAPL", next(run.minutes)
    await run.bar(symbol, m, PRICE)
    intent = run.intent(
        symbol, "buy", m, order_class="bracket", take_profit_limit_price=D("55"), stop_loss_stop_price=D("45")
    )
    cids = family_cids(intent, "take_profit", "stop_loss")
    await run.bus.publish(intent)
    acked = await run.until(cids, (oms.ACKED,) * 3)
    await run.bar(symbol, m + 1, PRICE)  # the entry fills; its legs wake for the next bar
    entered = await run.until(cids, (oms.FILLED, oms.ACKED, oms.ACKED))
    position_in = await run.position(symbol)
    await run.bar(symbol, m + 2, "56")  # trades through the take-profit limit
    ended = await run.until(cids, (oms.FILLED, oms.FILLED, oms.CANCELED))
    return {"cids": cids, "acked": acked, "entered": entered, "position in": position_in[0], "ended": ended}


async def oto_stop_loss(run: Run) -> dict[str, object]:
    """Buy oto with a stop-loss only: the entry fills, a fall through the stop sells it out."""
    symbol, m = "MSFT", next(run.minutes)
    await run.bar(symbol, m, PRICE)
    intent = run.intent(symbol, "buy", m, order_class="oto", stop_loss_stop_price=D("45"))
    cids = family_cids(intent, "stop_loss")
    await run.bus.publish(intent)
    acked = await run.until(cids, (oms.ACKED,) * 2)
    await run.bar(symbol, m + 1, PRICE)
    entered = await run.until(cids, (oms.FILLED, oms.ACKED))
    position_in = await run.position(symbol)
    await run.bar(symbol, m + 2, "44")  # gaps through the stop: it triggers and sells at the open
    ended = await run.until(cids, (oms.FILLED, oms.FILLED))
    return {"cids": cids, "acked": acked, "entered": entered, "position in": position_in[0], "ended": ended}


async def oco_exit(run: Run) -> dict[str, object]:
    """A long position, then a sell oco: the stop-loss leg fills on a fall, the take-profit is canceled."""
    symbol, m = "NVDA", next(run.minutes)
    await run.bar(symbol, m, PRICE)
    entry = run.intent(symbol, "buy", m)
    await run.bus.publish(entry)
    await run.until([entry.client_order_id], (oms.ACKED,))
    await run.bar(symbol, m + 1, PRICE)
    await run.until([entry.client_order_id], (oms.FILLED,))
    position_in = await run.position(symbol)
    oco = run.intent(
        symbol,
        "sell",
        m + 1,
        order_type="limit",
        limit_price=D("55"),
        order_class="oco",
        take_profit_limit_price=D("55"),
        stop_loss_stop_price=D("45"),
    )
    cids = family_cids(oco, "stop_loss")
    await run.bus.publish(oco)
    acked = await run.until(cids, (oms.ACKED,) * 2)
    await run.bar(symbol, m + 2, "44")
    ended = await run.until(cids, (oms.CANCELED, oms.FILLED))
    return {"cids": cids, "acked": acked, "entered": acked, "position in": position_in[0], "ended": ended}


async def bracket_refused(run: Run) -> dict[str, object]:
    """A buy bracket whose take-profit sits below the price: the venue refuses it, legs and all."""
    symbol, m = "AMZN", next(run.minutes)
    await run.bar(symbol, m, PRICE)
    intent = run.intent(
        symbol, "buy", m, order_class="bracket", take_profit_limit_price=D("49"), stop_loss_stop_price=D("45")
    )
    cids = family_cids(intent, "take_profit", "stop_loss")
    await run.bus.publish(intent)
    ended = await run.until(cids, (oms.REJECTED,) * 3)
    return {"cids": cids, "ended": ended}


async def bracket_answer_lost(run: Run) -> dict[str, object]:
    """The venue takes a bracket but its answer is lost: unknown, found by client_order_id, legs adopted."""
    symbol, m = "META", next(run.minutes)
    await run.bar(symbol, m, PRICE)
    intent = run.intent(
        symbol, "buy", m, order_class="bracket", take_profit_limit_price=D("55"), stop_loss_stop_price=D("45")
    )
    cids = family_cids(intent, "take_profit", "stop_loss")
    await add_fault(run.cluster["exchange"], kind="lose_response", method="POST", path="/v2/orders", count=1)
    await run.bus.publish(intent)
    acked = await run.until(cids, (oms.ACKED,) * 3)
    await run.bar(symbol, m + 1, PRICE)
    await run.until(cids, (oms.FILLED, oms.ACKED, oms.ACKED))
    await run.bar(symbol, m + 2, "44")  # the stop-loss this time
    ended = await run.until(cids, (oms.FILLED, oms.CANCELED, oms.FILLED))
    return {"cids": cids, "acked": acked, "ended": ended}


async def close_under_legs(run: Run) -> dict[str, object]:
    """A bracket's legs rest on the position; a plain sell closes it: the legs are canceled first."""
    symbol, m = "TSLA", next(run.minutes)
    await run.bar(symbol, m, PRICE)
    intent = run.intent(
        symbol, "buy", m, order_class="bracket", take_profit_limit_price=D("55"), stop_loss_stop_price=D("45")
    )
    cids = family_cids(intent, "take_profit", "stop_loss")
    await run.bus.publish(intent)
    await run.until(cids, (oms.ACKED,) * 3)
    await run.bar(symbol, m + 1, PRICE)
    await run.until(cids, (oms.FILLED, oms.ACKED, oms.ACKED))
    close = run.intent(symbol, "sell", m + 1)
    await run.bus.publish(close)
    freed = await run.until([*cids, close.client_order_id], (oms.FILLED, oms.CANCELED, oms.CANCELED, oms.ACKED))
    await run.bar(symbol, m + 2, PRICE)
    ended = await run.until([close.client_order_id], (oms.FILLED,))
    return {"cids": [*cids, close.client_order_id], "freed": freed, "ended": ended}


async def test_exit_legs_when_bracket_oto_oco_trade_then_leg_fills_reach_the_oms_positions(
    cluster: Cluster, namespace: Namespace, nats_url: str, nc: nats.NATS
):
    # Arrange: the exchange, then the OMS and execution on it
    seen = await start_pipeline(
        cluster,
        namespace,
        nc,
        KEEL_EXEC_POLL_INTERVAL_SEC="0.2",
    )
    bus = await Bus.connect(nats_url, Subjects(namespace.prefix), service="risk")
    run = Run(cluster, bus)

    # Act
    try:
        bracket = await bracket_take_profit(run)
        oto = await oto_stop_loss(run)
        oco = await oco_exit(run)
        refused = await bracket_refused(run)
        lost = await bracket_answer_lost(run)
        freed = await close_under_legs(run)
        positions = {s: await run.position(s) for s in SYMBOLS}
        venue = {s: await run.venue_orders(s) for s in SYMBOLS}
        rows = await run.intents()
        exec_state = await cluster["execution"].get_json("/state")
    finally:
        await bus.close()

    # Assert: each case's lifecycle, as the OMS logged it
    assert (bracket["acked"], bracket["entered"], bracket["ended"]) == (
        (oms.ACKED,) * 3,
        (oms.FILLED, oms.ACKED, oms.ACKED),
        (oms.FILLED, oms.FILLED, oms.CANCELED),
    )
    assert (oto["acked"], oto["entered"], oto["ended"]) == (
        (oms.ACKED,) * 2,
        (oms.FILLED, oms.ACKED),
        (oms.FILLED,) * 2,
    )
    assert (oco["acked"], oco["ended"]) == ((oms.ACKED,) * 2, (oms.CANCELED, oms.FILLED))
    assert refused["ended"] == (oms.REJECTED,) * 3
    assert (lost["acked"], lost["ended"]) == ((oms.ACKED,) * 3, (oms.FILLED, oms.CANCELED, oms.FILLED))
    # a sell needing the shares the legs hold: the legs canceled first, then it went and filled
    assert (freed["freed"], freed["ended"]) == ((oms.FILLED, oms.CANCELED, oms.CANCELED, oms.ACKED), (oms.FILLED,))
    # the entry opened the position, the leg's fill closed it at a profit (take-profit) or a loss
    assert [c["position in"] for c in (bracket, oto, oco)] == [QTY, QTY, QTY]
    assert {s: q for s, (q, _) in positions.items()} == dict.fromkeys(SYMBOLS, 0)
    assert [positions[s][1] > 0 for s in ("AAPL", "MSFT", "NVDA", "META")] == [True, False, False, False]

    # every report of each order, in order; one fill per order, no invalid transition anywhere
    tp, sl = bracket["cids"][1:]  # type: ignore[index]
    assert seen.kinds(bracket["cids"][0]) == (SUBMITTED, ACCEPTED, FILLED)  # type: ignore[index]
    assert seen.kinds(tp) == (SUBMITTED, ACCEPTED, FILLED)
    assert seen.kinds(sl) == (SUBMITTED, ACCEPTED, CANCELED)
    assert seen.kinds(oco["cids"][0]) == (SUBMITTED, ACCEPTED, CANCELED)  # type: ignore[index]
    assert seen.kinds(oco["cids"][1]) == (SUBMITTED, ACCEPTED, FILLED)  # type: ignore[index]
    assert [seen.kinds(c) for c in refused["cids"]] == [(SUBMITTED, REJECTED)] * 3  # type: ignore[union-attr]
    # the answer lost: the whole family unknown, then adopted from the lookup by client_order_id
    assert [seen.kinds(c) for c in lost["cids"]] == [  # type: ignore[union-attr]
        (SUBMITTED, UNKNOWN, ACCEPTED, FILLED),
        (SUBMITTED, UNKNOWN, ACCEPTED, CANCELED),
        (SUBMITTED, UNKNOWN, ACCEPTED, FILLED),
    ]
    assert [(a["code"], a["message"]) for a in seen.alerts if a["source"] == "oms"] == []

    # the intent log holds the legs as children of their order, with the leg's own side and type
    leg = rows[tp]
    assert (leg["parent_intent_id"], leg["leg_role"], leg["side"], leg["order_type"], leg["qty"]) == (
        rows[bracket["cids"][0]]["intent_id"],  # type: ignore[index]
        "take_profit",
        "sell",
        "limit",
        QTY,
    )
    assert (rows[sl]["leg_role"], rows[sl]["order_type"]) == ("stop_loss", "stop")

    # the venue holds each order once (the legs under the broker's own ids), nothing from the refusal
    at_venue = {s: Counter((o["side"], o["order_type"], o["status"]) for o in orders) for s, orders in venue.items()}
    assert at_venue == {
        "AAPL": Counter(
            {("buy", "market", "filled"): 1, ("sell", "limit", "filled"): 1, ("sell", "stop", "canceled"): 1}
        ),
        "MSFT": Counter({("buy", "market", "filled"): 1, ("sell", "stop", "filled"): 1}),
        "NVDA": Counter(
            {("buy", "market", "filled"): 1, ("sell", "limit", "canceled"): 1, ("sell", "stop", "filled"): 1}
        ),
        "AMZN": Counter(),
        "TSLA": Counter(
            {
                ("buy", "market", "filled"): 1,
                ("sell", "market", "filled"): 1,
                ("sell", "limit", "canceled"): 1,
                ("sell", "stop", "canceled"): 1,
            }
        ),
        "META": Counter(
            {("buy", "market", "filled"): 1, ("sell", "limit", "canceled"): 1, ("sell", "stop", "filled"): 1}
        ),
    }
    # execution forgot every order it finished, and every leg alias with it
    assert (exec_state["orders"], exec_state["aliases"]) == ({}, {})  # type: ignore[index]


async def test_exit_legs_when_a_leg_filled_unseen_before_a_close_then_the_close_is_refused_not_sent(
    cluster: Cluster, namespace: Namespace, nats_url: str, nc: nats.NATS
):
    # execution hears nothing from the stream (ws_silent) and polls rarely, so it still holds the
    # take-profit as working when it has already filled at the venue and a close arrives
    seen = await start_pipeline(
        cluster,
        namespace,
        nc,
        KEEL_EXEC_STREAM_POLL_INTERVAL_SEC="60",
        KEEL_EXEC_STREAM_STALE_SEC="60",
    )
    bus = await Bus.connect(nats_url, Subjects(namespace.prefix), service="risk")
    run = Run(cluster, bus)
    symbol, m = "AAPL", 2
    try:
        await settle(lambda: cluster["execution"].get_json("/stream"), lambda v: v["connected"])  # type: ignore[index]
        await run.bar(symbol, m, PRICE)
        intent = run.intent(
            symbol, "buy", m, order_class="bracket", take_profit_limit_price=D("55"), stop_loss_stop_price=D("45")
        )
        cids = family_cids(intent, "take_profit", "stop_loss")
        await run.bus.publish(intent)
        await run.until(cids, (oms.ACKED,) * 3)
        await run.bar(symbol, m + 1, PRICE)
        entered = await run.until(cids, (oms.FILLED, oms.ACKED, oms.ACKED))
        held_before = set((await cluster["execution"].get_json("/state"))["orders"])  # type: ignore[index]
        await add_fault(cluster["exchange"], kind="ws_silent", count=0)
        await run.bar(symbol, m + 2, "56")  # the take-profit fills at the venue; execution does not hear
        filled_at_venue = await settle(
            lambda: run.venue_orders(symbol),
            lambda orders: any(o["order_type"] == "limit" and o["status"] == "filled" for o in orders),
        )
        still_working = await run.statuses(cids)
        close = run.intent(symbol, "sell", m + 2)
        await run.bus.publish(close)
        ended = await run.until([*cids, close.client_order_id], (oms.FILLED, oms.FILLED, oms.CANCELED, oms.REJECTED))
        rows = await run.intents()
        venue = await run.venue_orders(symbol)
        position = await run.position(symbol)
    finally:
        await bus.close()

    assert entered == (oms.FILLED, oms.ACKED, oms.ACKED)
    assert set(cids[1:]) <= held_before
    assert any(o["status"] == "filled" and o["order_type"] == "limit" for o in filled_at_venue)
    assert still_working == (oms.FILLED, oms.ACKED, oms.ACKED)  # the OMS had not heard either
    # the close found the take-profit filled while canceling it: refused, never sent
    assert ended == (oms.FILLED, oms.FILLED, oms.CANCELED, oms.REJECTED)
    assert rows[close.client_order_id]["reason"] == "EXIT_LEG_FILLED"
    assert close.client_order_id not in [o["client_order_id"] for o in venue]
    assert position[0] == 0  # flat: no short opened by a close of shares already sold
    assert [a["code"] for a in seen.alerts if a["source"] == "execution"] == ["EXIT_LEGS_CANCELED"]
