"""Alerts keys (env prefix KEEL_ALERTS_)."""

from __future__ import annotations

from libs.config import Section

SECTION_PREFIX = "KEEL_ALERTS_"


class AlertsConfig(Section, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """When a silent service counts as missing."""

    heartbeat_timeout_sec: float = 5.0
    check_interval_sec: float = 1.0
