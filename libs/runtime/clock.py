"""Clocks are injected (STYLE 6): handlers read time only through ctx."""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    """Something that tells the time in integer nanoseconds UTC."""

    def now_ns(self) -> int:
        """Return the current time."""
        ...


class LiveClock:
    """The wall clock; used for ts_init and operational timers, never for decisions."""

    def now_ns(self) -> int:
        """Return wall-clock time."""
        return time.time_ns()


class FixedClock:
    """A clock that only moves when told to (tests, replay)."""

    def __init__(self, start_ns: int = 0) -> None:
        self.t = start_ns

    def now_ns(self) -> int:
        """Return the set time."""
        return self.t

    def advance(self, ns: int) -> None:
        """Move the clock forward."""
        self.t += ns
