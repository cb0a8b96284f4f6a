"""The exchange's trade_updates stream and fault injection, through the real alpaca-py clients.

The exchange runs as a child process (`python -m services.exchange`) on real NATS and Postgres,
with the admin API enabled; alpaca-py's TradingStream runs in the test's loop (tests/support/
exchange.py TradeUpdates) and its blocking TradingClient in threads.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from uuid import UUID

import httpx
import msgspec
import pytest
from alpaca.trading.client import TradingClient
from alpaca.trading.enums import OrderSide, OrderStatus, TimeInForce, TradeEvent
from alpaca.trading.requests import LimitOrderRequest, MarketOrderRequest
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed

from libs.bus import Bus
from tests.support.exchange import (
    AUTH_HEADERS,
    KEY,
    SECRET,
    ExchangeProcess,
    TradeUpdates,
    add_fault,
    bar_publisher,
    bar_time,
    call,
    clear_faults,
    eventually,
    exchange_env,
    expect_api_error,
    list_faults,
    make_bar,
    running_exchange,
)
from tests.support.servers import Namespace

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def env(namespace: Namespace, nats_url: str, database_url: str) -> dict[str, str]:
    return await exchange_env(namespace, nats_url, database_url, admin=True)


@pytest.fixture
async def publisher(namespace: Namespace, nats_url: str):  # type: ignore[no-untyped-def]
    async with bar_publisher(namespace, nats_url) as bus:
        yield bus


def trading_client(exchange: ExchangeProcess) -> TradingClient:
    client = TradingClient(KEY, SECRET, paper=True, url_override=exchange.url)
    # alpaca-py retries 429 and 504 by itself (3 more attempts, 3 s apart: alpaca/common/rest.py
    # DEFAULT_RETRY_*); without retries every injected answer reaches the test once, at once
    client._retry = 0
    return client


def market(cid: str, qty: int = 1) -> MarketOrderRequest:
    return MarketOrderRequest(
        symbol="AAPL", qty=qty, side=OrderSide.BUY, time_in_force=TimeInForce.DAY, client_order_id=cid
    )


def resting(cid: str, tif: TimeInForce = TimeInForce.GTC) -> LimitOrderRequest:
    # a buy far below the market: it works until canceled or expired
    return LimitOrderRequest(
        symbol="AAPL", qty=1, side=OrderSide.BUY, time_in_force=tif, limit_price=50.0, client_order_id=cid
    )


async def open_session(client: TradingClient, publisher: Bus) -> None:
    """Move the exchange's clock to the first bar (09:31) so orders have a price and a session."""
    await publisher.publish(make_bar("AAPL", 1, "99"))
    await eventually(lambda: client.get_clock().timestamp == bar_time(1))


async def test_trade_updates_when_orders_fill_cancel_and_expire_then_stream_reports_each(
    env: dict[str, str], publisher: Bus, tmp_path: Path
) -> None:
    async with running_exchange(env, tmp_path / "exchange.log") as exchange:
        client = trading_client(exchange)
        await open_session(client, publisher)
        async with TradeUpdates(exchange) as updates:
            buy = await call(client.submit_order, market("st-buy-1", qty=10))
            new = await updates.next()
            assert (new.event, new.order.id, new.order.status) == (TradeEvent.NEW, buy.id, OrderStatus.NEW)
            assert new.timestamp == bar_time(1) and new.execution_id is None

            # the next bar fills it: the update carries the execution and the position after it
            await publisher.publish(make_bar("AAPL", 2, "100"))
            fill = await updates.next()
            rest = await call(client.get_order_by_id, buy.id)
            assert rest.status == OrderStatus.FILLED
            assert (fill.event, fill.order.id, fill.order.status) == (TradeEvent.FILL, buy.id, OrderStatus.FILLED)
            assert isinstance(fill.execution_id, UUID)
            assert fill.price == float(rest.filled_avg_price) and fill.qty == float(rest.filled_qty) == 10
            assert fill.position_qty == 10
            assert fill.timestamp == rest.filled_at
            assert (fill.order.filled_qty, fill.order.filled_avg_price) == (rest.filled_qty, rest.filled_avg_price)

            limit = await call(client.submit_order, resting("st-limit-1"))
            assert (await updates.next()).event == TradeEvent.NEW
            await call(client.cancel_order_by_id, limit.id)
            canceled = await updates.next()
            assert (canceled.event, canceled.order.id) == (TradeEvent.CANCELED, limit.id)
            assert canceled.order.status == OrderStatus.CANCELED and canceled.order.canceled_at is not None

            # a day order still working when a bar after the close arrives expires
            day = await call(client.submit_order, resting("st-day-1", TimeInForce.DAY))
            assert (await updates.next()).order.id == day.id
            await publisher.publish(make_bar("MSFT", 391, "300"))  # 16:01, after the 16:00 close
            expired = await updates.next()
            assert (expired.event, expired.order.id, expired.order.status) == (
                TradeEvent.EXPIRED,
                day.id,
                OrderStatus.EXPIRED,
            )

            await updates.nothing_within(0.3)
            assert [(u.event, u.order.client_order_id) for u in updates.received] == [
                (TradeEvent.NEW, "st-buy-1"),
                (TradeEvent.FILL, "st-buy-1"),
                (TradeEvent.NEW, "st-limit-1"),
                (TradeEvent.CANCELED, "st-limit-1"),
                (TradeEvent.NEW, "st-day-1"),
                (TradeEvent.EXPIRED, "st-day-1"),
            ]


async def test_http_faults_when_injected_then_alpaca_py_sees_each_failure_and_the_venue_state_matches(
    env: dict[str, str], publisher: Bus, tmp_path: Path
) -> None:
    async with running_exchange(env, tmp_path / "exchange.log") as exchange:
        client = trading_client(exchange)
        await open_session(client, publisher)

        # status: answered without processing; the order never exists
        answers = [(429, 42910000), (401, 40110000), (403, 40310000), (500, 50010000), (503, 50310000), (504, 50410000)]
        for status, code in answers:
            rule = await add_fault(exchange, kind="status", status=status, method="POST", path="/v2/orders")
            assert (rule["remaining"], rule["fired"]) == (1, 0)
            cid = f"ft-status-{status}"
            error = await asyncio.to_thread(expect_api_error, lambda cid=cid: client.submit_order(market(cid)))
            assert (error.status_code, error.code) == (status, code), error
            if status == 429:
                assert error.response.headers["Retry-After"] == "1"
            absent = await asyncio.to_thread(expect_api_error, lambda cid=cid: client.get_order_by_client_id(cid))
            assert absent.status_code == 404
        assert await list_faults(exchange) == []  # each fired once and is gone

        # a rule with a count fires that many times on matching requests only; GET lists what is left
        await add_fault(exchange, kind="status", status=429, retry_after_sec=7, path="/v2/account", count=2)
        async with httpx.AsyncClient(base_url=exchange.url, timeout=5.0) as http:
            anonymous = await http.get("/v2/account")  # the key check runs first and consumes nothing
        assert (anonymous.status_code, anonymous.json()["message"]) == (401, "request is not authorized")
        assert [f["remaining"] for f in await list_faults(exchange)] == [2]
        limited = await asyncio.to_thread(expect_api_error, client.get_account)
        assert (limited.status_code, limited.response.headers["Retry-After"]) == (429, "7")
        assert (await call(client.get_clock)).timestamp == bar_time(1)  # another path: untouched
        [left] = await list_faults(exchange)
        assert (left["kind"], left["path"], left["remaining"], left["fired"]) == ("status", "/v2/account", 1, 1)
        assert await clear_faults(exchange) == 1
        assert (await call(client.get_account)).account_number

        # delay: slower, then processed normally
        await add_fault(exchange, kind="delay", delay_sec=0.8, method="POST", path="/v2/orders")
        started = time.monotonic()
        slow = await call(client.submit_order, market("ft-delay"))
        assert time.monotonic() - started >= 0.8
        assert slow.status == OrderStatus.NEW

        # timeout: 504 after the delay and the request never reached the venue
        await add_fault(exchange, kind="timeout", delay_sec=0.2, method="POST", path="/v2/orders")
        timed_out = await asyncio.to_thread(expect_api_error, lambda: client.submit_order(market("ft-timeout")))
        assert timed_out.status_code == 504
        never = await asyncio.to_thread(expect_api_error, lambda: client.get_order_by_client_id("ft-timeout"))
        assert (never.status_code, never.code) == (404, 40410000)

        # lose_response: the order is accepted and committed, the answer is lost
        await add_fault(exchange, kind="lose_response", delay_sec=0.2, method="POST", path="/v2/orders")
        lost = await asyncio.to_thread(expect_api_error, lambda: client.submit_order(market("ft-lost")))
        assert lost.status_code == 504
        found = await call(client.get_order_by_client_id, "ft-lost")
        assert found.status == OrderStatus.NEW
        resent = await asyncio.to_thread(expect_api_error, lambda: client.submit_order(market("ft-lost")))
        assert (resent.status_code, resent.code) == (422, 40010001)
        orders = await call(client.get_orders)
        assert sorted(o.client_order_id for o in orders) == ["ft-delay", "ft-lost"]

        async with httpx.AsyncClient(base_url=exchange.url, timeout=5.0) as http:
            anonymous = await http.post("/admin/faults", json={"kind": "timeout"})
            bad = await http.post("/admin/faults", json={"kind": "status", "status": 418}, headers=AUTH_HEADERS)
            metrics = (await http.get("/metrics")).text
        assert (anonymous.status_code, anonymous.json()["code"]) == (401, 40110000)
        assert (bad.status_code, bad.json()["code"]) == (422, 40010001)
        assert "status: expected one of" in bad.json()["message"]
        for reason in ("status_429", "status_504", "delay", "timeout", "lose_response"):
            assert f'keel_decisions_total{{kind="fault",reason="{reason}",service="exchange"}}' in metrics


async def test_ws_faults_when_injected_then_frames_are_dropped_duplicated_or_swallowed(
    env: dict[str, str], publisher: Bus, tmp_path: Path
) -> None:
    async with running_exchange(env, tmp_path / "exchange.log") as exchange:
        client = trading_client(exchange)
        await open_session(client, publisher)
        async with TradeUpdates(exchange) as updates:
            # ws_drop: the next frame never arrives; the one after it does
            await add_fault(exchange, kind="ws_drop")
            await call(client.submit_order, resting("ws-dropped"))
            await call(client.submit_order, resting("ws-after-drop"))
            assert (await updates.next()).order.client_order_id == "ws-after-drop"

            # ws_duplicate: the next two frames arrive twice each
            await add_fault(exchange, kind="ws_duplicate", frames=2)
            twice = await call(client.submit_order, resting("ws-twice"))
            await call(client.cancel_order_by_id, twice.id)
            got = [await updates.next() for _ in range(4)]
            assert [(u.event, u.order.client_order_id) for u in got] == [
                (TradeEvent.NEW, "ws-twice"),
                (TradeEvent.NEW, "ws-twice"),
                (TradeEvent.CANCELED, "ws-twice"),
                (TradeEvent.CANCELED, "ws-twice"),
            ]
            assert got[0] == got[1] and got[2] == got[3]

            # ws_silent until cleared: nothing arrives, the connection stays open
            await add_fault(exchange, kind="ws_silent", count=0)
            silent = await call(client.submit_order, resting("ws-silent"))
            await call(client.cancel_order_by_id, silent.id)
            await updates.nothing_within(0.5)
            [rule] = await list_faults(exchange)
            assert (rule["kind"], rule["remaining"], rule["fired"]) == ("ws_silent", None, 2)
            await clear_faults(exchange)
            await call(client.submit_order, resting("ws-heard"))
            assert (await updates.next()).order.client_order_id == "ws-heard"

            # ws_silent with a count swallows that many frames, then the stream speaks again
            await add_fault(exchange, kind="ws_silent", count=1)
            await call(client.submit_order, resting("ws-swallowed"))
            await call(client.submit_order, resting("ws-spoken"))
            assert (await updates.next()).order.client_order_id == "ws-spoken"
            assert await list_faults(exchange) == []

            assert updates.client.acks == 1  # one connection throughout: nothing reconnected


async def test_exchange_when_admin_disabled_then_no_admin_api_and_stream_speaks_alpacas_protocol(
    namespace: Namespace, nats_url: str, database_url: str, tmp_path: Path
) -> None:
    env = await exchange_env(namespace, nats_url, database_url)  # admin not enabled
    async with running_exchange(env, tmp_path / "exchange.log") as exchange:
        async with httpx.AsyncClient(base_url=exchange.url, headers=AUTH_HEADERS, timeout=5.0) as http:
            answers = [
                await http.post("/admin/faults", json={"kind": "status", "status": 500}),
                await http.get("/admin/faults"),
                await http.delete("/admin/faults"),
            ]
            account = await http.get("/v2/account")
        assert [(r.status_code, r.json()["code"]) for r in answers] == [(404, 40410000)] * 3
        assert account.status_code == 200

        # the older auth message; every server frame is binary JSON, like Alpaca's paper stream
        async with ws_connect(exchange.stream_url) as ws:
            await ws.send(msgspec.json.encode({"action": "auth", "key": KEY, "secret": SECRET}).decode())
            authorized = await ws.recv()
            await ws.send('{"action": "listen", "data": {"streams": ["trade_updates", "nope"]}}')
            listening = await ws.recv()
        assert isinstance(authorized, bytes) and isinstance(listening, bytes)
        assert msgspec.json.decode(authorized) == {
            "stream": "authorization",
            "data": {"status": "authorized", "action": "authenticate"},
        }
        assert msgspec.json.decode(listening) == {"stream": "listening", "data": {"streams": ["trade_updates"]}}

        # wrong secret: unauthorized, then the server closes the connection
        async with ws_connect(exchange.stream_url) as ws:
            bad = {"action": "authenticate", "data": {"key_id": KEY, "secret_key": "wrong"}}
            await ws.send(msgspec.json.encode(bad).decode())
            refused = msgspec.json.decode(await ws.recv())
            with pytest.raises(ConnectionClosed) as closed:
                await ws.recv()
        assert refused == {"stream": "authorization", "data": {"status": "unauthorized", "action": "authenticate"}}
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008

        # a listener still connected does not hold up SIGTERM (running_exchange checks exit 0 in time)
        lingering = await ws_connect(exchange.stream_url)
        await lingering.send(msgspec.json.encode({"action": "auth", "key": KEY, "secret": SECRET}).decode())
        await lingering.recv()
    await lingering.close()
