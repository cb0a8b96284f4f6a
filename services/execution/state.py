"""Execution state: orders handed to the broker, and the Alpaca status table.

ALPACA_STATUS maps all 18 alpaca-py OrderStatus values to what keel makes of them (seed 002
A-OMS-02): `working` orders are polled for fills; the rest end the order with a report.
"""

from __future__ import annotations

from decimal import Decimal

import msgspec

WORKING = "working"
FILLED = "filled"
CANCELED = "canceled"
EXPIRED = "expired"
REJECTED = "rejected"

ALPACA_STATUS: dict[str, str] = {
    "new": WORKING,
    "accepted": WORKING,
    "pending_new": WORKING,
    "accepted_for_bidding": WORKING,
    "pending_review": WORKING,
    # held: a dormant bracket/OTO leg waiting for its trigger
    "held": WORKING,
    "calculated": WORKING,
    # pending_*: the venue has not confirmed the change yet; fills can still arrive
    "pending_cancel": WORKING,
    "pending_replace": WORKING,
    # done_for_day: no more fills today, but the order may resume next session
    "done_for_day": WORKING,
    # stopped: a fill is guaranteed at a price; still open until it prints
    "stopped": WORKING,
    # suspended: trading in the order is halted by the venue; not terminal
    "suspended": WORKING,
    "partially_filled": WORKING,
    "filled": FILLED,
    "canceled": CANCELED,
    "expired": EXPIRED,
    # replaced: this order is closed; its replacement carries on under a new id
    "replaced": CANCELED,
    "rejected": REJECTED,
}

# submitted, broker answer not known yet (timeout, lost response): resolve by client_order_id
UNRESOLVED = "unresolved"


class BrokerOrder(msgspec.Struct, frozen=True, kw_only=True):
    """The fields of a broker order keel acts on, taken from alpaca-py's Order at the edge."""

    id: str
    client_order_id: str
    status: str
    qty: int
    filled_qty: int
    filled_avg_price: Decimal | None = None
    updated_at_ns: int = 0


class ExecOrder(msgspec.Struct, frozen=True, kw_only=True):
    """An order execution has handed to the broker."""

    intent_id: str
    client_order_id: str
    symbol: str
    side: str
    qty: int
    order_type: str = "market"
    limit_price: Decimal | None = None
    time_in_force: str = "day"
    bar_ts: int = 0
    correlation_id: str
    decision_id: str = ""  # the PretradeDecision that approved it: the cause of every report
    broker_order_id: str = ""
    broker_status: str = UNRESOLVED
    cum_qty: int = 0
    avg_px: Decimal = Decimal(0)
    traceparent: str = ""


class ExecState(msgspec.Struct, frozen=True, kw_only=True):
    """Open orders by client_order_id."""

    orders: dict[str, ExecOrder] = {}
    last_watermark: int = 0
