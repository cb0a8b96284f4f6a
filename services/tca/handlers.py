"""Measure every order against its decision (pure): a TCA record per order, a record per fill.

An order is known from its intent (decision price and time, the decision bar's quote, sleeve,
profile, order family) and followed through execution's reports (hand-over, fills, end). Its
record (TcaOrderRecorded) is written:
- pending, once KEEL_TCA_PENDING_WRITE_SEC of event time (execution's watermark) passed without
  it ending;
- on each fill (provisional: prices still to come are left out);
- final, once it ended and every price it needs is known: the submit price (the last close at or
  before the broker took it) and, for unfilled shares, the mark (the last close at the later of
  its end and KEEL_TCA_OPPORTUNITY_HORIZON_SEC after the decision, never past the session's close).
A price at time T is known once marketdata has published a bar at or after T for the symbol (or
its watermark passed T), so the final record depends on the event streams only, never on which
of TCA's consumers ran first.

Every fill is also measured on its own (TcaRecorded): side * (fill - arrival) / arrival * 1e4
bps against its order's decision price, positive = cost. An exit leg of a bracket, oto or oco
(`<cid>:tp` / `:sl`) is measured against the price it was meant to trade at (its take-profit
limit or stop) and gets an order record only once it fills.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from datetime import date
from decimal import ROUND_HALF_EVEN, Decimal

import msgspec

from libs import costmodel, fillsim, sessions
from libs.contracts.base import Event, derive_id, exit_legs, is_leg_client_order_id, leg_client_order_id, tag_of
from libs.contracts.execution import (
    OrderAccepted,
    OrderCanceled,
    OrderExpired,
    OrderFilled,
    OrderPartiallyFilled,
    OrderRejected,
    OrderSubmitted,
    SubmitFailed,
    SubmitSkipped,
)
from libs.contracts.marketdata import BarClosed
from libs.contracts.ops import AlertRaised, Watermark
from libs.contracts.risk import OrderIntent, SleeveShare
from libs.contracts.tca import TcaOrderRecorded, TcaRecorded
from libs.decide import Ctx, episode_alert
from services.tca import shortfall as sf
from services.tca import state as st
from services.tca.config import TcaConfig
from services.tca.state import Closing, OrderTca, Tape, TcaState

_BPS = Decimal("0.0001")
_PX = Decimal("0.0001")
SEC_NS = 1_000_000_000
FINAL_RETENTION_NS = 900 * SEC_NS  # an ended order is kept this long for a late fill
_FEES = fillsim.CostModel()  # the fee schedule (SEC Section 31, FINRA TAF) of estimated fees

Report = (
    OrderSubmitted
    | OrderAccepted
    | OrderPartiallyFilled
    | OrderFilled
    | OrderCanceled
    | OrderExpired
    | OrderRejected
    | SubmitFailed
    | SubmitSkipped
)
_REPORTS = (
    OrderSubmitted,
    OrderAccepted,
    OrderPartiallyFilled,
    OrderFilled,
    OrderCanceled,
    OrderExpired,
    OrderRejected,
    SubmitFailed,
    SubmitSkipped,
)


def retention_ns(cfg: TcaConfig) -> int:
    """KEEL_TCA_INTENT_RETENTION_HOURS in ns."""
    return int(cfg.intent_retention_hours * 3600 * SEC_NS)


@functools.lru_cache(maxsize=8)
def _params(cfg: TcaConfig) -> costmodel.Params:
    # built and checked once per configuration, not on every fill
    return cfg.params()


def shortfall_bps(side: str, arrival: Decimal, fill: Decimal) -> Decimal:
    """Return the signed implementation shortfall of one fill in basis points."""
    return sf.signed_bps(side, arrival, fill)


def session_str(ts_ns: int) -> str:
    """Return the XNYS session (YYYY-MM-DD) that holds ts, '' when none does."""
    d = sessions.session_of(ts_ns)
    return d.isoformat() if d is not None else ""


def dominant_sleeve(sleeves: Sequence[SleeveShare]) -> str:
    """Return the sleeve that asked for the most shares (ties: the first by name)."""
    if not sleeves:
        return ""
    return min(sleeves, key=lambda s: (-abs(s.shares), s.sleeve)).sleeve


# --- prices ----------------------------------------------------------------------------------


def price_at(state: TcaState, symbol: str, ts: int) -> tuple[bool, Decimal | None]:
    """Return (known, the last close at or before ts).

    Known once a bar at or after ts was seen for the symbol or marketdata's watermark passed ts.
    A time older than the tape holds gets the tape's oldest close; a symbol with no bar, None.
    """
    tape = state.tapes.get(symbol, Tape())
    if max(tape.last_ts, state.md_watermark) < ts:
        return False, None
    before = [px for t, px in tape.bars if t <= ts]
    if before:
        return True, before[-1]
    return True, tape.bars[0][1] if tape.bars else None


def mark_time(order: OrderTca, cfg: TcaConfig) -> int:
    """Return when unfilled shares are marked: the later of the end and the opportunity horizon,
    never past the close of the decision's session."""
    at = max(order.end_ts, order.decision_ts + int(cfg.opportunity_horizon_sec * SEC_NS))
    if order.session:
        _, close = sessions.session_open_close(date.fromisoformat(order.session))
        at = min(at, close)
    return at


# --- the record ------------------------------------------------------------------------------


def cancel_rate(state: TcaState, symbol: str) -> Decimal:
    """Return the share of the symbol's orders that ended canceled within the window."""
    ends = state.ends.get(symbol, ())
    if not ends:
        return Decimal(0)
    return (Decimal(sum(1 for _, c in ends if c)) / len(ends)).quantize(_BPS)


def record(order: OrderTca, state: TcaState, cause: Event, ctx: Ctx) -> TcaOrderRecorded:
    """Build the record of an order as it stands (its revision and finality are the order's)."""
    cfg: TcaConfig = ctx.config
    submit_benchmark = cfg.arrival_benchmark == "submit" and order.submit_price is not None
    arrival = order.submit_price if submit_benchmark else order.decision_price
    bid, ask, spread, proxy = sf.quote_at_arrival(
        arrival, order.spread_bps, order.spread_is_proxy, cfg.proxy_spread_bps
    )
    # an exit leg's unfilled shares were contingent (its sibling filled, or the position closed):
    # nothing was missed
    end_price = None if order.leg else order.end_price
    parts = sf.perold(
        side=order.side,
        qty=order.filled_qty if order.leg else order.qty,
        decision_price=order.decision_price,
        submit_price=order.submit_price,
        filled_qty=order.filled_qty,
        fill_notional=order.fill_notional,
        fees=order.fees,
        end_price=end_price,
        benchmark="submit" if submit_benchmark else "decision",
    )
    vwap = (order.fill_notional / order.filled_qty).quantize(_PX, ROUND_HALF_EVEN) if order.filled_qty else None
    # a final record is caused by the report that ended the order, whichever event (a bar, a
    # watermark) supplied the last price it waited for; its id names that end and the fills, not
    # how many revisions came before it (a pending one is written or not depending on when the
    # intent arrived): the record is the same either way
    event_id = (
        derive_id("tca.order_recorded.v1", order.client_order_id, "final", order.end_event_id, order.filled_qty)
        if order.final
        else derive_id("tca.order_recorded.v1", order.client_order_id, order.revision)
    )
    return TcaOrderRecorded(
        event_id=event_id,
        correlation_id=order.correlation_id or cause.correlation_id,
        causation_id=order.end_event_id if order.final and order.end_event_id else cause.event_id,
        ts_event=order.end_ts if order.final and order.end_ts else cause.ts_event,
        ts_init=ctx.now_ns,
        client_order_id=order.client_order_id,
        intent_id=order.intent_id,
        revision=order.revision,
        final=order.final,
        status=order.status,
        session=order.session,
        symbol=order.symbol,
        side=order.side,
        qty=order.qty,
        strategy=order.strategy,
        sleeve=order.sleeve,
        trading_profile=order.trading_profile,
        order_type=order.order_type,
        order_class=order.order_class,
        time_in_force=order.time_in_force,
        provider=order.provider,
        benchmark="submit" if submit_benchmark else "decision",
        arrival_price=arrival,
        decision_price=order.decision_price,
        submit_price=order.submit_price,
        mid_at_arrival=arrival,
        bid_at_arrival=bid,
        ask_at_arrival=ask,
        spread_bps_at_arrival=spread,
        spread_is_proxy=proxy,
        decision_ts=order.decision_ts,
        submit_ts=order.submit_ts,
        first_fill_ts=order.first_fill_ts,
        end_ts=order.end_ts,
        filled_qty=order.filled_qty,
        fill_vwap=vwap,
        fees=order.fees,
        fees_estimated=order.fees_estimated,
        partial_fill=order.partial_fill,
        end_price=end_price,
        shortfall_bps=parts.total_bps,
        explicit_bps=parts.explicit_bps,
        delay_bps=parts.delay_bps,
        execution_bps=parts.execution_bps,
        opportunity_bps=parts.opportunity_bps,
        shortfall_usd=parts.total_usd,
        spread_paid_bps=sf.spread_paid_bps(order.side, arrival, vwap) if vwap is not None else None,
        fill_latency_ms=sf.fill_latency_ms(order.submit_ts, order.first_fill_ts),
        cancel_rate=state.rates.get(order.client_order_id, cancel_rate(state, order.symbol)),
        expected_cost_bps=order.expected_cost_bps,
        reason=order.reason,
    )


def fill_record(fill: OrderFilled | OrderPartiallyFilled, order: OrderTca, fee: Decimal, ctx: Ctx) -> TcaRecorded:
    """Measure one fill against its order's decision price."""
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
        arrival_price=order.decision_price,
        fill_price=fill.last_px,
        shortfall_bps=shortfall_bps(fill.side, order.decision_price, fill.last_px),
        strategy=order.strategy,
        fee=fee,
        session=order.session,
    )


def _with(state: TcaState, order: OrderTca) -> TcaState:
    return msgspec.structs.replace(state, orders={**state.orders, order.client_order_id: order})


def _without(state: TcaState, cid: str) -> TcaState:
    return msgspec.structs.replace(state, orders={k: v for k, v in state.orders.items() if k != cid})


def note_end(state: TcaState, ev: Report, cfg: TcaConfig) -> TcaState:
    """Count an order's end toward its symbol's cancel rate, in execution's report order (so the
    rate is the same whichever TCA consumer ran first), and keep the rate it ended with."""
    ends_order = isinstance(ev, OrderFilled | OrderCanceled | OrderExpired | OrderRejected | SubmitFailed)
    if not ends_order or is_leg_client_order_id(ev.client_order_id) or ev.client_order_id in state.rates:
        return state
    window = int(cfg.cancel_rate_window_sec * SEC_NS)
    kept = tuple(e for e in state.ends.get(ev.symbol, ()) if e[0] >= ev.ts_event - window)
    ends = {**state.ends, ev.symbol: (*kept, (ev.ts_event, isinstance(ev, OrderCanceled)))}
    state = msgspec.structs.replace(state, ends=ends)
    return msgspec.structs.replace(state, rates={**state.rates, ev.client_order_id: cancel_rate(state, ev.symbol)})


def _revise(state: TcaState, order: OrderTca, cause: Event, ctx: Ctx) -> tuple[TcaState, list[Event]]:
    """Write the next revision of an order's record."""
    rec = record(order, state, cause, ctx)
    return _with(state, msgspec.structs.replace(order, revision=order.revision + 1)), [rec]


def _settle(state: TcaState, order: OrderTca, cause: Event, ctx: Ctx) -> tuple[TcaState, list[Event]]:
    """Price what an order still needs and write its final record once everything is known."""
    cfg: TcaConfig = ctx.config
    if order.final or order.status not in st.ENDED:
        return _with(state, order), []
    if order.leg and order.filled_qty == 0:
        return _without(state, order.client_order_id), []  # a leg that never traded: nothing to measure
    if order.submit_ts and order.submit_price is None:
        known, px = price_at(state, order.symbol, order.submit_ts)
        if not known:
            return _with(state, order), []
        order = msgspec.structs.replace(order, submit_price=px)
    if order.filled_qty < order.qty and order.end_price is None and not order.leg:
        known, px = price_at(state, order.symbol, mark_time(order, cfg))
        if not known:
            return _with(state, order), []
        order = msgspec.structs.replace(order, end_price=px)
    return _revise(state, msgspec.structs.replace(order, final=True), cause, ctx)


# --- handlers --------------------------------------------------------------------------------


def on_intent(state: TcaState, ev: OrderIntent, ctx: Ctx) -> tuple[TcaState, list[Event]]:
    """Start measuring an intent's order (and its exit legs); apply reports that waited for it."""
    if ev.client_order_id in state.orders:
        return state, []
    order = OrderTca(
        client_order_id=ev.client_order_id,
        intent_id=ev.intent_id,
        symbol=ev.symbol,
        side=ev.side,
        qty=ev.qty,
        session=session_str(ev.bar_ts),
        decision_ts=ev.bar_ts,
        decision_price=ev.arrival_price,
        correlation_id=ev.correlation_id,
        strategy=ev.strategy,
        sleeve=dominant_sleeve(ev.sleeves),
        trading_profile=ev.trading_profile,
        order_type=ev.order_type,
        order_class=ev.order_class,
        time_in_force=ev.time_in_force,
        spread_bps=ev.spread_bps,
        spread_is_proxy=ev.spread_is_proxy,
        sigma_bps=ev.sigma_bps,
        bar_volume=ev.bar_volume,
        expected_cost_bps=ev.expected_cost_bps,
    )
    new = {ev.client_order_id: order}
    for leg in exit_legs(ev):
        cid = leg_client_order_id(ev.client_order_id, leg.role)
        new[cid] = msgspec.structs.replace(
            order,
            client_order_id=cid,
            side=leg.side,
            decision_price=leg.reference_price,
            order_type=leg.order_type,
            order_class="simple",
            time_in_force=ev.time_in_force,
            expected_cost_bps=None,
            leg=True,
        )
    orders = state.orders | new
    ready = [r for r in state.waiting if r.client_order_id in new]  # type: ignore[union-attr]
    waiting = tuple(r for r in state.waiting if r.client_order_id not in new)  # type: ignore[union-attr]
    state = msgspec.structs.replace(state, orders=orders, waiting=waiting)
    events: list[Event] = []
    for report in ready:
        state, out = on_report(state, report, ctx)  # type: ignore[arg-type]
        events.extend(out)
    return state, events


def _fee(fill: OrderFilled | OrderPartiallyFilled, cfg: TcaConfig) -> tuple[Decimal, bool]:
    if fill.fee > 0 or not cfg.estimate_fees:
        return fill.fee, False
    return fillsim.fee(fill.side, fill.last_qty, fill.last_px, _FEES), True


def on_report(state: TcaState, ev: Report, ctx: Ctx) -> tuple[TcaState, list[Event]]:
    """Follow an order through execution's report; hold a report that came before its intent."""
    cfg: TcaConfig = ctx.config
    order = state.orders.get(ev.client_order_id)
    if order is None:
        return _wait(state, ev, ctx)
    if isinstance(ev, SubmitSkipped):
        return _without(state, ev.client_order_id), []  # never an order: a block (the store keeps it)
    if isinstance(ev, OrderSubmitted):
        order = msgspec.structs.replace(
            order,
            provider=ev.broker,
            submit_ts=order.submit_ts or ev.ts_event,
            status=st.WORKING if order.status == st.PENDING else order.status,
        )
        return _with(state, order), []
    if isinstance(ev, OrderAccepted):
        # the broker's own time: fills are stamped by the same clock
        order = msgspec.structs.replace(
            order, submit_ts=ev.ts_event, status=st.WORKING if order.status == st.PENDING else order.status
        )
        return _with(state, order), []
    if isinstance(ev, OrderFilled | OrderPartiallyFilled):
        if ev.execution_id in order.fills:
            return state, []  # delivered twice (outside JetStream's duplicate window): measured once
        fee, estimated = _fee(ev, cfg)
        filled = order.filled_qty + ev.last_qty if order.leg else min(order.filled_qty + ev.last_qty, order.qty)
        done = isinstance(ev, OrderFilled)
        # a fill reported after the order's end (a cancel that crossed it) re-opens its record
        ended = order.status in st.ENDED
        order = msgspec.structs.replace(
            order,
            filled_qty=filled,
            fills=order.fills | {ev.execution_id},
            fill_notional=order.fill_notional + ev.last_qty * ev.last_px,
            fees=order.fees + fee,
            fees_estimated=order.fees_estimated or estimated,
            first_fill_ts=order.first_fill_ts or ev.ts_event,
            partial_fill=order.partial_fill or not done,
            status=st.FILLED if done else (order.status if ended else st.PARTIALLY_FILLED),
            end_ts=ev.ts_event if done else order.end_ts,
            end_event_id=ev.event_id if done or ended else order.end_event_id,
            final=False,
        )
        events: list[Event] = [fill_record(ev, order, fee, ctx)]
        if not order.leg:
            state = observe(state, order, ev, cfg)
        if done or ended:
            state, out = _settle(state, order, ev, ctx)
        else:
            state, out = _revise(state, order, ev, ctx)
        return state, events + out
    status, reason = _end(ev)
    order = msgspec.structs.replace(
        order, status=status, end_ts=ev.ts_event, end_event_id=ev.event_id, reason=reason or order.reason
    )
    return _settle(state, order, ev, ctx)


def _end(ev: Report) -> tuple[str, str]:
    if isinstance(ev, OrderCanceled):
        return st.CANCELED, ""
    if isinstance(ev, OrderExpired):
        return st.EXPIRED, ""
    if isinstance(ev, OrderRejected):
        return st.REJECTED, ev.code or "BROKER_REJECTED"
    if isinstance(ev, SubmitFailed):
        return st.FAILED, ev.reason_code
    raise TypeError(f"expected an order's end, was {type(ev).__name__}")


def _wait(state: TcaState, ev: Report, ctx: Ctx) -> tuple[TcaState, list[Event]]:
    """Hold a report until its intent arrives (for intent_retention_hours of event time)."""
    cfg: TcaConfig = ctx.config
    horizon = ev.ts_event - retention_ns(cfg)
    lost = [r for r in state.waiting if r.ts_event < horizon]
    waiting = (*(r for r in state.waiting if r.ts_event >= horizon), ev)
    alerts: list[Event] = [orphan_alert(r, ctx) for r in lost if isinstance(r, OrderFilled | OrderPartiallyFilled)]
    return msgspec.structs.replace(state, waiting=waiting), alerts


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


def _settle_waiting(state: TcaState, cause: Event, ctx: Ctx, symbol: str | None) -> tuple[TcaState, list[Event]]:
    """Finish the ended orders (of one symbol, or all) whose prices are now known."""
    events: list[Event] = []
    for cid in sorted(state.orders):
        order = state.orders[cid]
        if order.final or order.status not in st.ENDED or (symbol is not None and order.symbol != symbol):
            continue
        state, out = _settle(state, order, cause, ctx)
        events.extend(out)
    return state, events


def on_bar(state: TcaState, bar: BarClosed, ctx: Ctx) -> tuple[TcaState, list[Event]]:
    """Add a close to the symbol's tape and finish orders that were waiting for it."""
    tape = state.tapes.get(bar.symbol, Tape())
    if bar.ts_event <= tape.last_ts:
        return state, []
    tape = Tape(bars=(*tape.bars, (bar.ts_event, bar.close))[-st.TAPE_BARS :])
    state = msgspec.structs.replace(state, tapes={**state.tapes, bar.symbol: tape})
    return _settle_waiting(state, bar, ctx, bar.symbol)


def on_md_watermark(state: TcaState, wm: Watermark, ctx: Ctx) -> tuple[TcaState, list[Event]]:
    """Marketdata has published every bar up to wm: prices up to then are known for every symbol."""
    if wm.bar_ts <= state.md_watermark:
        return state, []
    return _settle_waiting(msgspec.structs.replace(state, md_watermark=wm.bar_ts), wm, ctx, None)


def on_exec_watermark(state: TcaState, wm: Watermark, ctx: Ctx) -> tuple[TcaState, list[Event]]:
    """Execution is done with bars up to wm: calibrate at a new session, write pending records,
    forget long-ended orders."""
    cfg: TcaConfig = ctx.config
    if wm.bar_ts <= state.exec_watermark:
        return state, []
    state = msgspec.structs.replace(state, exec_watermark=wm.bar_ts)
    state, events = close_session(state, wm, ctx)
    due = wm.bar_ts - int(cfg.pending_write_sec * SEC_NS)
    for cid in sorted(state.orders):
        order = state.orders[cid]
        if order.revision == 0 and not order.leg and not order.final and order.decision_ts <= due:
            state, out = _revise(state, order, wm, ctx)
            events.extend(out)
    # forget orders that ended long enough ago for no late fill to come, and give up on those
    # with no end reported within the retention (an exit leg that never traded, silently)
    forget, horizon = wm.bar_ts - FINAL_RETENTION_NS, wm.bar_ts - retention_ns(cfg)
    unended = sorted(k for k, v in state.orders.items() if not v.final and v.decision_ts < horizon)
    events.extend(unended_alert(state.orders[k], wm, ctx) for k in unended if not state.orders[k].leg)
    kept = {k: v for k, v in state.orders.items() if k not in unended and not (v.final and v.end_ts < forget)}
    if len(kept) != len(state.orders):
        waiting = {r.client_order_id for r in state.waiting}  # type: ignore[union-attr]
        rates = {k: v for k, v in state.rates.items() if k in kept or k in waiting}
        state = msgspec.structs.replace(state, orders=kept, rates=rates)
    return state, events


def unended_alert(order: OrderTca, wm: Watermark, ctx: Ctx) -> AlertRaised:
    """Say that an order was given up on: no report ended it within the retention."""
    return episode_alert(
        "TCA_ORDER_UNENDED",
        "warning",
        f"order {order.client_order_id} ({order.status}) has had no end reported in "
        "KEEL_TCA_INTENT_RETENTION_HOURS; its record stays at its last revision",
        order.client_order_id,
        service=ctx.service,
        now_ns=wm.ts_event,
        client_order_id=order.client_order_id,
        status=order.status,
    )


# --- the cost model's calibration (seed 001 §3, seed 002 C-TCA-01) ---------------------------

TCA_CALIBRATION_OUT_OF_BOUNDS = "TCA_CALIBRATION_OUT_OF_BOUNDS"


def observe(state: TcaState, order: OrderTca, fill: OrderFilled | OrderPartiallyFilled, cfg: TcaConfig) -> TcaState:
    """Add one fill to its symbol's statistics: of the session being closed when it was reported
    before that session's close was frozen, else of the current one (an exit leg is no arrival).

    A fill's cost beyond half the spread is its slippage. Without a quoted spread, the spread is
    the one the model in force prices the symbol with: the model learns no spread from the fill,
    and its slippage takes the rest of the cost, so what it predicts (its spread / 2 + slippage)
    is what the fills cost. (Half of any other proxy would bias the slippage, and the expected
    cost with it, by the difference.)
    """
    if order.spread_is_proxy or order.spread_bps <= 0:
        model = state.model
        spread = costmodel.cost_of(model, order.symbol).spread_bps if model else _params(cfg).prior.spread_bps
    else:
        spread = order.spread_bps
    obs = costmodel.Observation(
        symbol=order.symbol,
        side=order.side,
        qty=fill.last_qty,
        mid=order.decision_price,
        fill_px=fill.last_px,
        spread_bps=spread,
        spread_is_proxy=order.spread_is_proxy or order.spread_bps <= 0,
        sigma_bps=order.sigma_bps,
        bar_volume=order.bar_volume,
    )
    for i, closing in enumerate(state.closing):
        if fill.execution_id in closing.fills:
            stats = costmodel.observe(closing.day.get(order.symbol, costmodel.DayStats()), obs, _params(cfg))
            closed = msgspec.structs.replace(
                closing, day={**closing.day, order.symbol: stats}, fills=closing.fills - {fill.execution_id}
            )
            return msgspec.structs.replace(state, closing=(*state.closing[:i], closed, *state.closing[i + 1 :]))
    stats = costmodel.observe(state.day.get(order.symbol, costmodel.DayStats()), obs, _params(cfg))
    return msgspec.structs.replace(state, day={**state.day, order.symbol: stats})


def close_session(state: TcaState, wm: Watermark, ctx: Ctx) -> tuple[TcaState, list[Event]]:
    """At execution's first watermark of a session, freeze the fills since the last calibration
    (and those reported before it that still wait for their intent) for the model of the session."""
    session = session_str(wm.bar_ts)
    if not session:
        return state, []
    if state.closing:
        modelled = session_str(state.closing[-1].trigger.bar_ts)
    else:
        modelled = state.model.effective_session if state.model is not None else ""
    if modelled >= session:
        return (msgspec.structs.replace(state, day_session=session), []) if not state.day_session else (state, [])
    frozen = frozenset().union(*(c.fills for c in state.closing))
    waiting = frozenset(
        r.execution_id
        for r in state.waiting
        if isinstance(r, OrderFilled | OrderPartiallyFilled) and r.execution_id not in frozen
    )
    closing = Closing(day=state.day, session=state.day_session, fills=waiting, trigger=wm)
    state = msgspec.structs.replace(state, closing=(*state.closing, closing), day={}, day_session=session)
    return calibrate(state, ctx)


def calibrate(state: TcaState, ctx: Ctx) -> tuple[TcaState, list[Event]]:
    """Fold a frozen session's fills into the model and publish it for the next session
    (CostModelUpdated) once risk's watermark shows every intent of that session is in; say when
    the bounds cut an estimate. The first model (no fills yet) is the prior."""
    events: list[Event] = []
    while state.closing and state.risk_watermark >= state.closing[0].trigger.bar_ts:
        state, out = _calibrate_one(state, ctx)
        events.extend(out)
    return state, events


def _calibrate_one(state: TcaState, ctx: Ctx) -> tuple[TcaState, list[Event]]:
    cfg: TcaConfig = ctx.config
    closing = state.closing[0]
    wm = closing.trigger
    session = session_str(wm.bar_ts)
    params = _params(cfg)
    prev = {c.symbol: c for c in state.model.symbols} if state.model else {}
    default = state.model.default if state.model else params.prior
    cal = costmodel.calibrate(prev, default, closing.day, params)
    model = costmodel.to_event(
        cal,
        session=closing.session if closing.day else "",
        effective_session=session,
        calibrated_ts=wm.bar_ts,
        ts_init=ctx.now_ns,
        correlation_id=wm.correlation_id,
        causation_id=wm.event_id,
    )
    events: list[Event] = [model]
    if cal.out_of_bounds:
        events.append(
            episode_alert(
                TCA_CALIBRATION_OUT_OF_BOUNDS,
                "warning",
                f"the cost model's raw estimate left its bounds for {', '.join(cal.out_of_bounds)} "
                f"(calibrated on {model.session or 'no fills'}); the bounded values are published",
                f"{session}",
                service=ctx.service,
                now_ns=wm.bar_ts,
                symbols=",".join(cal.out_of_bounds),
                session=session,
            )
        )
    return msgspec.structs.replace(state, model=model, closing=state.closing[1:]), events


def on_risk_watermark(state: TcaState, wm: Watermark, ctx: Ctx) -> tuple[TcaState, list[Event]]:
    """Risk has published every intent of bars up to wm: a frozen session may now be calibrated."""
    if wm.bar_ts <= state.risk_watermark:
        return state, []
    return calibrate(msgspec.structs.replace(state, risk_watermark=wm.bar_ts), ctx)


def step(state: TcaState, event: object, ctx: Ctx) -> tuple[TcaState, Sequence[Event]]:
    """Route one consumed event."""
    if isinstance(event, OrderIntent):
        return on_intent(state, event, ctx)
    if isinstance(event, _REPORTS):
        return on_report(note_end(state, event, ctx.config), event, ctx)  # type: ignore[arg-type]
    if isinstance(event, BarClosed):
        return on_bar(state, event, ctx)
    if isinstance(event, Watermark):
        by_source = {"marketdata": on_md_watermark, "execution": on_exec_watermark, "risk": on_risk_watermark}
        handler = by_source.get(event.source)
        if handler is None:
            return state, []
        state, events = handler(state, event, ctx)
        return own_watermark(state, events, ctx)
    return state, []


def own_watermark(state: TcaState, events: list[Event], ctx: Ctx) -> tuple[TcaState, list[Event]]:
    """Emit TCA's watermark for the bar every one of its inputs has reached (after what they caused).

    TCA is done with a bar once marketdata, risk and execution all are and it has handled their
    watermarks: any cost model due by then is among `events`, published before the watermark, so
    risk in lockstep adopts it at the same bar in every run.
    """
    floor = min(state.md_watermark, state.exec_watermark, state.risk_watermark)
    if floor <= state.last_watermark:
        return state, events
    wm = Watermark(
        event_id=derive_id(tag_of(Watermark), ctx.service, floor),
        correlation_id=derive_id("bar", floor),
        causation_id=derive_id("bar", floor),
        ts_event=floor,
        ts_init=ctx.now_ns,
        source=ctx.service,
        bar_ts=floor,
    )
    return msgspec.structs.replace(state, last_watermark=floor), [*events, wm]
