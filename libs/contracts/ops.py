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


OpsEvent = AlertRaised | Heartbeat | Watermark
