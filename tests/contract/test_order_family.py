"""The order family on OrderIntent and PretradeDecision: which type, class, prices and legs fit.

Every rule holds on construction and on decode (a bad payload is a ValidationError before any
handler sees it), for both wire types that carry the family.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import msgspec
import pytest

from libs.contracts.base import check_order_family, tick_size, to_tick
from libs.contracts.codec import decode_event, encode
from libs.contracts.oms import PretradeDecision
from libs.contracts.risk import OrderIntent

D = Decimal
ORDER: dict[str, Any] = {
    "event_id": "e1",
    "correlation_id": "c1",
    "causation_id": "c0",
    "ts_event": 1,
    "ts_init": 2,
    "intent_id": "i1",
    "client_order_id": "CIDv2:keel:AAPL:buy:20240305:1m:abcdef012345:100:1",
    "symbol": "AAPL",
    "side": "buy",
    "qty": 100,
    "arrival_price": D("50"),
    "bar_ts": 1,
}
EXTRA: dict[type, dict[str, Any]] = {
    OrderIntent: {"strategy": "keel"},
    PretradeDecision: {"approved": True, "reason": "APPROVED"},
}
TYPES = pytest.mark.parametrize("typ", [OrderIntent, PretradeDecision], ids=lambda t: t.__name__)


def build(typ: type, **family: Any) -> Any:
    return typ(**{**ORDER, **EXTRA[typ], **family})


VALID = {
    "market": {},
    "limit": {"order_type": "limit", "limit_price": D("50.05")},
    "stop": {"order_type": "stop", "stop_price": D("50.25")},
    "stop_limit": {"order_type": "stop_limit", "stop_price": D("50.25"), "limit_price": D("50.30")},
    "trailing_stop_percent": {"order_type": "trailing_stop", "trail_percent": D("1.5")},
    "trailing_stop_price": {"order_type": "trailing_stop", "trail_price": D("0.75")},
    "bracket_buy": {"order_class": "bracket", "take_profit_limit_price": D("51"), "stop_loss_stop_price": D("49")},
    "bracket_sell": {
        "side": "sell",
        "order_class": "bracket",
        "take_profit_limit_price": D("49"),
        "stop_loss_stop_price": D("51"),
        "stop_loss_limit_price": D("51.10"),
    },
    "oco_sell_exits_a_long": {
        "side": "sell",
        "order_type": "limit",
        "order_class": "oco",
        "take_profit_limit_price": D("51"),
        "stop_loss_stop_price": D("49"),
    },
    "oto_stop_loss": {"order_class": "oto", "stop_loss_stop_price": D("49")},
    "oto_take_profit": {
        "order_type": "limit",
        "limit_price": D("50"),
        "order_class": "oto",
        "take_profit_limit_price": D("51"),
    },
}

INVALID = {
    "stop_without_stop_price": ({"order_type": "stop"}, "expected stop_price for a stop order, was None"),
    "stop_limit_without_stop_price": (
        {"order_type": "stop_limit", "limit_price": D("50")},
        "expected stop_price for a stop_limit order, was None",
    ),
    "stop_limit_without_limit_price": (
        {"order_type": "stop_limit", "stop_price": D("50")},
        "expected limit_price for a stop_limit order, was None",
    ),
    "limit_without_limit_price": ({"order_type": "limit"}, "expected limit_price for a limit order, was None"),
    "market_with_limit_price": ({"limit_price": D("50")}, "expected no limit_price on a market order, was 50"),
    "limit_with_stop_price": (
        {"order_type": "limit", "limit_price": D("50"), "stop_price": D("49")},
        "expected no stop_price on a limit order, was 49",
    ),
    "trailing_stop_with_neither": (
        {"order_type": "trailing_stop"},
        "expected exactly one of trail_price, trail_percent for a trailing_stop order, was neither",
    ),
    "trailing_stop_with_both": (
        {"order_type": "trailing_stop", "trail_price": D("1"), "trail_percent": D("1")},
        "expected exactly one of trail_price, trail_percent for a trailing_stop order, was both",
    ),
    "trail_on_a_market_order": ({"trail_percent": D("1")}, "expected no trail_price/trail_percent on a market order"),
    "trail_percent_of_100": (
        {"order_type": "trailing_stop", "trail_percent": D("100")},
        "expected trail_percent < 100, was 100",
    ),
    "simple_with_an_exit_leg": (
        {"take_profit_limit_price": D("51")},
        "expected no exit legs on a simple order, was take-profit 51",
    ),
    "bracket_without_stop_loss": (
        {"order_class": "bracket", "take_profit_limit_price": D("51")},
        "expected take_profit_limit_price and stop_loss_stop_price on a bracket order, was 51 and None",
    ),
    "bracket_without_take_profit": (
        {"order_class": "bracket", "stop_loss_stop_price": D("49")},
        "expected take_profit_limit_price and stop_loss_stop_price on a bracket order, was None and 49",
    ),
    "oco_without_a_leg": (
        {"order_type": "limit", "order_class": "oco", "take_profit_limit_price": D("51")},
        "on a oco order",
    ),
    "oco_of_market_type": (
        {"order_class": "oco", "take_profit_limit_price": D("49"), "stop_loss_stop_price": D("51")},
        "expected order_type limit for an oco order, was market",
    ),
    "oto_with_two_legs": (
        {"order_class": "oto", "take_profit_limit_price": D("51"), "stop_loss_stop_price": D("49")},
        "expected exactly one exit leg (take-profit or stop-loss) on an oto order, was 2",
    ),
    "oto_without_a_leg": ({"order_class": "oto"}, "expected exactly one exit leg"),
    "stop_loss_limit_without_stop": (
        {"order_class": "oto", "take_profit_limit_price": D("51"), "stop_loss_limit_price": D("48")},
        "expected stop_loss_stop_price with stop_loss_limit_price, was None",
    ),
    "buy_bracket_upside_down": (
        {"order_class": "bracket", "take_profit_limit_price": D("49"), "stop_loss_stop_price": D("51")},
        "expected take_profit_limit_price above stop_loss_stop_price for a buy bracket order, was 49 vs 51",
    ),
    "buy_oco_covers_a_short_so_profit_is_below": (
        {
            "order_type": "limit",
            "order_class": "oco",
            "take_profit_limit_price": D("51"),
            "stop_loss_stop_price": D("49"),
        },
        "expected take_profit_limit_price below stop_loss_stop_price for a buy oco order",
    ),
}


@TYPES
@pytest.mark.parametrize("family", VALID.values(), ids=VALID.keys())
def test_build_when_family_fits_then_built_and_round_trips_on_the_wire(typ: type, family: dict[str, Any]) -> None:
    order = build(typ, **family)

    assert decode_event(encode(order)) == order
    for name, value in family.items():
        assert getattr(order, name) == value


@TYPES
@pytest.mark.parametrize(("family", "message"), INVALID.values(), ids=INVALID.keys())
def test_build_when_family_does_not_fit_then_value_error_says_expected_and_was(
    typ: type, family: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match="expected") as e:
        build(typ, **family)

    assert message in str(e.value)


@TYPES
@pytest.mark.parametrize(("family", "message"), INVALID.values(), ids=INVALID.keys())
def test_decode_when_family_does_not_fit_then_validation_error(typ: type, family: dict[str, Any], message: str) -> None:
    doc = json.loads(encode(build(typ)))
    doc.update({k: str(v) if isinstance(v, Decimal) else v for k, v in family.items()})

    with pytest.raises(msgspec.ValidationError) as e:
        decode_event(json.dumps(doc).encode())

    assert message in str(e.value)


@TYPES
def test_decode_when_old_payload_without_family_fields_then_simple_market_defaults(typ: type) -> None:
    doc = json.loads(encode(build(typ)))
    for name in (
        "order_class",
        "stop_price",
        "trail_price",
        "trail_percent",
        "take_profit_limit_price",
        "stop_loss_stop_price",
        "stop_loss_limit_price",
    ):
        doc.pop(name)

    order = decode_event(json.dumps(doc).encode())

    assert (order.order_type, order.order_class, order.stop_price, order.take_profit_limit_price) == (
        "market",
        "simple",
        None,
        None,
    )


def test_check_order_family_when_called_on_any_object_with_the_fields_then_same_rules() -> None:
    class Plain:
        side = "buy"
        order_type = "stop"
        order_class = "simple"
        limit_price = stop_price = trail_price = trail_percent = None
        take_profit_limit_price = stop_loss_stop_price = stop_loss_limit_price = None

    with pytest.raises(ValueError, match="expected stop_price for a stop order, was None"):
        check_order_family(Plain())


@pytest.mark.parametrize(
    ("price", "tick", "rounded"),
    [
        ("187.254", "0.01", "187.25"),
        ("187.255", "0.01", "187.26"),  # half-even: 5 rounds to the even cent
        ("187.265", "0.01", "187.26"),
        ("1.00", "0.01", "1.00"),
        ("0.99994", "0.0001", "0.9999"),
        ("0.00001", "0.0001", "0.0001"),  # never below one tick
    ],
)
def test_to_tick_when_priced_then_rounded_to_the_rule_612_tick(price: str, tick: str, rounded: str) -> None:
    assert tick_size(D(price)) == D(tick)
    assert str(to_tick(D(price))) == rounded
