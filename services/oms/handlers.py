"""OMS decisions (pure): pre-trade checks, the order lifecycle, positions and the halt flag."""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from typing import Any

import msgspec

from libs import sessions
from libs.contracts.base import Event, derive_id, exit_legs, intent_id_for, leg_client_order_id, tag_of
from libs.contracts.control import CancelAllOrders, HaltTrading, ResumeTrading
from libs.contracts.execution import (
    BrokerOrderView,
    BrokerSnapshot,
    ExecutionEvent,
    OrderAccepted,
    OrderCanceled,
    OrderFilled,
    OrderPartiallyFilled,
    SubmitSkipped,
)
from libs.contracts.oms import APPROVED as APPROVED_REASON
from libs.contracts.oms import CancelRequested, OrderLookupRequested, PositionChanged, PretradeDecision, SessionSummary
from libs.contracts.ops import AlertRaised, FillsDone, Watermark
from libs.contracts.risk import EntryBlocked, OrderIntent
from libs.decide import Ctx, forward_fills_done, forward_watermark
from libs.errors.breakers import circuit_open_code
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
BUYING_POWER_BLOCK = "BUYING_POWER_BLOCK"
RECON_MISMATCH = "RECON_MISMATCH"  # reduce-only after a position differed from the broker's
STARTUP_CLEANUP = "STARTUP_CLEANUP"
SESSION_CLOSE_CLEANUP = "SESSION_CLOSE_CLEANUP"
RECON_ORDER_ENDED_UNSEEN = "RECON_ORDER_ENDED_UNSEEN"
_PX = Decimal("0.000001")
DUPLICATE_WINDOW_NS = 24 * 3600 * 1_000_000_000
MINUTE_NS = 60_000_000_000


def order_key(symbol: str, side: str, qty: int, bar_ts: int) -> str:
    """The identity of an order apart from its id: the same one twice is a duplicate (seed 000 §D.3)."""
    return f"{symbol}|{side}|{qty}|{bar_ts}"


def pretrade(
    state: st.OmsState, intent: OrderIntent, cfg: OmsConfig, circuit: tuple[str, str] | None = None
) -> tuple[str, dict[str, str]]:
    """Return (reason, details): APPROVED or the first block that applies (seed 000 §D).

    Every check reads event time (the decision bar) and the OMS's own state only, so a replay
    decides the same; `circuit` is the one outside input: an open dependency breaker (dep, why)
    read at the edge. Order: the halt flag, breakers, duplicates, canary, the market's hours,
    size, price collar, position limit, reduce-only, buying power, message-rate throttle, cancel loop.
    """
    if state.halted:
        return KILL_SWITCH_BLOCK, {"halt_reason": state.halt_reason}
    if circuit is not None:
        dep, why = circuit
        return circuit_open_code(dep), {"dependency": dep, "failure": why}
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
    if state.reduce_only and adds_exposure(state, intent):
        return RECON_MISMATCH, {"reduce_only": state.reduce_only}
    short = buying_power_block(state, intent, cfg)
    if short:
        return BUYING_POWER_BLOCK, short
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
    thin = intent.bar_volume < cfg.thin_volume_shares  # 0: the volume is not known (fail closed)
    last, pct = intent.arrival_price, cfg.thin_collar_pct if thin else cfg.price_collar_pct
    up = intent.side == "buy"
    checks = (("limit_price", intent.limit_price, up), ("stop_price", intent.stop_price, not up))
    for name, price, above_is_aggressive in checks:
        if price is None:
            continue
        away = price / last - 1 if above_is_aggressive else 1 - price / last
        if away > pct:
            out = {"price": name, "value": str(price), "last": str(last), "max_pct": str(pct)}
            return {**out, "thin": "true", "bar_volume": str(intent.bar_volume)} if thin else out
    return {}


def position_block(state: st.OmsState, intent: OrderIntent, cfg: OmsConfig) -> dict[str, str]:
    """Return why an order would take its symbol past the position limit, else {}.

    The position plus every working order plus this one, at the decision bar's close; an order
    that brings that exposure closer to flat always passes (reducing risk is never blocked).
    """
    before, after = exposure_change(state, intent)
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
    cancels = sum(1 for ts in state.recent_cancel_ts if ts > since)
    if cancels >= cfg.max_cancels_per_min:
        return {"limit": "max_cancels_per_min", "cancels": str(cancels), "max": str(cfg.max_cancels_per_min)}
    return {}


def exposure_change(state: st.OmsState, intent: OrderIntent) -> tuple[int, int]:
    """Return a symbol's signed exposure (position plus working orders) before and after an order."""
    before = state.positions.get(intent.symbol, st.Position()).qty + open_order_qty(state, intent.symbol)
    return before, before + (intent.qty if intent.side == "buy" else -intent.qty)


def adds_exposure(state: st.OmsState, intent: OrderIntent) -> bool:
    """Tell whether an order takes its symbol further from flat."""
    before, after = exposure_change(state, intent)
    return abs(after) > abs(before)


def buying_power_block(state: st.OmsState, intent: OrderIntent, cfg: OmsConfig) -> dict[str, str]:
    """Return why the account cannot pay for an order that adds exposure, else {} (a credit check).

    Fail closed: no broker snapshot yet, or one older than account_max_age_bars, blocks. The
    money available is the snapshot's buying power times buying_power_use_pct, less the value of
    every order decided after the snapshot and still working (the broker did not see them).
    """
    before, after = exposure_change(state, intent)
    if abs(after) <= abs(before):
        return {}  # reducing a position needs no buying power
    account = state.account
    if account is None:
        return {"missing": "account", "why": "no broker snapshot yet"}
    age = intent.bar_ts - account.bar_ts
    if account.bar_ts and age > cfg.account_max_age_bars * MINUTE_NS:
        return {"stale": "account", "snapshot_bar_ts": str(account.bar_ts), "age_bars": str(age // MINUTE_NS)}
    price = intent.limit_price or intent.arrival_price
    cost = (abs(after) - abs(before)) * price
    pending = sum(
        (abs(i.qty - i.filled_qty) * i.arrival_price for i in state.intents.values()
         if i.bar_ts > account.bar_ts and i.status not in st.TERMINAL and not i.leg_role),
        Decimal(0),
    )  # fmt: skip
    available = account.buying_power * cfg.buying_power_use_pct - pending
    if cost <= available:
        return {}
    return {"cost": str(cost), "available": str(available.quantize(_PX)), "buying_power": str(account.buying_power)}


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


def fill_delta(intent: st.IntentState | None, fill: OrderPartiallyFilled | OrderFilled) -> tuple[int, Decimal]:
    """Return the shares (and their price) a fill report adds to what the log has counted.

    By cumulative quantity: reports of one order may arrive out of order (a redelivery behind
    newer ones), and a report whose cumulative quantity is already counted adds nothing, while one
    that overtook earlier reports brings their shares with it, priced from the average fill price.
    """
    if intent is None:
        return fill.last_qty, fill.last_px  # not tracked (pruned or unknown): the report as it says
    qty = fill.cum_qty - intent.filled_qty
    if qty <= 0 or qty == fill.last_qty:
        return qty, fill.last_px
    px = (fill.avg_px * fill.cum_qty - intent.avg_fill_price * intent.filled_qty) / qty
    return qty, px.quantize(_PX) if px > 0 else fill.last_px


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
        **_envelope(derive_id("oms.position_changed.v1", cause.event_id, symbol), cause, ctx),
        symbol=symbol,
        qty=pos.qty,
        avg_price=pos.avg_price,
        open_order_qty=buys - sells,
        intents_seen=seen,
        realized_pnl=pos.realized_pnl,
        open_buy_qty=buys,
        open_sell_qty=sells,
    )


def _envelope(event_id: str, cause: Event, ctx: Ctx) -> dict[str, Any]:
    """The envelope of an event the OMS makes because of `cause`: same correlation, cause's event time."""
    return {
        "event_id": event_id,
        "correlation_id": cause.correlation_id,
        "causation_id": cause.event_id,
        "ts_event": cause.ts_event,
        "ts_init": ctx.now_ns,
    }


def alert(
    code: str, severity: str, message: str, cause: Event | msgspec.Struct, ctx: Ctx, *, key: str = "", **details: str
) -> AlertRaised:
    """Build an AlertRaised caused by an event or command; `key` names what it is about when the
    same thing may be said again from another cause (the same key is then one alert)."""
    cause_id = getattr(cause, "event_id", "")
    return AlertRaised(
        event_id=derive_id("ops.alert_raised.v1", ctx.service, code, key or cause_id),
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


def on_intent(
    state: st.OmsState, ev: OrderIntent, ctx: Ctx, circuit: tuple[str, str] | None = None
) -> tuple[st.OmsState, list[Event]]:
    """Log a new intent, run the pre-trade checks, decide."""
    if ev.intent_id in state.intents:
        return state, []  # the same intent again (its id derives from the client_order_id)
    reason, details = pretrade(state, ev, ctx.config, circuit)
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
        time_in_force=ev.time_in_force,
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
        session_counts=_counted(state.session_counts, "intents", "approved" if approved else f"denied:{reason}"),
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
                time_in_force=ev.time_in_force,
            )
        )
    return out


def _counted(counts: dict[str, int], *keys: str) -> dict[str, int]:
    out = dict(counts)
    for key in keys:
        out[key] = out.get(key, 0) + 1
    return out


def _seen_after(state: st.OmsState, ev: OrderIntent) -> int:
    # risk numbers its intents per symbol; an intent lost on the way is skipped over, not waited for
    seen = state.intents_seen.get(ev.symbol, 0)
    return max(seen, ev.risk_seq) if ev.risk_seq else seen + 1


def _decision(ev: OrderIntent, approved: bool, reason: str, details: dict[str, str], ctx: Ctx) -> PretradeDecision:
    # a refusal of a re-sent intent must not share the id of the original decision
    parts = (ev.intent_id,) if reason != DUPLICATE_ORDER_BLOCK else (ev.intent_id, reason, ev.event_id)
    return PretradeDecision(
        **_envelope(derive_id("oms.pretrade_decision.v1", *parts), ev, ctx),
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
    intent = state.intents.get(state.by_cid.get(ev.client_order_id, ""))
    if fill is not None:
        qty, px = fill_delta(intent, fill)
        if qty <= 0:
            # its shares are counted already: a later report of the order came first (a crashed
            # consumer's message is redelivered behind newer ones) or reconciliation wrote them
            return msgspec.structs.replace(
                state, recent_fills={**state.recent_fills, fill.execution_id: fill.ts_event}
            ), []
        pos = apply_fill(state.positions.get(ev.symbol, st.Position()), ev.side, qty, px)
        new_state = msgspec.structs.replace(
            state,
            positions={**state.positions, ev.symbol: pos},
            recent_fills={**state.recent_fills, fill.execution_id: fill.ts_event},
        )
    events: list[Event] = []
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
        if target in st.TERMINAL and intent.status not in st.TERMINAL:
            new_state = msgspec.structs.replace(
                new_state, session_counts=_counted(new_state.session_counts, f"ended:{target}")
            )
        if isinstance(ev, OrderCanceled) and target is not None:
            since = ev.ts_event - MINUTE_NS
            new_state = msgspec.structs.replace(
                new_state, recent_cancel_ts=(*(t for t in new_state.recent_cancel_ts if t > since), ev.ts_event)
            )
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
        # a resume is the operator's word that the books agree again: reduce-only ends with it
        new = msgspec.structs.replace(
            state,
            halted=False,
            halt_reason=cmd.reason,
            halt_since_ns=cmd.ts_event,
            halt_command_id=cmd.event_id,
            reduce_only="",
            position_gaps={},
        )
        return new, [alert("TRADING_RESUMED", "warning", f"trading resumed: {cmd.reason}", cmd, ctx, reason=cmd.reason)]
    return state, [
        alert("CANCEL_ALL_REQUESTED", "warning", f"cancel-all requested: {cmd.reason}", cmd, ctx, reason=cmd.reason)
    ]


def on_snapshot(state: st.OmsState, snap: BrokerSnapshot, ctx: Ctx) -> tuple[st.OmsState, list[Event]]:
    """Reconcile with what the broker holds (seed 000 §E; issue 5 §4).

    The snapshot comes through execution's outbox after every report execution had committed,
    so a difference is either a report on its way (a fill the broker made a moment before) or a
    real one; a difference is acted on only when recon_confirm_snapshots snapshots in a row show
    it unchanged. Then:
    - an open order keel does not know is foreign: alerted once (FOREIGN_ORDER) and, at start
      with startup_cleanup, canceled (STARTUP_CLEANUP), as is an order keel holds as ended;
    - fills of an open order the log lacks are written as the report execution would have sent,
      with ids derived from the broker's order and filled quantity (reconciling twice writes
      nothing twice; the report, if it comes after all, moves nothing twice);
    - a position that differs from keel's for no known reason is RECON_MISMATCH: trading halts,
      or only reducing orders pass (recon_mismatch_action), until an operator resumes. A symbol
      with an order execution follows and the broker no longer lists (ended there, its report on
      the way) is not judged from that snapshot: a broker restart ends orders unseen.
    """
    cfg: OmsConfig = ctx.config
    account = st.Account(
        buying_power=snap.buying_power, cash=snap.cash, equity=snap.equity, bar_ts=snap.bar_ts, seq=snap.seq
    )
    state = msgspec.structs.replace(state, account=account)
    events: list[Event] = []
    foreign = dict(state.foreign)
    fill_gaps: dict[str, tuple[int, int]] = {}
    unreported: dict[str, int] = {}  # symbol -> signed shares filled at the broker, not yet in the log
    for v in snap.open_orders:
        cid = v.keel_client_order_id or v.client_order_id
        known = cid in state.by_cid or cid in state.recent_cids or v.parent_client_order_id in state.by_cid
        if not known and not v.parent_client_order_id:
            if v.broker_order_id not in foreign:
                foreign[v.broker_order_id] = snap.bar_ts
                message = f"order {v.client_order_id} ({v.symbol} {v.side} {v.qty}) is open at the broker and keel did not place it"
                events.append(_order_alert("FOREIGN_ORDER", message, snap, v, ctx))
            if snap.kind == "startup" and cfg.startup_cleanup:
                events.append(_cleanup(v, "foreign order open at start", snap, ctx))
            continue
        intent = state.intents.get(state.by_cid.get(cid, ""))
        if intent is None:
            if snap.kind == "startup" and cid in state.recent_cids:
                # ended in keel's log, yet open at the broker: a leftover of an earlier run
                message = f"order {cid} is open at the broker but ended in keel's log"
                events.append(_order_alert("RECON_LEFTOVER_ORDER", message, snap, v, ctx))
                if cfg.startup_cleanup:
                    events.append(_cleanup(v, "open at the broker, ended in keel's log", snap, ctx))
            continue
        if v.filled_qty > intent.filled_qty:
            seen = state.fill_gaps.get(intent.client_order_id, (v.filled_qty, 0))
            times = seen[1] + 1 if seen[0] == v.filled_qty else 1
            fill_gaps[intent.client_order_id] = (v.filled_qty, min(times, cfg.recon_confirm_snapshots))
            if times >= cfg.recon_confirm_snapshots:
                # said again at every snapshot until it is back in the log (same id: never twice)
                events.append(_missing_fill(intent, v, snap, ctx))
            delta = v.filled_qty - intent.filled_qty
            unreported[intent.symbol] = unreported.get(intent.symbol, 0) + (delta if intent.side == "buy" else -delta)
    # an order execution still follows that the broker no longer lists as open has ended there
    # (filled, perhaps, while the stream or the broker was down) and its report is on its way:
    # its symbol's position cannot be judged from this snapshot (a difference seen before stands)
    listed = {v.keel_client_order_id or v.client_order_id for v in snap.open_orders}
    settling = {
        i.symbol
        for cid in snap.tracked
        if cid not in listed and (i := state.intents.get(state.by_cid.get(cid, ""))) is not None
    }
    unseen, asked = _ended_unseen(state, snap, listed, ctx)
    events.extend(asked)
    # an order asked about has recon_confirm_snapshots more snapshots to be reported before its
    # symbol's position is judged
    settling |= {
        state.intents[state.by_cid[cid]].symbol for cid, n in unseen.items() if n < 2 * cfg.recon_confirm_snapshots
    }
    gaps: dict[str, tuple[int, int, int]] = {}
    halt = ""
    for symbol in sorted({*snap.positions, *state.positions}):
        broker = snap.positions.get(symbol, 0)
        keel = state.positions.get(symbol, st.Position()).qty
        last = state.position_gaps.get(symbol)
        if symbol in settling:
            if last is not None:
                gaps[symbol] = last
            continue
        if broker == keel + unreported.get(symbol, 0):
            continue
        times = last[2] + 1 if last is not None and last[:2] == (broker, keel) else 1
        gaps[symbol] = (broker, keel, min(times, cfg.recon_confirm_snapshots))
        if times == cfg.recon_confirm_snapshots:
            why = f"{RECON_MISMATCH}: {symbol} position {broker} at the broker, {keel} in keel's log"
            action = "trading halts" if cfg.recon_mismatch_action == "halt" else "reduce-only"
            events.append(alert(RECON_MISMATCH, "critical", f"{why}; {action}", snap, ctx, key=f"{symbol}:{broker}:{keel}",
                                symbol=symbol, broker_qty=str(broker), keel_qty=str(keel),
                                action=cfg.recon_mismatch_action))  # fmt: skip
            halt = halt or why
    new = msgspec.structs.replace(state, foreign=foreign, fill_gaps=fill_gaps, position_gaps=gaps, unseen_ends=unseen)
    if halt and cfg.recon_mismatch_action == "reduce_only":
        new = msgspec.structs.replace(new, reduce_only=new.reduce_only or halt)
    elif halt and not new.halted:
        new = msgspec.structs.replace(
            new, halted=True, halt_reason=halt, halt_since_ns=snap.ts_event, halt_command_id=snap.event_id
        )
    return new, events


def _ended_unseen(
    state: st.OmsState, snap: BrokerSnapshot, listed: set[str], ctx: Ctx
) -> tuple[dict[str, int], list[Event]]:
    """Find orders open in keel's log that ended at the broker with no report (RECON_ORDER_ENDED_UNSEEN).

    Acknowledged at the broker, not listed open there, not followed by execution: nobody will
    say how it ended. Seen so in recon_confirm_snapshots snapshots in a row, it is alerted and
    execution is asked to look it up (once; the id derives from the order). Exit legs are left
    to their parent (execution adopts them from it). Return the counts and the events.
    """
    cfg: OmsConfig = ctx.config
    tracked = set(snap.tracked)
    counts: dict[str, int] = {}
    events: list[Event] = []
    for cid in sorted(state.by_cid):
        intent = state.intents.get(state.by_cid[cid])
        if (
            intent is None
            or intent.status not in (st.ACKED, st.PARTIALLY_FILLED)
            or intent.leg_role
            or not intent.broker_order_id
            or cid in listed
            or cid in tracked
        ):
            continue
        times = state.unseen_ends.get(cid, 0) + 1
        counts[cid] = min(times, 2 * cfg.recon_confirm_snapshots)
        if times != cfg.recon_confirm_snapshots:
            continue
        message = (
            f"order {cid} ({intent.symbol} {intent.side} {intent.qty}) is {intent.status} in keel's log, "
            "but the broker no longer lists it open and no report said how it ended; looking it up"
        )
        events.append(alert(RECON_ORDER_ENDED_UNSEEN, "warning", message, snap, ctx, key=cid, client_order_id=cid,
                            broker_order_id=intent.broker_order_id, symbol=intent.symbol))  # fmt: skip
        events.append(
            OrderLookupRequested(
                **_envelope(derive_id("oms.order_lookup_requested.v1", cid, intent.broker_order_id), snap, ctx),
                intent_id=intent.intent_id,
                client_order_id=cid,
                broker_order_id=intent.broker_order_id,
                symbol=intent.symbol,
                side=intent.side,  # type: ignore[arg-type]
                qty=intent.qty,
                filled_qty=intent.filled_qty,
                avg_fill_price=intent.avg_fill_price,
                time_in_force=intent.time_in_force,  # type: ignore[arg-type]
                bar_ts=intent.bar_ts,
                reason=RECON_ORDER_ENDED_UNSEEN,
            )
        )
    return counts, events


def _order_alert(code: str, message: str, snap: BrokerSnapshot, v: BrokerOrderView, ctx: Ctx) -> AlertRaised:
    # keyed by the broker's order, so reconciling again says nothing new
    return alert(code, "warning", message, snap, ctx, key=v.broker_order_id, client_order_id=v.client_order_id,
                 broker_order_id=v.broker_order_id, symbol=v.symbol)  # fmt: skip


def _cleanup(v: BrokerOrderView, message: str, snap: BrokerSnapshot, ctx: Ctx) -> CancelRequested:
    return _cancel(v.client_order_id, v.broker_order_id, v.symbol, STARTUP_CLEANUP, message, snap, ctx)


def _cancel(
    cid: str, broker_order_id: str, symbol: str, reason: str, message: str, cause: Event, ctx: Ctx
) -> CancelRequested:
    return CancelRequested(
        **_envelope(derive_id("oms.cancel_requested.v1", reason, broker_order_id), cause, ctx),
        client_order_id=cid,
        broker_order_id=broker_order_id,
        symbol=symbol,
        reason=reason,
        message=message,
    )


def _missing_fill(intent: st.IntentState, v: BrokerOrderView, snap: BrokerSnapshot, ctx: Ctx) -> OrderPartiallyFilled:
    """The fill report the log lacks: the shares the broker filled beyond what keel has counted."""
    delta = v.filled_qty - intent.filled_qty
    avg = v.filled_avg_price or intent.arrival_price
    px = (avg * v.filled_qty - intent.avg_fill_price * intent.filled_qty) / delta
    px = px.quantize(_PX) if px > 0 else avg
    return OrderPartiallyFilled(
        **_envelope(derive_id("exec.order_partially_filled.v1", "recon", v.broker_order_id, v.filled_qty), snap, ctx),
        intent_id=intent.intent_id,
        client_order_id=intent.client_order_id,
        symbol=intent.symbol,
        side=intent.side,  # type: ignore[arg-type]
        broker_order_id=v.broker_order_id,
        execution_id=f"recon:{v.broker_order_id}:{v.filled_qty}",
        last_qty=delta,
        last_px=px,
        cum_qty=v.filled_qty,
        avg_px=avg,
        leaves_qty=max(v.qty - v.filled_qty, 0),
    )


def session_close(state: st.OmsState, wm: Watermark, ctx: Ctx) -> tuple[st.OmsState, list[Event]]:
    """At the session's last bar: cancel DAY orders still working (if configured) and sum the session up."""
    day = sessions.session_of(wm.bar_ts)
    if day is None or sessions.session_open_close(day)[1] != wm.bar_ts:
        return state, []
    cfg: OmsConfig = ctx.config
    events: list[Event] = []
    if cfg.session_close_cancel_day:
        for intent in sorted(state.intents.values(), key=lambda i: i.client_order_id):
            if (
                intent.time_in_force == "day"
                and intent.status in (st.ACKED, st.PARTIALLY_FILLED)
                and not intent.leg_role
            ):
                events.append(_cancel(intent.client_order_id, intent.broker_order_id, intent.symbol,
                                      SESSION_CLOSE_CLEANUP, "DAY order working at the close", wm, ctx))  # fmt: skip
    counts = state.session_counts
    open_now = sum(1 for i in state.intents.values() if i.status not in st.TERMINAL and not i.leg_role)
    summary = SessionSummary(
        **_envelope(derive_id("oms.session_summary.v1", ctx.service, day.isoformat()), wm, ctx),
        session=day.isoformat(),
        intents=counts.get("intents", 0),
        approved=counts.get("approved", 0),
        denied={k.split(":", 1)[1]: n for k, n in sorted(counts.items()) if k.startswith("denied:")},
        ended={k.split(":", 1)[1]: n for k, n in sorted(counts.items()) if k.startswith("ended:")},
        open_at_close=open_now,
        canceled_at_close=len(events),
        positions={sym: p.qty for sym, p in sorted(state.positions.items()) if p.qty},
        realized_pnl=sum((p.realized_pnl for p in state.positions.values()), Decimal(0)),
    )
    return msgspec.structs.replace(state, session_counts={}), [*events, summary]


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
            alerts.append(alert("STUCK_INTENT", "warning", message, wm, ctx, key=iid, client_order_id=intent.client_order_id,
                                status=intent.status, bars=str(bars)))  # fmt: skip
            intents[iid] = msgspec.structs.replace(intent, stuck_alerted=True)
    return (msgspec.structs.replace(state, intents=intents), alerts) if alerts else (state, [])


def on_watermark(state: st.OmsState, wm: Watermark, ctx: Ctx) -> tuple[st.OmsState, list[Event]]:
    """Forward risk's watermark and prune intents that reached a terminal status."""
    if wm.source != UPSTREAM:
        return state, []  # execution's watermark shares its stream; it is not ours to forward
    fresh = wm.bar_ts > state.last_watermark
    last, events = forward_watermark(state.last_watermark, wm, ctx)
    state, stuck = stuck_intents(state, wm, ctx)
    closing: list[Event] = []
    if fresh:
        state, closing = session_close(state, wm, ctx)
    events = [*closing, *events, *stuck]
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


def step(
    state: st.OmsState, event: object, ctx: Ctx, circuit: tuple[str, str] | None = None
) -> tuple[st.OmsState, Sequence[Event]]:
    """Route one consumed event or command to its handler (`circuit`: an open breaker, for intents)."""
    if isinstance(event, OrderIntent):
        return on_intent(state, event, ctx, circuit)
    if isinstance(event, BrokerSnapshot):
        return on_snapshot(state, event, ctx)
    if isinstance(event, Watermark):
        return on_watermark(state, event, ctx)
    if isinstance(event, HaltTrading | ResumeTrading | CancelAllOrders):
        return on_control(state, event, ctx)
    if isinstance(event, EntryBlocked):
        return state, []  # risk never ordered it: nothing for the OMS to decide
    if isinstance(event, FillsDone):
        if event.source != "execution":
            return state, []  # the exchange's: execution forwards it once it has read the orders back
        last, events = forward_fills_done(state.fills_done, event, ctx)  # every report before it is applied
        return msgspec.structs.replace(state, fills_done=last), events
    if isinstance(event, Event):
        return on_report(state, event, ctx)  # type: ignore[arg-type]
    return state, []
