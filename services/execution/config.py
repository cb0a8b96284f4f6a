"""Execution keys (env prefix KEEL_EXEC_)."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

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
    # the trade_updates websocket (alpaca-py TradingStream); empty = ws(s)://<host of base_url>/stream,
    # or Alpaca's own paper/live stream when base_url is empty too
    stream_url: str = ""
    stream_enabled: bool = True
    # REST polling is the backstop: every stream_poll_interval_sec while the stream is healthy,
    # every poll_interval_sec while it is disconnected or stale (no frame for stream_stale_sec
    # while orders are open) and while an order's status is unknown
    poll_interval_sec: float = 0.5
    stream_poll_interval_sec: float = 5.0
    stream_stale_sec: float = 10.0
    # which row of the capability matrix (services/execution/capabilities.py) the broker at
    # base_url is: configured, never guessed from the URL; `keel up` sets keel-local
    broker: Literal["alpaca", "keel-local"] = "alpaca"
    # the account's request budget (libs/errors/ratelimit.py), shared by every process of these
    # keys: Alpaca allows 200 requests/min per account; 0 = no limit (keel's local exchange has
    # none: `keel up` sets 0 there so replays are not paced by a limit the venue does not have)
    rate_limit_per_min: Annotated[float, msgspec.Meta(ge=0)] = 200.0
    rate_limit_burst: Annotated[float, msgspec.Meta(ge=1)] = 10.0
    # how long an order waits for a request token before it is skipped (RATE_LIMITED or, while a
    # Retry-After holds the account, BROKER_LOCKED); reads wait read_wait and are tried next poll
    rate_limit_submit_wait_sec: Annotated[float, msgspec.Meta(ge=0)] = 5.0
    rate_limit_read_wait_sec: Annotated[float, msgspec.Meta(ge=0)] = 2.0
    # every kill cancels the open orders too (KEEL_CANCEL_ALL_ON_KILL), not only a kill that asks
    cancel_all_on_kill: bool = False
    # reconciliation: a broker snapshot (account, positions, open orders) goes to the OMS at start
    # and after the watermark of every N-th bar (3 reads each; 0 = at start only)
    snapshot_every_bars: Annotated[int, msgspec.Meta(ge=0)] = 1
