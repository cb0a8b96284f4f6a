"""Implementation shortfall per fill against the intent's arrival price (pure).

shortfall_bps = side * (fill - arrival) / arrival * 10_000 with side +1 for buys, -1 for sells:
positive means the fill cost money relative to deciding at the arrival price.
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal

import msgspec

from libs.contracts.base import Event, derive_id, exit_legs, leg_client_order_id
from libs.contracts.execution import OrderFilled, OrderPartiallyFilled
from libs.contracts.ops import AlertRaised
from libs.contracts.risk import OrderIntent
from libs.contracts.tca import TcaRecorded
from libs.decide import Ctx
from services.tca.config import TcaConfig
from services.tca.state import Arrival, TcaState

_BPS = Decimal("0.0001")


def shortfall_bps(side: str, arrival: Decimal, fill: Decimal) -> Decimal:
    """Return the signed implementation shortfall of one fill in basis points."""
    sign = 1 if side == "buy" else -1
    return (sign * (fill - arrival) / arrival * 10_000).quantize(_BPS)


def record(fill: OrderFilled | OrderPartiallyFilled, arrival: Arrival, ctx: Ctx) -> TcaRecorded:
    """Measure one fill."""
    return TcaRecorded(
        event_id=derive_id("tca.tca_recorded.v1", fill.execution_id),
        correlation_id=fill.correlation_id,
        causation_id=fill.event_id,
        ts_event=fill.ts_event,
        ts_init=ctx.now_ns,
        client_order_id=fill.client_order_id,
        execution_id=fill.execution_id,
        symbol=fill.symbol,
        side=fill.side,
        qty=fill.last_qty,
        arrival_price=arrival.arrival_price,
        fill_price=fill.last_px,
        shortfall_bps=shortfall_bps(fill.side, arrival.arrival_price, fill.last_px),
        strategy=arrival.strategy,
    )


def on_intent(state: TcaState, ev: OrderIntent, ctx: Ctx) -> tuple[TcaState, list[Event]]:
    """Remember an intent's arrival price and measure fills that were waiting for it."""
    cfg: TcaConfig = ctx.config
    horizon = ev.bar_ts - int(cfg.intent_retention_hours * 3600 * 1e9)
    new = {
        ev.client_order_id: Arrival(
            symbol=ev.symbol, side=ev.side, arrival_price=ev.arrival_price, strategy=ev.strategy, bar_ts=ev.bar_ts
        )
    }
    # an exit leg is measured against the price it was meant to trade at (its take-profit limit
    # or stop-loss stop): for a stop, the shortfall is the slippage past the trigger
    for leg in exit_legs(ev):
        new[leg_client_order_id(ev.client_order_id, leg.role)] = Arrival(
            symbol=ev.symbol, side=leg.side, arrival_price=leg.reference_price, strategy=ev.strategy, bar_ts=ev.bar_ts
        )
    arrivals = {k: v for k, v in state.arrivals.items() if v.bar_ts >= horizon} | new
    ready = [f for f in state.waiting if f.client_order_id in new]
    waiting = tuple(f for f in state.waiting if f.client_order_id not in new)
    return TcaState(arrivals=arrivals, waiting=waiting), [record(f, new[f.client_order_id], ctx) for f in ready]


def on_fill(state: TcaState, ev: OrderFilled | OrderPartiallyFilled, ctx: Ctx) -> tuple[TcaState, list[Event]]:
    """Measure a fill, or hold it until its intent is known (for intent_retention_hours)."""
    arrival = state.arrivals.get(ev.client_order_id)
    if arrival is not None:
        return state, [record(ev, arrival, ctx)]
    cfg: TcaConfig = ctx.config
    horizon = ev.ts_event - int(cfg.intent_retention_hours * 3600 * 1e9)
    orphans = [f for f in state.waiting if f.ts_event < horizon]
    waiting = (*(f for f in state.waiting if f.ts_event >= horizon), ev)
    return msgspec.structs.replace(state, waiting=waiting), [orphan_alert(f, ctx) for f in orphans]


def orphan_alert(fill: OrderFilled | OrderPartiallyFilled, ctx: Ctx) -> AlertRaised:
    """Say that a fill was never measured because its intent never arrived."""
    return AlertRaised(
        event_id=derive_id("ops.alert_raised.v1", "TCA_ORPHAN_FILL", fill.execution_id),
        correlation_id=fill.correlation_id,
        causation_id=fill.event_id,
        ts_event=fill.ts_event,
        ts_init=ctx.now_ns,
        code="TCA_ORPHAN_FILL",
        severity="warning",
        source=ctx.service,
        message=f"fill {fill.execution_id} of {fill.client_order_id} has no intent to measure against",
        details={"client_order_id": fill.client_order_id, "execution_id": fill.execution_id},
    )


def step(state: TcaState, event: object, ctx: Ctx) -> tuple[TcaState, Sequence[Event]]:
    """Route one consumed event."""
    if isinstance(event, OrderIntent):
        return on_intent(state, event, ctx)
    if isinstance(event, OrderFilled | OrderPartiallyFilled):
        return on_fill(state, event, ctx)
    return state, []
