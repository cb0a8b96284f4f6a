"""Order builders: an approved order -> the exact JSON body alpaca-py POSTs to /v2/orders.

The body is what alpaca-py sends: the request model's to_request_fields() encoded by requests'
json= (TradingClient.submit_order -> RESTClient._request), so a price's wire text is checked too.
"""

from __future__ import annotations

import asyncio
import json
from decimal import Decimal
from typing import Any

import msgspec
import pytest
import requests
from alpaca.common.exceptions import APIError
from alpaca.trading.requests import (
    LimitOrderRequest,
    MarketOrderRequest,
    StopLimitOrderRequest,
    StopOrderRequest,
    TrailingStopOrderRequest,
)

from services.execution import handlers
from services.execution.broker import AlpacaBroker, is_duplicate_client_order_id, retry_after
from services.execution.orders import build_request
from services.execution.state import ExecOrder, ExecState
from tests.factories import Events, ctx

D = Decimal
CID = "CIDv2:keel:AAPL:buy:20240305:1m:abcdef012345:100:1"
BASE = {"symbol": "AAPL", "qty": 100.0, "side": "buy", "time_in_force": "day", "client_order_id": CID}


def order(**family: Any) -> ExecOrder:
    fields: dict[str, Any] = {
        "intent_id": "i-1",
        "client_order_id": CID,
        "symbol": "AAPL",
        "side": "buy",
        "qty": 100,
        "correlation_id": "c-1",
    }
    return ExecOrder(**{**fields, **family})


def wire(o: ExecOrder) -> bytes:
    """Return the body requests would send for the order's request (alpaca-py posts json=fields)."""
    fields = build_request(o).to_request_fields()
    return requests.Request("POST", "http://broker/v2/orders", json=fields).prepare().body  # type: ignore[return-value]


def body(o: ExecOrder) -> dict[str, Any]:
    return json.loads(wire(o))


def test_build_when_market_then_body_is_exactly_what_keel_sent_before_order_families():
    # the default order (market, day, simple) must not change on the wire
    assert wire(order()) == (
        b'{"symbol": "AAPL", "qty": 100.0, "side": "buy", "type": "market", "time_in_force": "day", '
        b'"client_order_id": "' + CID.encode() + b'"}'
    )
    assert isinstance(build_request(order()), MarketOrderRequest)


def test_build_when_limit_then_limit_price_on_the_wire():
    o = order(order_type="limit", limit_price=D("187.44"), time_in_force="ioc")

    assert isinstance(build_request(o), LimitOrderRequest)
    assert body(o) == {**BASE, "type": "limit", "time_in_force": "ioc", "limit_price": 187.44}


def test_build_when_stop_then_stop_price_on_the_wire():
    o = order(side="sell", order_type="stop", stop_price=D("186.31"))

    assert isinstance(build_request(o), StopOrderRequest)
    assert body(o) == {**BASE, "side": "sell", "type": "stop", "stop_price": 186.31}


def test_build_when_stop_limit_then_both_prices_on_the_wire():
    o = order(order_type="stop_limit", stop_price=D("188.19"), limit_price=D("188.38"), time_in_force="gtc")

    assert isinstance(build_request(o), StopLimitOrderRequest)
    assert body(o) == {
        **BASE,
        "type": "stop_limit",
        "time_in_force": "gtc",
        "stop_price": 188.19,
        "limit_price": 188.38,
    }


def test_build_when_trailing_stop_by_percent_then_trail_percent_on_the_wire():
    o = order(side="sell", order_type="trailing_stop", trail_percent=D("1.5"))

    assert isinstance(build_request(o), TrailingStopOrderRequest)
    assert body(o) == {**BASE, "side": "sell", "type": "trailing_stop", "trail_percent": 1.5}


def test_build_when_trailing_stop_by_price_then_trail_price_on_the_wire():
    o = order(side="sell", order_type="trailing_stop", trail_price=D("0.75"))

    assert body(o) == {**BASE, "side": "sell", "type": "trailing_stop", "trail_price": 0.75}


def test_build_when_bracket_then_class_and_both_legs_on_the_wire():
    o = order(
        order_type="limit",
        limit_price=D("187.44"),
        order_class="bracket",
        take_profit_limit_price=D("189.13"),
        stop_loss_stop_price=D("186.31"),
        stop_loss_limit_price=D("186.12"),
    )

    assert body(o) == {
        **BASE,
        "type": "limit",
        "order_class": "bracket",
        "limit_price": 187.44,
        "take_profit": {"limit_price": 189.13},
        "stop_loss": {"stop_price": 186.31, "limit_price": 186.12},
    }


def test_build_when_market_bracket_with_stop_loss_as_stop_then_leg_has_no_limit():
    o = order(order_class="bracket", take_profit_limit_price=D("189.13"), stop_loss_stop_price=D("186.31"))

    assert body(o) == {
        **BASE,
        "type": "market",
        "order_class": "bracket",
        "take_profit": {"limit_price": 189.13},
        "stop_loss": {"stop_price": 186.31},
    }


def test_build_when_oco_then_limit_type_without_top_level_limit_and_both_legs():
    # an oco is a pair of exits: its limit is the take-profit leg (Alpaca, alpaca-py LimitOrderRequest)
    o = order(
        side="sell",
        order_type="limit",
        order_class="oco",
        take_profit_limit_price=D("189.13"),
        stop_loss_stop_price=D("186.31"),
    )

    assert body(o) == {
        **BASE,
        "side": "sell",
        "type": "limit",
        "order_class": "oco",
        "take_profit": {"limit_price": 189.13},
        "stop_loss": {"stop_price": 186.31},
    }


@pytest.mark.parametrize(
    ("leg", "expected"),
    [
        ({"take_profit_limit_price": D("189.13")}, {"take_profit": {"limit_price": 189.13}}),
        ({"stop_loss_stop_price": D("186.31")}, {"stop_loss": {"stop_price": 186.31}}),
    ],
    ids=["take-profit", "stop-loss"],
)
def test_build_when_oto_then_class_and_its_one_leg_on_the_wire(leg, expected):
    o = order(order_class="oto", **leg)

    assert body(o) == {**BASE, "type": "market", "order_class": "oto", **expected}


@pytest.mark.parametrize(
    ("price", "text"),
    [
        ("12.34", b'"limit_price": 12.34}'),
        ("187.10", b'"limit_price": 187.1}'),
        ("0.1234", b'"limit_price": 0.1234}'),
        ("12.345", b'"limit_price": 12.34}'),  # rounded to the cent (half-even) before it leaves
        ("100000.01", b'"limit_price": 100000.01}'),
    ],
)
def test_build_when_decimal_price_then_wire_text_is_that_price_to_the_tick(price, text):
    o = order(order_type="limit", limit_price=D(price))

    assert wire(o).endswith(text)


def test_build_when_order_type_unknown_then_value_error_names_it():
    with pytest.raises(ValueError, match="expected order_type in .*, was 'iceberg'"):
        build_request(order(order_type="iceberg"))


def test_submit_when_request_cannot_be_built_then_rejected_without_calling_the_broker():
    broker = AlpacaBroker(api_key="k", secret_key="s", paper=True, base_url="http://127.0.0.1:9", timeout=0.1)

    outcome = asyncio.run(broker.submit(order(order_type="iceberg")))

    assert isinstance(outcome, handlers.Rejected)
    assert outcome.code == "INVALID_ORDER"
    assert "iceberg" in outcome.message


def test_hand_over_when_bracket_decision_then_held_order_builds_the_same_bracket():
    f = Events(seed=41)
    family = {
        "order_type": "limit",
        "limit_price": D("50.05"),
        "time_in_force": "gtc",
        "order_class": "bracket",
        "take_profit_limit_price": D("50.50"),
        "stop_loss_stop_price": D("49.75"),
        "stop_loss_limit_price": D("49.70"),
    }
    decision = msgspec.structs.replace(f.decision(f.intent("AAPL", "buy", 100, "50")), **family)

    state, _ = handlers.hand_over(ExecState(), decision, "keel-local", "", ctx("execution", None))

    held = state.orders[decision.client_order_id]
    assert {k: getattr(held, k) for k in family} == family
    assert body(held) == {
        **BASE,
        "client_order_id": decision.client_order_id,
        "time_in_force": "gtc",
        "type": "limit",
        "order_class": "bracket",
        "limit_price": 50.05,
        "take_profit": {"limit_price": 50.5},
        "stop_loss": {"stop_price": 49.75, "limit_price": 49.7},
    }


# --- the broker's duplicate-client_order_id answer -------------------------------------------


@pytest.mark.parametrize(
    ("body", "duplicate"),
    [
        ('{"code":40010001,"message":"client_order_id must be unique"}', True),
        # the same code answers many invalid requests: those are refusals, never "already placed"
        ('{"code":40010001,"message":"take_profit.limit_price must be >= base_price + 0.01"}', False),
        ('{"code":40310000,"message":"insufficient buying power"}', False),
        ("upstream connect error", False),
    ],
)
def test_is_duplicate_client_order_id_when_broker_refuses_then_only_the_unique_id_message_counts(
    body: str, duplicate: bool
):
    assert is_duplicate_client_order_id(APIError(body)) is duplicate


@pytest.mark.parametrize(
    ("header", "seconds"), [("3", 3.0), ("0", 0.0), (None, 0.0), ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0)]
)
def test_retry_after_when_venue_answers_429_then_delay_seconds_read_else_zero(header: str | None, seconds: float):
    response = requests.Response()
    response.status_code = 429
    if header is not None:
        response.headers["Retry-After"] = header
    error = APIError('{"code":42910000,"message":"rate limit exceeded"}', requests.HTTPError(response=response))

    assert retry_after(error) == seconds
