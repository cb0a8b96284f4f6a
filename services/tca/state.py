"""TCA state: what is known of each order still being measured, recent prices, fills waiting."""

from __future__ import annotations

from decimal import Decimal

import msgspec

from libs.contracts.execution import ExecutionEvent
from libs.contracts.ops import Watermark
from libs.contracts.tca import CostModelUpdated
from libs.costmodel import DayStats

TAPE_BARS = 64  # closes kept per symbol: prices a time up to an hour back (bars consumer ahead of reports)

# statuses of an order's record
PENDING = "pending"
WORKING = "working"
PARTIALLY_FILLED = "partially_filled"
FILLED = "filled"
CANCELED = "canceled"
EXPIRED = "expired"
REJECTED = "rejected"
FAILED = "failed"
ENDED = frozenset({FILLED, CANCELED, EXPIRED, REJECTED, FAILED})


class OrderTca(msgspec.Struct, frozen=True, kw_only=True):
    """One order as TCA measures it: its decision, hand-over, fills and end."""

    client_order_id: str
    intent_id: str
    symbol: str
    side: str
    qty: int
    session: str
    decision_ts: int
    decision_price: Decimal
    correlation_id: str = ""  # the decision's (its bar cycle)
    strategy: str = ""
    sleeve: str = ""
    trading_profile: str = ""
    order_type: str = "market"
    order_class: str = "simple"
    time_in_force: str = "day"
    spread_bps: Decimal = Decimal(0)
    spread_is_proxy: bool = True
    sigma_bps: Decimal = Decimal(0)
    bar_volume: int = 0
    expected_cost_bps: Decimal | None = None
    leg: bool = False  # an exit leg: measured against its own price, only once it fills
    provider: str = ""
    submit_ts: int = 0  # when the broker took it (its time), else when execution handed it over
    submit_price: Decimal | None = None
    filled_qty: int = 0
    fill_notional: Decimal = Decimal(0)
    fees: Decimal = Decimal(0)
    fees_estimated: bool = False
    first_fill_ts: int = 0
    partial_fill: bool = False
    status: str = PENDING
    end_ts: int = 0
    end_event_id: str = ""  # the report that ended it: the cause of its final record
    reason: str = ""
    end_price: Decimal | None = None
    revision: int = 0
    final: bool = False
    fills: frozenset[str] = frozenset()  # execution ids measured (a fill delivered twice counts once)
    cancel_rate: Decimal = Decimal(0)  # of its symbol when its end was reported (execution's order)


class Tape(msgspec.Struct, frozen=True, kw_only=True):
    """The last closes of one symbol, oldest first: (bar close time, close)."""

    bars: tuple[tuple[int, Decimal], ...] = ()

    @property
    def last_ts(self) -> int:
        """The close time of the newest bar (0: none)."""
        return self.bars[-1][0] if self.bars else 0


class TcaState(msgspec.Struct, frozen=True, kw_only=True):
    """Orders by client_order_id, prices by symbol, reports that came before their intent."""

    orders: dict[str, OrderTca] = {}
    tapes: dict[str, Tape] = {}
    md_watermark: int = 0  # marketdata has published every bar up to here
    exec_watermark: int = 0  # execution has reported everything of bars up to here
    # (end time, canceled) of the orders of each symbol that ended within the cancel-rate window,
    # in execution's report order; and each recently ended order's cancel rate, by client_order_id
    ends: dict[str, tuple[tuple[int, bool], ...]] = {}
    rates: dict[str, Decimal] = {}
    waiting: tuple[ExecutionEvent, ...] = ()  # execution reports whose intent has not been seen yet
    # the cost model: fills measured since the last calibration, by symbol, and the model in force
    day: dict[str, DayStats] = {}
    day_session: str = ""  # the session those fills were reported in
    model: CostModelUpdated | None = None
    risk_watermark: int = 0  # risk has published every intent of bars up to here
    last_watermark: int = 0  # TCA's own watermark: the lowest of the three above, once handled
    # finished sessions' fills, frozen at execution's first watermark of the next, oldest first
    closing: tuple[Closing, ...] = ()


class Closing(msgspec.Struct, frozen=True, kw_only=True):
    """The fills of a finished session, waiting to be calibrated on.

    Frozen at execution's first watermark of the next session (`trigger`): every fill reported
    before it belongs here, including those still waiting for their intent (`fills`, by
    execution id). Calibrated once risk's watermark reaches the trigger's bar, when every such
    intent has been published, so the model does not depend on which TCA consumer ran first.
    """

    day: dict[str, DayStats] = {}
    session: str = ""
    fills: frozenset[str] = frozenset()
    trigger: Watermark
