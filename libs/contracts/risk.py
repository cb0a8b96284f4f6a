"""Risk family: netted, capped order intents."""

from __future__ import annotations

from decimal import Decimal

import msgspec

from libs.contracts.base import (
    ClientOrderId,
    Event,
    IntentId,
    NanoTime,
    OrderType,
    Price,
    Shares,
    Side,
    SignedShares,
    Symbol,
    TimeInForce,
)


class SleeveShare(msgspec.Struct, frozen=True, kw_only=True):
    """How much of a netted intent one sleeve asked for."""

    sleeve: str
    shares: SignedShares


class OrderIntent(Event, kw_only=True, tag="risk.order_intent.v1"):
    """Risk wants this order placed; the OMS decides whether it may be."""

    intent_id: IntentId
    client_order_id: ClientOrderId
    symbol: Symbol
    side: Side
    qty: Shares
    order_type: OrderType = "market"
    limit_price: Price | None = None
    time_in_force: TimeInForce = "day"
    arrival_price: Price
    bar_ts: NanoTime
    strategy: str
    sleeves: tuple[SleeveShare, ...] = ()
    notional: Decimal = Decimal(0)
    # risk's 1-based count of intents for this symbol: lets the OMS report how far it has seen,
    # so risk's in-flight accounting survives an intent that never reached the OMS
    risk_seq: int = 0


RiskEvent = OrderIntent
