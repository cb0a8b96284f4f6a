"""Execution keys (env prefix KEEL_EXEC_)."""

from __future__ import annotations

from libs.config import Section

SECTION_PREFIX = "KEEL_EXEC_"


class ExecConfig(Section, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How execution reaches its broker through alpaca-py."""

    # empty = Alpaca's own paper (paper mode) or live (live mode) endpoint; the local exchange
    # and any proxy are reached by setting this (alpaca-py url_override)
    base_url: str = ""
    api_key_id: str = ""
    api_secret_key: str = ""
    http_timeout_sec: float = 5.0
    poll_interval_sec: float = 0.5
