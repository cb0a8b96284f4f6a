"""The exchange's REST edge refuses bad order bodies the way Alpaca does: status, code, a clear message."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest

from services.exchange.api import ApiError, parse_order, parse_replace

BASE = {"symbol": "aapl", "qty": "10", "side": "buy", "type": "market", "time_in_force": "day"}


def body(**changes: object) -> bytes:
    fields = {**BASE, **changes}
    return json.dumps({k: v for k, v in fields.items() if v is not None}).encode()


@pytest.mark.parametrize(
    ("changes", "status", "code", "message"),
    [
        ({"type": "stop"}, 422, 40010001, "stop_price is required for stop orders"),
        ({"type": "stop_limit", "stop_price": "101"}, 422, 40010001, "limit_price is required for stop_limit orders"),
        ({"limit_price": "100"}, 422, 40010001, "limit_price is not valid for market orders"),
        (
            {"type": "trailing_stop", "trail_price": "1", "trail_percent": "1"},
            422,
            40010001,
            "exactly one of trail_price or trail_percent",
        ),
        ({"type": "trailing_stop", "trail_percent": "1", "time_in_force": "ioc"}, 422, 40010001, "day or gtc only"),
        ({"type": "stop", "stop_price": "101", "time_in_force": "opg"}, 422, 40010001, "market and limit orders only"),
        ({"order_class": "bracket", "take_profit": {"limit_price": "103"}}, 422, 40010001, "bracket orders require"),
        (
            {"order_class": "oco", "take_profit": {"limit_price": "103"}, "stop_loss": {"stop_price": "97"}},
            422,
            40010001,
            "oco orders must have type limit",
        ),
        ({"take_profit": {"limit_price": "103"}}, 422, 40010001, "need order_class bracket, oco or oto"),
        ({"qty": "1.5"}, 422, 40010001, "fractional orders are not supported"),
        ({"time_in_force": "week"}, 422, 40010001, "invalid time_in_force 'week'"),
        ({"type": "limit", "limit_price": "100.001"}, 422, 42210000, "sub-penny increment"),
        ({"type": "stop", "stop_price": "-1"}, 422, 40010001, "stop_price must be > 0"),
    ],
)
def test_parse_order_when_body_breaks_a_rule_then_alpaca_status_code_and_message(
    changes: dict[str, object], status: int, code: int, message: str
) -> None:
    with pytest.raises(ApiError) as e:
        parse_order(body(**changes))
    assert (e.value.status, e.value.code) == (status, code)
    assert message in e.value.message


def test_parse_order_when_not_json_then_400_malformed() -> None:
    with pytest.raises(ApiError) as e:
        parse_order(b"{not json")
    assert (e.value.status, e.value.code) == (400, 40010000)


def test_parse_order_when_oco_gives_its_limit_only_as_take_profit_then_that_is_its_limit() -> None:
    order = parse_order(
        body(
            side="sell",
            type="limit",
            order_class="oco",
            take_profit={"limit_price": "105"},
            stop_loss={"stop_price": "98"},
        )
    )
    assert (order.symbol, order.limit_price, order.stop_loss_stop_price) == ("AAPL", Decimal("105"), Decimal("98"))


def test_parse_replace_when_nothing_to_change_then_refused_naming_the_fields() -> None:
    with pytest.raises(ApiError) as e:
        parse_replace(b"{}")
    assert e.value.status == 422 and "at least one of qty" in e.value.message
