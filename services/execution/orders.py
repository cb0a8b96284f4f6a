"""Order builders: an approved order (ExecOrder) as the alpaca-py request that submits it.

One builder per order type; the order class (simple, bracket, oco, oto) adds the exit legs as
TakeProfitRequest / StopLossRequest. alpaca-py's request models take floats: every price is
rounded to its tick as a Decimal first and then converted, and a float's repr is the shortest
string that round-trips, so Decimal("12.34") goes on the wire as 12.34, never 12.339999.
The contracts (libs.contracts.base.check_order_family) guarantee the fields each builder needs.
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import Any

from alpaca.trading.enums import OrderClass, OrderSide, TimeInForce
from alpaca.trading.requests import (
    LimitOrderRequest,
    MarketOrderRequest,
    OrderRequest,
    StopLimitOrderRequest,
    StopLossRequest,
    StopOrderRequest,
    TakeProfitRequest,
    TrailingStopOrderRequest,
)

from libs.contracts.base import to_tick
from services.execution.state import ExecOrder


def px(value: Decimal | None) -> float | None:
    """Return a price rounded to its tick as the float alpaca-py takes (None stays None)."""
    return None if value is None else float(to_tick(value))


def _common(order: ExecOrder) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "symbol": order.symbol,
        "qty": order.qty,
        "side": OrderSide.BUY if order.side == "buy" else OrderSide.SELL,
        "time_in_force": TimeInForce(order.time_in_force),
        "client_order_id": order.client_order_id,
    }
    if order.order_class != "simple":
        fields["order_class"] = OrderClass(order.order_class)
    if order.take_profit_limit_price is not None:
        fields["take_profit"] = TakeProfitRequest(limit_price=px(order.take_profit_limit_price))
    if order.stop_loss_stop_price is not None:
        fields["stop_loss"] = StopLossRequest(
            stop_price=px(order.stop_loss_stop_price), limit_price=px(order.stop_loss_limit_price)
        )
    return fields


def build_market(order: ExecOrder) -> MarketOrderRequest:
    """Build a market order."""
    return MarketOrderRequest(**_common(order))


def build_limit(order: ExecOrder) -> LimitOrderRequest:
    """Build a limit order (an oco's limit is its take-profit leg, so it may have none)."""
    return LimitOrderRequest(**_common(order), limit_price=px(order.limit_price))


def build_stop(order: ExecOrder) -> StopOrderRequest:
    """Build a stop (market on trigger) order."""
    return StopOrderRequest(**_common(order), stop_price=px(order.stop_price))


def build_stop_limit(order: ExecOrder) -> StopLimitOrderRequest:
    """Build a stop-limit order."""
    return StopLimitOrderRequest(**_common(order), stop_price=px(order.stop_price), limit_price=px(order.limit_price))


def build_trailing_stop(order: ExecOrder) -> TrailingStopOrderRequest:
    """Build a trailing stop that trails by a price amount or by a percent."""
    return TrailingStopOrderRequest(
        **_common(order),
        trail_price=px(order.trail_price),
        trail_percent=None if order.trail_percent is None else float(order.trail_percent),
    )


BUILDERS: dict[str, Callable[[ExecOrder], OrderRequest]] = {
    "market": build_market,
    "limit": build_limit,
    "stop": build_stop,
    "stop_limit": build_stop_limit,
    "trailing_stop": build_trailing_stop,
}


def build_request(order: ExecOrder) -> OrderRequest:
    """Return the alpaca-py request for an order; ValueError when it cannot be built."""
    builder = BUILDERS.get(order.order_type)
    if builder is None:
        raise ValueError(f"expected order_type in {sorted(BUILDERS)}, was {order.order_type!r}")
    return builder(order)
