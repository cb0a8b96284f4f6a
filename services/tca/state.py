"""TCA state: arrival benchmarks of recent intents and fills still waiting for theirs."""

from __future__ import annotations

from decimal import Decimal

import msgspec

from libs.contracts.execution import OrderFilled, OrderPartiallyFilled


class Arrival(msgspec.Struct, frozen=True, kw_only=True):
    """The benchmark of one intent."""

    symbol: str
    side: str
    arrival_price: Decimal
    strategy: str
    bar_ts: int


class TcaState(msgspec.Struct, frozen=True, kw_only=True):
    """Arrivals by client_order_id; fills that arrived before their intent."""

    arrivals: dict[str, Arrival] = {}
    waiting: tuple[OrderFilled | OrderPartiallyFilled, ...] = ()
