"""Execution state: orders handed to the broker, and the Alpaca status table.

ALPACA_STATUS maps all 18 alpaca-py OrderStatus values to what keel makes of them (seed 002
A-OMS-02): `working` orders are followed for fills (trade_updates stream, REST poll as backstop);
the rest end the order with a report.
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

# Before the broker has acknowledged an order, keel holds it in one of two markers of its own:
# handed over, the submit call under way (or cut short by a crash: then it is treated as UNKNOWN)
SUBMITTING = "submitting"
# the submit's outcome is not known (timeout, connection error, 5xx, lost response): the order may
# or may not be at the broker. Its symbol is blocked (UNKNOWN_ORDER_BLOCK) and it is resolved only
# by GET by client_order_id: found -> adopted; 404 -> sent again with the same id; no answer -> stays
UNKNOWN = "unknown"
PRE_ACK = frozenset({SUBMITTING, UNKNOWN})

# stream frames whose execution_id an order remembers, so a duplicated frame is applied once
SEEN_EXECUTIONS = 32


class BrokerOrder(msgspec.Struct, frozen=True, kw_only=True):
    """The fields of a broker order keel acts on, taken from alpaca-py's Order at the edge."""

    id: str
    client_order_id: str
    status: str
    qty: int
    filled_qty: int
    filled_avg_price: Decimal | None = None
    updated_at_ns: int = 0
    # set when the order came in a trade_updates frame: that frame's execution id and event name
    execution_id: str = ""
    event: str = ""
    order_type: str = ""
    # the exit legs of a bracket, oto or oco, when the broker rolled them up under it (nested)
    legs: tuple[BrokerOrder, ...] = ()
    # fetched with its legs rolled up: an empty `legs` then means the broker holds none
    nested: bool = False
    symbol: str = ""
    side: str = ""
    time_in_force: str = ""


class Holdings(msgspec.Struct, frozen=True, kw_only=True):
    """What the broker account holds now: money, positions by symbol, open orders."""

    cash: Decimal
    buying_power: Decimal
    equity: Decimal
    positions: dict[str, int]
    open_orders: tuple[BrokerOrder, ...]


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
    broker_status: str = SUBMITTING
    cum_qty: int = 0
    avg_px: Decimal = Decimal(0)
    traceparent: str = ""
    execution_ids: tuple[str, ...] = ()  # the last SEEN_EXECUTIONS stream executions applied
    # the order family as approved (PretradeDecision): what services/execution/orders.py builds
    order_class: str = "simple"
    stop_price: Decimal | None = None
    trail_price: Decimal | None = None
    trail_percent: Decimal | None = None
    take_profit_limit_price: Decimal | None = None
    stop_loss_stop_price: Decimal | None = None
    stop_loss_limit_price: Decimal | None = None
    # an exit leg (libs.contracts.base.exit_legs) is an order of its own, known by keel's
    # leg_client_order_id; the broker names it itself (broker_client_order_id), and keel learns
    # that name from the parent's nested legs
    parent_cid: str = ""
    leg_role: str = ""
    broker_client_order_id: str = ""
    # a parent: the roles of its legs not yet seen at the broker (kept until they are)
    legs_pending: tuple[str, ...] = ()
    # a parent kept only for legs_pending: its own end was reported already
    ended: bool = False

    @property
    def broker_cid(self) -> str:
        """The client_order_id the broker knows the order by."""
        return self.broker_client_order_id or self.client_order_id


class Cycle(msgspec.Struct, frozen=True, kw_only=True):
    """The outcomes of one bar timestamp's intents so far (its cycle summary, once the bar ends)."""

    submitted: int = 0
    skipped: dict[str, int] = {}  # reason code -> intents
    failed: dict[str, int] = {}  # reason code -> intents


class Health(msgspec.Struct, frozen=True, kw_only=True):
    """What the edges know of the broker when a bar ends: open breakers and the broker's lock."""

    breakers: dict[str, str] = {}  # open dependency breaker -> reason code of its last failure
    locked_until_ns: int = 0
    lock_reason: str = ""


class ExecState(msgspec.Struct, frozen=True, kw_only=True):
    """Open orders by client_order_id, and the outcomes of the bars not yet summarized."""

    orders: dict[str, ExecOrder] = {}
    cycles: dict[int, Cycle] = {}  # bar_ts -> its intents' outcomes until its watermark
    # exit legs: the broker's client_order_id -> keel's (stream frames carry the broker's)
    aliases: dict[str, str] = {}
    last_watermark: int = 0
    fills_done: int = 0  # the exchange's last FillsDone this service has read back and forwarded
    snapshots: int = 0  # broker snapshots taken (the next one's seq)
