"""Fill simulator: deterministic fills of orders against closed bars (seed 001 §2).

Used by the local paper exchange today, and by replay, evaluation and the RL environment: one
cost model and one set of order rules for every place keel pretends to trade.
"""

from libs.fillsim.costs import (
    CostModel,
    Execution,
    Spread,
    auction_fill,
    bar_sigma,
    capacity,
    fee,
    latency_ns,
    on_tick,
    order_rng,
    path_price,
    resting_fill,
    round_against,
    spread,
    sqrt_impact,
    taker_fill,
)
from libs.fillsim.matching import Match, Working, auction_of, match, stop_trigger, trailing_stop_price

__all__ = [
    "CostModel",
    "Execution",
    "Match",
    "Spread",
    "Working",
    "auction_fill",
    "auction_of",
    "bar_sigma",
    "capacity",
    "fee",
    "latency_ns",
    "match",
    "on_tick",
    "order_rng",
    "path_price",
    "resting_fill",
    "round_against",
    "spread",
    "sqrt_impact",
    "stop_trigger",
    "taker_fill",
    "trailing_stop_price",
]
