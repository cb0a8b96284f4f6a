"""The only code that talks to a broker: alpaca-py's TradingClient, for Alpaca paper, live and
keel's local exchange alike (url_override). Errors are translated here, once (STYLE 23).

alpaca-py 0.44 retries POST /v2/orders on 429/504 by itself and sends requests without a
timeout (alpaca/common/rest.py): a retried submit can duplicate an order and a silent venue
hangs the caller. Both are switched off here; keel decides about retries itself.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from decimal import Decimal

import requests
import requests.adapters
from alpaca.common.exceptions import APIError
from alpaca.trading.client import TradingClient
from alpaca.trading.enums import OrderSide, OrderStatus, QueryOrderStatus, TimeInForce
from alpaca.trading.models import Order
from alpaca.trading.requests import GetOrdersRequest, LimitOrderRequest, MarketOrderRequest

from libs.errors import classify_exception
from services.execution import handlers
from services.execution.state import BrokerOrder, ExecOrder

DUPLICATE_CLIENT_ORDER_ID = "40010001"


class _TimeoutAdapter(requests.adapters.HTTPAdapter):
    def __init__(self, timeout: float) -> None:
        super().__init__(max_retries=0)
        self.timeout = timeout

    def send(self, request, **kwargs):  # type: ignore[no-untyped-def,override]
        if kwargs.get("timeout") is None:
            kwargs["timeout"] = self.timeout
        return super().send(request, **kwargs)


def _ns(value: dt.datetime | None) -> int:
    return int(value.timestamp() * 1_000_000_000) if value else 0


def to_broker_order(o: Order) -> BrokerOrder:
    """Take the fields keel acts on from an alpaca-py Order."""
    status = o.status.value if isinstance(o.status, OrderStatus) else str(o.status)
    return BrokerOrder(
        id=str(o.id),
        client_order_id=o.client_order_id,
        status=status,
        qty=int(Decimal(str(o.qty or 0))),
        filled_qty=int(Decimal(str(o.filled_qty or 0))),
        filled_avg_price=Decimal(str(o.filled_avg_price)) if o.filled_avg_price is not None else None,
        updated_at_ns=_ns(o.updated_at),
    )


def api_error_code(e: APIError) -> str:
    """Return Alpaca's error code from an APIError body, or ''."""
    try:
        return str(e.code)
    except (ValueError, KeyError, TypeError, AttributeError):
        return ""


class AlpacaBroker:
    """A broker account reached through alpaca-py; every call runs in a worker thread."""

    def __init__(self, *, api_key: str, secret_key: str, paper: bool, base_url: str, timeout: float) -> None:
        self.name = base_url or ("alpaca-paper" if paper else "alpaca-live")
        self.client = TradingClient(api_key, secret_key, paper=paper, url_override=base_url or None)
        # see the module docstring: no SDK retries, explicit timeouts
        self.client._retry = 0
        adapter = _TimeoutAdapter(timeout)
        self.client._session.mount("http://", adapter)
        self.client._session.mount("https://", adapter)
        self._clock_ns = 0

    async def wait_for_clock(self, ts_ns: int, *, timeout: float = 10.0) -> bool:
        """Wait until the broker's clock has reached ts_ns; False if it did not within timeout.

        An order decided on bar t must fill against bar t+1 (DESIGN, determinism). keel's local
        exchange runs on event time - its clock is the last bar it has seen - so an order that
        overtook bar t on its way there could fill on bar t. Asking GET /v2/clock first closes
        that race; Alpaca's real clock is the wall clock and passes at once.
        """
        if self._clock_ns >= ts_ns:
            return True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            clock = await asyncio.to_thread(self.client.get_clock)
            self._clock_ns = max(self._clock_ns, _ns(clock.timestamp))  # type: ignore[union-attr]
            if self._clock_ns >= ts_ns:
                return True
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(0.01)

    async def check(self) -> None:
        """Fetch the account; raises when the broker is unreachable or refuses the keys."""
        await asyncio.to_thread(self.client.get_account)

    async def submit(self, order: ExecOrder) -> handlers.Outcome:
        """Submit (or re-submit: the client_order_id makes it idempotent) an order; never raises."""
        side = OrderSide.BUY if order.side == "buy" else OrderSide.SELL
        tif = TimeInForce(order.time_in_force)
        if order.order_type == "limit":
            req = LimitOrderRequest(
                symbol=order.symbol,
                qty=order.qty,
                side=side,
                time_in_force=tif,
                limit_price=float(order.limit_price or 0),
                client_order_id=order.client_order_id,
            )
        else:
            req = MarketOrderRequest(
                symbol=order.symbol, qty=order.qty, side=side, time_in_force=tif, client_order_id=order.client_order_id
            )
        try:
            placed = await asyncio.to_thread(self.client.submit_order, req)
        except APIError as e:
            if api_error_code(e) == DUPLICATE_CLIENT_ORDER_ID:
                # submitted before (a crash after the broker accepted, a lost response): adopt it
                return await self.resolve(order.client_order_id, str(e))
            info = classify_exception(e, dependency="broker_submit", symbol=order.symbol)
            if info.retryable:
                return await self.resolve(order.client_order_id, str(e))
            return handlers.Rejected(code=api_error_code(e) or str(e.status_code), message=str(e)[:300])
        except (requests.RequestException, OSError) as e:
            return await self.resolve(order.client_order_id, str(e))
        return handlers.Accepted(order=to_broker_order(placed))

    async def resolve(self, cid: str, why: str) -> handlers.Outcome:
        """Find out whether the broker holds an order; not finding it is not a verdict."""
        found = await self.lookup(cid)
        if isinstance(found, BrokerOrder):
            return handlers.Accepted(order=found)
        return handlers.Unknown(message=why[:300])

    async def lookup(self, cid: str) -> BrokerOrder | str | None:
        """Return the order, "absent" when the broker says 404, None when it cannot tell."""
        try:
            order = await asyncio.to_thread(self.client.get_order_by_client_id, cid)
        except APIError as e:
            return "absent" if e.status_code == 404 else None
        except (requests.RequestException, OSError):
            return None
        return to_broker_order(order)

    async def open_orders(self) -> dict[str, BrokerOrder]:
        """Return every open order by client_order_id."""
        orders = await asyncio.to_thread(
            self.client.get_orders, GetOrdersRequest(status=QueryOrderStatus.OPEN, limit=500)
        )
        return {o.client_order_id: to_broker_order(o) for o in orders}  # type: ignore[union-attr]

    async def cancel_all(self) -> int:
        """Cancel every open order; return how many cancel requests the broker took."""
        responses = await asyncio.to_thread(self.client.cancel_orders)
        return len(responses)  # type: ignore[arg-type]
