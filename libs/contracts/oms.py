"""OMS family: pre-trade decisions and position changes."""

from __future__ import annotations

from decimal import Decimal

from libs.contracts.base import (
    ClientOrderId,
    Event,
    IntentId,
    NanoTime,
    OrderClass,
    OrderType,
    Price,
    Shares,
    Side,
    SignedShares,
    Symbol,
    TimeInForce,
    check_order_family,
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
    # the order family (seed 000 App. K): how the order works at the broker and the exit
    # parameters it carries; check_order_family says which combinations are valid
    order_class: OrderClass = "simple"
    stop_price: Price | None = None
    trail_price: Price | None = None
    trail_percent: Decimal | None = None  # percent: 1.5 trails by 1.5 %
    take_profit_limit_price: Price | None = None
    stop_loss_stop_price: Price | None = None
    stop_loss_limit_price: Price | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        check_order_family(self)


class PositionChanged(Event, kw_only=True, tag="oms.position_changed.v1"):
    """The OMS's view of a symbol changed: filled position and working order quantity."""

    symbol: Symbol
    qty: SignedShares
    avg_price: Decimal
    open_order_qty: SignedShares
    intents_seen: int  # the highest risk_seq of the symbol the OMS has handled
    realized_pnl: Decimal = Decimal(0)
    # open_order_qty by side (both >= 0; buys - sells == open_order_qty): the broker's side rules
    # need them, a net quantity can hide a buy and a sell working at once
    open_buy_qty: int = 0
    open_sell_qty: int = 0


OmsEvent = PretradeDecision | PositionChanged
