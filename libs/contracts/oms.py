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


class CancelRequested(Event, kw_only=True, tag="oms.cancel_requested.v1"):
    """The OMS asks execution to cancel one order at the broker, and says why.

    Reasons: STARTUP_CLEANUP (a leftover found open at the broker when execution started: a
    foreign order, or one the OMS holds as ended), SESSION_CLOSE_CLEANUP (a DAY order still
    working at the session's close).
    """

    client_order_id: str  # as the broker knows it
    broker_order_id: str
    symbol: Symbol
    reason: str
    message: str = ""


class OrderLookupRequested(Event, kw_only=True, tag="oms.order_lookup_requested.v1"):
    """The OMS asks execution to look an order up at the broker and report how it ended.

    Reason RECON_ORDER_ENDED_UNSEEN: an order open in keel's log that the broker no longer lists
    as open and execution no longer follows, over recon_confirm_snapshots snapshots - it ended
    at the broker and no report said so. Execution follows it again by its broker id (never
    re-sent) and reports what it finds; the report ids derive from (broker order, cumulative
    quantity), so nothing is counted twice.
    """

    intent_id: IntentId
    client_order_id: ClientOrderId
    broker_order_id: str
    symbol: Symbol
    side: Side
    qty: Shares
    filled_qty: int = 0  # what keel's log holds filled
    avg_fill_price: Decimal = Decimal(0)
    time_in_force: TimeInForce = "day"
    bar_ts: NanoTime = 0  # the decision bar
    reason: str


class SessionSummary(Event, kw_only=True, tag="oms.session_summary.v1"):
    """One session's orders at its close (SESSION_CLOSE_CLEANUP): what was decided and how it ended."""

    session: str  # YYYY-MM-DD (XNYS)
    intents: int
    approved: int
    denied: dict[str, int] = {}  # reason code -> intents
    ended: dict[str, int] = {}  # terminal status -> intents of this session
    open_at_close: int = 0
    canceled_at_close: int = 0  # DAY orders the OMS asked execution to cancel
    positions: dict[str, SignedShares] = {}
    realized_pnl: Decimal = Decimal(0)


OmsEvent = PretradeDecision | PositionChanged | CancelRequested | OrderLookupRequested | SessionSummary
