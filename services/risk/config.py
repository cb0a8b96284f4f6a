"""Risk service keys (env prefix KEEL_RISK_)."""

from __future__ import annotations

from decimal import Decimal

from libs.config import Section

SECTION_PREFIX = "KEEL_RISK_"


class RiskConfig(Section, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Per-symbol and gross exposure caps applied to netted sleeve targets."""

    max_symbol_dollars: Decimal = Decimal(25000)
    gross_cap_dollars: Decimal = Decimal(100000)
    min_order_dollars: Decimal = Decimal(100)
    strategy: str = "keel"
    cid_version: str = "1"
