"""TCA family: measured execution cost."""

from __future__ import annotations

from decimal import Decimal

from libs.contracts.base import ClientOrderId, Event, Price, Shares, Side, Symbol


class TcaRecorded(Event, kw_only=True, tag="tca.tca_recorded.v1"):
    """Implementation shortfall of one fill against its intent's arrival price."""

    client_order_id: ClientOrderId
    execution_id: str
    symbol: Symbol
    side: Side
    qty: Shares
    arrival_price: Price
    fill_price: Price
    shortfall_bps: Decimal
    strategy: str = ""


TcaEvent = TcaRecorded
