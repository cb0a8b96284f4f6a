"""Broker capabilities: the configured order policy is checked against the broker's row at start."""

from __future__ import annotations

import dataclasses

import pytest

from libs.errors import DependencyUnavailable
from services.execution.app import check_order_policy
from services.execution.capabilities import (
    BROKERS,
    ORDER_CLASSES,
    ORDER_TYPES,
    TIME_IN_FORCE,
    BrokerCapabilities,
    OrderPolicy,
    check_capabilities,
)
from services.execution.config import ExecConfig

ALPACA = BROKERS["alpaca"]
LOCAL = BROKERS["keel-local"]
# a broker with only the basics: market/limit, simple, day/gtc, long only
BASIC = BrokerCapabilities(
    name="basic",
    order_types=frozenset({"market", "limit"}),
    order_classes=frozenset({"simple"}),
    time_in_force=frozenset({"day", "gtc"}),
    fractional=False,
    shorting=False,
    extended_hours=False,
    notional=False,
)


def test_table_when_read_then_alpaca_supports_every_type_class_and_tif_with_fractional_and_shorting():
    assert (ALPACA.order_types, ALPACA.order_classes, ALPACA.time_in_force) == (
        ORDER_TYPES,
        ORDER_CLASSES,
        TIME_IN_FORCE,
    )
    assert ALPACA.fractional and ALPACA.shorting and ALPACA.notional


def test_table_when_read_then_keel_local_has_everything_but_fractional_and_notional():
    assert (LOCAL.order_types, LOCAL.order_classes, LOCAL.time_in_force) == (ORDER_TYPES, ORDER_CLASSES, TIME_IN_FORCE)
    assert not LOCAL.fractional and not LOCAL.notional
    assert LOCAL.shorting


@pytest.mark.parametrize("caps", [ALPACA, LOCAL, BASIC], ids=lambda c: c.name)
def test_check_when_default_policy_then_every_broker_takes_it(caps):
    assert check_capabilities(OrderPolicy(shorting=caps.shorting), caps) == []


@pytest.mark.parametrize(
    ("policy", "message"),
    [
        (
            OrderPolicy(order_type="stop"),
            "KEEL_RISK_ORDER_TYPE=stop: broker basic does not support order type stop",
        ),
        (
            OrderPolicy(order_type="trailing_stop"),
            "KEEL_RISK_ORDER_TYPE=trailing_stop: broker basic does not support order type trailing_stop",
        ),
        (
            OrderPolicy(order_class="bracket"),
            "KEEL_RISK_ORDER_CLASS=bracket: broker basic does not support order class bracket",
        ),
        (
            OrderPolicy(order_type="limit", order_class="oco"),
            "KEEL_RISK_ORDER_CLASS=oco: broker basic does not support order class oco",
        ),
        (
            OrderPolicy(time_in_force="ioc"),
            "KEEL_RISK_TIME_IN_FORCE=ioc: broker basic does not support time in force ioc",
        ),
        (OrderPolicy(fractional=True), "broker basic does not support fractional quantities"),
        (OrderPolicy(), "broker basic does not support short selling"),
        (OrderPolicy(extended_hours=True), "broker basic does not support extended-hours orders"),
    ],
    ids=["stop", "trailing_stop", "bracket", "oco", "ioc", "fractional", "shorting", "extended_hours"],
)
def test_check_when_policy_asks_what_broker_lacks_then_message_names_the_key_and_the_broker(policy, message):
    problems = check_capabilities(policy, BASIC)

    assert any(p.startswith(message) for p in problems), problems


@pytest.mark.parametrize(
    ("policy", "message"),
    [
        (
            OrderPolicy(order_class="bracket", time_in_force="ioc"),
            "KEEL_RISK_ORDER_CLASS=bracket: broker {b} does not support order class bracket with time in force ioc "
            "(only day, gtc)",
        ),
        (
            OrderPolicy(order_type="trailing_stop", order_class="bracket"),
            "KEEL_RISK_ORDER_CLASS=bracket: broker {b} does not support order class bracket with order type "
            "trailing_stop (only limit, market)",
        ),
        (
            OrderPolicy(order_type="trailing_stop", time_in_force="opg"),
            "KEEL_RISK_TIME_IN_FORCE=opg: broker {b} does not support order type trailing_stop with time in force opg "
            "(only day, gtc)",
        ),
        (
            OrderPolicy(order_type="stop", time_in_force="cls"),
            "KEEL_RISK_TIME_IN_FORCE=cls: broker {b} does not support order type stop with time in force cls",
        ),
    ],
    ids=["bracket-ioc", "bracket-trailing-entry", "trailing-opg", "stop-cls"],
)
@pytest.mark.parametrize("caps", [ALPACA, LOCAL], ids=lambda c: c.name)
def test_check_when_combination_is_not_supported_then_refused(caps, policy, message):
    problems = check_capabilities(policy, caps)

    assert len(problems) == 1
    assert problems[0].startswith(message.format(b=caps.name))


@pytest.mark.parametrize(
    "policy",
    [
        OrderPolicy(order_type="limit", order_class="bracket", time_in_force="gtc"),
        OrderPolicy(order_type="limit", order_class="oco"),
        OrderPolicy(order_class="oto"),
        OrderPolicy(order_type="stop_limit"),
        OrderPolicy(order_type="trailing_stop", time_in_force="gtc"),
        OrderPolicy(order_type="limit", time_in_force="opg"),
        OrderPolicy(time_in_force="cls"),
    ],
    ids=lambda p: f"{p.order_type}-{p.order_class}-{p.time_in_force}",
)
def test_check_when_alpaca_documents_the_combination_then_accepted(policy):
    assert check_capabilities(policy, ALPACA) == []
    assert check_capabilities(policy, LOCAL) == []


def test_check_when_market_orders_are_forbidden_by_policy_then_refused_naming_both_keys():
    problems = check_capabilities(OrderPolicy(order_type="market", allow_market=False), ALPACA)

    assert problems == [
        "KEEL_RISK_ORDER_TYPE=market: the order policy forbids market orders (KEEL_RISK_ALLOW_MARKET=false)"
    ]


def test_check_when_several_things_are_missing_then_each_is_listed():
    policy = OrderPolicy(order_type="stop", order_class="bracket", time_in_force="fok")

    problems = check_capabilities(policy, dataclasses.replace(BASIC, shorting=True))

    assert [p.split(":")[0] for p in problems] == [
        "KEEL_RISK_ORDER_TYPE=stop",
        "KEEL_RISK_ORDER_CLASS=bracket",
        "KEEL_RISK_TIME_IN_FORCE=fok",
    ]


# --- at start: execution reads the risk keys and refuses a policy its broker cannot take -------


def test_start_check_when_policy_fits_then_returns_the_configured_row():
    caps = check_order_policy(ExecConfig(broker="keel-local"), env={"KEEL_RISK_ORDER_TYPE": "limit"})

    assert caps is LOCAL


def test_start_check_when_combination_unsupported_then_dependency_unavailable_in_one_line():
    env = {
        "KEEL_RISK_ORDER_CLASS": "bracket",
        "KEEL_RISK_TAKE_PROFIT_BPS": "100",
        "KEEL_RISK_STOP_LOSS_BPS": "50",
        "KEEL_RISK_TIME_IN_FORCE": "ioc",
    }

    with pytest.raises(DependencyUnavailable) as e:
        check_order_policy(ExecConfig(broker="keel-local"), env=env)

    assert str(e.value).startswith("KEEL_RISK_ORDER_CLASS=bracket: broker keel-local does not support order class")
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(
    ("order_class", "legs"),
    [
        ("bracket", {"KEEL_RISK_TAKE_PROFIT_BPS": "100", "KEEL_RISK_STOP_LOSS_BPS": "50"}),
        ("oto", {"KEEL_RISK_STOP_LOSS_BPS": "50"}),
        ("oco", {"KEEL_RISK_ORDER_TYPE": "limit", "KEEL_RISK_TAKE_PROFIT_BPS": "100", "KEEL_RISK_STOP_LOSS_BPS": "50"}),
    ],
)
@pytest.mark.parametrize("broker", ["alpaca", "keel-local"])
def test_start_check_when_broker_takes_the_order_class_then_execution_starts(
    order_class: str, legs: dict[str, str], broker: str
):
    env = {"KEEL_RISK_ORDER_CLASS": order_class, **legs}

    caps = check_order_policy(ExecConfig(broker=broker), env=env)

    assert order_class in caps.order_classes


def test_start_check_when_market_forbidden_but_configured_then_refused_naming_the_keys():
    with pytest.raises(DependencyUnavailable) as e:
        check_order_policy(ExecConfig(), env={"KEEL_RISK_ALLOW_MARKET": "false"})

    assert "KEEL_RISK_ORDER_TYPE=market" in str(e.value) and "KEEL_RISK_ALLOW_MARKET" in str(e.value)


def test_start_check_when_risk_key_is_invalid_then_refused_naming_it():
    with pytest.raises(DependencyUnavailable, match="KEEL_RISK_ORDER_CLASS"):
        check_order_policy(ExecConfig(), env={"KEEL_RISK_ORDER_CLASS": "mleg"})
