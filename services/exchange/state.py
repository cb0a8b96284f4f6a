"""State of the local paper exchange: orders, positions, marks and the account, all immutable.

Times are int ns UTC in event time (the last bar the exchange has seen), never the wall clock.
Money and prices are Decimal, quantities integer shares (signed for positions: short < 0).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Literal

import msgspec

# Alpaca's order status vocabulary (alpaca/trading/enums.py OrderStatus); the local exchange
# uses new, partially_filled, filled, canceled and expired. Rejections never become orders:
# Alpaca answers them with an HTTP error, so neither does this exchange.
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
OrderKind = Literal["market", "limit"]
TimeInForce = Literal["day", "gtc", "ioc", "fok"]
PositionIntent = Literal["buy_to_open", "buy_to_close", "sell_to_open", "sell_to_close"]

NEW: OrderStatus = "new"
PARTIALLY_FILLED: OrderStatus = "partially_filled"
FILLED: OrderStatus = "filled"
CANCELED: OrderStatus = "canceled"
EXPIRED: OrderStatus = "expired"

# The order lifecycle as data (STYLE 7). Every edge not listed is a bug (InvariantViolation).
TRANSITIONS: dict[str, frozenset[str]] = {
    # new -> expired: a day order still working after its session's close (Alpaca cancels
    # unfilled day orders after the closing auction; its status reads "expired").
    NEW: frozenset({PARTIALLY_FILLED, FILLED, CANCELED, EXPIRED}),
    # partially_filled -> partially_filled: each further partial fill (fill realism issue).
    PARTIALLY_FILLED: frozenset({PARTIALLY_FILLED, FILLED, CANCELED, EXPIRED}),
    # No canceled -> filled edge here, although real markets have one: cancels and matching
    # run under one lock on one event clock, so a fill can never race a cancel.
    FILLED: frozenset(),
    CANCELED: frozenset(),
    EXPIRED: frozenset(),
}
OPEN_STATUSES = frozenset({NEW, PARTIALLY_FILLED})


class Fill(msgspec.Struct, frozen=True, kw_only=True):
    """One execution of an order."""

    execution_id: str
    qty: int
    price: Decimal
    ts: int


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
    def is_open(self) -> bool:
        """Tell whether the order still works."""
        return self.status in OPEN_STATUSES

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

    The dict fields are treated as immutable: handlers copy before they change them.
    """

    account: Account
    clock: int = 0  # ts_event of the latest bar seen; 0 before any bar
    orders: dict[str, ExchangeOrder] = {}
    by_client_id: dict[str, str] = {}
    working: dict[str, tuple[str, ...]] = {}  # symbol -> ids of open orders in seq order
    positions: dict[str, Position] = {}
    marks: dict[str, Mark] = {}
    next_seq: int = 1


class SubmitOrder(msgspec.Struct, frozen=True, kw_only=True):
    """A validated order request (the REST edge checked types and vocabulary)."""

    symbol: str
    qty: int
    side: OrderSide
    type: OrderKind
    time_in_force: TimeInForce
    limit_price: Decimal | None = None
    client_order_id: str | None = None
    # keel extension: the decision bar's ts; the order fills after it even when the exchange
    # has not consumed that bar yet (0 = exchange clock only, Alpaca's behaviour)


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


def initial_state(account_id: str, cash: Decimal) -> ExchangeState:
    """Return a fresh account with cash and nothing else."""
    return ExchangeState(account=Account(account_id=account_id, cash=cash, last_equity=cash))


def rebuild(
    account: Account,
    clock: int,
    orders: list[ExchangeOrder],
    positions: list[Position],
    marks: list[Mark],
) -> ExchangeState:
    """Rebuild state from stored rows, deriving the indexes."""
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
        next_seq=(ordered[-1].seq + 1) if ordered else 1,
    )
