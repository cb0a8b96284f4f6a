"""Alerts state: services whose heartbeats stopped (the heartbeat clock itself is operational)."""

from __future__ import annotations

import msgspec


class DeadLetter(msgspec.Struct, frozen=True, kw_only=True):
    """A message some consumer could not use, as the dead-letter stream describes it."""

    dlq_seq: int
    consumer: str
    subject: str
    stream_seq: str
    error: str


class AlertsState(msgspec.Struct, frozen=True, kw_only=True):
    """Services currently reported missing, with the heartbeat seq they went quiet after."""

    missing: dict[str, int] = {}
