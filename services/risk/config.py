"""Risk service keys (env prefix KEEL_RISK_)."""

from __future__ import annotations

from decimal import Decimal

from libs.config import Section
from libs.contracts.base import OrderClass, OrderType, TimeInForce

SECTION_PREFIX = "KEEL_RISK_"
BPS = Decimal(10_000)


class RiskConfig(Section, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Per-symbol and gross exposure caps applied to netted sleeve targets, and the order policy."""

    max_symbol_dollars: Decimal = Decimal(25000)
    gross_cap_dollars: Decimal = Decimal(100000)
    min_order_dollars: Decimal = Decimal(100)
    strategy: str = "keel"
    cid_version: str = "1"
    # the order policy (seed 000 App. K): how a target becomes an order. Prices derive from the
    # close of the bar the target was computed on; execution refuses to start when its broker
    # cannot take the configured order (services/execution/capabilities.py)
    order_type: OrderType = "market"
    time_in_force: TimeInForce = "day"
    order_class: OrderClass = "simple"
    allow_market: bool = True  # policy: may risk send market orders at all
    limit_offset_bps: Decimal = Decimal(10)  # limit beyond the close (stop_limit: beyond the stop)
    stop_offset_bps: Decimal = Decimal(50)  # stop trigger beyond the close
    trail_percent: Decimal = Decimal(1)  # trailing_stop: trail by this percent
    take_profit_bps: Decimal | None = None  # exit leg: take profit this far from the close
    stop_loss_bps: Decimal | None = None  # exit leg: stop out this far from the close
    # the cost gate (seed 000 §H, seed 002 C-TCA-01): an order that opens or adds to a position
    # is not sent when its expected one-way cost under TCA's calibrated model is above this
    max_entry_cost_bps: Decimal = Decimal(50)
    # the cost model is stale once this many sessions passed after the one it was made for;
    # with KEEL_BLOCK_TRADING_IF_TCA_STALE=1 entries are then blocked (TCA_STALE_BLOCK)
    tca_max_age_sessions: int = 1

    def __post_init__(self) -> None:
        problem = policy_problem(self)
        if problem:
            raise ValueError(problem)


def _key(name: str) -> str:
    return SECTION_PREFIX + name.upper()


def policy_problem(cfg: RiskConfig) -> str:
    """Return why the order policy cannot work ("" when it can); the message names the key."""
    if cfg.order_type == "market" and not cfg.allow_market:
        return f"{_key('order_type')}=market: expected a non-market order type, {_key('allow_market')} is false"
    # an offset may point below the close, so every one stays under 100 %; an exit leg at 0 bps
    # would sit on the close itself
    offsets = {
        "limit_offset_bps": (cfg.limit_offset_bps, Decimal(0)),
        "stop_offset_bps": (cfg.stop_offset_bps, Decimal(0)),
        "take_profit_bps": (cfg.take_profit_bps, None),
        "stop_loss_bps": (cfg.stop_loss_bps, None),
    }
    for name, (value, least) in offsets.items():
        if value is None:
            continue
        ok = value.is_finite() and (value >= least if least is not None else value > 0) and value < BPS
        if not ok:
            return f"{_key(name)}: expected {'0 <=' if least is not None else '0 <'} bps < 10000, was {value}"
    if not cfg.max_entry_cost_bps.is_finite() or cfg.max_entry_cost_bps < 0:
        return f"{_key('max_entry_cost_bps')}: expected >= 0 bps, was {cfg.max_entry_cost_bps}"
    if cfg.tca_max_age_sessions < 1:
        # TCA publishes a session's model at its first bar: a day-old one must stay usable until then
        return f"{_key('tca_max_age_sessions')}: expected >= 1, was {cfg.tca_max_age_sessions}"
    if not cfg.trail_percent.is_finite() or not 0 < cfg.trail_percent < 100:
        return f"{_key('trail_percent')}: expected 0 < percent < 100, was {cfg.trail_percent}"
    legs = (cfg.take_profit_bps is not None) + (cfg.stop_loss_bps is not None)
    cls = f"{_key('order_class')}={cfg.order_class}"
    if cfg.order_class == "simple" and legs:
        return f"{cls}: expected no {_key('take_profit_bps')}/{_key('stop_loss_bps')} (exit legs need bracket, oco or oto), was set"
    if cfg.order_class in ("bracket", "oco") and legs != 2:
        return f"{cls}: expected both {_key('take_profit_bps')} and {_key('stop_loss_bps')}, was {legs} set"
    if cfg.order_class == "oto" and legs != 1:
        return f"{cls}: expected exactly one of {_key('take_profit_bps')}, {_key('stop_loss_bps')}, was {legs} set"
    if cfg.order_class == "oco" and cfg.order_type != "limit":
        return f"{cls}: expected {_key('order_type')}=limit (an oco is a pair of exits), was {cfg.order_type}"
    if (
        cfg.order_class in ("bracket", "oto")
        and cfg.order_type == "limit"
        and cfg.take_profit_bps is not None
        and cfg.take_profit_bps <= cfg.limit_offset_bps
    ):
        # the take-profit must sit beyond the entry's own limit or the broker refuses the bracket
        return (
            f"{_key('take_profit_bps')}: expected more than {_key('limit_offset_bps')} "
            f"({cfg.limit_offset_bps}) for a limit entry, was {cfg.take_profit_bps}"
        )
    return ""
