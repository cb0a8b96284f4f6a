"""Market data family: closed bars."""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Literal

import msgspec

from libs.contracts.base import Event, NanoTime, Price, Symbol


class BarClosed(Event, kw_only=True, tag="md.bar_closed.v1"):
    """A one-minute bar closed; ts_event is the close time, bar_start its open time."""

    symbol: Symbol
    bar_start: NanoTime
    session: str  # XNYS session date, YYYY-MM-DD
    open: Price
    high: Price
    low: Price
    close: Price
    volume: Annotated[int, msgspec.Meta(ge=0)]
    spread_bps: Decimal
    spread_is_proxy: bool = True
    timeframe: Literal["1Min"] = "1Min"
    source: str = "synthetic"


MarketDataEvent = BarClosed
