"""Broker rate-limit maths on a fake clock: burst, steady rate, refill cap, Retry-After locks (seed 002 B-DIAG-04)."""

from __future__ import annotations

import hashlib

import pytest

from libs.errors.ratelimit import NS, BucketState, RateLimiter, RatePolicy, account_key, full, lock, refill, take

POLICY = RatePolicy(rate_per_min=200, capacity=10)  # one token every 0.3 s
T0 = 1_700_000_000 * NS
MS = 1_000_000


def at(ms: float) -> int:
    return T0 + int(ms * MS)


def spend(state: BucketState, now_ns: int, n: int, policy: RatePolicy = POLICY) -> tuple[BucketState, list[float]]:
    waits = []
    for _ in range(n):
        state, wait = take(state, now_ns, policy)
        waits.append(wait)
    return state, waits


def test_take_when_full_bucket_then_capacity_calls_pass_at_once_and_the_next_waits_one_token() -> None:
    state, waits = spend(full(T0, POLICY), T0, 11)

    assert waits == [0.0] * 10 + [0.3]
    assert state.tokens == 0.0 and state.updated_ns == T0


def test_take_when_bucket_empty_then_one_call_per_three_hundred_ms() -> None:
    state, _ = spend(full(T0, POLICY), T0, 10)

    taken = []
    for step in range(1, 21):
        state, wait = take(state, at(300 * step), POLICY)
        taken.append(wait)
        state, again = take(state, at(300 * step), POLICY)
        taken.append(again)

    # each 0.3 s step earns exactly one token: the first call takes it, the second waits a whole step
    assert taken == [0.0, 0.3] * 20


def test_take_when_partly_refilled_then_wait_is_the_exact_rest_of_a_token() -> None:
    state, _ = spend(full(T0, POLICY), T0, 10)

    after, wait = take(state, at(100), POLICY)
    _, wait_later = take(after, at(250), POLICY)

    assert wait == 0.2 and wait_later == 0.05
    assert after.updated_ns == at(100) and after.tokens == pytest.approx(1 / 3)


def test_take_when_waiting_exactly_the_wait_then_a_token_is_there() -> None:
    state, _ = spend(full(T0, POLICY), T0, 10)
    state, wait = take(state, at(70), POLICY)

    _, again = take(state, at(70) + int(wait * NS), POLICY)

    assert again == 0.0


def test_refill_when_idle_for_long_then_capped_at_capacity() -> None:
    state, _ = spend(full(T0, POLICY), T0, 10)

    filled = refill(state, at(3_600_000), POLICY)
    after, waits = spend(filled, at(3_600_000), 11)

    assert filled.tokens == 10.0
    assert waits == [0.0] * 10 + [0.3]


def test_refill_when_clock_behind_the_bucket_then_no_tokens_and_time_does_not_go_back() -> None:
    state, _ = spend(full(at(1_000), POLICY), at(1_000), 10)  # another process, its clock 1 s ahead

    after, wait = take(state, T0, POLICY)

    assert after.tokens == 0.0 and after.updated_ns == at(1_000)
    assert wait == 0.3


def test_lock_when_retry_after_then_refused_until_its_end_and_paced_after() -> None:
    state = lock(full(T0, POLICY), T0, 30, "HTTP_429")

    _, wait_start = take(state, T0, POLICY)
    _, wait_last_ns = take(state, at(30_000) - 1, POLICY)
    _, wait_at_end = take(state, at(30_000), POLICY)
    _, wait_after = take(state, at(30_300), POLICY)

    assert (state.tokens, state.locked_until_ns, state.lock_reason) == (0.0, at(30_000), "HTTP_429")
    assert state.is_locked(at(30_000) - 1) and not state.is_locked(at(30_000))
    # the lock ignores tokens; nothing accrues during it, so the first call after waits one token
    assert wait_start == 30.3 and wait_last_ns == 0.300000001
    assert wait_at_end == 0.3 and wait_after == 0.0


def test_lock_when_tokens_were_left_then_bucket_is_emptied() -> None:
    state = lock(full(T0, POLICY), T0, 0, "HTTP_429")

    after, wait = take(state, T0, POLICY)

    assert state.tokens == 0.0 and not state.is_locked(T0)
    assert wait == 0.3 and after.tokens == 0.0


def test_lock_when_shorter_than_the_current_one_then_not_shortened() -> None:
    long = lock(full(T0, POLICY), T0, 60, "HTTP_429")

    shorter = lock(long, at(10_000), 5, "HTTP_503")
    longer = lock(long, at(10_000), 55, "HTTP_503")

    assert (shorter.locked_until_ns, shorter.lock_reason) == (at(60_000), "HTTP_429")
    assert (longer.locked_until_ns, longer.lock_reason) == (at(65_000), "HTTP_503")


def test_lock_when_the_last_one_ended_then_a_new_one_starts_now() -> None:
    first = lock(full(T0, POLICY), T0, 1, "HTTP_429")

    second = lock(first, at(5_000), 2, "HTTP_503")

    assert (second.locked_until_ns, second.lock_reason) == (at(7_000), "HTTP_503")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"rate_per_min": 0}, "rate_per_min: expected a finite number > 0, was 0"),
        ({"rate_per_min": -200.0}, "rate_per_min: expected a finite number > 0, was -200.0"),
        ({"rate_per_min": float("nan")}, "rate_per_min: expected a finite number > 0, was nan"),
        ({"rate_per_min": float("inf")}, "rate_per_min: expected a finite number > 0, was inf"),
        ({"capacity": 0.5}, "capacity: expected a finite number >= 1, was 0.5"),
    ],
)
def test_policy_when_invalid_then_value_error_says_expected_and_was(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError) as e:
        RatePolicy(**kwargs)

    assert str(e.value) == message


def test_lock_when_negative_seconds_then_value_error() -> None:
    with pytest.raises(ValueError, match=r"expected a finite number >= 0, was -1"):
        lock(full(T0, POLICY), T0, -1, "HTTP_429")


def test_policy_when_defaults_then_two_hundred_a_minute_with_a_burst_of_ten() -> None:
    policy = RatePolicy()

    assert (policy.rate_per_min, policy.capacity, policy.ns_per_token) == (200.0, 10.0, 300_000_000.0)


def test_account_key_when_derived_then_stable_kv_safe_and_without_the_key_id() -> None:
    key = account_key("PKTEST1234567890")

    assert key == account_key("PKTEST1234567890") != account_key("PKTEST1234567891")
    assert key.startswith("acct_") and len(key) == 5 + 24 and "PKTEST" not in key
    assert key == "acct_" + hashlib.sha256(b"PKTEST1234567890").hexdigest()[:24]


def test_account_key_when_empty_then_value_error() -> None:
    with pytest.raises(ValueError, match="expected a broker API key id, was empty"):
        account_key("")


def test_limiter_when_key_is_not_kv_safe_then_value_error() -> None:
    with pytest.raises(ValueError, match=r"expected a key-value key .* was 'acct 1'"):
        RateLimiter(None, "acct 1", POLICY, lambda: T0)  # type: ignore[arg-type]
