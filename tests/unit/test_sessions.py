"""XNYS session helpers: holidays, early closes and DST come from the calendar's data."""

from __future__ import annotations

import itertools
from datetime import UTC, date, datetime

import pytest

from libs import sessions
from libs.sessions import MINUTE_NS


def ns(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()) * 1_000_000_000


def test_minute_bar_closes_when_normal_day_then_390_bars_from_open_plus_one_minute_to_close():
    bars = sessions.minute_bar_closes(date(2026, 1, 5))

    assert len(bars) == 390
    assert bars[0] == ns("2026-01-05T14:31:00")
    assert bars[-1] == ns("2026-01-05T21:00:00")
    assert all(b - a == MINUTE_NS for a, b in itertools.pairwise(bars))


def test_minute_bar_closes_when_early_close_then_210_bars_ending_13_00_et():
    bars = sessions.minute_bar_closes(date(2026, 11, 27))

    assert len(bars) == 210
    assert bars[-1] == ns("2026-11-27T18:00:00")
    assert sessions.session_open_close(date(2026, 11, 27)) == (
        ns("2026-11-27T14:30:00"),
        ns("2026-11-27T18:00:00"),
    )


@pytest.mark.parametrize("day", [date(2026, 11, 26), date(2026, 7, 3), date(2026, 1, 10), date(2026, 1, 11)])
def test_session_lookup_when_holiday_or_weekend_then_no_session(day):
    assert not sessions.is_session(day)
    assert sessions.minute_bar_closes(day) == []
    assert sessions.sessions_between(day, day) == []
    with pytest.raises(ValueError, match=str(day)):
        sessions.session_open_close(day)


def test_session_open_close_when_dst_starts_then_open_moves_from_14_30_to_13_30_utc():
    winter = sessions.session_open_close(date(2026, 3, 6))
    summer = sessions.session_open_close(date(2026, 3, 9))

    assert winter[0] == ns("2026-03-06T14:30:00")
    assert summer[0] == ns("2026-03-09T13:30:00")
    assert summer[1] - summer[0] == 390 * MINUTE_NS


def test_sessions_between_when_thanksgiving_week_then_skips_holiday_and_weekend():
    got = sessions.sessions_between(date(2026, 11, 23), date(2026, 11, 30))

    assert got == [
        date(2026, 11, 23),
        date(2026, 11, 24),
        date(2026, 11, 25),
        date(2026, 11, 27),
        date(2026, 11, 30),
    ]


def test_next_session_when_inclusive_or_not_then_same_day_only_if_inclusive():
    assert sessions.next_session(date(2026, 11, 25), inclusive=True) == date(2026, 11, 25)
    assert sessions.next_session(date(2026, 11, 25), inclusive=False) == date(2026, 11, 27)
    assert sessions.next_session(date(2026, 11, 28), inclusive=True) == date(2026, 11, 30)


def test_is_open_when_at_open_inside_at_close_and_overnight_then_half_open_interval():
    assert sessions.is_open(ns("2026-01-05T14:30:00"))
    assert sessions.is_open(ns("2026-01-05T20:59:59"))
    assert not sessions.is_open(ns("2026-01-05T21:00:00"))
    assert not sessions.is_open(ns("2026-01-05T14:29:59"))
    assert not sessions.is_open(ns("2026-11-26T16:00:00"))


def test_session_of_when_bar_closes_at_close_then_belongs_to_that_session():
    assert sessions.session_of(ns("2026-11-27T18:00:00")) == date(2026, 11, 27)
    assert sessions.session_of(ns("2026-11-27T18:01:00")) is None
    assert sessions.session_of(ns("2026-11-26T15:00:00")) is None
    assert sessions.session_of(ns("2026-01-05T14:30:00")) == date(2026, 1, 5)


def test_next_open_and_close_when_over_a_holiday_then_skip_to_next_session():
    wed_close = ns("2026-11-25T21:00:00")

    assert sessions.next_open(wed_close) == ns("2026-11-27T14:30:00")
    assert sessions.next_close(wed_close) == ns("2026-11-27T18:00:00")
    assert sessions.next_close(ns("2026-11-25T15:00:00")) == wed_close
    assert sessions.next_open(ns("2026-11-25T14:30:00")) == ns("2026-11-27T14:30:00")


def test_is_bar_close_when_misaligned_or_at_open_then_false():
    assert sessions.is_bar_close(ns("2026-01-05T14:31:00"))
    assert not sessions.is_bar_close(ns("2026-01-05T14:30:00"))
    assert not sessions.is_bar_close(ns("2026-01-05T14:31:30"))
    assert not sessions.is_bar_close(ns("2026-01-05T21:01:00"))


def test_lookup_when_date_outside_pinned_calendar_then_value_error():
    with pytest.raises(ValueError, match="expected a date within"):
        sessions.next_session(date(2040, 1, 2), inclusive=True)
