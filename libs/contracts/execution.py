"""Execution family: what the broker did with an order."""

from __future__ import annotations

from decimal import Decimal
from typing import Literal

import msgspec

from libs.contracts.base import (
    ClientOrderId,
    Event,
    IntentId,
    Money,
    NanoTime,
    Price,
    Shares,
    Side,
    SignedShares,
    Symbol,
)


class _OrderEvent(Event, kw_only=True):
    intent_id: IntentId
    client_order_id: ClientOrderId
    symbol: Symbol
    side: Side


class OrderSubmitted(_OrderEvent, kw_only=True, tag="exec.order_submitted.v1"):
    """Execution handed the order to the broker (before its answer)."""

    qty: Shares
    broker: str


class OrderAccepted(_OrderEvent, kw_only=True, tag="exec.order_accepted.v1"):
    """The broker acknowledged the order."""

    broker_order_id: str
    broker_status: str


class _FillEvent(_OrderEvent, kw_only=True):
    broker_order_id: str
    execution_id: str
    last_qty: Shares
    last_px: Price
    cum_qty: Shares
    avg_px: Price
    leaves_qty: int
    fee: Decimal = Decimal(0)


class OrderPartiallyFilled(_FillEvent, kw_only=True, tag="exec.order_partially_filled.v1"):
    """Part of the order filled; leaves_qty remains working."""


class OrderFilled(_FillEvent, kw_only=True, tag="exec.order_filled.v1"):
    """The order is completely filled."""


class OrderCanceled(_OrderEvent, kw_only=True, tag="exec.order_canceled.v1"):
    """The order was canceled; cum_qty filled before the cancel."""

    broker_order_id: str
    cum_qty: int = 0


class OrderRejected(_OrderEvent, kw_only=True, tag="exec.order_rejected.v1"):
    """The broker refused the order."""

    reason: str
    code: str = ""
    broker_order_id: str = ""


class OrderExpired(_OrderEvent, kw_only=True, tag="exec.order_expired.v1"):
    """The order's time in force ran out."""

    broker_order_id: str
    cum_qty: int = 0


class SubmitSkipped(_OrderEvent, kw_only=True, tag="exec.submit_skipped.v1"):
    """The order was not sent, on purpose: a check refused it (its reason code says which).

    One of the three outcomes of an intent (seed 002 B-DIAG-01): OrderSubmitted, SubmitSkipped
    or SubmitFailed. `stage` says who refused it: "oms" echoes a pre-trade denial (the OMS has
    decided it already), "execution" a check at the hand-over (halt, breaker, rate limit, ...).
    """

    qty: Shares
    stage: Literal["oms", "execution"]
    reason_code: str
    message: str
    details: dict[str, str] = {}


class SubmitFailed(_OrderEvent, kw_only=True, tag="exec.submit_failed.v1"):
    """The submit failed before the broker could decide; error fields name the category.

    The fields are libs.errors.ErrorInfo's: category, reason code, and (when known) the failing
    dependency and the action keel took.
    """

    category: str
    reason_code: str
    message: str
    dependency: str = ""
    action: str = ""


class OrderStatusUnknown(_OrderEvent, kw_only=True, tag="exec.order_status_unknown.v1"):
    """The submit's outcome is not known (timeout, lost response, 5xx): the order may or may not
    be at the broker. Execution blocks the symbol and resolves it only by client_order_id."""

    reason: str


class BrokerOrderView(msgspec.Struct, frozen=True, kw_only=True):
    """One order open at the broker, as a broker snapshot lists it."""

    client_order_id: str  # as the broker knows it (an exit leg: the broker's own name for it)
    broker_order_id: str
    symbol: str
    side: str
    qty: int
    filled_qty: int = 0
    filled_avg_price: Decimal | None = None
    status: str
    time_in_force: str = ""
    # keel's client_order_id of the order, when execution knows it (an exit leg's keel name), and
    # of its parent for an exit leg the broker rolled up under it; '' when keel does not know it
    keel_client_order_id: str = ""
    parent_client_order_id: str = ""


class BrokerSnapshot(Event, kw_only=True, tag="exec.broker_snapshot.v1"):
    """What the broker holds, as execution read it: the account, positions and open orders.

    Taken at execution's start (`startup`) and after the watermark of every N bars (`periodic`);
    published through execution's outbox after every report it had committed, so the OMS has
    seen every report execution knew of when the snapshot was taken (the OMS reconciles on it).
    """

    kind: Literal["startup", "periodic"]
    seq: int  # execution's snapshot counter
    bar_ts: NanoTime = 0  # the last bar whose watermark execution had passed (0: none yet)
    cash: Money
    buying_power: Money
    equity: Money
    positions: dict[str, SignedShares] = {}
    open_orders: tuple[BrokerOrderView, ...] = ()
    tracked: tuple[str, ...] = ()  # keel client_order_ids execution follows at the broker


ExecutionEvent = (
    OrderSubmitted
    | OrderAccepted
    | OrderPartiallyFilled
    | OrderFilled
    | OrderCanceled
    | OrderRejected
    | OrderExpired
    | SubmitSkipped
    | SubmitFailed
    | OrderStatusUnknown
    | BrokerSnapshot
)
