"""Broker rate limit (seed 002 B-DIAG-04): one token bucket per broker account, shared by every process.

Alpaca throttles its trading API per account (commonly 200 requests/min) and answers 429 with a
Retry-After once a client goes over. Every process that calls one account's broker API spends
from the same bucket: `rate_per_min` tokens a minute, holding at most `capacity`. A call that finds no token waits for one up to the caller's limit, or
is refused with a reason the caller reports as a skip (`RATE_LIMITED`, or `BROKER_LOCKED` while a
Retry-After holds the bucket closed): never dropped silently.

Burst: `capacity` defaults to 10, not to `rate_per_min`. A token bucket lets through up to
`capacity + rate_per_min` calls in any 60 s window, so a full-size burst (200) would allow 400 a
minute, twice the broker's limit; 10 keeps the worst minute at 210 while a bar's handful of orders
still goes out at once. Lower `rate_per_min` for a hard ceiling (190 -> at most 200).

Retry-After: a 429 locks the bucket until then and empties it; no token accrues while locked, so
after the lock calls resume at the steady rate instead of in a burst that would earn another 429.
A lock is never shortened by a later, shorter one.

The bucket lives in a JetStream key-value bucket (one key per account, see `account_key`) and is
updated by compare-and-set on the key's revision, so two processes never spend the same token.
The maths are pure (`take`, `lock`, `refill`) on an injected time; `RateLimiter` is the bucket edge.
Clocks of different processes may disagree: the bucket's time never moves backwards, so a process
whose clock lags cannot mint tokens from the gap. Runbook: `nats kv del <prefix>_rl <key>` resets an
account's bucket (full, unlocked).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import os
import random
import re
from collections.abc import Awaitable, Callable

import msgspec
import nats.js.errors
from nats.js.kv import KeyValue

from libs.contracts.base import derive_id
from libs.errors import RacedOut
from libs.errors.breakers import CAS_ATTEMPTS, NS

log = logging.getLogger(__name__)

RATE_LIMITED = "RATE_LIMITED"  # no token within the caller's wait limit
BROKER_LOCKED = "BROKER_LOCKED"  # the broker said when to come back (Retry-After) and that is beyond the limit
NS_PER_MIN = 60 * NS
# float refills can leave a bucket a hair under a whole token after waiting exactly the time
# computed for it; without this slack the caller would sleep again for a nanosecond
_TOKEN_SLACK = 1e-9
_KEY_RE = re.compile(r"^[-/_=.a-zA-Z0-9]+$")  # JetStream KV key alphabet (nats.py kv.VALID_KEY_RE)


class RatePolicy(msgspec.Struct, frozen=True, kw_only=True):
    """How fast an account may call its broker: tokens per minute, and the burst it may save up."""

    rate_per_min: float = 200.0
    capacity: float = 10.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.rate_per_min) and self.rate_per_min > 0):
            raise ValueError(f"rate_per_min: expected a finite number > 0, was {self.rate_per_min!r}")
        if not (math.isfinite(self.capacity) and self.capacity >= 1):
            raise ValueError(f"capacity: expected a finite number >= 1, was {self.capacity!r}")

    @property
    def ns_per_token(self) -> float:
        """Return how many nanoseconds one token takes to accrue."""
        return NS_PER_MIN / self.rate_per_min


class BucketState(msgspec.Struct, frozen=True, kw_only=True):
    """One account's bucket: tokens as of updated_ns, and until when a Retry-After holds it closed."""

    tokens: float
    updated_ns: int
    locked_until_ns: int = 0
    lock_reason: str = ""

    def is_locked(self, now_ns: int) -> bool:
        """Tell whether a Retry-After holds the bucket closed at now_ns."""
        return now_ns < self.locked_until_ns


class Throttle(msgspec.Struct, frozen=True, kw_only=True):
    """What `RateLimiter.acquire` got: a token, or the reason the call must be skipped."""

    taken: bool
    reason: str = ""  # "" when taken, else RATE_LIMITED or BROKER_LOCKED
    wait_sec: float = 0.0  # when refused: how much longer a token would have needed
    waited_sec: float = 0.0  # how long this call waited (slept) for its token or its refusal
    locked_until_ns: int = 0  # when refused BROKER_LOCKED: until when
    lock_reason: str = ""  # when refused BROKER_LOCKED: why (e.g. the 429's reason code)


def full(now_ns: int, policy: RatePolicy) -> BucketState:
    """Return a bucket never used before: full, unlocked."""
    return BucketState(tokens=policy.capacity, updated_ns=now_ns)


def refill(state: BucketState, now_ns: int, policy: RatePolicy) -> BucketState:
    """Return the bucket with the tokens accrued up to now_ns, at most capacity (pure).

    Nothing accrues while locked: the refill runs from the later of the last update and the lock's
    end. The bucket's time never goes back (another process's clock may be ahead of ours).
    """
    start = max(state.updated_ns, state.locked_until_ns)
    tokens = state.tokens
    if now_ns > start:
        tokens += (now_ns - start) / policy.ns_per_token
    return msgspec.structs.replace(state, tokens=min(policy.capacity, tokens), updated_ns=max(state.updated_ns, now_ns))


def take(state: BucketState, now_ns: int, policy: RatePolicy) -> tuple[BucketState, float]:
    """Take one token at now_ns: return the bucket after it and 0.0, or the refilled bucket and the wait (pure).

    The wait is the seconds until a token is there: the rest of a lock plus the time the tokens
    need to reach one (a lock empties the bucket, so after a lock that is one token's time).
    """
    filled = refill(state, now_ns, policy)
    if not state.is_locked(now_ns) and filled.tokens >= 1 - _TOKEN_SLACK:
        return msgspec.structs.replace(filled, tokens=max(0.0, filled.tokens - 1)), 0.0
    locked_ns = max(0, state.locked_until_ns - now_ns)
    deficit = max(0.0, 1 - filled.tokens)
    # the slack keeps float noise (0.2 s computed as 200000000.00000003 ns) from adding a nanosecond
    accrue_ns = max(0, math.ceil(deficit * policy.ns_per_token - 1e-3))
    return filled, (locked_ns + accrue_ns) / NS


def lock(state: BucketState, now_ns: int, seconds: float, reason: str) -> BucketState:
    """Return the bucket held closed at least `seconds` from now_ns and emptied (a 429's Retry-After; pure).

    A longer lock already in place stays, with its reason.
    """
    if not (math.isfinite(seconds) and seconds >= 0):
        raise ValueError(f"lock seconds: expected a finite number >= 0, was {seconds!r}")
    until = now_ns + math.ceil(seconds * NS)
    if until >= state.locked_until_ns:
        locked_until, why = until, reason
    else:
        locked_until, why = state.locked_until_ns, state.lock_reason
    return BucketState(
        tokens=0.0, updated_ns=max(state.updated_ns, now_ns), locked_until_ns=locked_until, lock_reason=why
    )


def account_key(api_key_id: str) -> str:
    """Return the bucket key of one broker account: a digest of its API key id, never the id itself."""
    if not api_key_id:
        raise ValueError("api_key_id: expected a broker API key id, was empty")
    return "acct_" + hashlib.sha256(api_key_id.encode()).hexdigest()[:24]


_decoder = msgspec.json.Decoder(BucketState)


class RateLimiter:
    """One broker account's rate limit, kept in a JetStream key-value bucket shared by every process."""

    def __init__(
        self,
        kv: KeyValue,
        key: str,
        policy: RatePolicy,
        now_ns: Callable[[], int],
        *,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if not _KEY_RE.match(key) or key[0] == "." or key[-1] == ".":
            raise ValueError(f"key: expected a key-value key of [-/_=.a-zA-Z0-9] (see account_key), was {key!r}")
        self.kv = kv
        self.key = key
        self.policy = policy
        self.now_ns = now_ns
        self.sleep = sleep
        # one writer in this process at a time (its tasks never race each other for the revision),
        # and a jitter of its own so processes that lost a round do not retry in lockstep
        self._writing = asyncio.Lock()
        self._jitter = random.Random(int(derive_id("ratelimit", key, os.getpid(), id(self)), 16))

    async def state(self) -> BucketState:
        """Return the account's bucket as stored (full and unlocked when never written)."""
        state, _ = await self._read(self.now_ns())
        return state

    async def acquire(self, *, max_wait_sec: float) -> Throttle:
        """Take a token, waiting up to max_wait_sec for one; say why when none could be had.

        A refusal is not an error: the caller skips the call and reports the reason.
        """
        if not (math.isfinite(max_wait_sec) and max_wait_sec >= 0):
            raise ValueError(f"max_wait_sec: expected a finite number >= 0, was {max_wait_sec!r}")
        started = self.now_ns()
        slept = 0.0
        conflicts = 0
        while True:
            async with self._writing:
                now = self.now_ns()
                before, revision = await self._read(now)
                after, wait = take(before, now, self.policy)
                # time spent so far: by the clock, or by what we slept when the clock is held still
                waited = max((now - started) / NS, slept)
                if wait <= 0 and await self._write(after, revision):
                    return Throttle(taken=True, waited_sec=waited)
            if wait > 0:
                if waited + wait > max_wait_sec:
                    return self._refused(before, now, wait, waited)
                await self.sleep(wait)
                slept += wait
                conflicts = 0
                continue
            conflicts += 1
            if conflicts >= CAS_ATTEMPTS:
                raise RacedOut(
                    f"expected to take a rate-limit token for {self.key} within {CAS_ATTEMPTS} attempts, was raced out"
                )
            await self._backoff(conflicts)

    async def lock(self, seconds: float, reason: str) -> BucketState:
        """Hold the account's bucket closed for every process at least `seconds` (a 429's Retry-After)."""
        for attempt in range(CAS_ATTEMPTS):
            async with self._writing:
                now = self.now_ns()
                before, revision = await self._read(now)
                after = lock(before, now, seconds, reason)
                if await self._write(after, revision):
                    return after
            await self._backoff(attempt + 1)
        raise RacedOut(f"expected to lock the rate limit of {self.key} within {CAS_ATTEMPTS} attempts, was raced out")

    def _refused(self, state: BucketState, now_ns: int, wait: float, waited: float) -> Throttle:
        if state.is_locked(now_ns):
            return Throttle(
                taken=False,
                reason=BROKER_LOCKED,
                wait_sec=wait,
                waited_sec=waited,
                locked_until_ns=state.locked_until_ns,
                lock_reason=state.lock_reason,
            )
        return Throttle(taken=False, reason=RATE_LIMITED, wait_sec=wait, waited_sec=waited)

    async def _backoff(self, lost_rounds: int) -> None:
        # another process wrote the key meanwhile: read again after a pause that grows with each
        # lost round so the writers spread out (as breakers.py)
        log.debug("rate limit update raced; retrying", extra={"key": self.key, "lost_rounds": lost_rounds})
        await self.sleep(min(0.002 * lost_rounds, 0.05) * (0.5 + self._jitter.random()))

    async def _write(self, state: BucketState, revision: int) -> bool:
        try:
            if revision:
                await self.kv.update(self.key, msgspec.json.encode(state), last=revision)
            else:
                await self.kv.create(self.key, msgspec.json.encode(state))
        except nats.js.errors.KeyWrongLastSequenceError:
            return False
        return True

    async def _read(self, now_ns: int) -> tuple[BucketState, int]:
        try:
            entry = await self.kv.get(self.key)
        except nats.js.errors.KeyNotFoundError:
            # never written, or reset by an operator (`nats kv del`; create writes over the marker)
            return full(now_ns, self.policy), 0
        if not entry.value:
            return full(now_ns, self.policy), entry.revision or 0
        return _decoder.decode(entry.value), entry.revision or 0
