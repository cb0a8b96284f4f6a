"""The classification table (seed 000 §B): one case per mapping row, with real exception objects.

alpaca-py APIErrors are built the way alpaca-py raises them (the body, and the requests
HTTPError carrying the response); tests/integration/test_classify_faults.py takes the same rows
from the local exchange's fault injection.
"""

from __future__ import annotations

import decimal
import socket
from collections.abc import Callable
from decimal import Decimal

import asyncpg
import httpx
import msgspec
import nats.errors
import pydantic
import pytest
import requests
from alpaca.common.exceptions import APIError
from alpaca.data.models.bars import Bar as AlpacaBar

from libs.errors import (
    BadData,
    ErrorAction,
    ErrorCategory,
    ErrorScope,
    InvariantViolation,
    Throttled,
    classify_exception,
)


def api_error(status: int, code: int, message: str = "m") -> APIError:
    response = requests.Response()
    response.status_code = status
    return APIError(f'{{"code":{code},"message":"{message}"}}', requests.HTTPError(response=response))


class Bar(msgspec.Struct):
    close: float


class Priced(msgspec.Struct):
    close: str

    def __post_init__(self) -> None:
        if self.close == "NaN":
            raise InvariantViolation("expected a finite close, was NaN")


def raised(call: Callable[[], object], kind: type[Exception]) -> Exception:
    """Return the exception a real call raises (so every row classifies a genuine object)."""
    with pytest.raises(kind) as caught:
        call()
    return caught.value


validation_error = raised(lambda: msgspec.json.decode(b'{"close": "x"}', type=Bar), msgspec.ValidationError)
decode_error = raised(lambda: msgspec.json.decode(b"{not json"), msgspec.DecodeError)
# an alpaca-py Bar built from an answer missing its close: the provider's shape changed
schema_error = raised(
    lambda: AlpacaBar("AAPL", {"t": "2024-03-05T14:31:00Z", "o": 1.0, "h": 1.0, "l": 1.0, "v": 1.0, "n": 1, "vw": 1.0}),
    pydantic.ValidationError,
)
nan_compare = raised(lambda: Decimal("NaN") < Decimal(1), decimal.InvalidOperation)  # signaling price maths
decimal_syntax = raised(lambda: Decimal("12,5"), decimal.InvalidOperation)
# what an event with a NaN price raises at decode: the contract's check, wrapped by msgspec
impossible_event = raised(lambda: msgspec.json.decode(b'{"close": "NaN"}', type=Priced), msgspec.ValidationError)


C, S, A = ErrorCategory, ErrorScope, ErrorAction
ROWS = [
    # alpaca-py APIError by HTTP status
    ("401", api_error(401, 40110000), C.AUTH, S.GLOBAL, A.HALT_TRADING, "AUTH_HALT"),
    ("403", api_error(403, 40310000), C.AUTH, S.GLOBAL, A.HALT_TRADING, "AUTH_HALT"),
    ("429", api_error(429, 42910000), C.RATE_LIMIT, S.PROVIDER, A.RETRY, "RATE_LIMIT_RETRY"),
    ("500", api_error(500, 50010000), C.TRANSIENT_NETWORK, S.PROVIDER, A.RETRY, "NET_RETRY"),
    ("503", api_error(503, 50010000), C.TRANSIENT_NETWORK, S.PROVIDER, A.RETRY, "NET_RETRY"),
    ("504", api_error(504, 50010000), C.TRANSIENT_NETWORK, S.PROVIDER, A.RETRY, "NET_RETRY"),
    ("422", api_error(422, 40010001), C.ORDER_REJECTED, S.SYMBOL, A.SKIP_SYMBOL, "ORDER_REJECTED"),
    # a 403 refusing the order on the account's state is not an auth failure: no halt
    ("403 buying power", api_error(403, 40310000, "insufficient buying power"), C.ORDER_REJECTED, S.SYMBOL, A.SKIP_SYMBOL, "ORDER_REJECTED"),
    ("403 qty held", api_error(403, 40310000, "insufficient qty available for order (requested: 7, available: 6)"), C.ORDER_REJECTED, S.SYMBOL, A.SKIP_SYMBOL, "ORDER_REJECTED"),
    ("403 side", api_error(403, 40310000, "cannot open a short sell while a long buy order is open"), C.ORDER_REJECTED, S.SYMBOL, A.SKIP_SYMBOL, "ORDER_REJECTED"),
    # timeouts and connection errors of every client keel uses
    ("requests timeout", requests.Timeout("t"), C.TRANSIENT_NETWORK, S.PROVIDER, A.RETRY, "NET_RETRY"),
    ("requests connection", requests.ConnectionError("c"), C.TRANSIENT_NETWORK, S.PROVIDER, A.RETRY, "NET_RETRY"),
    ("httpx timeout", httpx.ConnectTimeout("t"), C.TRANSIENT_NETWORK, S.PROVIDER, A.RETRY, "NET_RETRY"),
    ("asyncio timeout", TimeoutError(), C.TRANSIENT_NETWORK, S.PROVIDER, A.RETRY, "NET_RETRY"),
    ("dns", socket.gaierror("no host"), C.TRANSIENT_NETWORK, S.PROVIDER, A.RETRY, "NET_RETRY"),
    ("asyncpg connection", asyncpg.PostgresConnectionError("gone"), C.TRANSIENT_NETWORK, S.PROVIDER, A.RETRY, "NET_RETRY"),
    ("asyncpg serialization", asyncpg.exceptions.SerializationError("s"), C.TRANSIENT_NETWORK, S.PROVIDER, A.RETRY, "NET_RETRY"),
    ("nats timeout", nats.errors.TimeoutError(), C.TRANSIENT_NETWORK, S.PROVIDER, A.RETRY, "NET_RETRY"),
    ("nats no servers", nats.errors.NoServersError(), C.TRANSIENT_NETWORK, S.PROVIDER, A.RETRY, "NET_RETRY"),
    # bad data at the edge
    ("msgspec validation", validation_error, C.BAD_DATA, S.SYMBOL, A.SKIP_SYMBOL, "BAD_DATA"),
    ("msgspec decode", decode_error, C.BAD_DATA, S.SYMBOL, A.SKIP_SYMBOL, "BAD_DATA"),
    ("bad bar", BadData("high below low"), C.BAD_DATA, S.SYMBOL, A.SKIP_SYMBOL, "BAD_DATA"),
    ("decimal syntax", decimal_syntax, C.BAD_DATA, S.SYMBOL, A.SKIP_SYMBOL, "BAD_DATA"),
    ("provider schema", schema_error, C.PROVIDER_SCHEMA, S.PROVIDER, A.DISABLE_PROVIDER, "PROVIDER_SCHEMA"),
    # keel's own rate limit held the call back: retried later, never the broker's fault
    ("throttled", Throttled("BROKER_LOCKED", "GET /v2/orders", 3.0), C.RATE_LIMIT, S.PROVIDER, A.RETRY, "BROKER_LOCKED"),
    # impossible values and bugs in the decision pipeline halt, in paper too
    ("NaN price", InvariantViolation("expected a finite close, was NaN"), C.INVARIANT_VIOLATION, S.GLOBAL, A.HALT_TRADING, "INVARIANT_HALT"),
    ("NaN event", impossible_event, C.INVARIANT_VIOLATION, S.GLOBAL, A.HALT_TRADING, "INVARIANT_HALT"),
    ("NaN in maths", nan_compare, C.INVARIANT_VIOLATION, S.GLOBAL, A.HALT_TRADING, "INVARIANT_HALT"),
    ("TypeError", TypeError("unsupported operand"), C.PROGRAMMING_ERROR, S.GLOBAL, A.HALT_TRADING, "PROGRAMMING_HALT"),
    ("KeyError", KeyError("AAPL"), C.PROGRAMMING_ERROR, S.GLOBAL, A.HALT_TRADING, "PROGRAMMING_HALT"),
    # anything else is not guessed at: it halts
    ("unknown", RuntimeError("?"), C.UNKNOWN, S.GLOBAL, A.HALT_TRADING, "UNKNOWN_HALT"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("exc", "category", "scope", "action", "reason"), [r[1:] for r in ROWS], ids=[r[0] for r in ROWS]
)
def test_classify_when_real_exception_then_category_scope_action_and_reason_code(
    exc: BaseException, category: ErrorCategory, scope: ErrorScope, action: ErrorAction, reason: str
) -> None:
    info = classify_exception(exc, dependency="broker_submit", symbol="AAPL")

    assert (info.category, info.scope, info.action, info.reason_code) == (category, scope, action, reason)
    assert info.retryable is (action is ErrorAction.RETRY)
    assert (info.dependency, info.details["symbol"], info.details["type"]) == (
        "broker_submit",
        "AAPL",
        type(exc).__name__,
    )


@pytest.mark.parametrize(
    ("exc", "category", "action", "reason"),
    [
        (
            api_error(403, 40310000, "subscription does not permit querying recent SIP data"),
            C.AUTH,
            A.DISABLE_PROVIDER,
            "PROVIDER_FORBIDDEN",
        ),
        (api_error(422, 42210000, "invalid timeframe"), C.PROVIDER_SCHEMA, A.DISABLE_PROVIDER, "PROVIDER_SCHEMA"),
        (api_error(404, 40410000, "not found"), C.PROVIDER_SCHEMA, A.DISABLE_PROVIDER, "PROVIDER_SCHEMA"),
        # the data keys refused, or the provider throttling: as for any dependency
        (api_error(401, 40110000), C.AUTH, A.HALT_TRADING, "AUTH_HALT"),
        (api_error(429, 42910000), C.RATE_LIMIT, A.RETRY, "RATE_LIMIT_RETRY"),
        (api_error(500, 50010000), C.TRANSIENT_NETWORK, A.RETRY, "NET_RETRY"),
    ],
    ids=["403 subscription", "422", "404", "401", "429", "500"],
)
def test_classify_when_a_data_provider_refuses_then_it_is_disabled_not_a_trading_halt(
    exc: BaseException, category: ErrorCategory, action: ErrorAction, reason: str
) -> None:
    info = classify_exception(exc, dependency="data_primary")

    assert (info.category, info.action, info.reason_code) == (category, action, reason)
