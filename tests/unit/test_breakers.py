"""Dependency breaker policy on a fake clock: rolling windows, escalation, expiry (seed 000 §B)."""

from __future__ import annotations

import pytest

from libs.errors.breakers import NS, BreakerPolicy, BreakerState, circuit_open_code, hold_open, record_failure

POLICY = BreakerPolicy()  # 3 in 60 s -> 60 s; 10 in 600 s -> 900 s
T0 = 1_700_000_000 * NS


def fail_at(*seconds: float, state: BreakerState | None = None) -> BreakerState:
    state = state or BreakerState(dependency="broker_submit")
    for s in seconds:
        state = record_failure(state, T0 + int(s * NS), "NET_RETRY", POLICY)
    return state


def test_failures_when_two_in_a_minute_then_still_closed() -> None:
    state = fail_at(0, 30)

    assert not state.is_open(T0 + 31 * NS)
    assert state.failures == (T0, T0 + 30 * NS)


def test_failures_when_three_in_a_minute_then_open_for_sixty_seconds_from_the_third() -> None:
    state = fail_at(0, 20, 40)

    assert (state.opened_at_ns, state.open_until_ns) == (T0 + 40 * NS, T0 + 100 * NS)
    assert state.is_open(T0 + 99 * NS) and not state.is_open(T0 + 100 * NS)
    assert state.reason == "NET_RETRY"


def test_failures_when_three_spread_over_more_than_a_minute_then_closed() -> None:
    state = fail_at(0, 40, 61)

    assert not state.is_open(T0 + 61 * NS)


def test_failures_when_ten_in_ten_minutes_then_escalates_to_fifteen_minutes() -> None:
    # two a minute apart never trip the short window; the tenth within 10 minutes does the long
    state = fail_at(*(i * 61 for i in range(9)))
    assert not state.is_open(T0 + 8 * 61 * NS)

    state = fail_at(9 * 61, state=state)

    assert state.open_until_ns == T0 + (9 * 61 + 900) * NS


def test_failures_when_older_than_ten_minutes_then_forgotten() -> None:
    state = fail_at(0, 100, 650)

    assert state.failures == (T0 + 100 * NS, T0 + 650 * NS)


def test_failures_when_more_arrive_while_open_then_open_period_never_shortens_and_start_kept() -> None:
    state = fail_at(0, 1, 2)  # open until 62
    state = fail_at(3, state=state)  # still 4 in a minute: open until 63

    assert (state.opened_at_ns, state.open_until_ns) == (T0 + 2 * NS, T0 + 63 * NS)


def test_failures_when_reopened_after_expiry_then_opened_at_is_the_new_start() -> None:
    state = fail_at(0, 1, 2)  # open 2..62
    state = fail_at(100, 101, 102, state=state)

    assert (state.opened_at_ns, state.open_until_ns) == (T0 + 102 * NS, T0 + 162 * NS)


@pytest.mark.parametrize("dependency", ["broker_submit", "data_primary", "bus"])
def test_circuit_open_code_when_dependency_then_seed_vocabulary(dependency: str) -> None:
    assert circuit_open_code(dependency) == f"CIRCUIT_OPEN_{dependency}"


def test_hold_open_when_venue_says_retry_after_then_open_at_least_that_long_never_shorter() -> None:
    closed = BreakerState(dependency="broker_submit")

    held = hold_open(closed, T0, 5.0, "RATE_LIMIT_RETRY")
    longer = hold_open(fail_at(0, 1, 2), T0 + 3 * NS, 5.0, "RATE_LIMIT_RETRY")  # already open until 62

    assert (held.opened_at_ns, held.open_until_ns, held.reason) == (T0, T0 + 5 * NS, "RATE_LIMIT_RETRY")
    assert (longer.opened_at_ns, longer.open_until_ns) == (T0 + 2 * NS, T0 + 62 * NS)
