"""XNYS regular-session schedule in int nanoseconds UTC, built once from exchange_calendars.

Holidays and early closes come from the calendar's own data. The calendar is built with pinned
bounds because its default bounds move with today's date, and a replay must not depend on when
it runs.
"""

from __future__ import annotations

import bisect
import functools
import warnings
from dataclasses import dataclass
from datetime import date

MINUTE_NS = 60 * 1_000_000_000
CALENDAR = "XNYS"
FIRST_DAY = date(2000, 1, 1)
LAST_DAY = date(2035, 12, 31)


@dataclass(frozen=True, slots=True)
class _Schedule:
    days: tuple[date, ...]
    opens: tuple[int, ...]
    closes: tuple[int, ...]


@functools.cache
def _schedule() -> _Schedule:
    # imported here: building the calendar costs about a second and modules must not do I/O at import
    import exchange_calendars
    import pandas as pd

    with warnings.catch_warnings():
        # exchange_calendars 4.13 reads Series.values, which pandas 3.1 deprecates; the values
        # it takes (UTC nanoseconds) are unchanged, so the notice is noise for every caller
        warnings.filterwarnings("ignore", message="Series.values returning an ndarray")
        cal = exchange_calendars.get_calendar(CALENDAR, start=FIRST_DAY.isoformat(), end=LAST_DAY.isoformat())
    sched = cal.schedule
    opens = pd.DatetimeIndex(sched["open"]).as_unit("ns").asi8
    closes = pd.DatetimeIndex(sched["close"]).as_unit("ns").asi8
    return _Schedule(
        days=tuple(sched.index.date),
        opens=tuple(int(x) for x in opens),
        closes=tuple(int(x) for x in closes),
    )


def load() -> None:
    """Build the XNYS schedule now; a service calls it at start (in a worker thread), so its first
    question about a session does not stall its event loop for the second the build takes."""
    _schedule()


def _check_range(d: date) -> None:
    if not FIRST_DAY <= d <= LAST_DAY:
        raise ValueError(f"expected a date within {FIRST_DAY}..{LAST_DAY} ({CALENDAR}), was {d}")


def _index(d: date) -> int | None:
    _check_range(d)
    days = _schedule().days
    i = bisect.bisect_left(days, d)
    return i if i < len(days) and days[i] == d else None


def is_session(d: date) -> bool:
    """Tell whether XNYS holds a regular session on d."""
    return _index(d) is not None


def sessions_between(start: date, end: date) -> list[date]:
    """Return the session dates from start to end, both inclusive."""
    _check_range(start)
    _check_range(end)
    days = _schedule().days
    return list(days[bisect.bisect_left(days, start) : bisect.bisect_right(days, end)])


def next_session(d: date, *, inclusive: bool) -> date:
    """Return the first session on or after d (inclusive) or strictly after d."""
    _check_range(d)
    days = _schedule().days
    i = bisect.bisect_left(days, d) if inclusive else bisect.bisect_right(days, d)
    if i >= len(days):
        raise ValueError(f"expected a session after {d} before {LAST_DAY}, was none")
    return days[i]


def session_open_close(d: date) -> tuple[int, int]:
    """Return the regular open and close of session d in ns UTC."""
    i = _index(d)
    if i is None:
        raise ValueError(f"expected an {CALENDAR} session date, was {d} (holiday or weekend)")
    sched = _schedule()
    return sched.opens[i], sched.closes[i]


def minute_bar_closes(d: date) -> list[int]:
    """Return the close time of every 1-minute bar of session d; empty when d is no session."""
    if _index(d) is None:
        return []
    open_ns, close_ns = session_open_close(d)
    return list(range(open_ns + MINUTE_NS, close_ns + 1, MINUTE_NS))


def _position(ts_ns: int) -> int:
    # index of the last session whose open is at or before ts (-1 when before the first)
    return bisect.bisect_right(_schedule().opens, ts_ns) - 1


def session_of(ts_ns: int) -> date | None:
    """Return the session whose [open, close] holds ts (so a bar closing at the close), or None."""
    sched = _schedule()
    i = _position(ts_ns)
    if i < 0 or ts_ns > sched.closes[i]:
        return None
    return sched.days[i]


def is_open(ts_ns: int) -> bool:
    """Tell whether the regular session is trading at ts (open inclusive, close exclusive)."""
    sched = _schedule()
    i = _position(ts_ns)
    return i >= 0 and ts_ns < sched.closes[i]


def next_open(ts_ns: int) -> int:
    """Return the first regular open strictly after ts."""
    opens = _schedule().opens
    i = bisect.bisect_right(opens, ts_ns)
    if i >= len(opens):
        raise ValueError(f"expected an open after {ts_ns} before {LAST_DAY}, was none")
    return opens[i]


def next_close(ts_ns: int) -> int:
    """Return the first regular close strictly after ts."""
    closes = _schedule().closes
    i = bisect.bisect_right(closes, ts_ns)
    if i >= len(closes):
        raise ValueError(f"expected a close after {ts_ns} before {LAST_DAY}, was none")
    return closes[i]


def is_bar_close(ts_ns: int) -> bool:
    """Tell whether ts is the close of a 1-minute bar inside a regular session."""
    d = session_of(ts_ns)
    if d is None:
        return False
    open_ns, _ = session_open_close(d)
    return ts_ns > open_ns and (ts_ns - open_ns) % MINUTE_NS == 0


__all__ = [
    "MINUTE_NS",
    "is_bar_close",
    "is_open",
    "is_session",
    "minute_bar_closes",
    "next_close",
    "next_open",
    "next_session",
    "session_of",
    "session_open_close",
    "sessions_between",
]
