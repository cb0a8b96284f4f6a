"""Error taxonomy: every failure is classified once, at the boundary, into a category and action.

Dependency breakers (breakers.py), bounded retries (retry.py), the shared rate limit
(ratelimit.py) and the one error handler (handle.py) build on `classify_exception` (seed 000 §B-C).
"""

from __future__ import annotations

import asyncio
import decimal
import enum
import socket
from collections.abc import Awaitable
from typing import TypeVar

import msgspec

T = TypeVar("T")


class ErrorCategory(enum.Enum):
    """What kind of failure this is."""

    TRANSIENT_NETWORK = "TRANSIENT_NETWORK"
    RATE_LIMIT = "RATE_LIMIT"
    AUTH = "AUTH"
    BAD_DATA = "BAD_DATA"
    PROVIDER_SCHEMA = "PROVIDER_SCHEMA"
    ORDER_REJECTED = "ORDER_REJECTED"
    BROKER_STATE = "BROKER_STATE"
    INVARIANT_VIOLATION = "INVARIANT_VIOLATION"
    PROGRAMMING_ERROR = "PROGRAMMING_ERROR"
    UNKNOWN = "UNKNOWN"


class ErrorScope(enum.Enum):
    """How much of the system the failure affects."""

    SYMBOL = "SYMBOL"
    PROVIDER = "PROVIDER"
    GLOBAL = "GLOBAL"


class ErrorAction(enum.Enum):
    """What keel does about it."""

    RETRY = "RETRY"
    SKIP_SYMBOL = "SKIP_SYMBOL"
    DISABLE_PROVIDER = "DISABLE_PROVIDER"
    HALT_TRADING = "HALT_TRADING"


class ErrorInfo(msgspec.Struct, frozen=True, kw_only=True):
    """A classified failure."""

    category: ErrorCategory
    scope: ErrorScope
    action: ErrorAction
    retryable: bool
    dependency: str
    reason_code: str
    details: dict[str, str] = {}


class KeelError(Exception):
    """Base of keel's own exceptions."""


class DependencyUnavailable(KeelError):
    """A required dependency is missing or unreachable at start (the runtime contract)."""


class InvariantViolation(KeelError, ValueError):
    """A value the decision path relies on is impossible (NaN, negative price, ...)."""


class BadData(KeelError):
    """One symbol's input is malformed (a bar whose high is below its low, ...): skip the symbol."""


class RacedOut(KeelError):
    """A shared key-value record (a breaker, the request budget) could not be written: other
    processes kept writing it first. Transient; never the dependency's fault."""


class Throttled(KeelError):
    """keel's own rate limit refused a broker call (libs/errors/ratelimit.py): nothing was sent.

    Not a failure of the broker, so it never counts against a breaker; `reason` is RATE_LIMITED
    or BROKER_LOCKED (a Retry-After holds the account's bucket closed).
    """

    def __init__(self, reason: str, what: str, wait_sec: float) -> None:
        super().__init__(f"{what}: {reason}: no request token within the wait limit (needed {wait_sec:.2f}s more)")
        self.reason = reason
        self.wait_sec = wait_sec


class DependencyFailed(KeelError):
    """A call to a named dependency failed; the original exception is its `cause`.

    `counted`: the failure was counted against the dependency's breaker already (retry_idempotent);
    `opened`: the breaker as it stood when that counting opened it (the CIRCUIT_OPEN alert is due).
    """

    def __init__(self, dependency: str, cause: BaseException, *, counted: bool = False, opened: object = None) -> None:
        super().__init__(f"{dependency}: {type(cause).__name__}: {cause}")
        self.dependency = dependency
        self.cause = cause
        self.counted = counted
        self.opened = opened


async def calling(dependency: str, call: Awaitable[T]) -> T:
    """Await a call to a dependency; a failure comes out as DependencyFailed naming it.

    So one `except DependencyFailed` around several calls still knows which dependency to blame.
    """
    try:
        return await call
    except DependencyFailed:
        raise  # an inner call named its dependency already
    except Exception as e:  # classified by whoever catches DependencyFailed (ErrorHandler.handle)
        raise DependencyFailed(dependency, e) from e


def dependency_of(exc: BaseException, default: str) -> str:
    """Return the dependency an exception came from when its type says so (db, bus), else default."""
    module = type(exc).__module__
    if module.startswith("asyncpg"):
        return "db"
    if module.startswith("nats"):
        return "bus"
    return default


def _http_status(exc: BaseException) -> int | None:
    # alpaca-py APIError exposes status_code; httpx/requests errors carry a response
    status = getattr(exc, "status_code", None)
    if isinstance(status, int):
        return status
    response = getattr(exc, "response", None)
    code = getattr(response, "status_code", None)
    return code if isinstance(code, int) else None


# what Alpaca's 403 refusals of an order say when the account, not the keys, is the reason
_BUSINESS_403 = (
    "insufficient buying power",
    "insufficient qty",
    "not allowed to short",
    "cannot open a",
    "wash trade",
    "day trading",
    "not shortable",
)


def _business_refusal(exc: BaseException) -> bool:
    text = str(exc).lower()
    return any(phrase in text for phrase in _BUSINESS_403)


def _is_network(exc: BaseException) -> bool:
    import asyncpg
    import httpx
    import nats.errors
    import requests

    network = (
        ConnectionError,
        TimeoutError,
        asyncio.TimeoutError,
        socket.gaierror,
        asyncpg.PostgresConnectionError,
        asyncpg.InterfaceError,
        asyncpg.exceptions.SerializationError,
        asyncpg.exceptions.DeadlockDetectedError,
        asyncpg.exceptions.CannotConnectNowError,
        asyncpg.exceptions.TooManyConnectionsError,
        nats.errors.TimeoutError,
        nats.errors.ConnectionClosedError,
        nats.errors.NoServersError,
        nats.errors.NoRespondersError,
        requests.ConnectionError,
        requests.Timeout,
        httpx.TransportError,
    )
    return isinstance(exc, network) or (isinstance(exc, OSError) and not isinstance(exc, FileNotFoundError))


def _conversion_syntax(exc: BaseException) -> bool:
    # text that is not a number: the C decimal module raises InvalidOperation naming the
    # ConversionSyntax signal in its args, the Python one raises ConversionSyntax itself
    if isinstance(exc, decimal.ConversionSyntax):
        return True
    signals = [s for a in exc.args for s in (a if isinstance(a, list) else [a])]
    return isinstance(exc, decimal.InvalidOperation) and decimal.ConversionSyntax in signals


def _is_provider_schema(exc: BaseException) -> bool:
    import pydantic

    # alpaca-py validates every answer with pydantic models
    return isinstance(exc, pydantic.ValidationError)


def classify_exception(
    exc: BaseException, *, dependency: str, symbol: str | None = None, sleeve: str | None = None
) -> ErrorInfo:
    """Classify an exception into category, scope and action (seed 000 §B)."""
    details = {"type": type(exc).__name__, "message": str(exc)[:300]}
    if symbol:
        details["symbol"] = symbol
    if sleeve:
        details["sleeve"] = sleeve

    def info(cat: ErrorCategory, scope: ErrorScope, action: ErrorAction, reason: str) -> ErrorInfo:
        return ErrorInfo(
            category=cat,
            scope=scope,
            action=action,
            retryable=action is ErrorAction.RETRY,
            dependency=dependency,
            reason_code=reason,
            details=details,
        )

    status = _http_status(exc)
    if status is not None and dependency.startswith(("data_", "quotes_")):
        details["status"] = str(status)
        # a data provider refusing what keel asks (a feed the plan does not include, a request it
        # no longer takes) is the provider's problem, not the account's: stop using it, use the
        # fallback if allowed; it never halts trading the way refused trading keys do
        if status == 403 and "subscription" in str(exc).lower():
            return info(ErrorCategory.AUTH, ErrorScope.PROVIDER, ErrorAction.DISABLE_PROVIDER, "PROVIDER_FORBIDDEN")
        if 400 <= status < 500 and status not in (401, 403, 429):
            return info(
                ErrorCategory.PROVIDER_SCHEMA, ErrorScope.PROVIDER, ErrorAction.DISABLE_PROVIDER, "PROVIDER_SCHEMA"
            )
    if status is not None:
        details["status"] = str(status)
        if status == 403 and _business_refusal(exc):
            # Alpaca answers 403 to an order it refuses on the account's state (buying power,
            # shares held by other orders, shorting): the keys work, the order does not
            return info(ErrorCategory.ORDER_REJECTED, ErrorScope.SYMBOL, ErrorAction.SKIP_SYMBOL, "ORDER_REJECTED")
        if status in (401, 403):
            return info(ErrorCategory.AUTH, ErrorScope.GLOBAL, ErrorAction.HALT_TRADING, "AUTH_HALT")
        if status == 429:
            return info(ErrorCategory.RATE_LIMIT, ErrorScope.PROVIDER, ErrorAction.RETRY, "RATE_LIMIT_RETRY")
        if status >= 500:
            return info(ErrorCategory.TRANSIENT_NETWORK, ErrorScope.PROVIDER, ErrorAction.RETRY, "NET_RETRY")
        if status == 422 or 400 <= status < 500:
            return info(ErrorCategory.ORDER_REJECTED, ErrorScope.SYMBOL, ErrorAction.SKIP_SYMBOL, "ORDER_REJECTED")
    if _is_provider_schema(exc):
        # the provider's answer did not have the shape its client expects: stop using it for now
        return info(ErrorCategory.PROVIDER_SCHEMA, ErrorScope.PROVIDER, ErrorAction.DISABLE_PROVIDER, "PROVIDER_SCHEMA")
    if isinstance(exc, msgspec.ValidationError) and isinstance(exc.__cause__, InvariantViolation):
        # an event carrying an impossible value (a NaN price): the contract refused it at decode
        return info(ErrorCategory.INVARIANT_VIOLATION, ErrorScope.GLOBAL, ErrorAction.HALT_TRADING, "INVARIANT_HALT")
    if isinstance(exc, msgspec.ValidationError | msgspec.DecodeError | BadData):
        return info(ErrorCategory.BAD_DATA, ErrorScope.SYMBOL, ErrorAction.SKIP_SYMBOL, "BAD_DATA")
    if isinstance(exc, DependencyFailed):
        return classify_exception(exc.cause, dependency=exc.dependency, symbol=symbol, sleeve=sleeve)
    if isinstance(exc, RacedOut):
        return info(ErrorCategory.TRANSIENT_NETWORK, ErrorScope.PROVIDER, ErrorAction.RETRY, "KV_CONTENTION")
    if isinstance(exc, Throttled):
        return info(ErrorCategory.RATE_LIMIT, ErrorScope.PROVIDER, ErrorAction.RETRY, exc.reason)
    if _conversion_syntax(exc):
        return info(ErrorCategory.BAD_DATA, ErrorScope.SYMBOL, ErrorAction.SKIP_SYMBOL, "BAD_DATA")
    if isinstance(exc, InvariantViolation | decimal.InvalidOperation | FloatingPointError):
        # NaN or inf met in price maths (a signaling Decimal operation, a float trap)
        return info(ErrorCategory.INVARIANT_VIOLATION, ErrorScope.GLOBAL, ErrorAction.HALT_TRADING, "INVARIANT_HALT")
    if _is_network(exc):
        return info(ErrorCategory.TRANSIENT_NETWORK, ErrorScope.PROVIDER, ErrorAction.RETRY, "NET_RETRY")
    if isinstance(exc, TypeError | KeyError | AttributeError | AssertionError):
        return info(ErrorCategory.PROGRAMMING_ERROR, ErrorScope.GLOBAL, ErrorAction.HALT_TRADING, "PROGRAMMING_HALT")
    return info(ErrorCategory.UNKNOWN, ErrorScope.GLOBAL, ErrorAction.HALT_TRADING, "UNKNOWN_HALT")
