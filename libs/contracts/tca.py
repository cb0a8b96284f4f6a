"""TCA family: measured execution cost and the calibrated cost model."""

from __future__ import annotations

from decimal import Decimal
from typing import Literal

import msgspec

from libs.contracts.base import ClientOrderId, Event, IntentId, NanoTime, Price, Shares, Side, Symbol

Benchmark = Literal["decision", "submit"]


class TcaRecorded(Event, kw_only=True, tag="tca.tca_recorded.v1"):
    """Implementation shortfall of one fill against its intent's arrival price."""

    client_order_id: ClientOrderId
    execution_id: str
    symbol: Symbol
    side: Side
    qty: Shares
    arrival_price: Price
    fill_price: Price
    shortfall_bps: Decimal
    strategy: str = ""
    fee: Decimal = Decimal(0)
    session: str = ""  # XNYS session of the decision bar, YYYY-MM-DD


class TcaOrderRecorded(Event, kw_only=True, tag="tca.order_recorded.v1"):
    """The TCA record of one order, keyed by client_order_id (seed 000 §H1), one revision of it.

    Revisions: a pending one once KEEL_TCA_PENDING_WRITE_SEC of event time passed without the
    order ending, one on each fill, and the final one when the order ended (`final`). Money is
    per share in the order's currency; every *_bps is of the ordered notional at the decision
    price, signed so that a positive number is a cost (Perold 1988):

        shortfall = explicit + delay + execution + opportunity
        explicit    = fees
        delay       = side * filled * (submit_price - decision_price)
        execution   = side * sum(fill_qty * (fill_px - submit_price))
        opportunity = side * (qty - filled) * (end_price - decision_price)

    With the submit benchmark the shortfall is measured from the submit price, so delay is 0.
    """

    client_order_id: ClientOrderId
    intent_id: IntentId
    revision: int
    final: bool
    status: str  # pending | working | partially_filled | filled | canceled | expired | rejected | failed
    session: str
    symbol: Symbol
    side: Side
    qty: Shares
    strategy: str = ""
    sleeve: str = ""  # the sleeve that asked for most of the order's shares
    trading_profile: str = ""
    order_type: str = "market"
    order_class: str = "simple"
    time_in_force: str = "day"
    provider: str = ""  # the broker execution handed the order to
    benchmark: Benchmark = "decision"
    arrival_price: Price  # the benchmark price the shortfall is measured from
    decision_price: Price
    submit_price: Decimal | None = None  # None: not submitted, or not yet priced
    mid_at_arrival: Decimal | None = None
    bid_at_arrival: Decimal | None = None
    ask_at_arrival: Decimal | None = None
    spread_bps_at_arrival: Decimal = Decimal(0)
    spread_is_proxy: bool = True
    decision_ts: NanoTime
    submit_ts: NanoTime = 0
    first_fill_ts: NanoTime = 0
    end_ts: NanoTime = 0
    filled_qty: int = 0
    fill_vwap: Decimal | None = None
    fees: Decimal = Decimal(0)
    fees_estimated: bool = False  # the broker reported none: the fee schedule's amount
    partial_fill: bool = False
    end_price: Decimal | None = None  # the price unfilled shares are marked at
    shortfall_bps: Decimal = Decimal(0)
    explicit_bps: Decimal = Decimal(0)
    delay_bps: Decimal = Decimal(0)
    execution_bps: Decimal = Decimal(0)
    opportunity_bps: Decimal = Decimal(0)
    shortfall_usd: Decimal = Decimal(0)
    spread_paid_bps: Decimal | None = None
    fill_latency_ms: int | None = None
    cancel_rate: Decimal = Decimal(0)  # canceled / ended orders of the symbol over the window
    expected_cost_bps: Decimal | None = None  # risk's estimate when it decided
    reason: str = ""  # a rejection's or failure's code


class SymbolCost(msgspec.Struct, frozen=True, kw_only=True):
    """The calibrated cost of trading one symbol (every field bounded by the model's bounds).

    expected one-way cost in bps = spread_bps / 2 + slippage_bps
                                   + vol_coef * sigma_bps + impact_coef * sigma_bps * sqrt(participation)
    """

    symbol: str
    spread_bps: Decimal
    slippage_bps: Decimal
    vol_coef: Decimal
    impact_coef: Decimal
    samples: int = 0  # fills the estimate has seen in all
    clamped: tuple[str, ...] = ()  # fields the bounds cut this calibration


class CostModelUpdated(Event, kw_only=True, tag="tca.cost_model_updated.v1"):
    """A daily calibration of the cost model from TCA records (seed 002 C-TCA-01).

    `session` is the last session whose fills it has seen; it holds from `effective_session`
    on. `default` prices symbols without an estimate of their own.
    """

    session: str
    effective_session: str
    calibrated_ts: NanoTime
    default: SymbolCost
    symbols: tuple[SymbolCost, ...] = ()
    out_of_bounds: tuple[str, ...] = ()  # symbols whose raw estimate left the bounds
    samples: int = 0  # fills of `session` the calibration used


TcaEvent = TcaRecorded | TcaOrderRecorded | CostModelUpdated
