"""Bounded retries of idempotent reads on a fake clock and sleep (seed 000 §B)."""

from __future__ import annotations

import random

import pytest
import requests
from alpaca.common.exceptions import APIError

from libs.errors import DependencyFailed
from libs.errors.breakers import BreakerState
from libs.errors.retry import CircuitOpen, retry_idempotent


class Flaky:
    """A read that fails with the given exceptions, then answers."""

    def __init__(self, *failures: BaseException, answer: str = "bars") -> None:
        self.failures = list(failures)
        self.answer = answer
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)
        return self.answer


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds

    def clock(self) -> float:
        return self.now


class FakeBreakers:
    """Records what retry_idempotent tells the breakers; open_reason as configured."""

    def __init__(self, open_reason: str = "", opens_at: int = 0) -> None:
        self.failures: list[tuple[str, str]] = []
        self._open = open_reason
        self.opens_at = opens_at  # the failure (1-based) that opens the breaker; 0 = never

    async def open_reason(self, dependency: str) -> str:
        return self._open

    async def record_failure(self, dependency: str, reason: str) -> tuple[BreakerState, bool]:
        self.failures.append((dependency, reason))
        opened = len(self.failures) == self.opens_at
        return BreakerState(dependency=dependency, open_until_ns=1 if opened else 0, reason=reason), opened


def api_error(status: int, body: str) -> APIError:
    """An alpaca-py APIError as the client raises it: the body, and the HTTP error with its response."""
    response = requests.Response()
    response.status_code = status
    return APIError(body, requests.HTTPError(response=response))


def timeout() -> BaseException:
    return requests.Timeout("read timed out")


async def call(fn, **kw):  # type: ignore[no-untyped-def]
    t = kw.pop("time", FakeTime())
    return await retry_idempotent(
        fn, dep=kw.pop("dep", "data_primary"), jitter=random.Random(7), sleep=t.sleep, clock=t.clock, **kw
    )


async def test_retry_when_transient_failures_then_answer_after_backoff_and_each_failure_counted() -> None:
    read, t, breakers = Flaky(timeout(), timeout()), FakeTime(), FakeBreakers()

    answer = await call(read, time=t, breakers=breakers)

    assert (answer, read.calls) == ("bars", 3)
    rng = random.Random(7)
    assert t.slept == [0.2 * (1 + rng.random()), 0.4 * (1 + rng.random())]  # seeded jitter, exponential
    assert breakers.failures == [("data_primary", "NET_RETRY")] * 2


async def test_retry_when_same_seed_then_same_delays_and_other_seed_differs() -> None:
    def delays(seed: int) -> list[float]:
        rng = random.Random(seed)
        return [0.2 * 2**i * (1 + rng.random()) for i in range(2)]

    t = FakeTime()
    await call(Flaky(timeout(), timeout()), time=t, breakers=None)

    assert t.slept == delays(7) != delays(8)


async def test_retry_when_attempts_run_out_then_last_failure_raised() -> None:
    read = Flaky(timeout(), timeout(), timeout())

    with pytest.raises(DependencyFailed) as failed:
        await call(read, breakers=None, max_attempts=3)
    assert read.calls == 3
    assert isinstance(failed.value.cause, requests.Timeout)
    assert not failed.value.counted  # no breakers to count it on


async def test_retry_when_total_time_would_be_exceeded_then_raised_before_sleeping() -> None:
    read, t = Flaky(timeout(), timeout()), FakeTime()

    with pytest.raises(DependencyFailed) as failed:
        await call(read, time=t, breakers=None, max_total_seconds=0.3)
    assert isinstance(failed.value.cause, requests.Timeout)  # the second delay would pass it
    assert (read.calls, len(t.slept)) == (2, 1)


async def test_retry_when_failure_not_retryable_then_raised_at_once_and_not_counted() -> None:
    refused = api_error(403, '{"code":40310000,"message":"forbidden"}')
    read, breakers = Flaky(refused), FakeBreakers()

    with pytest.raises(DependencyFailed) as failed:
        await call(read, breakers=breakers)
    assert (read.calls, breakers.failures) == (1, [])
    assert isinstance(failed.value.cause, APIError) and not failed.value.counted


async def test_retry_when_breaker_open_then_circuit_open_without_calling() -> None:
    read = Flaky()

    with pytest.raises(CircuitOpen) as e:
        await call(read, breakers=FakeBreakers(open_reason="NET_RETRY"))
    assert (e.value.reason_code, read.calls) == ("CIRCUIT_OPEN_data_primary", 0)


async def test_retry_when_order_submit_then_refused_as_non_idempotent() -> None:
    submit = Flaky()

    with pytest.raises(ValueError, match="idempotent"):
        await call(submit, dep="broker_submit", breakers=None)
    assert submit.calls == 0


async def test_retry_when_retryable_failures_run_out_with_breakers_then_raised_as_already_counted() -> None:
    read, breakers = Flaky(timeout(), timeout()), FakeBreakers()

    with pytest.raises(DependencyFailed) as failed:
        await call(read, breakers=breakers, max_attempts=2)
    assert failed.value.counted and failed.value.dependency == "data_primary"
    assert len(breakers.failures) == 2


async def test_retry_when_a_failure_opens_the_breaker_then_stops_and_says_it_opened() -> None:
    read, breakers = Flaky(timeout(), timeout(), timeout()), FakeBreakers(opens_at=2)

    with pytest.raises(DependencyFailed) as failed:
        await call(read, breakers=breakers, max_attempts=5)
    assert read.calls == 2  # not tried again once its breaker opened
    assert failed.value.opened is not None and failed.value.opened.reason == "NET_RETRY"
