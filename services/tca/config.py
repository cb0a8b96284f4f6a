"""TCA keys (env prefix KEEL_TCA_)."""

from __future__ import annotations

from libs.config import Section

SECTION_PREFIX = "KEEL_TCA_"


class TcaConfig(Section, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Implementation shortfall against the intent's arrival price (seed 000 §H)."""

    # intents older than this (event time) are forgotten; their late fills are still logged
    intent_retention_hours: float = 72.0
