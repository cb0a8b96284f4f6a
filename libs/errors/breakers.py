"""Dependency circuit breakers (seed 000 §B): a dependency that keeps failing is left alone for a while.

Separate from drawdown breakers. Each dependency (`broker_submit`, `broker_positions`,
`broker_open_orders`, `data_primary`, `data_fallback`, `quotes_primary`, `calendar_market_clock`,
`db`, `bus`) has rolling failure windows: `short_failures` failures within `short_window_sec`
open it for `short_open_sec`; `long_failures` within `long_window_sec` open it for
`long_open_sec` (defaults 3 in 60 s -> 60 s, 10 in 10 min -> 900 s). Successes do not reset the
windows: failures interleaved with successes still escalate. An open breaker closes when its
time runs out. While open, new orders that need the dependency are blocked with
`CIRCUIT_OPEN_<dependency>`.

The state of every breaker is shared by every process of a deployment through a JetStream
key-value bucket (one key per dependency, updated with compare-and-set on the key's revision),
so a failure seen by one process opens the breaker for all. The policy maths are pure
(`record_failure`, `BreakerState.is_open`); `Breakers` is the bucket edge.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
from collections.abc import Callable

import msgspec
import nats.errors
import nats.js.errors
from nats.js.kv import KeyValue

from libs.config import CommonConfig
from libs.contracts.base import derive_id
from libs.errors import RacedOut

log = logging.getLogger(__name__)

DEPENDENCIES = (
    "broker_submit",
    "broker_positions",
    "broker_open_orders",
    "data_primary",
    "data_fallback",
    "quotes_primary",
    "calendar_market_clock",
    "db",
    "bus",
)
NS = 1_000_000_000
CAS_ATTEMPTS = 32  # compare-and-set rounds before a failure cannot be recorded (heavy contention)


def circuit_open_code(dependency: str) -> str:
    """Return the reason code of an order blocked by a dependency's open breaker."""
    return f"CIRCUIT_OPEN_{dependency}"


class BreakerPolicy(msgspec.Struct, frozen=True, kw_only=True):
    """When a breaker opens and for how long (the `KEEL_BREAKER_*` keys)."""

    short_failures: int = 3
    short_window_sec: float = 60.0
    short_open_sec: float = 60.0
    long_failures: int = 10
    long_window_sec: float = 600.0
    long_open_sec: float = 900.0


class BreakerState(msgspec.Struct, frozen=True, kw_only=True):
    """One dependency's breaker: recent failure times, and until when it is open."""

    dependency: str
    failures: tuple[int, ...] = ()  # ns, within the long window
    open_until_ns: int = 0
    opened_at_ns: int = 0  # when the current (or last) open period began
    reason: str = ""  # the reason code of the last failure

    def is_open(self, now_ns: int) -> bool:
        """Tell whether the breaker is open at now_ns."""
        return now_ns < self.open_until_ns


def record_failure(state: BreakerState, now_ns: int, reason: str, policy: BreakerPolicy) -> BreakerState:
    """Return the breaker after one more failure at now_ns (pure)."""
    failures = (*(t for t in state.failures if now_ns - t < policy.long_window_sec * NS), now_ns)
    recent = sum(1 for t in failures if now_ns - t < policy.short_window_sec * NS)
    open_sec = 0.0
    if len(failures) >= policy.long_failures:
        open_sec = policy.long_open_sec
    elif recent >= policy.short_failures:
        open_sec = policy.short_open_sec
    until = max(state.open_until_ns, now_ns + int(open_sec * NS)) if open_sec else state.open_until_ns
    opened_at = now_ns if until > now_ns and not state.is_open(now_ns) else state.opened_at_ns
    return BreakerState(
        dependency=state.dependency, failures=failures, open_until_ns=until, opened_at_ns=opened_at, reason=reason
    )


def hold_open(state: BreakerState, now_ns: int, seconds: float, reason: str) -> BreakerState:
    """Return the breaker held open for at least `seconds` from now_ns (a venue's Retry-After; pure)."""
    until = max(state.open_until_ns, now_ns + int(seconds * NS))
    opened_at = now_ns if not state.is_open(now_ns) else state.opened_at_ns
    return msgspec.structs.replace(state, open_until_ns=until, opened_at_ns=opened_at, reason=reason)


def order_block(states: dict[str, BreakerState], now_ns: int, *, fallback_allowed: bool) -> tuple[str, str] | None:
    """Return (dependency, reason) of the open breaker that blocks new orders, or None (pure).

    Every dependency blocks while its breaker is open, except the data providers: an open
    data_primary blocks only when no fallback may serve instead (not allowed, or its breaker open
    too), and data_fallback alone never blocks (the primary serves). The first in DEPENDENCIES
    order wins, so the reason is stable.
    """

    def is_open(dep: str) -> bool:
        state = states.get(dep)
        return state is not None and state.is_open(now_ns)

    for dep in DEPENDENCIES:
        if not is_open(dep) or dep == "data_fallback":
            continue
        if dep == "data_primary" and fallback_allowed and not is_open("data_fallback"):
            continue
        return dep, states[dep].reason or "open"
    return None


def policy_of(common: CommonConfig) -> BreakerPolicy:
    """Return the breaker policy of the `KEEL_BREAKER_*` keys."""
    return BreakerPolicy(
        short_failures=common.breaker_short_failures,
        short_window_sec=common.breaker_short_window_sec,
        short_open_sec=common.breaker_short_open_sec,
        long_failures=common.breaker_long_failures,
        long_window_sec=common.breaker_long_window_sec,
        long_open_sec=common.breaker_long_open_sec,
    )


_decoder = msgspec.json.Decoder(BreakerState)


class Breakers:
    """Every dependency breaker of a deployment, kept in one JetStream key-value bucket."""

    def __init__(self, kv: KeyValue, policy: BreakerPolicy, now_ns: Callable[[], int]) -> None:
        self.kv = kv
        self.policy = policy
        self.now_ns = now_ns
        # one writer per key in this process (its tasks never race each other for the revision),
        # and a jitter of its own so processes that lost a round do not retry in lockstep
        self._writing: dict[str, asyncio.Lock] = {}
        self._jitter = random.Random(int(derive_id("breakers", os.getpid(), id(self)), 16))

    async def state(self, dependency: str) -> BreakerState:
        """Return a dependency's breaker (closed and clean when never written)."""
        state, _ = await self._read(dependency)
        return state

    async def states(self) -> dict[str, BreakerState]:
        """Return every dependency's breaker, read together."""
        read = await asyncio.gather(*(self.state(dep) for dep in DEPENDENCIES))
        return {state.dependency: state for state in read}

    async def order_block(self, *, fallback_allowed: bool) -> tuple[str, str] | None:
        """Return (dependency, reason) of the open breaker that blocks new orders now, or None."""
        return order_block(await self.states(), self.now_ns(), fallback_allowed=fallback_allowed)

    async def open_reason(self, dependency: str) -> str:
        """Return why a dependency's breaker is open (its last failure's reason), or '' when closed."""
        state = await self.state(dependency)
        return (state.reason or "open") if state.is_open(self.now_ns()) else ""

    async def record_failure(
        self, dependency: str, reason: str, *, retry_after_sec: float = 0.0
    ) -> tuple[BreakerState, bool]:
        """Count a failure; return the breaker after it and whether this failure opened it.

        A venue that said when to come back (Retry-After) keeps the breaker open at least that long.
        """
        async with self._writing.setdefault(dependency, asyncio.Lock()):
            return await self._record(dependency, reason, retry_after_sec)

    async def _record(self, dependency: str, reason: str, retry_after_sec: float) -> tuple[BreakerState, bool]:
        for attempt in range(CAS_ATTEMPTS):
            before, revision = await self._read(dependency)
            now = self.now_ns()
            after = record_failure(before, now, reason, self.policy)
            if retry_after_sec > 0:
                after = hold_open(after, now, retry_after_sec, reason)
            try:
                if revision:
                    await self.kv.update(dependency, msgspec.json.encode(after), last=revision)
                else:
                    await self.kv.create(dependency, msgspec.json.encode(after))
            except nats.js.errors.KeyWrongLastSequenceError as e:
                # another process wrote it meanwhile: count this failure on top of theirs, after a
                # pause that grows with each lost round so the writers spread out
                log.debug("breaker update raced; retrying", extra={"dependency": dependency, "error": str(e)})
                await asyncio.sleep(min(0.002 * (attempt + 1), 0.05) * (0.5 + self._jitter.random()))
                continue
            return after, after.is_open(now) and not before.is_open(now)
        raise RacedOut(f"expected to record a {dependency} failure within {CAS_ATTEMPTS} attempts, was raced out")

    async def watch(self, on_state: Callable[[BreakerState], None], stop: asyncio.Event, *, tick: float = 1.0) -> None:
        """Call on_state with every breaker as it stands, on every write and every tick, until stopped.

        For /metrics: an open breaker closes by the clock, with no write, so the last states are
        offered again every tick.
        """
        watcher = await self.kv.watchall()
        states: dict[str, BreakerState] = {}
        try:
            while not stop.is_set():
                try:
                    entry = await watcher.updates(timeout=tick)
                except nats.errors.TimeoutError:
                    entry = None
                if entry is not None and entry.value:
                    state = _decoder.decode(entry.value)
                    states[state.dependency] = state
                for state in states.values():
                    on_state(state)
        finally:
            await watcher.stop()

    async def _read(self, dependency: str) -> tuple[BreakerState, int]:
        try:
            entry = await self.kv.get(dependency)
        except nats.js.errors.KeyNotFoundError:
            return BreakerState(dependency=dependency), 0
        if not entry.value:
            return BreakerState(dependency=dependency), entry.revision or 0
        return _decoder.decode(entry.value), entry.revision or 0
