"""Execution decisions (pure): what each broker answer, polled order and streamed update means.

The I/O (alpaca-py calls, the trade_updates stream) happens in app.py and consumers.py; these
functions only turn its results into events. Fills come from changes in cumulative filled
quantity, identified by (broker order id, cumulative quantity), so a fill seen twice - by the
poller and the stream, or in a duplicated frame - is reported once.
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal

import msgspec

from libs.contracts.base import Event, ExitLeg, derive_id, exit_legs, intent_id_for, leg_client_order_id
from libs.contracts.execution import (
    BrokerOrderView,
    BrokerSnapshot,
    OrderAccepted,
    OrderCanceled,
    OrderExpired,
    OrderFilled,
    OrderPartiallyFilled,
    OrderRejected,
    OrderStatusUnknown,
    OrderSubmitted,
    SubmitFailed,
    SubmitSkipped,
)
from libs.contracts.oms import OrderLookupRequested, PretradeDecision
from libs.contracts.ops import AlertRaised, CycleSummary, FillsDone, Watermark
from libs.decide import Ctx, episode_alert, forward_fills_done, forward_watermark
from libs.errors import ErrorInfo
from services.execution import state as st

_PX = Decimal("0.0001")
UPSTREAM = "oms"
KILL_SWITCH_BLOCK = "KILL_SWITCH_BLOCK"
DUPLICATE_ORDER_BLOCK = "DUPLICATE_ORDER_BLOCK"  # the OMS refused an intent sent again
UNKNOWN_ORDER_BLOCK = "UNKNOWN_ORDER_BLOCK"
# the status an order followed again on the OMS's request starts from: acknowledged (not one
# of PRE_ACK, so it is looked up by its broker id, never re-sent), its broker status unknown
LOOKED_UP = "accepted"
BROKER_REJECTED = "BROKER_REJECTED"  # the broker rejected an order it had accepted
EXIT_LEG_FILLED = "EXIT_LEG_FILLED"  # an exit leg filled while being canceled for the order
BRACKET_ENTRY_PARTIAL = "BRACKET_ENTRY_PARTIAL"  # a bracket/oto entry ended part filled


class Accepted(msgspec.Struct, frozen=True, kw_only=True):
    """The broker holds the order."""

    order: st.BrokerOrder


class Rejected(msgspec.Struct, frozen=True, kw_only=True):
    """The broker refused the order."""

    code: str
    message: str
    # set when the refusal means no order can go (libs.errors action HALT_TRADING, e.g. AUTH_HALT:
    # the broker refused the keys): execution halts trading everywhere with this reason code
    halt: str = ""


class Unknown(msgspec.Struct, frozen=True, kw_only=True):
    """The outcome is not known (timeout, lost response, 5xx): resolve by client_order_id later."""

    message: str
    # set when the broker call itself failed (libs.errors reason code: NET_RETRY, RATE_LIMIT_RETRY):
    # a failure of the broker_submit dependency, counted by its circuit breaker
    failure: str = ""
    retry_after_sec: float = 0.0  # the venue's Retry-After on a 429/503, 0 when it gave none


Outcome = Accepted | Rejected | Unknown


def _envelope(name: str, order: st.ExecOrder, ts_event: int, ctx: Ctx, *parts: object) -> dict[str, object]:
    cid = order.client_order_id
    return {
        "event_id": derive_id(f"exec.{name}.v1", cid, *parts),
        "correlation_id": order.correlation_id,
        "causation_id": order.decision_id or cid,
        "ts_event": ts_event,
        "ts_init": ctx.now_ns,
        "intent_id": order.intent_id,
        "client_order_id": cid,
        "symbol": order.symbol,
        "side": order.side,
    }


def exec_order(d: PretradeDecision, traceparent: str = "") -> st.ExecOrder:
    """Return the order an approved decision hands to the broker; its exit legs are pending."""
    return st.ExecOrder(
        intent_id=d.intent_id,
        client_order_id=d.client_order_id,
        symbol=d.symbol,
        side=d.side,
        qty=d.qty,
        order_type=d.order_type,
        limit_price=d.limit_price,
        time_in_force=d.time_in_force,
        bar_ts=d.bar_ts,
        correlation_id=d.correlation_id,
        decision_id=d.event_id,
        traceparent=traceparent,
        order_class=d.order_class,
        stop_price=d.stop_price,
        trail_price=d.trail_price,
        trail_percent=d.trail_percent,
        take_profit_limit_price=d.take_profit_limit_price,
        stop_loss_stop_price=d.stop_loss_stop_price,
        stop_loss_limit_price=d.stop_loss_limit_price,
        legs_pending=tuple(leg.role for leg in exit_legs(d)),
    )


def leg_order(parent: st.ExecOrder, leg: ExitLeg) -> st.ExecOrder:
    """Return an exit leg of an order as an order of its own (the OMS's child intent)."""
    cid = leg_client_order_id(parent.client_order_id, leg.role)
    return st.ExecOrder(
        intent_id=intent_id_for(cid),
        client_order_id=cid,
        symbol=parent.symbol,
        side=leg.side,
        qty=parent.qty,
        order_type=leg.order_type,
        limit_price=leg.limit_price,
        stop_price=leg.stop_price,
        time_in_force=parent.time_in_force,
        bar_ts=parent.bar_ts,
        correlation_id=parent.correlation_id,
        decision_id=parent.decision_id,
        traceparent=parent.traceparent,
        parent_cid=parent.client_order_id,
        leg_role=leg.role,
    )


def family(order: st.ExecOrder) -> list[st.ExecOrder]:
    """Return an order and its exit legs not yet at the broker: what is said of one before the
    broker's answer (handed over, refused, unknown) is said of each."""
    return [order, *(leg_order(order, leg) for leg in exit_legs(order) if leg.role in order.legs_pending)]


def hand_over(
    state: st.ExecState, d: PretradeDecision, broker: str, traceparent: str, ctx: Ctx
) -> tuple[st.ExecState, list[Event]]:
    """Hold an approved order as handed to the broker (SUBMITTING) and say so, before the call.

    From here on the order is never refused or forgotten: whatever happens to the call, the
    order is resolved by its client_order_id (state.UNKNOWN). Its exit legs go in the same call.
    OrderSubmitted is the intent's outcome (one of three, with SubmitSkipped and SubmitFailed).
    """
    order = exec_order(d, traceparent)
    events: list[Event] = [
        OrderSubmitted(**_envelope("order_submitted", o, d.ts_event, ctx), qty=o.qty, broker=broker)  # type: ignore[arg-type]
        for o in family(order)
    ]
    state = count(state, d.bar_ts, submitted=True)
    return msgspec.structs.replace(state, orders={**state.orders, d.client_order_id: order}), events


def submitted_event_id(cid: str) -> str:
    """Return the id of the OrderSubmitted of an order (it exists once the order was handed over)."""
    return derive_id("exec.order_submitted.v1", cid)


def refused_event_ids(cid: str) -> tuple[str, str]:
    """Return the ids of the SubmitSkipped and SubmitFailed an order would have had (its other outcomes)."""
    return derive_id("exec.submit_skipped.v1", cid), derive_id("exec.submit_failed.v1", cid)


def count(
    state: st.ExecState, bar_ts: int, *, submitted: bool = False, skipped: str = "", failed: str = ""
) -> st.ExecState:
    """Count one intent's outcome in its bar's cycle."""
    cycle = state.cycles.get(bar_ts, st.Cycle())
    if submitted:
        cycle = msgspec.structs.replace(cycle, submitted=cycle.submitted + 1)
    if skipped:
        cycle = msgspec.structs.replace(cycle, skipped={**cycle.skipped, skipped: cycle.skipped.get(skipped, 0) + 1})
    if failed:
        cycle = msgspec.structs.replace(cycle, failed={**cycle.failed, failed: cycle.failed.get(failed, 0) + 1})
    return msgspec.structs.replace(state, cycles={**state.cycles, bar_ts: cycle})


def skip(
    state: st.ExecState,
    d: PretradeDecision,
    reason_code: str,
    message: str,
    ctx: Ctx,
    *,
    stage: str = "execution",
    details: dict[str, str] | None = None,
) -> tuple[st.ExecState, list[Event]]:
    """Do not send an order, on purpose (a check refused it): SubmitSkipped for it and each leg.

    stage "oms" echoes the OMS's pre-trade denial, so every intent has its outcome here; stage
    "execution" is a check at the hand-over (the halt flag went up after approval, a breaker, ...).
    """
    order = exec_order(d)
    events: list[Event] = [
        SubmitSkipped(
            **_envelope("submit_skipped", o, d.ts_event, ctx),  # type: ignore[arg-type]
            qty=o.qty,
            stage=stage,  # type: ignore[arg-type]
            reason_code=reason_code,
            message=message,
            details=details or {},
        )
        for o in (family(order) if stage == "execution" else [order])
    ]
    return count(state, d.bar_ts, skipped=reason_code), events


def fail(state: st.ExecState, d: PretradeDecision, info: ErrorInfo, ctx: Ctx) -> tuple[st.ExecState, list[Event]]:
    """An order could not be handed over: a failure, classified (SubmitFailed for it and each leg)."""
    events: list[Event] = [
        SubmitFailed(
            **_envelope("submit_failed", o, d.ts_event, ctx),  # type: ignore[arg-type]
            category=info.category.value,
            reason_code=info.reason_code,
            message=info.details.get("message", "")[:300],
            dependency=info.dependency,
            action=info.action.value,
        )
        for o in family(exec_order(d))
    ]
    return count(state, d.bar_ts, failed=info.reason_code), events


def on_denied(state: st.ExecState, d: PretradeDecision, ctx: Ctx) -> tuple[st.ExecState, list[Event]]:
    """Give a denied intent its outcome: SubmitSkipped with the OMS's reason code.

    A DUPLICATE_ORDER_BLOCK is the refusal of an intent sent again: the intent (same id) had its
    outcome the first time, so it gets none now.
    """
    if d.approved or d.reason == DUPLICATE_ORDER_BLOCK:
        return state, []
    message = f"denied by the OMS pre-trade checks: {d.reason}"
    return skip(state, d, d.reason, message, ctx, stage="oms", details=d.details)


def exits_in_the_way(state: st.ExecState, symbol: str, side: str) -> list[st.ExecOrder]:
    """Return the working exit orders a new order on this side would compete with for shares.

    Exit orders hold the shares of the position they exit, and the broker refuses another order
    on their side for them ("insufficient qty available"): a bracket's or oto's legs once their
    entry has filled (whatever their status says: Alpaca shows a stop-loss leg `held` until it
    triggers), and an oco pair (the order and its stop-loss leg).
    """

    def holds(o: st.ExecOrder) -> bool:
        if o.symbol != symbol or o.side != side or o.ended or o.broker_status in st.PRE_ACK:
            return False
        if not o.leg_role:
            return o.order_class == "oco"
        parent = state.orders.get(o.parent_cid)
        return parent is None or parent.order_class == "oco" or parent.ended

    return [o for _, o in sorted(state.orders.items()) if holds(o)]


def unknown_order_for(state: st.ExecState, symbol: str) -> str:
    """Return the client_order_id of an order of unknown status for a symbol, or ''."""
    return next(
        (cid for cid, o in sorted(state.orders.items()) if o.symbol == symbol and o.broker_status == st.UNKNOWN), ""
    )


def unknown_order_block(state: st.ExecState, d: PretradeDecision) -> str:
    """Return why a new order must wait for an order of unknown status of its symbol, or ''.

    The order of unknown status may be working at the broker: a second one could double the
    position, so the symbol waits until the lookup by client_order_id has resolved the first.
    """
    cid = unknown_order_for(state, d.symbol)
    if not cid:
        return ""
    return f"expected no order of unknown status for {d.symbol}, was {cid} (resolving it by client_order_id)"


def on_outcome(state: st.ExecState, cid: str, outcome: Outcome, ctx: Ctx) -> tuple[st.ExecState, list[Event]]:
    """Record the broker's answer to a submit of an order already handed over."""
    order = state.orders.get(cid)
    if order is None:
        return state, []  # resolved and finished meanwhile (a poll got there first)
    if isinstance(outcome, Rejected):
        rejected: list[Event] = [
            OrderRejected(
                **_envelope("order_rejected", o, order.bar_ts or ctx.now_ns, ctx),  # type: ignore[arg-type]
                reason=outcome.message,
                code=outcome.code,
            )
            for o in family(order)
        ]
        return _without(state, cid), rejected
    if isinstance(outcome, Unknown):
        return _unknown(state, order, outcome.message, ctx)
    return on_broker_order(state, cid, outcome.order, ctx)


def _unknown(state: st.ExecState, order: st.ExecOrder, reason: str, ctx: Ctx) -> tuple[st.ExecState, list[Event]]:
    # said once, when the order becomes UNKNOWN; asking again without an answer changes nothing
    if order.broker_status != st.SUBMITTING:
        return state, []
    events: list[Event] = [
        OrderStatusUnknown(
            **_envelope("order_status_unknown", o, order.bar_ts or ctx.now_ns, ctx),  # type: ignore[arg-type]
            reason=reason[:300],
        )
        for o in family(order)
    ]
    updated = msgspec.structs.replace(order, broker_status=st.UNKNOWN)
    return msgspec.structs.replace(state, orders={**state.orders, order.client_order_id: updated}), events


def on_broker_order(
    state: st.ExecState, cid: str, bo: st.BrokerOrder | None, ctx: Ctx
) -> tuple[st.ExecState, list[Event]]:
    """Compare a polled or streamed broker order with what was reported; report the difference.

    A streamed update carries its execution_id: one the order has already applied (a duplicated
    frame) changes nothing. Without that, the cumulative quantity still reports each fill once.
    Exit legs rolled up under the order (nested) are adopted as orders of their own the first
    time they are seen, and compared the same way. An order that ended is forgotten once all its
    legs are known.
    """
    order = state.orders.get(cid)
    if order is None or bo is None:
        return state, []  # not ours, finished, or the broker does not show it (yet): never a verdict
    if bo.execution_id and bo.execution_id in order.execution_ids:
        return state, []
    events: list[Event] = []
    if not order.ended:
        state, events = _report(state, order, bo, ctx)
    if bo.legs:
        state, leg_events = _legs(state, cid, bo.legs, ctx)
        events += leg_events
    current = state.orders.get(cid)
    if current is not None and current.ended and current.legs_pending and bo.nested and not bo.legs:
        state, leg_events = _legs_missing(state, current, bo, ctx)
        events += leg_events
        current = state.orders.get(cid)
    if current is not None and current.ended and not current.legs_pending:
        state = _without(state, cid)
    return state, events


# the broker's order type of an exit leg -> its role
LEG_ROLE = {"limit": "take_profit", "stop": "stop_loss", "stop_limit": "stop_loss"}


def _legs(
    state: st.ExecState, parent_cid: str, legs: Sequence[st.BrokerOrder], ctx: Ctx
) -> tuple[st.ExecState, list[Event]]:
    events: list[Event] = []
    for bo in legs:
        cid = state.aliases.get(bo.client_order_id, "")
        parent = state.orders[parent_cid]
        role = LEG_ROLE.get(bo.order_type, "")
        if not cid and role in parent.legs_pending:
            spec = next(leg for leg in exit_legs(parent) if leg.role == role)
            # sized as the broker sized it (a broker may size legs to what the entry filled)
            leg = msgspec.structs.replace(
                leg_order(parent, spec), broker_client_order_id=bo.client_order_id, qty=bo.qty or parent.qty
            )
            cid = leg.client_order_id
            pending = tuple(r for r in parent.legs_pending if r != role)
            state = msgspec.structs.replace(
                state,
                orders={**state.orders, parent_cid: msgspec.structs.replace(parent, legs_pending=pending), cid: leg},
                aliases={**state.aliases, bo.client_order_id: cid},
            )
        if cid:
            state, leg_events = on_broker_order(state, cid, bo, ctx)
            events += leg_events
    return state, events


LEGS_NOT_AT_BROKER = "LEGS_NOT_AT_BROKER"
EXIT_LEGS_MISSING = "EXIT_LEGS_MISSING"


def _legs_missing(
    state: st.ExecState, order: st.ExecOrder, bo: st.BrokerOrder, ctx: Ctx
) -> tuple[st.ExecState, list[Event]]:
    # the order ended and the broker, asked for it with its legs, shows none: they were never
    # placed (or not kept), so the legs still pending end as rejected; a position it opened is
    # unprotected, which an operator must hear of
    ts = order_ts(order, bo, ctx)
    why = f"the broker shows no {'/'.join(order.legs_pending)} leg under order {bo.id} ({bo.status})"
    events: list[Event] = [
        OrderRejected(
            **_envelope("order_rejected", leg, ts, ctx),  # type: ignore[arg-type]
            reason=why,
            code=LEGS_NOT_AT_BROKER,
            broker_order_id=bo.id,
        )
        for leg in family(order)[1:]
    ]
    if order.cum_qty > 0:
        events.append(
            alert(
                EXIT_LEGS_MISSING,
                "critical",
                f"{order.symbol}: {order.cum_qty} shares filled by {order.client_order_id} without its exit legs; {why}",
                f"legs-missing:{order.client_order_id}",
                ctx,
                client_order_id=order.client_order_id,
                symbol=order.symbol,
            )
        )
    done = msgspec.structs.replace(order, legs_pending=())
    return msgspec.structs.replace(state, orders={**state.orders, order.client_order_id: done}), events


def _report(state: st.ExecState, order: st.ExecOrder, bo: st.BrokerOrder, ctx: Ctx) -> tuple[st.ExecState, list[Event]]:
    cid = order.client_order_id
    events: list[Event] = []
    ts = order_ts(order, bo, ctx)
    if order.broker_status in st.PRE_ACK:
        events.append(
            OrderAccepted(**_envelope("order_accepted", order, ts, ctx), broker_order_id=bo.id, broker_status=bo.status)
        )  # type: ignore[arg-type]
    kind = st.ALPACA_STATUS.get(bo.status, st.WORKING)
    if bo.filled_qty > order.cum_qty and bo.filled_avg_price is not None:
        last_qty = bo.filled_qty - order.cum_qty
        last_px = ((bo.filled_avg_price * bo.filled_qty - order.avg_px * order.cum_qty) / last_qty).quantize(_PX)
        fill_cls = OrderFilled if bo.filled_qty >= order.qty else OrderPartiallyFilled
        events.append(
            fill_cls(
                **_envelope("fill", order, ts, ctx, bo.filled_qty),  # type: ignore[arg-type]
                broker_order_id=bo.id,
                execution_id=derive_id("execution", bo.id, bo.filled_qty),
                last_qty=last_qty,
                last_px=last_px,
                cum_qty=bo.filled_qty,
                avg_px=bo.filled_avg_price,
                leaves_qty=max(order.qty - bo.filled_qty, 0),
            )
        )
    if kind == st.CANCELED:
        events.append(
            OrderCanceled(**_envelope("order_canceled", order, ts, ctx), broker_order_id=bo.id, cum_qty=bo.filled_qty)
        )  # type: ignore[arg-type]
    elif kind == st.EXPIRED:
        events.append(
            OrderExpired(**_envelope("order_expired", order, ts, ctx), broker_order_id=bo.id, cum_qty=bo.filled_qty)
        )  # type: ignore[arg-type]
    elif kind == st.REJECTED:
        events.append(
            OrderRejected(
                **_envelope("order_rejected", order, ts, ctx),
                reason=f"broker status {bo.status}",
                code=BROKER_REJECTED,
                broker_order_id=bo.id,
            )
        )  # type: ignore[arg-type]
    ended = kind != st.WORKING and (kind != st.FILLED or bo.filled_qty >= order.qty)
    if ended and order.order_class in ("bracket", "oto") and 0 < bo.filled_qty < order.qty:
        # legs wait for the whole entry: one that ends part filled leaves its shares unprotected
        events.append(
            alert(
                BRACKET_ENTRY_PARTIAL,
                "warning",
                f"{order.symbol}: {order.order_class} entry {cid} ended {bo.status} with {bo.filled_qty} of "
                f"{order.qty} filled; its exit legs may not cover those shares",
                f"entry-partial:{cid}",
                ctx,
                client_order_id=cid,
                symbol=order.symbol,
            )
        )
    # a fill counts only once its price is known: without one, cum_qty stays put and the next
    # poll reports it
    priced = bo.filled_avg_price is not None
    applied = priced or bo.filled_qty <= order.cum_qty  # an unpriced fill waits for a later frame
    seen = order.execution_ids
    if bo.execution_id and applied:
        seen = (*seen, bo.execution_id)[-st.SEEN_EXECUTIONS :]
    updated = msgspec.structs.replace(
        order,
        broker_order_id=bo.id,
        broker_status=bo.status,
        cum_qty=max(order.cum_qty, bo.filled_qty) if priced else order.cum_qty,
        avg_px=bo.filled_avg_price if priced else order.avg_px,
        execution_ids=seen,
        ended=ended,
    )
    return msgspec.structs.replace(state, orders={**state.orders, cid: updated}), events


def order_ts(order: st.ExecOrder, bo: st.BrokerOrder | None, ctx: Ctx) -> int:
    """Event time of a report: the broker's update time, else the time it was observed."""
    return bo.updated_at_ns if bo is not None and bo.updated_at_ns else ctx.now_ns


def _without(state: st.ExecState, cid: str) -> st.ExecState:
    orders = {k: v for k, v in state.orders.items() if k != cid}
    aliases = {b: k for b, k in state.aliases.items() if k != cid} if cid in state.aliases.values() else state.aliases
    return msgspec.structs.replace(state, orders=orders, aliases=aliases)


def alert(code: str, severity: str, message: str, key: str, ctx: Ctx, **details: str) -> AlertRaised:
    """Build an alert of execution; key names the episode (the same key is one alert)."""
    return episode_alert(code, severity, message, key, service=ctx.service, now_ns=ctx.now_ns, **details)


def on_watermark(state: st.ExecState, wm: Watermark, health: st.Health, ctx: Ctx) -> tuple[st.ExecState, list[Event]]:
    """End a bar: forward the watermark and summarize the bar's intents (seed 002 B-DIAG-02/03).

    The OMS's watermark for bar t comes after every decision of bar t, and each decision has had
    its outcome by then, so the summary counts them all. Outcomes of earlier bars not summarized
    yet (none, unless a watermark was lost) are folded into it.
    """
    if wm.source != UPSTREAM:
        return state, []
    last, events = forward_watermark(state.last_watermark, wm, ctx)
    if not events or wm.bar_ts <= state.last_watermark:
        # a watermark again (forwarded again, idempotent by id): its summary went out the first time
        return msgspec.structs.replace(state, last_watermark=last), list(events)
    done = [ts for ts in state.cycles if ts <= wm.bar_ts]
    cycle = st.Cycle()
    for ts in sorted(done):
        c = state.cycles[ts]
        cycle = st.Cycle(
            submitted=cycle.submitted + c.submitted,
            skipped={k: cycle.skipped.get(k, 0) + c.skipped.get(k, 0) for k in sorted({*cycle.skipped, *c.skipped})},
            failed={k: cycle.failed.get(k, 0) + c.failed.get(k, 0) for k in sorted({*cycle.failed, *c.failed})},
        )
    summary = CycleSummary(
        event_id=derive_id("ops.cycle_summary.v1", ctx.service, wm.bar_ts),
        correlation_id=wm.correlation_id,
        causation_id=wm.event_id,
        ts_event=wm.ts_event,
        ts_init=ctx.now_ns,
        source=ctx.service,
        bar_ts=wm.bar_ts,
        submitted=cycle.submitted,
        skipped=cycle.skipped,
        failed=cycle.failed,
        breakers=health.breakers,
        broker_locked_until_ns=health.locked_until_ns,
        broker_lock_reason=health.lock_reason,
    )
    cycles = {ts: c for ts, c in state.cycles.items() if ts > wm.bar_ts}
    return msgspec.structs.replace(state, last_watermark=last, cycles=cycles), [*events, summary]


def step(state: st.ExecState, event: object, ctx: Ctx) -> tuple[st.ExecState, Sequence[Event]]:
    """Handle the OMS-stream messages that need no broker call (denials; watermarks without health)."""
    if isinstance(event, PretradeDecision):
        return on_denied(state, event, ctx)
    if isinstance(event, Watermark):
        return on_watermark(state, event, st.Health(), ctx)
    if isinstance(event, OrderLookupRequested):
        return follow_again(state, event)
    if isinstance(event, FillsDone) and event.source == "exchange":
        return on_fills_done(state, event, ctx)
    return state, []


def on_fills_done(state: st.ExecState, done: FillsDone, ctx: Ctx) -> tuple[st.ExecState, list[Event]]:
    """Forward the exchange's FillsDone once its orders were read back (the consumer did, before this)."""
    last, events = forward_fills_done(state.fills_done, done, ctx)
    return msgspec.structs.replace(state, fills_done=last), events


def follow_again(state: st.ExecState, ev: OrderLookupRequested) -> tuple[st.ExecState, list[Event]]:
    """Follow an order again that ended at the broker unseen (the OMS asked: RECON_ORDER_ENDED_UNSEEN).

    It is held as acknowledged with what keel's log has filled, by its broker id, so the poller
    asks the broker for it by id (never by a re-send) and reports the difference: its fills and
    its end. An order still followed needs nothing.
    """
    if ev.client_order_id in state.orders:
        return state, []
    order = st.ExecOrder(
        intent_id=ev.intent_id,
        client_order_id=ev.client_order_id,
        symbol=ev.symbol,
        side=ev.side,
        qty=ev.qty,
        time_in_force=ev.time_in_force,
        bar_ts=ev.bar_ts,
        correlation_id=ev.correlation_id,
        decision_id=ev.event_id,
        broker_order_id=ev.broker_order_id,
        broker_status=LOOKED_UP,
        cum_qty=ev.filled_qty,
        avg_px=ev.avg_fill_price,
    )
    return msgspec.structs.replace(state, orders={**state.orders, ev.client_order_id: order}), []


def broker_snapshot(
    state: st.ExecState, kind: str, holdings: st.Holdings, bar_ts: int, ctx: Ctx
) -> tuple[st.ExecState, list[Event]]:
    """Say what the broker holds (account, positions, open orders) for the OMS to reconcile.

    Each open order is named as keel knows it where execution can tell (its own orders, exit legs
    by alias, legs rolled up under a parent); the OMS decides what is foreign.
    """
    views: list[BrokerOrderView] = []
    for bo in holdings.open_orders:
        keel_cid = state.aliases.get(bo.client_order_id, bo.client_order_id)
        views.append(_view(bo, keel_cid if keel_cid in state.orders else "", ""))
        for leg in bo.legs:
            leg_cid = state.aliases.get(leg.client_order_id, "")
            views.append(_view(leg, leg_cid, keel_cid))
    seq = state.snapshots
    event_id = derive_id("exec.broker_snapshot.v1", ctx.service, seq)
    snap = BrokerSnapshot(
        event_id=event_id,
        correlation_id=event_id,
        causation_id=event_id,
        ts_event=bar_ts or ctx.now_ns,
        ts_init=ctx.now_ns,
        kind=kind,  # type: ignore[arg-type]
        seq=seq,
        bar_ts=bar_ts,
        cash=holdings.cash,
        buying_power=holdings.buying_power,
        equity=holdings.equity,
        positions=dict(sorted(holdings.positions.items())),
        open_orders=tuple(sorted(views, key=lambda v: v.broker_order_id)),
        tracked=tuple(sorted(state.orders)),
    )
    return msgspec.structs.replace(state, snapshots=seq + 1), [snap]


def _view(bo: st.BrokerOrder, keel_cid: str, parent_cid: str) -> BrokerOrderView:
    return BrokerOrderView(
        client_order_id=bo.client_order_id,
        broker_order_id=bo.id,
        symbol=bo.symbol,
        side=bo.side,
        qty=bo.qty,
        filled_qty=bo.filled_qty,
        filled_avg_price=bo.filled_avg_price,
        status=bo.status,
        time_in_force=bo.time_in_force,
        keel_client_order_id=keel_cid,
        parent_client_order_id=parent_cid,
    )
