"""State of the local paper exchange: orders, positions, marks and the account, all immutable.

Times are int ns UTC in event time (the last bar the exchange has seen), never the wall clock.
Money and prices are Decimal, quantities integer shares (signed for positions: short < 0).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Literal

import msgspec

from libs.contracts.tca import CostModelUpdated

# Alpaca's order status vocabulary (alpaca/trading/enums.py OrderStatus); the local exchange
# uses new, partially_filled, filled, canceled, expired, replaced and held. Rejections never
# become orders: Alpaca answers them with an HTTP error, so neither does this exchange.
OrderStatus = Literal[
    "new",
    "partially_filled",
    "filled",
    "done_for_day",
    "canceled",
    "expired",
    "replaced",
    "pending_cancel",
    "pending_replace",
    "pending_review",
    "accepted",
    "pending_new",
    "accepted_for_bidding",
    "stopped",
    "rejected",
    "suspended",
    "calculated",
    "held",
]
OrderSide = Literal["buy", "sell"]
OrderKind = Literal["market", "limit", "stop", "stop_limit", "trailing_stop"]
TimeInForce = Literal["day", "gtc", "ioc", "fok", "opg", "cls"]
OrderClass = Literal["simple", "bracket", "oco", "oto"]
LegRole = Literal["", "take_profit", "stop_loss"]
PositionIntent = Literal["buy_to_open", "buy_to_close", "sell_to_open", "sell_to_close"]

NEW: OrderStatus = "new"
PARTIALLY_FILLED: OrderStatus = "partially_filled"
FILLED: OrderStatus = "filled"
CANCELED: OrderStatus = "canceled"
EXPIRED: OrderStatus = "expired"
REPLACED: OrderStatus = "replaced"
HELD: OrderStatus = "held"
REJECTED: OrderStatus = "rejected"
# statuses a live venue puts an accepted order in on its own (a cancel or replace not yet
# confirmed, the end of the order's trading day, a trading halt, a guaranteed price, end-of-day
# calculation): the local exchange enters them only when the admin API is told to (faults.py),
# so execution and the OMS can be shown each one; no fills while the order is in one
VENUE_HOLDS: frozenset[str] = frozenset(
    {"pending_cancel", "pending_replace", "done_for_day", "stopped", "suspended", "calculated"}
)

# The order lifecycle as data (STYLE 7). Every edge not listed is a bug (InvariantViolation).
TRANSITIONS: dict[str, frozenset[str]] = {
    # new -> expired: a day order still working after its session's close (Alpaca cancels
    # unfilled day orders after the closing auction; its status reads "expired").
    # new -> replaced: PATCH /v2/orders/{id} closes the order and opens its replacement.
    # new -> a venue hold or rejected: only by the admin API (a live venue's own doing).
    NEW: frozenset({PARTIALLY_FILLED, FILLED, CANCELED, EXPIRED, REPLACED, REJECTED, *VENUE_HOLDS}),
    # partially_filled -> partially_filled: each further partial fill (participation cap).
    PARTIALLY_FILLED: frozenset({PARTIALLY_FILLED, FILLED, CANCELED, EXPIRED, REPLACED, REJECTED, *VENUE_HOLDS}),
    # held: a dormant bracket/OTO exit leg. It becomes new when its entry fills completely and
    # is canceled with its entry (canceled or expired unfilled) or when its OCO sibling fills.
    # held -> partially_filled / filled / expired: an armed stop-loss leg triggers, or its day ends.
    HELD: frozenset({NEW, CANCELED, PARTIALLY_FILLED, FILLED, EXPIRED}),
    # No canceled -> filled edge here, although real markets have one: cancels and matching
    # run under one lock on one event clock, so a fill can never race a cancel.
    FILLED: frozenset(),
    CANCELED: frozenset(),
    EXPIRED: frozenset(),
    REPLACED: frozenset(),
    REJECTED: frozenset(),
    # a venue hold ends back in new / partially_filled (released), in another hold, or in an end
    **{
        hold: frozenset({NEW, PARTIALLY_FILLED, CANCELED, EXPIRED, REJECTED, *VENUE_HOLDS} - {hold})
        for hold in VENUE_HOLDS
    },
}
OPEN_STATUSES = frozenset({NEW, PARTIALLY_FILLED, HELD, *VENUE_HOLDS})
WORKING_STATUSES = frozenset({NEW, PARTIALLY_FILLED})  # may fill now (held legs may not)
# open and holding its side (shares, or the flat-symbol side rule): working, or in a venue hold
ACTIVE_STATUSES = WORKING_STATUSES | VENUE_HOLDS


class Fill(msgspec.Struct, frozen=True, kw_only=True):
    """One execution of an order, with what the fill simulator made it cost."""

    execution_id: str
    qty: int
    price: Decimal
    ts: int
    arrival_price: Decimal | None = None  # mid when the order reached the venue
    fee: Decimal = Decimal(0)
    liquidity: str = "taker"  # taker | maker | auction
    spread_bps: Decimal = Decimal(0)
    spread_is_proxy: bool = True
    slippage_bps: Decimal = Decimal(0)


class ExchangeOrder(msgspec.Struct, frozen=True, kw_only=True):
    """An order the exchange accepted, in Alpaca's terms."""

    id: str
    client_order_id: str
    seq: int  # acceptance order: time priority and stable listing order
    symbol: str
    side: OrderSide
    type: OrderKind
    time_in_force: TimeInForce
    qty: int
    limit_price: Decimal | None = None
    stop_price: Decimal | None = None  # trailing stops: the current stop
    trail_price: Decimal | None = None
    trail_percent: Decimal | None = None
    hwm: Decimal | None = None  # trailing stops: high-water (sell) or low-water (buy) mark
    triggered: bool = False  # stop orders once their stop was reached
    order_class: OrderClass = "simple"
    parent_id: str | None = None  # exit legs: their entry (bracket, oto) or take-profit (oco)
    leg_role: LegRole = ""
    legs: tuple[str, ...] = ()  # ids of this order's legs
    # a stop-loss leg that works although its status reads `held`, as Alpaca shows it: the
    # shares go to one exit order at a time (the take-profit), the stop-loss waits `held` for
    # its trigger; armed once its entry filled (an oco's at once)
    armed: bool = False
    replaces: str | None = None
    replaced_by: str | None = None
    replaced_at: int | None = None
    status: OrderStatus = NEW
    position_intent: PositionIntent
    filled_qty: int = 0
    filled_avg_price: Decimal | None = None
    created_at: int
    submitted_at: int
    updated_at: int
    filled_at: int | None = None
    canceled_at: int | None = None
    expired_at: int | None = None
    # a day order's session close; None for gtc/ioc/fok, and for a day order accepted before
    # the exchange saw any bar until its first eligible bar names the session
    expires_at: int | None = None
    # fills only against bars with ts_event strictly after this (DESIGN: decided on bar t,
    # fills on bar t+1)
    eligible_after: int = 0
    fills: tuple[Fill, ...] = ()

    @property
    def works(self) -> bool:
        """Tell whether the order may fill now (working, or an armed stop-loss leg)."""
        return self.status in WORKING_STATUSES or (self.status == HELD and self.armed)

    @property
    def is_open(self) -> bool:
        """Tell whether the order still works (held legs included)."""
        return self.status in OPEN_STATUSES

    @property
    def fees(self) -> Decimal:
        """Return the fees of all its fills."""
        return sum((f.fee for f in self.fills), Decimal(0))

    @property
    def leaves_qty(self) -> int:
        """Return the quantity still to fill."""
        return self.qty - self.filled_qty if self.is_open else 0


class Position(msgspec.Struct, frozen=True, kw_only=True):
    """A holding: qty > 0 long, qty < 0 short; never stored flat."""

    symbol: str
    qty: int
    avg_entry_price: Decimal
    opened_session: str = ""  # session in which the position was last opened from flat


class Mark(msgspec.Struct, frozen=True, kw_only=True):
    """The last bar close of a symbol and the previous session's last close."""

    symbol: str
    price: Decimal
    ts: int
    session: str
    lastday_price: Decimal | None = None


class Account(msgspec.Struct, frozen=True, kw_only=True):
    """The one paper account of this exchange."""

    account_id: str
    cash: Decimal
    session: str = ""  # session of the exchange clock
    last_equity: Decimal  # equity at the previous session's last bar


class ExchangeState(msgspec.Struct, frozen=True, kw_only=True):
    """Everything the exchange knows; handlers return a new one, never mutate this.

    The dict fields are treated as immutable: handlers copy before they change them. `orders`
    holds every open order and the closed ones of recent days (`handlers.evict_closed`); older
    closed orders live in the store only, which the edges read when a request names one.
    """

    account: Account
    clock: int = 0  # ts_event of the latest bar seen; 0 before any bar
    orders: dict[str, ExchangeOrder] = {}
    by_client_id: dict[str, str] = {}
    working: dict[str, tuple[str, ...]] = {}  # symbol -> ids of open orders in seq order
    positions: dict[str, Position] = {}
    marks: dict[str, Mark] = {}
    next_seq: int = 1
    # True while `orders` holds every order ever accepted; False once closed orders of earlier
    # days were left to the store (the edges then look there for what memory lacks)
    complete: bool = True
    # TCA's calibrated cost model, when the simulator prices with it (KEEL_EXCHANGE_COST_MODEL=calibrated)
    calibration: CostModelUpdated | None = None


class SubmitOrder(msgspec.Struct, frozen=True, kw_only=True):
    """A validated order request (the REST edge checked types, vocabulary and ticks)."""

    symbol: str
    qty: int
    side: OrderSide
    type: OrderKind
    time_in_force: TimeInForce
    limit_price: Decimal | None = None
    stop_price: Decimal | None = None
    trail_price: Decimal | None = None
    trail_percent: Decimal | None = None
    client_order_id: str | None = None
    order_class: OrderClass = "simple"
    take_profit_limit_price: Decimal | None = None
    stop_loss_stop_price: Decimal | None = None
    stop_loss_limit_price: Decimal | None = None


class ReplaceOrder(msgspec.Struct, frozen=True, kw_only=True):
    """A validated PATCH /v2/orders/{id}: the fields to change, None = keep."""

    qty: int | None = None
    time_in_force: TimeInForce | None = None
    limit_price: Decimal | None = None
    stop_price: Decimal | None = None
    trail: Decimal | None = None  # trail_price or trail_percent, whichever the order uses
    client_order_id: str | None = None


class OrderQuery(msgspec.Struct, frozen=True, kw_only=True):
    """A validated GET /v2/orders listing: which orders, in which order, how many."""

    status: Literal["open", "closed", "all"] = "open"
    direction: Literal["asc", "desc"] = "desc"
    limit: int = 50
    side: OrderSide | None = None
    after: int | None = None  # submitted strictly after (ns)
    until: int | None = None  # submitted strictly before (ns)
    symbols: frozenset[str] = frozenset()
    nested: bool = False  # legs rolled up under their entry, not listed on their own


class Rejection(msgspec.Struct, frozen=True, kw_only=True):
    """A business refusal with a reason code; the REST edge maps it to Alpaca's error."""

    reason: str
    message: str
    details: dict[str, str] = {}


# rejection reasons
INVALID_ORDER = "INVALID_ORDER"
DUPLICATE_CLIENT_ORDER_ID = "DUPLICATE_CLIENT_ORDER_ID"
INSUFFICIENT_BUYING_POWER = "INSUFFICIENT_BUYING_POWER"
ORDER_NOT_FOUND = "ORDER_NOT_FOUND"
ORDER_NOT_CANCELABLE = "ORDER_NOT_CANCELABLE"
ORDER_NOT_REPLACEABLE = "ORDER_NOT_REPLACEABLE"
SHORT_NOT_ALLOWED = "SHORT_NOT_ALLOWED"
INSUFFICIENT_QTY = "INSUFFICIENT_QTY"
OPPOSITE_SIDE_ORDER_OPEN = "OPPOSITE_SIDE_ORDER_OPEN"  # opening while a flat symbol has an order the other way
POSITION_NOT_FOUND = "POSITION_NOT_FOUND"
MARKET_SESSION_RULE = "MARKET_SESSION_RULE"  # opg after the open, cls too near the close


def initial_state(account_id: str, cash: Decimal) -> ExchangeState:
    """Return a fresh account with cash and nothing else."""
    return ExchangeState(account=Account(account_id=account_id, cash=cash, last_equity=cash))


def rebuild(
    account: Account,
    clock: int,
    orders: list[ExchangeOrder],
    positions: list[Position],
    marks: list[Mark],
    calibration: CostModelUpdated | None = None,
    *,
    next_seq: int | None = None,
    complete: bool = True,
) -> ExchangeState:
    """Rebuild state from stored rows, deriving the indexes (`next_seq`: the store's, when only
    part of its orders are given)."""
    ordered = sorted(orders, key=lambda o: o.seq)
    working: dict[str, tuple[str, ...]] = {}
    for o in ordered:
        if o.is_open:
            working[o.symbol] = (*working.get(o.symbol, ()), o.id)
    return ExchangeState(
        account=account,
        clock=clock,
        orders={o.id: o for o in ordered},
        by_client_id={o.client_order_id: o.id for o in ordered},
        working=working,
        positions={p.symbol: p for p in positions},
        marks={m.symbol: m for m in marks},
        next_seq=next_seq if next_seq is not None else (ordered[-1].seq + 1) if ordered else 1,
        complete=complete,
        calibration=calibration,
    )
