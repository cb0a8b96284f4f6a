"""The one way keel handles a failure (seed 000 §C): classify -> breakers.record_failure -> act.

Every `except` in services/ that does not re-raise hands its exception to `ErrorHandler.handle`,
which classifies it once (libs.errors.classify_exception), counts it against the failing
dependency's breaker when the dependency is to blame, raises CIRCUIT_OPEN when that opened the
breaker, and applies the action:

- RETRY: nothing more here; the caller tries again later (its breaker counts the failures).
- SKIP_SYMBOL: the caller skips the symbol and records the reason code (returned in ErrorInfo).
- DISABLE_PROVIDER: the caller stops using the provider (its breaker is open) and uses the
  fallback if one is allowed.
- HALT_TRADING: trading halts everywhere, published as an operator would (`keel.ctl.kill`), so
  the OMS records the reason in the halt flag and every service stops new orders; an alert says
  why. A resume needs an operator and a reason.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable

from libs.bus import Bus
from libs.contracts import subjects as sj
from libs.contracts.base import derive_id
from libs.contracts.ops import AlertRaised
from libs.decide import episode_alert
from libs.errors import (
    DependencyFailed,
    ErrorAction,
    ErrorCategory,
    ErrorInfo,
    RacedOut,
    Throttled,
    classify_exception,
    dependency_of,
)
from libs.errors.breakers import DEPENDENCIES, Breakers, BreakerState, circuit_open_code
from libs.obs.metrics import Metrics

log = logging.getLogger(__name__)

# the failures that are the dependency's fault, so they count against its breaker; a refused
# order, bad input of one symbol or keel's own bug says nothing about the dependency's health
DEPENDENCY_FAULTS = frozenset(
    {
        ErrorCategory.TRANSIENT_NETWORK,
        ErrorCategory.RATE_LIMIT,
        ErrorCategory.AUTH,
        ErrorCategory.PROVIDER_SCHEMA,
        ErrorCategory.BROKER_STATE,
    }
)

Alert = Callable[[AlertRaised], Awaitable[None]]


def halt_message(info: ErrorInfo, context: str) -> str:
    """Return the halt reason for a failure: its reason code first, so `keel status` shows it."""
    what = info.details.get("message", "")[:200]
    return f"{info.reason_code} ({info.category.value}): {context}: {info.details.get('type', '')}: {what}"


async def publish_halt(bus: Bus, service: str, reason: str, key: str) -> None:
    """Halt trading everywhere as an operator would: a raw JSON kill on keel.ctl.kill.

    The Msg-Id derives from (service, key), so the same episode halts once however often it is said.
    """
    body = json.dumps({"reason": reason}).encode()
    headers = {sj.H_MSG_ID: derive_id(f"{service}.halt", key), sj.H_ISSUER: service}
    await bus.js.publish(bus.subjects.ctl(sj.CTL_KILL), body, headers=headers)
    log.critical("trading halted by %s", service, extra={"reason": reason})


class ErrorHandler:
    """Classify, count and act on a failure; one instance per process."""

    def __init__(
        self,
        *,
        service: str,
        bus: Bus,
        breakers: Breakers,
        alert: Alert,
        now_ns: Callable[[], int],
        metrics: Metrics | None = None,
    ) -> None:
        self.service = service
        self.bus = bus
        self.breakers = breakers
        self.alert = alert
        self.now_ns = now_ns
        self.metrics = metrics

    async def handle(
        self,
        exc: BaseException,
        *,
        dependency: str,
        context: str,
        symbol: str | None = None,
        key: str = "",
        retry_after_sec: float = 0.0,
    ) -> ErrorInfo:
        """Classify exc, count it against its dependency, apply its action; return the ErrorInfo.

        `context` says what was being done ("fetch bars 2026-01-05T14:31Z"); `key` names the episode
        for a halt (default: the context), so a failure seen again does not halt twice.
        """
        counted = False
        if isinstance(exc, DependencyFailed):
            if exc.opened is not None:
                await self.circuit_opened(exc.opened)  # type: ignore[arg-type]
            exc, dependency, counted = exc.cause, exc.dependency, exc.counted
        # keel's own limit or its own bookkeeping: the dependency is not to blame
        counted = counted or isinstance(exc, Throttled | RacedOut)
        dependency = dependency_of(exc, dependency)  # a database error inside a broker step is the db's
        info = classify_exception(exc, dependency=dependency, symbol=symbol)
        if self.metrics is not None:
            self.metrics.errors.labels(self.service, info.category.value, info.reason_code).inc()
        level = logging.CRITICAL if info.action is ErrorAction.HALT_TRADING else logging.WARNING
        log.log(level, "%s failed: %s", context, info.reason_code, exc_info=level == logging.CRITICAL,
                extra={"reason": info.reason_code, "dependency": dependency, "symbol": symbol or "",
                       "category": info.category.value, "error": info.details.get("message", "")})  # fmt: skip
        if info.category in DEPENDENCY_FAULTS and not counted and dependency in DEPENDENCIES:
            if info.action is ErrorAction.DISABLE_PROVIDER:
                # the provider refuses what keel asks: open its breaker now, not after 3 tries
                retry_after_sec = max(retry_after_sec, self.breakers.policy.short_open_sec)
            state, opened = await self.breakers.record_failure(
                dependency, info.reason_code, retry_after_sec=retry_after_sec
            )
            if opened:
                await self.circuit_opened(state)
        if info.action is ErrorAction.HALT_TRADING:
            await self.halt(info, context, key or context)
        return info

    async def circuit_opened(self, state: BreakerState) -> None:
        """Say once per open episode that a dependency's breaker opened (critical alert CIRCUIT_OPEN)."""
        code = circuit_open_code(state.dependency)
        seconds = (state.open_until_ns - state.opened_at_ns) / 1e9
        message = (
            f"{state.dependency} breaker open for {seconds:g}s after {len(state.failures)} failures "
            f"({state.reason}); new orders are blocked with {code}"
        )
        await self.alert(
            episode_alert(
                "CIRCUIT_OPEN",
                "critical",
                message,
                f"circuit:{state.dependency}:{state.opened_at_ns}",
                service=self.service,
                now_ns=self.now_ns(),
                dependency=state.dependency,
                reason=state.reason,
                open_until_ns=str(state.open_until_ns),
            )
        )
        log.warning(code, extra={"reason": code, "failure": state.reason, "open_until_ns": state.open_until_ns})

    async def halt(self, info: ErrorInfo, context: str, key: str) -> None:
        """Halt trading everywhere with the failure's reason code, and alert (critical) why."""
        reason = halt_message(info, context)
        await publish_halt(self.bus, self.service, reason, f"{info.reason_code}:{key}")
        await self.alert(
            episode_alert(
                info.category.value,
                "critical",
                f"trading halted: {reason}",
                f"halt:{info.reason_code}:{key}",
                service=self.service,
                now_ns=self.now_ns(),
                reason=info.reason_code,
                dependency=info.dependency,
                **{k: v for k, v in info.details.items() if k in ("symbol", "type", "status")},
            )
        )
        if self.metrics is not None:
            self.metrics.decision("halt", info.reason_code)
