"""The local paper exchange through the official alpaca-py TradingClient, on real NATS and Postgres.

The exchange runs as users run it: `python -m services.exchange` in a child process on the
shared runtime (libs/runtime/runner.py), started with env and stopped with SIGTERM; the restart
in the middle really restarts the process. alpaca-py is synchronous (requests), so every client
call runs in a thread.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import httpx
import nats
import pytest
from alpaca.trading.client import TradingClient
from alpaca.trading.enums import OrderSide, OrderStatus, PositionSide, QueryOrderStatus, TimeInForce
from alpaca.trading.requests import GetOrdersRequest, LimitOrderRequest, MarketOrderRequest

from libs.bus import Bus
from libs.contracts import subjects as sj
from libs.contracts.codec import decode_event
from libs.contracts.ops import Heartbeat
from libs.contracts.subjects import Subjects
from services.exchange import handlers
from tests.support.exchange import (
    ACCOUNT,
    CLOSE_NS,
    EPOCH,
    FRICTIONLESS,
    KEY,
    MINUTE,
    OPEN_NS,
    SECRET,
    STOP_TIMEOUT_S,
    ExchangeProcess,
    bar_publisher,
    call,
    eventually,
    exchange_env,
    expect_api_error,
    make_bar,
)
from tests.support.servers import Namespace

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
async def env(namespace: Namespace, nats_url: str, database_url: str) -> dict[str, str]:
    return await exchange_env(namespace, nats_url, database_url, **FRICTIONLESS)


@pytest.fixture
async def publisher(namespace: Namespace, nats_url: str):  # type: ignore[no-untyped-def]
    async with bar_publisher(namespace, nats_url) as bus:
        yield bus


@pytest.fixture
async def heartbeats(namespace: Namespace, nats_url: str):  # type: ignore[no-untyped-def]
    """Collect the exchange's heartbeats from core NATS (the alerts service watches them)."""
    seen: list[Heartbeat] = []
    client = await nats.connect(nats_url)

    async def on_msg(msg) -> None:  # type: ignore[no-untyped-def]
        event = decode_event(msg.data)
        assert isinstance(event, Heartbeat)
        seen.append(event)

    await client.subscribe(Subjects(namespace.prefix).event(sj.HB, "heartbeat", "exchange"), cb=on_msg)
    yield seen
    await client.close()


async def test_alpaca_client_when_orders_bars_and_restart_then_exchange_answers_like_alpaca(
    env: dict[str, str], publisher: Bus, heartbeats: list[Heartbeat], tmp_path: Path
) -> None:
    log_path = tmp_path / "exchange.log"
    exchange = await ExchangeProcess(env, log_path).start()
    try:
        client = TradingClient(KEY, SECRET, paper=True, url_override=exchange.url)

        # before any bar the event clock is 0: Alpaca's Clock reads 1970-01-01T00:00Z
        assert (await call(client.get_clock)).timestamp == EPOCH

        # the exchange's clock follows the bus: first bar at 09:31
        await publisher.publish(make_bar("AAPL", 1, "99"))
        clock = await eventually(
            lambda: (
                (c := client.get_clock()).timestamp == datetime.fromtimestamp((OPEN_NS + MINUTE) / 1e9, tz=UTC) and c
            )
        )
        assert clock.is_open is True
        assert clock.next_close == datetime.fromtimestamp(CLOSE_NS / 1e9, tz=UTC)

        # submit a market order; get it by id and by client order id
        buy = await call(
            client.submit_order,
            MarketOrderRequest(
                symbol="AAPL",
                qty=10,
                side=OrderSide.BUY,
                time_in_force=TimeInForce.DAY,
                client_order_id="it-buy-1",
            ),
        )
        assert buy.status == OrderStatus.NEW
        assert str(buy.id) == handlers.order_id_for(ACCOUNT, "it-buy-1")
        assert buy.qty == "10" and buy.filled_qty == "0" and buy.filled_avg_price is None
        assert buy.submitted_at == datetime.fromtimestamp((OPEN_NS + MINUTE) / 1e9, tz=UTC)
        assert buy.expires_at == datetime.fromtimestamp(CLOSE_NS / 1e9, tz=UTC)
        by_id = await call(client.get_order_by_id, buy.id)
        by_cid = await call(client.get_order_by_client_id, "it-buy-1")
        assert by_id == by_cid == buy

        limit = await call(
            client.submit_order,
            LimitOrderRequest(
                symbol="MSFT",
                qty=5,
                side=OrderSide.SELL,
                time_in_force=TimeInForce.GTC,
                limit_price=500.0,
                client_order_id="it-limit-1",
            ),
        )
        assert limit.limit_price == "500"

        # list with filters
        open_orders = await call(client.get_orders, GetOrdersRequest(status=QueryOrderStatus.OPEN))
        assert [o.client_order_id for o in open_orders] == ["it-limit-1", "it-buy-1"]  # desc
        asc = await call(client.get_orders, GetOrdersRequest(direction="asc"))
        assert [o.client_order_id for o in asc] == ["it-buy-1", "it-limit-1"]
        aapl = await call(client.get_orders, GetOrdersRequest(symbols=["AAPL"]))
        assert [o.client_order_id for o in aapl] == ["it-buy-1"]
        sells = await call(client.get_orders, GetOrdersRequest(side=OrderSide.SELL, limit=1))
        assert [o.client_order_id for o in sells] == ["it-limit-1"]
        later = await call(
            client.get_orders,
            GetOrdersRequest(after=buy.submitted_at + timedelta(seconds=1), status=QueryOrderStatus.ALL),
        )
        assert later == []
        nothing_closed = await call(client.get_orders, GetOrdersRequest(status=QueryOrderStatus.CLOSED))
        assert nothing_closed == []

        # the next AAPL bar fills the market order at open + half the spread
        await publisher.publish(make_bar("AAPL", 2, "100", close="101"))
        filled = await eventually(lambda: (o := client.get_order_by_id(buy.id)).status == OrderStatus.FILLED and o)
        assert filled.filled_qty == "10"
        assert filled.filled_avg_price == "100.05"
        assert filled.filled_at == datetime.fromtimestamp((OPEN_NS + 2 * MINUTE) / 1e9, tz=UTC)

        positions = await call(client.get_all_positions)
        assert [(p.symbol, p.qty, p.side, p.avg_entry_price) for p in positions] == [
            ("AAPL", "10", PositionSide.LONG, "100.05")
        ]
        position = await call(client.get_open_position, "AAPL")
        assert position.market_value == "1010.00"
        assert position.cost_basis == "1000.50"
        assert position.unrealized_pl == "9.50"
        assert position.current_price == "101"
        account = await call(client.get_account)
        assert account.cash == "98999.50"
        assert account.equity == "100009.50"
        assert account.long_market_value == "1010.00"
        # 2 * equity - gross - the open MSFT sell's opening notional (5 x 500)
        assert account.buying_power == "196509.00"
        assert str(account.id) == handlers.account_uuid(ACCOUNT)
        assert account.account_number == "PA0KEEL0001"
        clock = await call(client.get_clock)
        assert clock.timestamp == datetime.fromtimestamp((OPEN_NS + 2 * MINUTE) / 1e9, tz=UTC)

        # Alpaca's errors, as alpaca-py's APIError reads them
        duplicate = await asyncio.to_thread(
            expect_api_error,
            lambda: client.submit_order(
                MarketOrderRequest(
                    symbol="AAPL",
                    qty=1,
                    side=OrderSide.BUY,
                    time_in_force=TimeInForce.DAY,
                    client_order_id="it-buy-1",
                )
            ),
        )
        assert (duplicate.status_code, duplicate.code) == (422, 40010001)
        assert duplicate.message == "client_order_id must be unique"
        too_big = await asyncio.to_thread(
            expect_api_error,
            lambda: client.submit_order(
                MarketOrderRequest(symbol="AAPL", qty=5000, side=OrderSide.BUY, time_in_force=TimeInForce.DAY)
            ),
        )
        assert (too_big.status_code, too_big.code) == (403, 40310000)
        fractional = await asyncio.to_thread(
            expect_api_error,
            lambda: client.submit_order(
                MarketOrderRequest(symbol="AAPL", qty=1.5, side=OrderSide.BUY, time_in_force=TimeInForce.DAY)
            ),
        )
        assert (fractional.status_code, fractional.code) == (422, 40010001)
        missing = await asyncio.to_thread(
            expect_api_error, lambda: client.get_order_by_id("00000000-0000-4000-8000-000000000000")
        )
        assert (missing.status_code, missing.code) == (404, 40410000)
        no_position = await asyncio.to_thread(expect_api_error, lambda: client.get_open_position("MSFT"))
        assert (no_position.status_code, no_position.code) == (404, 40410000)
        intruder = TradingClient(KEY, "wrong-secret", paper=True, url_override=exchange.url)
        denied = await asyncio.to_thread(expect_api_error, intruder.get_account)
        assert (denied.status_code, denied.code, denied.message) == (
            401,
            40110000,
            "request is not authorized",
        )

        # cancel one, then refuse to cancel it again or a filled one
        assert await call(client.cancel_order_by_id, limit.id) is None
        canceled = await call(client.get_order_by_id, limit.id)
        assert canceled.status == OrderStatus.CANCELED
        assert canceled.canceled_at is not None
        again = await asyncio.to_thread(expect_api_error, lambda: client.cancel_order_by_id(limit.id))
        assert (again.status_code, again.code) == (422, 42210000)
        assert again.message == 'order is already in "canceled" state'

        # cancel all: 207 with one entry per canceled order
        for cid in ("it-gtc-a", "it-gtc-b"):
            await call(
                client.submit_order,
                LimitOrderRequest(
                    symbol="AAPL",
                    qty=1,
                    side=OrderSide.BUY,
                    time_in_force=TimeInForce.GTC,
                    limit_price=1.0,
                    client_order_id=cid,
                ),
            )
        responses = await call(client.cancel_orders)
        assert sorted(r.status for r in responses) == [200, 200]
        assert {str(r.id) for r in responses} == {
            handlers.order_id_for(ACCOUNT, "it-gtc-a"),
            handlers.order_id_for(ACCOUNT, "it-gtc-b"),
        }
        assert await call(client.get_orders) == []

        # an order left working across a restart, and a bar published while the exchange is down
        sell = await call(
            client.submit_order,
            MarketOrderRequest(
                symbol="AAPL",
                qty=4,
                side=OrderSide.SELL,
                time_in_force=TimeInForce.DAY,
                client_order_id="it-sell-1",
            ),
        )
        before = await call(client.get_orders, GetOrdersRequest(status=QueryOrderStatus.ALL))
        beat = await eventually(lambda: next((h for h in heartbeats if h.api_url == exchange.url), None))
        assert beat.service == "exchange" and beat.seq >= 1
    finally:
        code, took = await exchange.stop()
    assert code == 0, exchange.log_tail()
    assert took < STOP_TIMEOUT_S, f"SIGTERM took {took:.1f}s"

    # a bar published while the exchange is down, then a real restart of the process
    await publisher.publish(make_bar("AAPL", 3, "110"))
    exchange = await ExchangeProcess(env, log_path).start()
    try:
        client = TradingClient(KEY, SECRET, paper=True, url_override=exchange.url)
        sold = await eventually(lambda: (o := client.get_order_by_id(sell.id)).status == OrderStatus.FILLED and o)
        assert sold.filled_avg_price == "109.94"  # 110 * (1 - 0.0005) = 109.945 -> half-even
        after = await call(client.get_orders, GetOrdersRequest(status=QueryOrderStatus.ALL))
        assert [(o.id, o.client_order_id) for o in after] == [(o.id, o.client_order_id) for o in before]
        statuses = {o.client_order_id: o.status for o in after}
        assert statuses == {
            "it-buy-1": OrderStatus.FILLED,
            "it-limit-1": OrderStatus.CANCELED,
            "it-gtc-a": OrderStatus.CANCELED,
            "it-gtc-b": OrderStatus.CANCELED,
            "it-sell-1": OrderStatus.FILLED,
        }
        position = await call(client.get_open_position, "AAPL")
        assert (position.qty, position.avg_entry_price, position.current_price) == ("6", "100.05", "110")
        account = await call(client.get_account)
        assert account.cash == str(Decimal("98999.50") + 4 * Decimal("109.94"))
        dup_after_restart = await asyncio.to_thread(
            expect_api_error,
            lambda: client.submit_order(
                MarketOrderRequest(
                    symbol="AAPL",
                    qty=1,
                    side=OrderSide.BUY,
                    time_in_force=TimeInForce.DAY,
                    client_order_id="it-sell-1",
                )
            ),
        )
        assert dup_after_restart.code == 40010001
        # the runtime's health, readiness and metrics, open without keys; the Alpaca surface not
        async with httpx.AsyncClient(base_url=exchange.url) as http:
            health = await http.get("/healthz")
            ready = await http.get("/readyz")
            metrics = await http.get("/metrics")
            anonymous = await http.get("/v2/account")
            auth = {"APCA-API-KEY-ID": KEY, "APCA-API-SECRET-KEY": SECRET}
            unknown = await http.get("/v2/nowhere", headers=auth)
        assert health.status_code == 200
        assert (ready.status_code, ready.json()["checks"]) == (200, {"nats": "ok", "postgres": "ok"})
        assert metrics.status_code == 200
        # the bar consumed after the restart is counted in the runtime's registry
        consumed = 'keel_messages_consumed_total{consumer="exchange-md",service="exchange"} '
        counts = [float(line.removeprefix(consumed)) for line in metrics.text.splitlines() if line.startswith(consumed)]
        assert counts and counts[0] >= 1, metrics.text
        assert (anonymous.status_code, anonymous.json()["code"]) == (401, 40110000)
        assert (unknown.status_code, unknown.json()["code"]) == (404, 40410000)
    finally:
        code, took = await exchange.stop()
    assert code == 0, exchange.log_tail()
    assert took < STOP_TIMEOUT_S, f"SIGTERM took {took:.1f}s"
