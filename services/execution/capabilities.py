"""What each broker keel can be pointed at supports, and whether the configured order policy fits.

Capabilities are configured, never guessed (seed 000 App. K): `KEEL_EXEC_BROKER` names the row,
and execution refuses to start when the order policy (the `KEEL_RISK_*` order keys) asks for
something that row does not support, instead of finding out from the first rejected order.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

RISK_PREFIX = "KEEL_RISK_"
ORDER_TYPES = frozenset({"market", "limit", "stop", "stop_limit", "trailing_stop"})
ORDER_CLASSES = frozenset({"simple", "bracket", "oco", "oto"})
TIME_IN_FORCE = frozenset({"day", "gtc", "ioc", "fok", "opg", "cls"})


@dataclass(frozen=True)
class BrokerCapabilities:
    """One broker's order support: types, classes, TIFs, and the combinations it restricts."""

    name: str
    order_types: frozenset[str]
    order_classes: frozenset[str]
    time_in_force: frozenset[str]
    fractional: bool
    shorting: bool
    extended_hours: bool
    notional: bool
    # combinations: the only entry types an order class takes, the only TIFs an order class or
    # an order type takes (a missing key: no restriction beyond the sets above)
    class_order_types: Mapping[str, frozenset[str]] = field(default_factory=dict)
    class_time_in_force: Mapping[str, frozenset[str]] = field(default_factory=dict)
    type_time_in_force: Mapping[str, frozenset[str]] = field(default_factory=dict)


@dataclass(frozen=True)
class OrderPolicy:
    """What the order policy asks of the broker (built from the risk service's keys)."""

    order_type: str = "market"
    order_class: str = "simple"
    time_in_force: str = "day"
    allow_market: bool = True
    # keel trades whole shares, long and short, in regular hours
    fractional: bool = False
    shorting: bool = True
    extended_hours: bool = False


_DAY_GTC = frozenset({"day", "gtc"})
# Alpaca's Trading API for US equities ("Orders at Alpaca", alpaca-py's TimeInForce): advanced
# orders (bracket, oco, oto) take day or gtc only; a bracket/oto entry is market or limit, an oco
# is a limit pair; opg/cls (auction orders) are market or limit only; stop and trailing-stop
# orders are documented with day/gtc, so other TIFs are refused rather than guessed
_ALPACA_COMBINATIONS: dict[str, Mapping[str, frozenset[str]]] = {
    "class_order_types": {
        "bracket": frozenset({"market", "limit"}),
        "oto": frozenset({"market", "limit"}),
        "oco": frozenset({"limit"}),
    },
    "class_time_in_force": {"bracket": _DAY_GTC, "oco": _DAY_GTC, "oto": _DAY_GTC},
    "type_time_in_force": {
        "stop": _DAY_GTC,
        "stop_limit": _DAY_GTC,
        "trailing_stop": _DAY_GTC,
    },
}

BROKERS: dict[str, BrokerCapabilities] = {
    "alpaca": BrokerCapabilities(
        name="alpaca",
        order_types=ORDER_TYPES,
        order_classes=ORDER_CLASSES,
        time_in_force=TIME_IN_FORCE,
        fractional=True,
        shorting=True,
        extended_hours=True,
        notional=True,
        **_ALPACA_COMBINATIONS,  # type: ignore[arg-type]
    ),
    # keel's local Alpaca-compatible exchange (services/exchange): every type, class and TIF,
    # with Alpaca's combination rules so a policy that starts here also starts against Alpaca;
    # whole shares only, no notional orders
    "keel-local": BrokerCapabilities(
        name="keel-local",
        order_types=ORDER_TYPES,
        order_classes=ORDER_CLASSES,
        time_in_force=TIME_IN_FORCE,
        fractional=False,
        shorting=True,
        extended_hours=False,
        notional=False,
        **_ALPACA_COMBINATIONS,  # type: ignore[arg-type]
    ),
}


def _key(name: str) -> str:
    return RISK_PREFIX + name.upper()


def check_capabilities(policy: OrderPolicy, caps: BrokerCapabilities) -> list[str]:
    """Return one message per thing the policy asks that the broker cannot do (empty: all fits)."""
    problems: list[str] = []
    broker = f"broker {caps.name}"
    otype, oclass, tif = policy.order_type, policy.order_class, policy.time_in_force
    if otype == "market" and not policy.allow_market:
        problems.append(
            f"{_key('order_type')}=market: the order policy forbids market orders ({_key('allow_market')}=false)"
        )
    if otype not in caps.order_types:
        problems.append(f"{_key('order_type')}={otype}: {broker} does not support order type {otype}")
    if oclass not in caps.order_classes:
        problems.append(f"{_key('order_class')}={oclass}: {broker} does not support order class {oclass}")
    if tif not in caps.time_in_force:
        problems.append(f"{_key('time_in_force')}={tif}: {broker} does not support time in force {tif}")
    entry_types = caps.class_order_types.get(oclass)
    if oclass in caps.order_classes and entry_types is not None and otype not in entry_types:
        problems.append(
            f"{_key('order_class')}={oclass}: {broker} does not support order class {oclass} with order type {otype} "
            f"(only {', '.join(sorted(entry_types))})"
        )
    class_tifs = caps.class_time_in_force.get(oclass)
    if oclass in caps.order_classes and class_tifs is not None and tif not in class_tifs:
        problems.append(
            f"{_key('order_class')}={oclass}: {broker} does not support order class {oclass} with time in force {tif} "
            f"(only {', '.join(sorted(class_tifs))})"
        )
    type_tifs = caps.type_time_in_force.get(otype)
    if otype in caps.order_types and type_tifs is not None and tif not in type_tifs:
        problems.append(
            f"{_key('time_in_force')}={tif}: {broker} does not support order type {otype} with time in force {tif} "
            f"(only {', '.join(sorted(type_tifs))})"
        )
    for need, has, what in (
        (policy.fractional, caps.fractional, "fractional quantities"),
        (policy.shorting, caps.shorting, "short selling"),
        (policy.extended_hours, caps.extended_hours, "extended-hours orders"),
    ):
        if need and not has:
            problems.append(f"{broker} does not support {what}, which the order policy needs")
    return problems
