"""OMS decisions (pure): pre-trade checks, the order lifecycle, positions and the halt flag."""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal

import msgspec

from libs import sessions
from libs.contracts.base import Event, derive_id, exit_legs, intent_id_for, leg_client_order_id, tag_of
from libs.contracts.control import CancelAllOrders, HaltTrading, ResumeTrading
from libs.contracts.execution import (
    ExecutionEvent,
    OrderAccepted,
    OrderCanceled,
    OrderFilled,
    OrderPartiallyFilled,
    SubmitSkipped,
)
from libs.contracts.oms import APPROVED as APPROVED_REASON
from libs.contracts.oms import PositionChanged, PretradeDecision
from libs.contracts.ops import AlertRaised, Watermark
from libs.contracts.risk import OrderIntent
from libs.decide import Ctx, forward_watermark
from services.oms import state as st
from services.oms.config import OmsConfig

KILL_SWITCH_BLOCK = "KILL_SWITCH_BLOCK"
ORDER_SIZE_BLOCK = "ORDER_SIZE_BLOCK"
DUPLICATE_ORDER_BLOCK = "DUPLICATE_ORDER_BLOCK"
MARKET_CLOSED_BLOCK = "MARKET_CLOSED_BLOCK"
PRICE_COLLAR_BLOCK = "PRICE_COLLAR_BLOCK"
POSITION_LIMIT_BLOCK = "POSITION_LIMIT_BLOCK"
RATE_THROTTLE_BLOCK = "RATE_THROTTLE_BLOCK"
CANCEL_LOOP_BLOCK = "CANCEL_LOOP_BLOCK"
CANARY_MODE_ACTIVE = "CANARY_MODE_ACTIVE"  # canary mode: a symbol outside the canary list
_PX = Decimal("0.000001")
DUPLICATE_WINDOW_NS = 24 * 3600 * 1_000_000_000
MINUTE_NS = 60_000_000_000


def order_key(symbol: str, side: str, qty: int, bar_ts: int) -> str:
    """The identity of an order apart from its id: the same one twice is a duplicate (seed 000 §D.3)."""
    return f"{symbol}|{side}|{qty}|{bar_ts}"


def pretrade(state: st.OmsState, intent: OrderIntent, cfg: OmsConfig) -> tuple[str, dict[str, str]]:
    """Return (reason, details): APPROVED or the first block that applies (seed 000 §D).

    Every check reads event time (the decision bar) and the OMS's own state only, so a replay
    decides the same. Order: the halt flag, duplicates, the market's hours, size, price collar,
    position limit, message-rate throttle, cancel loop.
    """
    if state.halted:
        return KILL_SWITCH_BLOCK, {"halt_reason": state.halt_reason}
    if intent.client_order_id in state.by_cid or intent.client_order_id in state.recent_cids:
        return DUPLICATE_ORDER_BLOCK, {"client_order_id": intent.client_order_id}
    key = order_key(intent.symbol, intent.side, intent.qty, intent.bar_ts)
    if key in state.recent_keys:
        return DUPLICATE_ORDER_BLOCK, {"same_order": key}
    if cfg.canary_symbols and intent.symbol not in cfg.canary_symbols:
        return CANARY_MODE_ACTIVE, {"canary_symbols": ",".join(cfg.canary_symbols)}
    if not sessions.is_open(intent.bar_ts):
        # XNYS regular hours (exchange-calendars): an order decided on the close, or outside a session
        return MARKET_CLOSED_BLOCK, {"bar_ts": str(intent.bar_ts)}
    if intent.qty > cfg.max_order_shares:
        return ORDER_SIZE_BLOCK, {"limit": "max_order_shares", "qty": str(intent.qty), "max": str(cfg.max_order_shares)}
    notional = intent.qty * intent.arrival_price
    if notional > cfg.max_order_dollars:
        return ORDER_SIZE_BLOCK, {
            "limit": "max_order_dollars",
            "notional": str(notional),
            "max": str(cfg.max_order_dollars),
        }
    collared = collar_block(intent, cfg)
    if collared:
        return PRICE_COLLAR_BLOCK, collared
    blocked = position_block(state, intent, cfg)
    if blocked:
        return POSITION_LIMIT_BLOCK, blocked
    throttled = rate_block(state, intent, cfg)
    if throttled:
        return RATE_THROTTLE_BLOCK, throttled
    until = state.blocked_until.get(intent.symbol, 0)
    if intent.bar_ts < until:
        return CANCEL_LOOP_BLOCK, {"until_bar_ts": str(until), "canceled_unfilled": str(cfg.cancel_loop_max)}
    return APPROVED_REASON, {}


def collar_block(intent: OrderIntent, cfg: OmsConfig) -> dict[str, str]:
    """Return why an order's price is too far through the market, else {} (an erroneous-order check).

    Only the aggressive side is collared: a buy limit above the decision bar's close by more than
    the collar (a sell limit below it) would trade at once at a bad price; a stop beyond it on the
    wrong side (a buy stop below, a sell stop above) would trigger at once. A passive price - a
    resting limit, an oco's take-profit, a protective stop - may be as far away as it likes.
    """
    last, pct = intent.arrival_price, cfg.price_collar_pct
    up = intent.side == "buy"
    checks = (("limit_price", intent.limit_price, up), ("stop_price", intent.stop_price, not up))
    for name, price, above_is_aggressive in checks:
        if price is None:
            continue
        away = price / last - 1 if above_is_aggressive else 1 - price / last
        if away > pct:
            return {"price": name, "value": str(price), "last": str(last), "max_pct": str(pct)}
    return {}


def position_block(state: st.OmsState, intent: OrderIntent, cfg: OmsConfig) -> dict[str, str]:
    """Return why an order would take its symbol past the position limit, else {}.

    The position plus every working order plus this one, at the decision bar's close; an order
    that brings that exposure closer to flat always passes (reducing risk is never blocked).
    """
    before = state.positions.get(intent.symbol, st.Position()).qty + open_order_qty(state, intent.symbol)
    after = before + (intent.qty if intent.side == "buy" else -intent.qty)
    exposure = abs(after) * intent.arrival_price
    if abs(after) <= abs(before) or exposure <= cfg.max_position_dollars:
        return {}
    return {"shares_after": str(after), "dollars_after": str(exposure), "max": str(cfg.max_position_dollars)}


def rate_block(state: st.OmsState, intent: OrderIntent, cfg: OmsConfig) -> dict[str, str]:
    """Return why one more order in this minute would break a message-rate limit, else {}."""
    since = intent.bar_ts - MINUTE_NS
    recent = [sym for ts, sym in state.recent_orders if ts > since]
    if len(recent) >= cfg.max_orders_per_min:
        return {"limit": "max_orders_per_min", "orders": str(len(recent)), "max": str(cfg.max_orders_per_min)}
    mine = recent.count(intent.symbol)
    if mine >= cfg.max_symbol_orders_per_min:
        return {"limit": "max_symbol_orders_per_min", "orders": str(mine), "max": str(cfg.max_symbol_orders_per_min)}
    return {}


def count_cancel(state: st.OmsState, intent: st.IntentState, cfg: OmsConfig) -> st.OmsState:
    """Count an order canceled without a fill; enough of them in the window block its symbol."""
    since = intent.bar_ts - cfg.cancel_loop_window_bars * MINUTE_NS
    cancels = (*(t for t in state.cancels.get(intent.symbol, ()) if t > since), intent.bar_ts)
    blocked = dict(state.blocked_until)
    if len(cancels) >= cfg.cancel_loop_max:
        blocked[intent.symbol] = max(
            blocked.get(intent.symbol, 0), intent.bar_ts + cfg.cancel_loop_block_bars * MINUTE_NS
        )
        cancels = ()
    return msgspec.structs.replace(state, cancels={**state.cancels, intent.symbol: cancels}, blocked_until=blocked)


def apply_fill(pos: st.Position, side: str, qty: int, px: Decimal) -> st.Position:
    """Return the position after a fill: average price on adds, realised PnL on reductions."""
    signed = qty if side == "buy" else -qty
    if pos.qty == 0 or (pos.qty > 0) == (signed > 0):
        new_qty = pos.qty + signed
        avg = (abs(pos.qty) * pos.avg_price + qty * px) / abs(new_qty)
        return st.Position(qty=new_qty, avg_price=avg.quantize(_PX), realized_pnl=pos.realized_pnl)
    closing = min(qty, abs(pos.qty))
    direction = 1 if pos.qty > 0 else -1
    realized = pos.realized_pnl + (px - pos.avg_price) * closing * direction
    new_qty = pos.qty + signed
    if new_qty == 0:
        avg = Decimal(0)
    elif (new_qty > 0) == (pos.qty > 0):
        avg = pos.avg_price
    else:
        avg = px  # flipped through zero: the remainder opened at this fill
    return st.Position(qty=new_qty, avg_price=avg, realized_pnl=realized.quantize(_PX))


def open_order_qty(state: st.OmsState, symbol: str) -> int:
    """Return the signed quantity of a symbol still working."""
    return sum(i.working_qty for i in state.intents.values() if i.symbol == symbol)


def open_qty_by_side(state: st.OmsState, symbol: str) -> tuple[int, int]:
    """Return the quantity of a symbol still working to buy and to sell (both >= 0)."""
    working = [i.working_qty for i in state.intents.values() if i.symbol == symbol]
    return sum(q for q in working if q > 0), -sum(q for q in working if q < 0)


def position_changed(state: st.OmsState, symbol: str, cause: Event, ctx: Ctx) -> PositionChanged:
    """Report the OMS's view of one symbol."""
    pos = state.positions.get(symbol, st.Position())
    seen = state.intents_seen.get(symbol, 0)
    buys, sells = open_qty_by_side(state, symbol)
    return PositionChanged(
        event_id=derive_id("oms.position_changed.v1", cause.event_id, symbol),
        correlation_id=cause.correlation_id,
        causation_id=cause.event_id,
        ts_event=cause.ts_event,
        ts_init=ctx.now_ns,
        symbol=symbol,
        qty=pos.qty,
        avg_price=pos.avg_price,
        open_order_qty=buys - sells,
        intents_seen=seen,
        realized_pnl=pos.realized_pnl,
        open_buy_qty=buys,
        open_sell_qty=sells,
    )


def alert(
    code: str, severity: str, message: str, cause: Event | msgspec.Struct, ctx: Ctx, **details: str
) -> AlertRaised:
    """Build an AlertRaised caused by an event or command."""
    cause_id = getattr(cause, "event_id", "")
    return AlertRaised(
        event_id=derive_id("ops.alert_raised.v1", ctx.service, code, cause_id),
        correlation_id=getattr(cause, "correlation_id", "") or cause_id,
        causation_id=cause_id,
        ts_event=getattr(cause, "ts_event", 0),
        ts_init=ctx.now_ns,
        code=code,
        severity=severity,  # type: ignore[arg-type]
        source=ctx.service,
        message=message,
        details=details,
    )


def _replace_intent(state: st.OmsState, intent: st.IntentState, **changes: object) -> st.OmsState:
    new = msgspec.structs.replace(intent, **changes)
    return msgspec.structs.replace(state, intents={**state.intents, intent.intent_id: new})


def on_intent(state: st.OmsState, ev: OrderIntent, ctx: Ctx) -> tuple[st.OmsState, list[Event]]:
    """Log a new intent, run the pre-trade checks, decide."""
    if ev.intent_id in state.intents:
        return state, []  # the same intent again (its id derives from the client_order_id)
    reason, details = pretrade(state, ev, ctx.config)
    approved = reason == APPROVED_REASON
    if reason == DUPLICATE_ORDER_BLOCK:
        # the original intent keeps its record; only the refusal is said
        return state, [_decision(ev, False, reason, details, ctx)]
    intent = st.IntentState(
        intent_id=ev.intent_id,
        client_order_id=ev.client_order_id,
        symbol=ev.symbol,
        side=ev.side,
        qty=ev.qty,
        arrival_price=ev.arrival_price,
        status=st.TRANSITIONS[(st.CREATED, st.APPROVED if approved else st.DENIED)],
        reason=reason,
        bar_ts=ev.bar_ts,
    )
    family = [intent, *(leg_intents(ev, intent.status) if approved else ())]
    new_state = msgspec.structs.replace(
        state,
        intents={**state.intents, **{i.intent_id: i for i in family}},
        by_cid={**state.by_cid, **{i.client_order_id: i.intent_id for i in family}},
        recent_cids={**state.recent_cids, **{i.client_order_id: ev.bar_ts for i in family}},
        intents_seen={**state.intents_seen, ev.symbol: _seen_after(state, ev)},
        recent_keys={**state.recent_keys, order_key(ev.symbol, ev.side, ev.qty, ev.bar_ts): ev.bar_ts},
        recent_orders=(
            (*((ts, s) for ts, s in state.recent_orders if ts > ev.bar_ts - MINUTE_NS), (ev.bar_ts, ev.symbol))
            if approved
            else state.recent_orders
        ),
    )
    return new_state, [_decision(ev, approved, reason, details, ctx), position_changed(new_state, ev.symbol, ev, ctx)]


def leg_intents(ev: OrderIntent, status: str) -> list[st.IntentState]:
    """Return the child intents of an approved order's exit legs, approved with it (status)."""
    out = []
    for leg in exit_legs(ev):
        cid = leg_client_order_id(ev.client_order_id, leg.role)
        out.append(
            st.IntentState(
                intent_id=intent_id_for(cid),
                client_order_id=cid,
                symbol=ev.symbol,
                side=leg.side,
                qty=ev.qty,
                arrival_price=leg.reference_price,
                status=status,
                reason=APPROVED_REASON,
                parent_intent_id=ev.intent_id,
                leg_role=leg.role,
                bar_ts=ev.bar_ts,
            )
        )
    return out


def _seen_after(state: st.OmsState, ev: OrderIntent) -> int:
    # risk numbers its intents per symbol; an intent lost on the way is skipped over, not waited for
    seen = state.intents_seen.get(ev.symbol, 0)
    return max(seen, ev.risk_seq) if ev.risk_seq else seen + 1


def _decision(ev: OrderIntent, approved: bool, reason: str, details: dict[str, str], ctx: Ctx) -> PretradeDecision:
    # a refusal of a re-sent intent must not share the id of the original decision
    parts = (ev.intent_id,) if reason != DUPLICATE_ORDER_BLOCK else (ev.intent_id, reason, ev.event_id)
    return PretradeDecision(
        event_id=derive_id("oms.pretrade_decision.v1", *parts),
        correlation_id=ev.correlation_id,
        causation_id=ev.event_id,
        ts_event=ev.ts_event,
        ts_init=ctx.now_ns,
        intent_id=ev.intent_id,
        client_order_id=ev.client_order_id,
        approved=approved,
        reason=reason,
        details=details,
        symbol=ev.symbol,
        side=ev.side,
        qty=ev.qty,
        order_type=ev.order_type,
        limit_price=ev.limit_price,
        time_in_force=ev.time_in_force,
        arrival_price=ev.arrival_price,
        bar_ts=ev.bar_ts,
        config_sha256=ctx.config_sha256,
        order_class=ev.order_class,
        stop_price=ev.stop_price,
        trail_price=ev.trail_price,
        trail_percent=ev.trail_percent,
        take_profit_limit_price=ev.take_profit_limit_price,
        stop_loss_stop_price=ev.stop_loss_stop_price,
        stop_loss_limit_price=ev.stop_loss_limit_price,
    )


def _kind(ev: Event) -> str:
    return tag_of(type(ev)).rsplit(".", 1)[0]


def on_report(state: st.OmsState, ev: ExecutionEvent, ctx: Ctx) -> tuple[st.OmsState, list[Event]]:
    """Advance an intent's lifecycle from an execution report; every new fill moves the position.

    A fill is a fact at the broker: it moves the position even when the lifecycle says it should
    not have happened (a fill on a FAILED order) or the order is no longer tracked; the anomaly
    is alerted, the money is not lost. Fills are de-duplicated by execution_id for a day.
    """
    if isinstance(ev, SubmitSkipped) and ev.stage == "oms":
        return state, []  # the outcome of the OMS's own denial: decided here already
    fill = ev if isinstance(ev, OrderPartiallyFilled | OrderFilled) else None
    if fill is not None and fill.execution_id in state.recent_fills:
        return state, []  # the same fill reported twice, whatever the status now
    new_state = state
    if fill is not None:
        pos = apply_fill(state.positions.get(ev.symbol, st.Position()), ev.side, fill.last_qty, fill.last_px)
        new_state = msgspec.structs.replace(
            state,
            positions={**state.positions, ev.symbol: pos},
            recent_fills={**state.recent_fills, fill.execution_id: fill.ts_event},
        )
    events: list[Event] = []
    intent = state.intents.get(state.by_cid.get(ev.client_order_id, ""))
    kind = _kind(ev)
    target = st.TRANSITIONS.get((intent.status, kind)) if intent is not None else None
    if intent is None:
        events.append(
            alert("OMS_UNKNOWN_ORDER", "warning", f"execution report for unknown order {ev.client_order_id}", ev, ctx,
                  client_order_id=ev.client_order_id, report=kind)
        )  # fmt: skip
    elif target is None:
        events.append(
            alert("OMS_INVALID_TRANSITION", "warning", f"{kind} not allowed in {intent.status}", ev, ctx,
                  client_order_id=ev.client_order_id, status=intent.status, report=kind)
        )  # fmt: skip
    if intent is not None and (target is not None or fill is not None):
        changes: dict[str, object] = {"status": target or intent.status}
        if isinstance(ev, OrderAccepted) and target is not None:
            changes["broker_order_id"] = ev.broker_order_id
        reason = getattr(ev, "reason", None) or getattr(ev, "reason_code", None)
        if reason and target is not None:
            changes["reason"] = reason
        if fill is not None:
            changes.update(
                filled_qty=fill.cum_qty,
                avg_fill_price=fill.avg_px,
                broker_order_id=fill.broker_order_id,
                execution_ids=(*intent.execution_ids, fill.execution_id),
            )
        new_state = _replace_intent(new_state, intent, **changes)
        if isinstance(ev, OrderCanceled) and target is not None and not intent.leg_role and intent.filled_qty == 0:
            # exit legs are canceled by design (their sibling filled, a close needed their shares)
            new_state = count_cancel(new_state, intent, ctx.config)
    if fill is not None and ev.symbol in new_state.cancels:
        new_state = msgspec.structs.replace(new_state, cancels={**new_state.cancels, ev.symbol: ()})
    working_changed = open_order_qty(new_state, ev.symbol) != open_order_qty(state, ev.symbol)
    if working_changed or fill is not None:
        events.append(position_changed(new_state, ev.symbol, ev, ctx))
    return new_state, events


def on_control(
    state: st.OmsState, cmd: HaltTrading | ResumeTrading | CancelAllOrders, ctx: Ctx
) -> tuple[st.OmsState, list[Event]]:
    """Apply an operator command to the halt flag and say so in an alert."""
    if isinstance(cmd, HaltTrading):
        new = msgspec.structs.replace(
            state, halted=True, halt_reason=cmd.reason, halt_since_ns=cmd.ts_event, halt_command_id=cmd.event_id
        )
        return new, [alert("TRADING_HALTED", "critical", f"trading halted: {cmd.reason}", cmd, ctx, reason=cmd.reason)]
    if isinstance(cmd, ResumeTrading):
        new = msgspec.structs.replace(
            state, halted=False, halt_reason=cmd.reason, halt_since_ns=cmd.ts_event, halt_command_id=cmd.event_id
        )
        return new, [alert("TRADING_RESUMED", "warning", f"trading resumed: {cmd.reason}", cmd, ctx, reason=cmd.reason)]
    return state, [
        alert("CANCEL_ALL_REQUESTED", "warning", f"cancel-all requested: {cmd.reason}", cmd, ctx, reason=cmd.reason)
    ]


UPSTREAM = "risk"


def stuck_intents(state: st.OmsState, wm: Watermark, ctx: Ctx) -> tuple[st.OmsState, list[Event]]:
    """Alert once for every intent the broker has not acknowledged N bars after its decision.

    Event time: N bars of the watermark's clock, so a replay raises the same alerts. An ACKED or
    partly filled order is working at the venue (a resting limit may rest all day): not stuck.
    """
    limit = ctx.config.stuck_intent_bars * MINUTE_NS
    alerts: list[Event] = []
    intents = dict(state.intents)
    for iid, intent in sorted(state.intents.items()):
        if intent.status in st.UNACKNOWLEDGED and not intent.stuck_alerted and wm.bar_ts - intent.bar_ts >= limit:
            bars = (wm.bar_ts - intent.bar_ts) // MINUTE_NS
            message = (
                f"intent {intent.client_order_id} ({intent.symbol} {intent.side} {intent.qty}) still "
                f"{intent.status} {bars} bars after its decision"
            )
            alerts.append(
                AlertRaised(
                    event_id=derive_id("ops.alert_raised.v1", ctx.service, "STUCK_INTENT", iid),
                    correlation_id=wm.correlation_id,
                    causation_id=wm.event_id,
                    ts_event=wm.ts_event,
                    ts_init=ctx.now_ns,
                    code="STUCK_INTENT",
                    severity="warning",
                    source=ctx.service,
                    message=message,
                    details={"client_order_id": intent.client_order_id, "status": intent.status, "bars": str(bars)},
                )
            )
            intents[iid] = msgspec.structs.replace(intent, stuck_alerted=True)
    return (msgspec.structs.replace(state, intents=intents), alerts) if alerts else (state, [])


def on_watermark(state: st.OmsState, wm: Watermark, ctx: Ctx) -> tuple[st.OmsState, list[Event]]:
    """Forward risk's watermark and prune intents that reached a terminal status."""
    if wm.source != UPSTREAM:
        return state, []  # execution's watermark shares its stream; it is not ours to forward
    last, events = forward_watermark(state.last_watermark, wm, ctx)
    state, stuck = stuck_intents(state, wm, ctx)
    events = [*events, *stuck]
    intents = {k: v for k, v in state.intents.items() if v.status not in st.TERMINAL}
    by_cid = {cid: i for cid, i in state.by_cid.items() if i in intents}
    # client_order_ids carry their session date, so a day of them is enough to refuse a re-send
    horizon = wm.bar_ts - DUPLICATE_WINDOW_NS
    recent = {cid: ts for cid, ts in state.recent_cids.items() if ts >= horizon}
    keys = {k: ts for k, ts in state.recent_keys.items() if ts >= horizon}
    fills = {x: ts for x, ts in state.recent_fills.items() if ts >= horizon}
    return msgspec.structs.replace(
        state,
        intents=intents,
        by_cid=by_cid,
        recent_cids=recent,
        recent_fills=fills,
        recent_keys=keys,
        last_watermark=last,
    ), events


def step(state: st.OmsState, event: object, ctx: Ctx) -> tuple[st.OmsState, Sequence[Event]]:
    """Route one consumed event or command to its handler."""
    if isinstance(event, OrderIntent):
        return on_intent(state, event, ctx)
    if isinstance(event, Watermark):
        return on_watermark(state, event, ctx)
    if isinstance(event, HaltTrading | ResumeTrading | CancelAllOrders):
        return on_control(state, event, ctx)
    if isinstance(event, Event):
        return on_report(state, event, ctx)  # type: ignore[arg-type]
    return state, []
