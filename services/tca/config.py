"""TCA keys (env prefix KEEL_TCA_)."""

from __future__ import annotations

from decimal import Decimal
from typing import Literal

from libs import costmodel
from libs.config import Section

SECTION_PREFIX = "KEEL_TCA_"


class TcaConfig(Section, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Implementation shortfall per order and its Perold decomposition (seed 000 §H)."""

    # intents older than this (event time) are forgotten; their late fills are still logged
    intent_retention_hours: float = 72.0
    # the price shortfall is measured from: "decision" (the close of the bar the decision was
    # made on) or "submit" (the last close when the broker accepted the order)
    arrival_benchmark: Literal["decision", "submit"] = "decision"
    # the spread assumed when the decision bar carried no quoted one (flagged spread_is_proxy)
    proxy_spread_bps: Decimal = Decimal(12)
    # a record is written for an order still working this long (event time) after its decision
    pending_write_sec: float = 60.0
    # unfilled shares are marked at the later of the order's end and this long after the
    # decision (never past the session's close): the missed-trade opportunity cost
    opportunity_horizon_sec: float = 1800.0
    # the cancel rate of a symbol counts orders that ended within this window (event time)
    cancel_rate_window_sec: float = 3600.0
    # fills the broker reports without a fee get the fee schedule's (SEC Section 31 and FINRA TAF
    # on sales: libs/fillsim fee), flagged fees_estimated
    estimate_fees: bool = True
    # the cost model's daily calibration (libs/costmodel): EWMA half-life in sessions, fills a
    # symbol needs before its own estimate replaces the pooled default (seed 000:
    # AI_TRADING_MIN_TCA_SAMPLES_FOR_ADAPT=20), and the largest move of a parameter in one day
    calibration_halflife_sessions: float = 3.0
    min_samples_for_adapt: int = 20
    max_daily_change: float = 0.25

    def params(self) -> costmodel.Params:
        """Return the calibration's parameters."""
        return costmodel.Params(
            halflife_sessions=self.calibration_halflife_sessions,
            min_samples=self.min_samples_for_adapt,
            max_daily_change=self.max_daily_change,
        )

    def __post_init__(self) -> None:
        if not self.proxy_spread_bps.is_finite() or self.proxy_spread_bps < 0:
            raise ValueError(f"KEEL_TCA_PROXY_SPREAD_BPS: expected >= 0, was {self.proxy_spread_bps}")
        for name in (
            "pending_write_sec",
            "opportunity_horizon_sec",
            "cancel_rate_window_sec",
            "intent_retention_hours",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"KEEL_TCA_{name.upper()}: expected >= 0, was {getattr(self, name)}")
        try:
            self.params()
        except ValueError as e:
            raise ValueError(f"KEEL_TCA_CALIBRATION_*: {e}") from None
