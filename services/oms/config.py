"""OMS keys (env prefix KEEL_OMS_). Defaults are conservative and paper-safe."""

from __future__ import annotations

from decimal import Decimal

from libs.config import Section

SECTION_PREFIX = "KEEL_OMS_"


class OmsConfig(Section, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Pre-trade limits enforced at the OMS boundary (seed 000 §D)."""

    max_order_dollars: Decimal = Decimal(50000)
    max_order_shares: int = 10000
