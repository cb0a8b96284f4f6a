"""Bounded retries of idempotent reads (seed 000 §B): bars, positions, open orders, order status.

A read is tried again only when its failure classifies as retryable, within `max_attempts` and
`max_total_seconds`, after exponential backoff with jitter from a seeded `random.Random` (never the
global one). Every failure counts against the dependency's circuit breaker, and an open breaker
refuses the call before it is made (CircuitOpen). An order submit is never retried here: it is
sent again only after a lookup by client_order_id proves the broker never accepted it
(services/execution/broker.py `recover`), so `retry_idempotent` refuses the broker_submit
dependency outright.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from libs.errors import DependencyFailed, ErrorInfo, KeelError, Throttled, classify_exception
from libs.errors.breakers import Breakers, circuit_open_code

T = TypeVar("T")

# dependencies whose calls change the world: a retry could do the thing twice
NON_IDEMPOTENT = frozenset({"broker_submit"})


class CircuitOpen(KeelError):
    """A call refused because its dependency's breaker is open."""

    def __init__(self, dependency: str, why: str) -> None:
        super().__init__(f"{circuit_open_code(dependency)}: {why}")
        self.dependency = dependency
        self.reason_code = circuit_open_code(dependency)


async def retry_idempotent(
    fn: Callable[[], Awaitable[T]],
    *,
    dep: str,
    breakers: Breakers | None,
    jitter: random.Random,
    classify: Callable[..., ErrorInfo] = classify_exception,
    max_attempts: int = 3,
    max_total_seconds: float = 10.0,
    base_delay: float = 0.2,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> T:
    """Call an idempotent read, retrying retryable failures within the bounds.

    The last failure comes out as DependencyFailed(dep) with `counted` set when it was counted
    against dep's breaker here (retryable failures are), so a handler never counts it twice.
    """
    if dep in NON_IDEMPOTENT:
        raise ValueError(
            f"expected an idempotent dependency, was {dep!r}: an order is re-sent only after a lookup by "
            "client_order_id proves the broker never accepted it"
        )
    if breakers is not None:
        why = await breakers.open_reason(dep)
        if why:
            raise CircuitOpen(dep, why)
    started = clock()
    attempt = 0
    opened = None  # the breaker, if a failure counted here opened it
    while True:
        attempt += 1
        try:
            return await fn()
        except Exception as e:  # classified here, and raised again unless retryable
            info = classify(e, dependency=dep)
            counted = breakers is not None and info.retryable and not isinstance(e, Throttled)
            if counted:
                state, now_open = await breakers.record_failure(dep, info.reason_code)  # type: ignore[union-attr]
                opened = state if now_open else opened
            delay = base_delay * 2 ** (attempt - 1) * (1 + jitter.random())
            if (
                not info.retryable
                or opened is not None  # the breaker opened: the dependency is left alone now
                or attempt >= max_attempts
                or clock() - started + delay > max_total_seconds
            ):
                raise DependencyFailed(dep, e, counted=counted, opened=opened) from e
        await sleep(delay)
