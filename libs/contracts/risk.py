"""Risk family: netted, capped order intents."""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated

import msgspec

from libs.contracts.base import (
    ClientOrderId,
    Event,
    IntentId,
    NanoTime,
    OrderClass,
    OrderType,
    Price,
    Shares,
    Side,
    SignedShares,
    Symbol,
    TimeInForce,
    check_order_family,
)


class SleeveShare(msgspec.Struct, frozen=True, kw_only=True):
    """How much of a netted intent one sleeve asked for."""

    sleeve: str
    shares: SignedShares


class OrderIntent(Event, kw_only=True, tag="risk.order_intent.v1"):
    """Risk wants this order placed; the OMS decides whether it may be."""

    intent_id: IntentId
    client_order_id: ClientOrderId
    symbol: Symbol
    side: Side
    qty: Shares
    order_type: OrderType = "market"
    limit_price: Price | None = None
    time_in_force: TimeInForce = "day"
    arrival_price: Price
    bar_ts: NanoTime
    strategy: str
    sleeves: tuple[SleeveShare, ...] = ()
    notional: Decimal = Decimal(0)
    # risk's 1-based count of intents for this symbol: lets the OMS report how far it has seen,
    # so risk's in-flight accounting survives an intent that never reached the OMS
    risk_seq: int = 0
    # the order family (seed 000 App. K): how the order works at the broker and the exit
    # parameters it carries; check_order_family says which combinations are valid
    order_class: OrderClass = "simple"
    stop_price: Price | None = None
    trail_price: Price | None = None
    trail_percent: Decimal | None = None  # percent: 1.5 trails by 1.5 %
    take_profit_limit_price: Price | None = None
    stop_loss_stop_price: Price | None = None
    stop_loss_limit_price: Price | None = None
    # the decision bar's traded shares (0: not known): below KEEL_OMS_THIN_VOLUME_SHARES the OMS
    # collars prices tighter (liquidity is thin)
    bar_volume: Annotated[int, msgspec.Meta(ge=0)] = 0
    # the decision bar's quote and volatility, as the target carried them (TCA's arrival quote)
    spread_bps: Decimal = Decimal(0)
    spread_is_proxy: bool = True
    sigma_bps: Decimal = Decimal(0)
    # risk's cost gate: the expected one-way cost of this order when it was decided (None: the
    # gate did not price it) and the trading profile risk ran under
    expected_cost_bps: Decimal | None = None
    trading_profile: str = ""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_order_family(self)


class EntryBlocked(Event, kw_only=True, tag="risk.entry_blocked.v1"):
    """Risk did not order a gap that would open or add to a position, and says why.

    Reasons: COST_GATE_BLOCK (its expected cost is above KEEL_RISK_MAX_ENTRY_COST_BPS),
    TCA_STALE_BLOCK (the cost model is stale or out of bounds, with
    KEEL_BLOCK_TRADING_IF_TCA_STALE=1). Orders that reduce a position are never blocked here.
    """

    symbol: Symbol
    side: Side
    qty: Shares
    reason_code: str
    message: str
    bar_ts: NanoTime
    session: str = ""
    strategy: str = ""
    sleeves: tuple[SleeveShare, ...] = ()
    order_type: OrderType = "market"
    expected_cost_bps: Decimal | None = None
    details: dict[str, str] = {}


RiskEvent = OrderIntent | EntryBlocked
