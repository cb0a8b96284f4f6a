"""The classification table from real broker answers: alpaca-py errors produced by the exchange's faults.

The local exchange (admin API on) answers POST /v2/orders with each injected status; alpaca-py's
TradingClient (SDK retries off, as execution runs it) raises its APIError, which classify_exception
must map to the row's category, action and reason code. A real refusal (a sub-penny limit) and a
client-side timeout complete the table.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import requests
from alpaca.trading.client import TradingClient
from alpaca.trading.enums import OrderSide, TimeInForce
from alpaca.trading.requests import LimitOrderRequest

from libs.alpacahttp import harden
from libs.errors import ErrorAction, ErrorCategory, classify_exception
from tests.support.exchange import KEY, SECRET, ExchangeProcess, add_fault, clear_faults, exchange_env, running_exchange
from tests.support.servers import Namespace

pytestmark = pytest.mark.timeout(60)

C, A = ErrorCategory, ErrorAction
STATUS_ROWS = {
    401: (C.AUTH, A.HALT_TRADING, "AUTH_HALT"),
    403: (C.AUTH, A.HALT_TRADING, "AUTH_HALT"),
    429: (C.RATE_LIMIT, A.RETRY, "RATE_LIMIT_RETRY"),
    500: (C.TRANSIENT_NETWORK, A.RETRY, "NET_RETRY"),
    502: (C.TRANSIENT_NETWORK, A.RETRY, "NET_RETRY"),
    503: (C.TRANSIENT_NETWORK, A.RETRY, "NET_RETRY"),
    504: (C.TRANSIENT_NETWORK, A.RETRY, "NET_RETRY"),
}


def client(exchange: ExchangeProcess, timeout: float = 5.0) -> TradingClient:
    # as execution runs it (services/execution/broker.py): SDK retries off, a timeout on each request
    return harden(TradingClient(KEY, SECRET, paper=True, url_override=exchange.url), timeout)


def order(cid: str, price: float = 10.0) -> LimitOrderRequest:
    return LimitOrderRequest(
        symbol="AAPL", qty=1, side=OrderSide.BUY, time_in_force=TimeInForce.DAY, limit_price=price, client_order_id=cid
    )


def raised(fn) -> BaseException:  # type: ignore[no-untyped-def]
    try:
        fn()
    except Exception as e:  # the test wants the exception itself
        return e
    raise AssertionError("expected the call to raise")


async def test_classify_when_exchange_injects_each_fault_then_alpaca_error_maps_to_its_row(
    namespace: Namespace, nats_url: str, database_url: str, tmp_path: Path
):
    env = await exchange_env(namespace, nats_url, database_url, admin=True)
    got: dict[object, tuple[C, A, str]] = {}
    async with running_exchange(env, tmp_path / "exchange.log") as exchange:
        fast = client(exchange)
        for status in STATUS_ROWS:
            await add_fault(exchange, kind="status", status=status, method="POST", path="/v2/orders", count=1)
            exc = raised(lambda s=status: fast.submit_order(order(f"c-{s}")))
            info = classify_exception(exc, dependency="broker_submit")
            got[status] = (info.category, info.action, info.reason_code)
        # a real refusal: the venue checks the price increment (422 42210000)
        exc = raised(lambda: fast.submit_order(order("c-422", 100.001)))
        info = classify_exception(exc, dependency="broker_submit")
        got[422] = (info.category, info.action, info.reason_code)
        # the venue hangs past the client's timeout
        await add_fault(exchange, kind="delay", delay_sec=2.0, method="POST", path="/v2/orders", count=1)
        exc = raised(lambda: client(exchange, timeout=0.5).submit_order(order("c-timeout")))
        timed_out = isinstance(exc, requests.Timeout)
        info = classify_exception(exc, dependency="broker_submit")
        got["timeout"] = (info.category, info.action, info.reason_code)
        await clear_faults(exchange)

    assert got == {
        **STATUS_ROWS,
        422: (C.ORDER_REJECTED, A.SKIP_SYMBOL, "ORDER_REJECTED"),
        "timeout": (C.TRANSIENT_NETWORK, A.RETRY, "NET_RETRY"),
    }
    assert timed_out
