"""Pure helpers shared by every service's handlers: the handler context, watermarks, episode alerts.

Nothing here does I/O, reads a clock or draws randomness (STYLE 4-6).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec

from libs.config import CommonConfig
from libs.contracts.base import Event, derive_id, tag_of
from libs.contracts.ops import AlertRaised, FillsDone, Watermark


@dataclass(frozen=True, slots=True)
class Ctx:
    """What a pure handler may know besides state and event: time, config, its own name."""

    now_ns: int
    service: str
    config: Any
    config_sha256: str
    common: CommonConfig = CommonConfig()  # the process's common keys (TRADING_PROFILE, ...)


def _forward(last_bar_ts: int, upstream: Watermark | FillsDone, ctx: Ctx, *id_parts: object, **fields: object):  # type: ignore[no-untyped-def]
    """Re-emit an upstream watermark-like event as this service's own (the same bar, our name)."""
    if upstream.bar_ts < last_bar_ts:
        return last_bar_ts, []
    out = msgspec.structs.replace(
        upstream,
        event_id=derive_id(tag_of(type(upstream)), ctx.service, upstream.bar_ts, *id_parts),
        causation_id=upstream.event_id,
        ts_init=ctx.now_ns,
        source=ctx.service,
        **fields,
    )
    return upstream.bar_ts, [out]


def forward_watermark(last_bar_ts: int, wm: Watermark, ctx: Ctx) -> tuple[int, list[Event]]:
    """Re-emit an upstream watermark as this service's own, once everything before it is done.

    A service consumes its upstream stream in order, so when the upstream watermark for bar t
    arrives every event of bar t has been handled; emitting our own tells the next hop (and the
    feed's lockstep) the same about us.
    """
    return _forward(last_bar_ts, wm, ctx, wm.final)


def forward_fills_done(last_bar_ts: int, done: FillsDone, ctx: Ctx) -> tuple[int, list[Event]]:
    """Re-emit an upstream FillsDone as this service's own, once every report before it is handled.

    The fill lane of the lockstep, like `forward_watermark`: a consumer reads its upstream in
    order, so when FillsDone for bar t arrives every order change before it has been applied.
    """
    return _forward(last_bar_ts, done, ctx, orders=())


def episode_alert(
    code: str, severity: str, message: str, key: str, *, service: str, now_ns: int, **details: str
) -> AlertRaised:
    """Build an alert about an episode that no one event caused (a stale stream, an open breaker).

    `key` names the episode: the same key gives the same event_id, so an episode is alerted once
    however often it is seen.
    """
    return AlertRaised(
        event_id=derive_id("ops.alert_raised.v1", service, code, key),
        correlation_id=key,
        causation_id=key,
        ts_event=now_ns,
        ts_init=now_ns,
        code=code,
        severity=severity,  # type: ignore[arg-type]
        source=service,
        message=message,
        details=details,
    )
