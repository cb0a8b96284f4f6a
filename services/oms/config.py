"""OMS keys (env prefix KEEL_OMS_). Defaults are conservative and paper-safe."""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Literal

import msgspec

from libs.config import Section

SECTION_PREFIX = "KEEL_OMS_"


class OmsConfig(Section, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Pre-trade limits enforced at the OMS boundary (seed 000 §D)."""

    max_order_dollars: Decimal = Decimal(50000)
    max_order_shares: int = 10000
    # PRICE_COLLAR_BLOCK: a limit or stop price this far from the decision bar's close (a fraction)
    price_collar_pct: Decimal = Decimal("0.03")
    # RATE_THROTTLE_BLOCK: approved orders per minute of event time, in all and per symbol
    max_orders_per_min: Annotated[int, msgspec.Meta(ge=1)] = 120
    max_symbol_orders_per_min: Annotated[int, msgspec.Meta(ge=1)] = 6
    # POSITION_LIMIT_BLOCK: what a symbol's position plus working orders may reach, in dollars
    max_position_dollars: Decimal = Decimal(100000)
    # CANCEL_LOOP_BLOCK: this many orders of a symbol canceled unfilled within the window (bars)
    # block the symbol for block_bars bars; a fill of the symbol clears the count
    cancel_loop_max: Annotated[int, msgspec.Meta(ge=1)] = 3
    cancel_loop_window_bars: Annotated[int, msgspec.Meta(ge=1)] = 30
    cancel_loop_block_bars: Annotated[int, msgspec.Meta(ge=1)] = 10
    # STUCK_INTENT: an intent the broker has not acknowledged this many bars after its decision
    stuck_intent_bars: Annotated[int, msgspec.Meta(ge=1)] = 5
    # canary mode (KEEL_CANARY_SYMBOLS): only these symbols may trade; empty = every symbol
    canary_symbols: tuple[str, ...] = ()
    # PRICE_COLLAR_BLOCK when liquidity is thin: a decision bar that traded fewer shares than this
    # (or whose volume is not known) collars at thin_collar_pct instead
    thin_volume_shares: Annotated[int, msgspec.Meta(ge=0)] = 5000
    thin_collar_pct: Decimal = Decimal("0.01")
    # RATE_THROTTLE_BLOCK: cancels of keel's orders per minute of event time (an order-to-cancel
    # message rate: beyond it no new order goes until the minute has passed)
    max_cancels_per_min: Annotated[int, msgspec.Meta(ge=1)] = 60
    # BUYING_POWER_BLOCK: an order that adds exposure may use this fraction of the buying power of
    # the last broker snapshot, less what orders decided since then take; no snapshot, or one older
    # than account_max_age_bars bars, blocks (fail closed)
    buying_power_use_pct: Decimal = Decimal("0.95")
    account_max_age_bars: Annotated[int, msgspec.Meta(ge=1)] = 5
    # reconciliation (broker snapshots from execution): a difference must be seen in this many
    # snapshots in a row, unchanged, before it is acted on (a fill can be on its way meanwhile)
    recon_confirm_snapshots: Annotated[int, msgspec.Meta(ge=1)] = 2
    # RECON_MISMATCH: a position that differs from the broker's for no known reason halts trading
    # (halt) or lets only orders that reduce a position through (reduce_only), until a resume
    recon_mismatch_action: Literal["halt", "reduce_only"] = "halt"
    # STARTUP_CLEANUP: cancel orders found open at the broker when execution starts that keel does
    # not know (foreign) or holds as ended; off: they are only alerted
    startup_cleanup: bool = False
    # SESSION_CLOSE_CLEANUP: at the session's close cancel keel's DAY orders still working
    session_close_cancel_day: bool = False

    def __post_init__(self) -> None:
        # msgspec has no bounds for Decimal: checked here, so a bad value stops the OMS at start
        for key, value in (
            ("PRICE_COLLAR_PCT", self.price_collar_pct),
            ("MAX_POSITION_DOLLARS", self.max_position_dollars),
            ("THIN_COLLAR_PCT", self.thin_collar_pct),
            ("BUYING_POWER_USE_PCT", self.buying_power_use_pct),
        ):
            if not (value.is_finite() and value > 0):
                raise ValueError(f"KEEL_OMS_{key}: expected a number > 0, was {value}")
        if self.buying_power_use_pct > 1:
            raise ValueError(
                f"KEEL_OMS_BUYING_POWER_USE_PCT: expected a fraction <= 1, was {self.buying_power_use_pct}"
            )
