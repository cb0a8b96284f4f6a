"""OMS family: pre-trade decisions and position changes."""

from __future__ import annotations

from decimal import Decimal

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

APPROVED = "APPROVED"


class PretradeDecision(Event, kw_only=True, tag="oms.pretrade_decision.v1"):
    """The OMS approved or denied an intent; a denial carries its reason code (STYLE 8)."""

    intent_id: IntentId
    client_order_id: ClientOrderId
    approved: bool
    reason: str
    details: dict[str, str] = {}
    symbol: Symbol
    side: Side
    qty: Shares
    order_type: OrderType = "market"
    limit_price: Price | None = None
    time_in_force: TimeInForce = "day"
    arrival_price: Price
    bar_ts: NanoTime
    config_sha256: str = ""


class PositionChanged(Event, kw_only=True, tag="oms.position_changed.v1"):
    """The OMS's view of a symbol changed: filled position and working order quantity."""

    symbol: Symbol
    qty: SignedShares
    avg_price: Decimal
    open_order_qty: SignedShares
    intents_seen: int  # the highest risk_seq of the symbol the OMS has handled
    realized_pnl: Decimal = Decimal(0)


OmsEvent = PretradeDecision | PositionChanged
