"""OMS keys (env prefix KEEL_OMS_). Defaults are conservative and paper-safe."""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated

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

    def __post_init__(self) -> None:
        # msgspec has no bounds for Decimal: checked here, so a bad value stops the OMS at start
        for key, value in (
            ("PRICE_COLLAR_PCT", self.price_collar_pct),
            ("MAX_POSITION_DOLLARS", self.max_position_dollars),
        ):
            if not (value.is_finite() and value > 0):
                raise ValueError(f"KEEL_OMS_{key}: expected a number > 0, was {value}")
