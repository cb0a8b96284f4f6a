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

from libs.contracts.base import Event, derive_id
from libs.contracts.execution import (
    OrderAccepted,
    OrderCanceled,
    OrderExpired,
    OrderFilled,
    OrderPartiallyFilled,
    OrderRejected,
    OrderStatusUnknown,
    OrderSubmitted,
    SubmitFailed,
)
from libs.contracts.oms import PretradeDecision
from libs.contracts.ops import AlertRaised, Watermark
from libs.decide import Ctx, forward_watermark
from services.execution import state as st

_PX = Decimal("0.0001")
UPSTREAM = "oms"
KILL_SWITCH_BLOCK = "KILL_SWITCH_BLOCK"
UNKNOWN_ORDER_BLOCK = "UNKNOWN_ORDER_BLOCK"


class Accepted(msgspec.Struct, frozen=True, kw_only=True):
    """The broker holds the order."""

    order: st.BrokerOrder


class Rejected(msgspec.Struct, frozen=True, kw_only=True):
    """The broker refused the order."""

    code: str
    message: str


class Unknown(msgspec.Struct, frozen=True, kw_only=True):
    """The outcome is not known (timeout, lost response, 5xx): resolve by client_order_id later."""

    message: str


Outcome = Accepted | Rejected | Unknown


def _envelope(
    name: str, d: PretradeDecision | st.ExecOrder, ts_event: int, ctx: Ctx, *parts: object
) -> dict[str, object]:
    cid = d.client_order_id
    return {
        "event_id": derive_id(f"exec.{name}.v1", cid, *parts),
        "correlation_id": d.correlation_id,
        "causation_id": d.event_id if isinstance(d, PretradeDecision) else (d.decision_id or cid),
        "ts_event": ts_event,
        "ts_init": ctx.now_ns,
        "intent_id": d.intent_id,
        "client_order_id": cid,
        "symbol": d.symbol,
        "side": d.side,
    }


def hand_over(
    state: st.ExecState, d: PretradeDecision, broker: str, traceparent: str, ctx: Ctx
) -> tuple[st.ExecState, list[Event]]:
    """Hold an approved order as handed to the broker (SUBMITTING) and say so, before the call.

    From here on the order is never refused or forgotten: whatever happens to the call, the
    order is resolved by its client_order_id (state.UNKNOWN).
    """
    order = st.ExecOrder(
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
    )
    event = OrderSubmitted(**_envelope("order_submitted", d, d.ts_event, ctx), qty=d.qty, broker=broker)  # type: ignore[arg-type]
    return msgspec.structs.replace(state, orders={**state.orders, d.client_order_id: order}), [event]


def submitted_event_id(cid: str) -> str:
    """Return the id of the OrderSubmitted of an order (it exists once the order was handed over)."""
    return derive_id("exec.order_submitted.v1", cid)


def blocked(d: PretradeDecision, reason_code: str, message: str, ctx: Ctx) -> SubmitFailed:
    """Refuse to submit an approved order (e.g. the halt flag went up after approval)."""
    return SubmitFailed(
        **_envelope("submit_failed", d, d.ts_event, ctx),  # type: ignore[arg-type]
        category="BROKER_STATE",
        reason_code=reason_code,
        message=message,
    )


def unknown_order_for(state: st.ExecState, symbol: str) -> str:
    """Return the client_order_id of an order of unknown status for a symbol, or ''."""
    return next(
        (cid for cid, o in sorted(state.orders.items()) if o.symbol == symbol and o.broker_status == st.UNKNOWN), ""
    )


def unknown_block(state: st.ExecState, d: PretradeDecision, ctx: Ctx) -> SubmitFailed | None:
    """Refuse a new order while another of its symbol has an unknown status, else None.

    The order of unknown status may be working at the broker: a second one could double the
    position, so the symbol waits until the lookup by client_order_id has resolved the first.
    """
    cid = unknown_order_for(state, d.symbol)
    if not cid:
        return None
    why = f"expected no order of unknown status for {d.symbol}, was {cid} (resolving it by client_order_id)"
    return blocked(d, UNKNOWN_ORDER_BLOCK, why, ctx)


def on_outcome(state: st.ExecState, cid: str, outcome: Outcome, ctx: Ctx) -> tuple[st.ExecState, list[Event]]:
    """Record the broker's answer to a submit of an order already handed over."""
    order = state.orders.get(cid)
    if order is None:
        return state, []  # resolved and finished meanwhile (a poll got there first)
    if isinstance(outcome, Rejected):
        ev = OrderRejected(
            **_envelope("order_rejected", order, order.bar_ts or ctx.now_ns, ctx),  # type: ignore[arg-type]
            reason=outcome.message,
            code=outcome.code,
        )
        return _without(state, cid), [ev]
    if isinstance(outcome, Unknown):
        return _unknown(state, order, outcome.message, ctx)
    return on_broker_order(state, cid, outcome.order, ctx)


def _unknown(state: st.ExecState, order: st.ExecOrder, reason: str, ctx: Ctx) -> tuple[st.ExecState, list[Event]]:
    # said once, when the order becomes UNKNOWN; asking again without an answer changes nothing
    if order.broker_status != st.SUBMITTING:
        return state, []
    ev = OrderStatusUnknown(
        **_envelope("order_status_unknown", order, order.bar_ts or ctx.now_ns, ctx),  # type: ignore[arg-type]
        reason=reason[:300],
    )
    updated = msgspec.structs.replace(order, broker_status=st.UNKNOWN)
    return msgspec.structs.replace(state, orders={**state.orders, order.client_order_id: updated}), [ev]


def on_broker_order(
    state: st.ExecState, cid: str, bo: st.BrokerOrder | None, ctx: Ctx
) -> tuple[st.ExecState, list[Event]]:
    """Compare a polled or streamed broker order with what was reported; report the difference.

    A streamed update carries its execution_id: one the order has already applied (a duplicated
    frame) changes nothing. Without that, the cumulative quantity still reports each fill once.
    """
    order = state.orders.get(cid)
    if order is None:
        return state, []
    if bo is None:
        return state, []  # the broker does not show it (yet): never a verdict on its own
    if bo.execution_id and bo.execution_id in order.execution_ids:
        return state, []
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
                broker_order_id=bo.id,
            )
        )  # type: ignore[arg-type]
    if kind != st.WORKING and (kind != st.FILLED or bo.filled_qty >= order.qty):
        return _without(state, cid), events
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
    )
    return msgspec.structs.replace(state, orders={**state.orders, cid: updated}), events


def order_ts(order: st.ExecOrder, bo: st.BrokerOrder | None, ctx: Ctx) -> int:
    """Event time of a report: the broker's update time, else the time it was observed."""
    return bo.updated_at_ns if bo is not None and bo.updated_at_ns else ctx.now_ns


def _without(state: st.ExecState, cid: str) -> st.ExecState:
    return msgspec.structs.replace(state, orders={k: v for k, v in state.orders.items() if k != cid})


def stream_alert(code: str, severity: str, message: str, key: str, ctx: Ctx, **details: str) -> AlertRaised:
    """Build an alert about the broker's trade_updates stream; key names the episode."""
    return AlertRaised(
        event_id=derive_id("ops.alert_raised.v1", ctx.service, code, key),
        correlation_id=key,
        causation_id=key,
        ts_event=ctx.now_ns,
        ts_init=ctx.now_ns,
        code=code,
        severity=severity,  # type: ignore[arg-type]
        source=ctx.service,
        message=message,
        details=details,
    )


def step(state: st.ExecState, event: object, ctx: Ctx) -> tuple[st.ExecState, Sequence[Event]]:
    """Handle the OMS-stream messages that need no broker call (watermarks, denials)."""
    if isinstance(event, Watermark) and event.source == UPSTREAM:
        last, events = forward_watermark(state.last_watermark, event, ctx)
        return msgspec.structs.replace(state, last_watermark=last), events
    return state, []
