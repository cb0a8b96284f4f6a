"""Operations family: alerts, heartbeats and watermarks."""

from __future__ import annotations

from typing import Literal

from libs.contracts.base import Event, NanoTime

Severity = Literal["info", "warning", "critical"]


class AlertRaised(Event, kw_only=True, tag="ops.alert_raised.v1"):
    """Something a person should know about happened."""

    code: str
    severity: Severity
    source: str
    message: str
    details: dict[str, str] = {}


class Heartbeat(Event, kw_only=True, tag="ops.heartbeat.v1"):
    """A service is alive; sent every heartbeat interval on the wall clock."""

    service: str
    instance: str
    seq: int
    api_url: str = ""


class Watermark(Event, kw_only=True, tag="ops.watermark.v1"):
    """Source has finished everything it will ever do for bars up to bar_ts."""

    source: str
    bar_ts: NanoTime
    final: bool = False


class FillsDone(Event, kw_only=True, tag="ops.fills_done.v1"):
    """Source has reported every order change the exchange made up to bar_ts (the fill lane of the lockstep).

    The local exchange announces it after matching its resting orders against a bar, naming in
    `orders` the client_order_ids it changed since its previous announcement (fills, ends, and
    what REST calls did in between). Execution forwards it once it has read each of those orders
    back and reported them; the OMS, once every report before it moved its positions. Risk,
    in lockstep, decides a bar only when the OMS's has reached it, so every decision sees the
    same fills whatever the processes' timing (DESIGN: determinism).
    """

    source: str
    bar_ts: NanoTime
    orders: tuple[str, ...] = ()


class CycleSummary(Event, kw_only=True, tag="ops.cycle_summary.v1"):
    """What became of one bar timestamp's orders, and why the rest did not go (seed 002 B-DIAG-02/03).

    Emitted by execution when it has finished the bar: every intent of the bar is counted once,
    as submitted, skipped (by reason code) or failed (by reason code). `breakers` holds every
    dependency breaker open at that moment (dependency -> the reason code of its last failure)
    and `broker_locked_until_ns` / `broker_lock_reason` say until when the broker may not be
    called and why (a Retry-After, an open broker breaker); 0 and "" when it may.
    """

    source: str
    bar_ts: NanoTime
    submitted: int = 0
    skipped: dict[str, int] = {}
    failed: dict[str, int] = {}
    breakers: dict[str, str] = {}
    broker_locked_until_ns: int = 0
    broker_lock_reason: str = ""


OpsEvent = AlertRaised | Heartbeat | Watermark | FillsDone | CycleSummary
