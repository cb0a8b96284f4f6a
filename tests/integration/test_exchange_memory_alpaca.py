"""The exchange's memory holds open orders and recent days only; what it left to the store is
answered as if it never left.

Two exchange processes take the same bars and the same alpaca-py requests: one keeps closed
orders in memory for 1 hour of event time (KEEL_EXCHANGE_RETAIN_CLOSED_HOURS=1), the control
for 100,000 hours (it never lets one go here). Once the second session's first bar has left the
first day's closed orders to the store, every answer - by id, by client id, nested, every kind
of listing, the refusals of a duplicate client id, a cancel and a replace - must be the same
from both, and again after both restart (the restart loads only open and recent orders).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from alpaca.common.exceptions import APIError
from alpaca.trading.client import TradingClient
from alpaca.trading.enums import OrderClass, OrderSide, OrderStatus, QueryOrderStatus, TimeInForce
from alpaca.trading.requests import (
    GetOrderByIdRequest,
    GetOrdersRequest,
    LimitOrderRequest,
    MarketOrderRequest,
    ReplaceOrderRequest,
    StopLossRequest,
    TakeProfitRequest,
)

from libs.bus import Bus
from tests.support.exchange import (
    FRICTIONLESS,
    KEY,
    SECRET,
    ExchangeProcess,
    bar_publisher,
    bar_time,
    call,
    eventually,
    exchange_env,
    make_bar,
)
from tests.support.servers import Namespace, cleanup_namespace, new_namespace

pytestmark = pytest.mark.timeout(240)

DAY2 = date(2024, 3, 6)
CIDS = ("r-buy", "r-bracket", "r-bracket-gtc", "r-day-limit", "r-gtc", "r-cancel")


@pytest.fixture
async def control(request: pytest.FixtureRequest, nats_url: str, database_url: str) -> AsyncIterator[Namespace]:
    ns = new_namespace(request.node.nodeid + "|control")
    yield ns
    await cleanup_namespace(ns, nats_url=nats_url, database_url=database_url)


class Side:
    """One exchange process, its alpaca-py client and its bar publisher."""

    def __init__(self, name: str, exchange: ExchangeProcess, bus: Bus) -> None:
        self.name = name
        self.exchange = exchange
        self.bus = bus
        self.client = TradingClient(KEY, SECRET, paper=True, url_override=exchange.url)


async def both(sides: list[Side], fn: Callable[[TradingClient], Any]) -> list[Any]:
    """Run one blocking alpaca-py call against each exchange; an APIError is returned as
    (status code, message) so refusals compare too."""

    def run(client: TradingClient) -> Any:
        try:
            return fn(client)
        except APIError as e:
            return ("APIError", e.status_code, str(e))

    return [await call(run, s.client) for s in sides]


async def same(sides: list[Side], fn: Callable[[TradingClient], Any]) -> Any:
    kept, control = await both(sides, fn)
    assert kept == control
    return kept


def bracket(symbol: str, cid: str, tif: TimeInForce, take_profit: float, stop_loss: float) -> MarketOrderRequest:
    """A market buy of 5 with a take-profit and a stop-loss leg."""
    return MarketOrderRequest(
        symbol=symbol,
        qty=5,
        side=OrderSide.BUY,
        time_in_force=tif,
        client_order_id=cid,
        order_class=OrderClass.BRACKET,
        take_profit=TakeProfitRequest(limit_price=take_profit),
        stop_loss=StopLossRequest(stop_price=stop_loss),
    )


async def publish(sides: list[Side], *bars: Any) -> None:
    for s in sides:
        for b in bars:
            await s.bus.publish(b)


def loaded_line(log_path: Path) -> dict[str, Any]:
    """The last `exchange state loaded` record of a process's JSON log."""
    lines = [json.loads(line) for line in log_path.read_text().splitlines() if "exchange state loaded" in line]
    assert lines, f"no 'exchange state loaded' line in {log_path}"
    return lines[-1]


async def answers(sides: list[Side], ids: dict[str, str]) -> None:
    """Every read and every refusal must be the same from both exchanges."""
    for cid in CIDS:
        one = await same(sides, lambda c, cid=cid: c.get_order_by_client_id(cid))
        assert one.client_order_id == cid
        await same(sides, lambda c, cid=cid: c.get_order_by_id(ids[cid]))
        await same(sides, lambda c, cid=cid: c.get_order_by_id(ids[cid], GetOrderByIdRequest(nested=True)))
    for cid in ("r-bracket", "r-bracket-gtc"):  # one family left whole to the store, one kept by its open legs
        bracket = await same(sides, lambda c, cid=cid: c.get_order_by_id(ids[cid], GetOrderByIdRequest(nested=True)))
        assert bracket.legs is not None and len(bracket.legs) == 2

    listings = [
        GetOrdersRequest(status=QueryOrderStatus.CLOSED),
        GetOrdersRequest(status=QueryOrderStatus.CLOSED, nested=True),
        GetOrdersRequest(status=QueryOrderStatus.ALL, direction="asc"),
        GetOrdersRequest(status=QueryOrderStatus.ALL, limit=2),
        GetOrdersRequest(status=QueryOrderStatus.ALL, symbols=["MSFT"]),
        GetOrdersRequest(status=QueryOrderStatus.CLOSED, side=OrderSide.BUY, after=bar_time(1)),
        GetOrdersRequest(status=QueryOrderStatus.ALL, until=bar_time(2), nested=True),
        GetOrdersRequest(status=QueryOrderStatus.OPEN),
    ]
    for req in listings:
        await same(sides, lambda c, req=req: c.get_orders(req))
    closed = await same(sides, lambda c: c.get_orders(GetOrdersRequest(status=QueryOrderStatus.CLOSED, nested=True)))
    assert {o.client_order_id for o in closed} == {"r-buy", "r-bracket", "r-bracket-gtc", "r-day-limit", "r-cancel"}

    # refusals: a client id taken days ago, a cancel and a replace of a filled order, an unknown id
    dup = await same(
        sides,
        lambda c: c.submit_order(
            MarketOrderRequest(
                symbol="AAPL", qty=1, side=OrderSide.BUY, time_in_force=TimeInForce.DAY, client_order_id="r-buy"
            )
        ),
    )
    assert dup[0] == "APIError" and dup[1] == 422 and "client_order_id must be unique" in dup[2]
    canceled = await same(sides, lambda c: c.cancel_order_by_id(ids["r-buy"]))
    assert canceled[0] == "APIError" and canceled[1] == 422
    replaced = await same(sides, lambda c: c.replace_order_by_id(ids["r-buy"], ReplaceOrderRequest(qty=2)))
    assert replaced[0] == "APIError" and replaced[1] == 422
    missing = await same(sides, lambda c: c.get_order_by_client_id("r-never"))
    assert missing[0] == "APIError" and missing[1] == 404


async def test_closed_orders_of_earlier_days_when_left_to_the_store_then_every_answer_is_unchanged(
    namespace: Namespace, control: Namespace, nats_url: str, database_url: str, tmp_path: Path
) -> None:
    envs = [
        await exchange_env(namespace, nats_url, database_url, KEEL_EXCHANGE_RETAIN_CLOSED_HOURS="1", **FRICTIONLESS),
        await exchange_env(control, nats_url, database_url, KEEL_EXCHANGE_RETAIN_CLOSED_HOURS="100000", **FRICTIONLESS),
    ]
    logs = [tmp_path / "kept.log", tmp_path / "control.log"]
    async with bar_publisher(namespace, nats_url) as bus_kept, bar_publisher(control, nats_url) as bus_control:
        procs = [await ExchangeProcess(envs[0], logs[0]).start(), await ExchangeProcess(envs[1], logs[1]).start()]
        try:
            sides = [Side("kept", procs[0], bus_kept), Side("control", procs[1], bus_control)]
            await publish(sides, make_bar("AAPL", 1, "100"), make_bar("MSFT", 1, "200"), make_bar("SPY", 1, "400"))
            for s in sides:
                await eventually(lambda s=s: s.client.get_clock().timestamp == bar_time(1))

            def order(req: Any) -> Callable[[TradingClient], Any]:
                return lambda c: c.submit_order(req)

            day, gtc, buy = TimeInForce.DAY, TimeInForce.GTC, OrderSide.BUY
            requests = [
                MarketOrderRequest(symbol="AAPL", qty=10, side=buy, time_in_force=day, client_order_id="r-buy"),
                bracket("AAPL", "r-bracket", day, 150.00, 50.00),
                bracket("SPY", "r-bracket-gtc", gtc, 600.00, 200.00),
                LimitOrderRequest(
                    symbol="MSFT", qty=3, side=buy, time_in_force=day, limit_price=100.0, client_order_id="r-day-limit"
                ),
                LimitOrderRequest(
                    symbol="MSFT", qty=2, side=buy, time_in_force=gtc, limit_price=50.0, client_order_id="r-gtc"
                ),
                LimitOrderRequest(
                    symbol="MSFT", qty=1, side=buy, time_in_force=day, limit_price=90.0, client_order_id="r-cancel"
                ),
            ]
            ids = {}
            for req in requests:
                placed = await same(sides, order(req))
                assert placed.status == OrderStatus.NEW, placed
                ids[placed.client_order_id] = str(placed.id)
            await same(sides, lambda c: c.cancel_order_by_id(ids["r-cancel"]))

            # the next bar fills the market orders; the next session's first bar expires the day
            # orders and (1 hour retained) leaves day 1's closed families to the store
            await publish(sides, make_bar("AAPL", 2, "100"), make_bar("MSFT", 2, "200"), make_bar("SPY", 2, "400"))
            for s in sides:
                for cid in ("r-buy", "r-bracket", "r-bracket-gtc"):
                    await eventually(
                        lambda s=s, cid=cid: s.client.get_order_by_id(ids[cid]).status == OrderStatus.FILLED
                    )
            await publish(
                sides,
                make_bar("AAPL", 1, "101", day=DAY2),
                make_bar("MSFT", 1, "201", day=DAY2),
                make_bar("SPY", 1, "401", day=DAY2),
            )
            for s in sides:
                await eventually(lambda s=s: s.client.get_clock().timestamp == bar_time(1, day=DAY2))
            assert "closed orders of earlier days left to the store" in logs[0].read_text()
            assert "closed orders of earlier days left to the store" not in logs[1].read_text()
            expired = await same(sides, lambda c: c.get_order_by_client_id("r-day-limit"))
            assert expired.status == OrderStatus.EXPIRED
            await answers(sides, ids)

            # a restart loads open and recent orders only; the answers stay the same
            for p in procs:
                await p.stop()
            procs = [await ExchangeProcess(envs[0], logs[0]).start(), await ExchangeProcess(envs[1], logs[1]).start()]
            sides = [Side("kept", procs[0], bus_kept), Side("control", procs[1], bus_control)]
            kept, full = loaded_line(logs[0]), loaded_line(logs[1])
            # kept: r-gtc (open) and r-bracket-gtc's family (its legs are open, so its filled entry comes too)
            assert (kept["orders"], kept["all_in_memory"]) == (4, False)
            assert (full["orders"], full["all_in_memory"]) == (10, True)  # 6 orders and two brackets' legs
            await answers(sides, ids)
            # a new order after the restart continues the sequence (seq, hence listing order)
            new = await same(
                sides,
                order(MarketOrderRequest(symbol="AAPL", qty=1, side=buy, time_in_force=day, client_order_id="r-after")),
            )
            assert new.status == OrderStatus.NEW
            listed = await same(sides, lambda c: c.get_orders(GetOrdersRequest(status=QueryOrderStatus.ALL, limit=500)))
            assert [o.client_order_id for o in listed][0] == "r-after"
        finally:
            for p in procs:
                await p.stop()
