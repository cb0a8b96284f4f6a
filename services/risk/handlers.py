"""Net sleeve targets per symbol, cap them, and turn the gap to the expected position into an
OrderIntent with a deterministic CIDv2 client_order_id (pure).

Expected position = filled position + the OMS's working quantity + intents risk emitted that
the OMS has not reported yet (`intents_seen` is the highest `risk_seq` the OMS has handled, so
an intent lost on the way is not counted in flight forever), so a bar arriving before the OMS
catches up never orders the same shares twice.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date
from decimal import ROUND_DOWN, Decimal

import msgspec

from libs import costmodel
from libs.contracts.base import Event, derive_id, intent_id_for, to_tick
from libs.contracts.oms import PositionChanged
from libs.contracts.ops import AlertRaised, FillsDone, Watermark
from libs.contracts.risk import EntryBlocked, OrderIntent, SleeveShare
from libs.contracts.signal import TargetProposed
from libs.contracts.tca import CostModelUpdated
from libs.decide import Ctx, episode_alert, forward_watermark
from services.risk.config import BPS, RiskConfig
from services.risk.state import InFlight, RiskState, SymbolRisk

MAX_CID_LEN = 128  # Alpaca's limit on client_order_id
LOCKSTEP_STALLED = "LOCKSTEP_STALLED"
UPSTREAM = "signal"  # the watermark risk forwards as its own (the OMS's and TCA's are only read)


def client_order_id(
    *, strategy: str, symbol: str, side: str, session: str, horizon: str, signal_hash: str, qty: int, version: str
) -> str:
    """Build a CIDv2 id (seed 001): CIDv2:{strategy}:{symbol}:{side}:{session}:{horizon}:{hash}:{qty}:{version}."""
    cid = f"CIDv2:{strategy}:{symbol}:{side}:{session}:{horizon}:{signal_hash}:{qty}:{version}"
    excess = len(cid) - MAX_CID_LEN
    if excess > 0:
        # keep every field but shorten the free-text strategy name
        if excess >= len(strategy):
            raise ValueError(f"expected CIDv2 fields to fit {MAX_CID_LEN} characters, was {len(cid)}: {cid[:60]}...")
        cid = cid.replace(f"CIDv2:{strategy}:", f"CIDv2:{strategy[: len(strategy) - excess]}:", 1)
    return cid


def _cap(target: int, price: Decimal, cap: Decimal) -> int:
    if price <= 0:
        return 0
    limit = int((cap / price).to_integral_value(rounding=ROUND_DOWN))
    return max(-limit, min(limit, target))


def _away(price: Decimal, bps: Decimal, direction: int) -> Decimal:
    # move bps from price (up for +1, down for -1) and round to the tick in the same direction,
    # so a price never rounds back onto its reference and exit legs never meet
    return to_tick(price * (1 + direction * bps / BPS), toward=direction)


def order_terms(cfg: RiskConfig, side: str, close: Decimal, *, closing: bool = False) -> dict[str, object]:
    """Return the order family fields of an intent from the policy and the decision bar's close.

    Entry prices sit beyond the close in the direction that pays more (marketable by the
    offset: a buy limit above, a sell limit below; a buy stop triggers above, a sell stop
    below). Exit legs sit on either side of the close: a long position (a bracket/oto buy, an
    oco sell) takes profit above and stops out below, a short one the other way round.
    """
    pay = 1 if side == "buy" else -1
    # a bracket's or oto's legs exit what its entry opens: an order that closes a position goes
    # simple, or its legs would open the other side once it filled
    order_class = "simple" if closing and cfg.order_class in ("bracket", "oto") else cfg.order_class
    terms: dict[str, object] = {
        "order_type": cfg.order_type,
        "time_in_force": cfg.time_in_force,
        "order_class": order_class,
    }
    if cfg.order_type in ("stop", "stop_limit"):
        terms["stop_price"] = _away(close, cfg.stop_offset_bps, pay)
    if cfg.order_type == "stop_limit":
        terms["limit_price"] = _away(terms["stop_price"], cfg.limit_offset_bps, pay)  # type: ignore[arg-type]
    elif cfg.order_type == "limit" and cfg.order_class != "oco":
        terms["limit_price"] = _away(close, cfg.limit_offset_bps, pay)  # an oco's limit is its take-profit
    if cfg.order_type == "trailing_stop":
        terms["trail_percent"] = cfg.trail_percent
    if order_class != "simple":
        up = 1 if (side == "buy") != (order_class == "oco") else -1
        if cfg.take_profit_bps is not None:
            terms["take_profit_limit_price"] = _away(close, cfg.take_profit_bps, up)
        if cfg.stop_loss_bps is not None:
            terms["stop_loss_stop_price"] = _away(close, cfg.stop_loss_bps, -up)
    return terms


def _gross_others(state: RiskState, symbol: str) -> Decimal:
    return sum(
        (abs(s.expected_position()) * s.last_price for sym, s in state.symbols.items() if sym != symbol),
        Decimal(0),
    )


def one_side_at_a_time(sym: SymbolRisk, delta: int) -> int:
    """Return the part of an order of `delta` shares the broker takes now (Alpaca's side rules).

    A position is never reversed by one order: an order against it closes at most the shares
    that orders already working on its side leave (the other side goes once it is flat); on a
    flat symbol, nothing opens while an order the other way works (it waits for that one). The
    exchange refuses both otherwise ("insufficient qty available for order", "cannot open a
    short sell while a long buy order is open"). An order that adds to the position is free.
    """
    if delta == 0:
        return 0
    side = 1 if delta > 0 else -1
    buys, sells = sym.working_by_side()
    same, other = (buys, sells) if side > 0 else (sells, buys)
    if sym.position * side < 0:
        return side * min(abs(delta), max(abs(sym.position) - same, 0))
    if sym.position == 0 and other > 0:
        return 0
    return delta


def on_target(state: RiskState, ev: TargetProposed, ctx: Ctx) -> tuple[RiskState, list[Event]]:
    """Record a sleeve target and order the capped gap to the expected position."""
    cfg: RiskConfig = ctx.config
    prev = state.symbols.get(ev.symbol, SymbolRisk())
    sleeves = {**prev.sleeves, ev.sleeve: ev.target_shares}
    sym = msgspec.structs.replace(prev, sleeves=sleeves, last_price=ev.reference_price)
    net = sum(sleeves.values())
    capped = _cap(net, ev.reference_price, cfg.max_symbol_dollars)
    room = cfg.gross_cap_dollars - _gross_others(state, ev.symbol)
    capped = _cap(capped, ev.reference_price, max(room, Decimal(0)))
    delta = one_side_at_a_time(sym, capped - sym.expected_position())
    # the last shares of a position always go, however few: a leftover below the minimum would
    # otherwise stop the close, and with it the other side, for good
    closes_out = sym.position * delta < 0 and sym.expected_position() + delta == 0
    if ev.session and not state.first_session:
        state = msgspec.structs.replace(state, first_session=ev.session)
    state, events = stale_alert(state, ev, ctx)
    if delta != 0 and (abs(delta) * ev.reference_price >= cfg.min_order_dollars or closes_out):
        side = "buy" if delta > 0 else "sell"
        qty = abs(delta)
        expected = expected_cost(state, ev, qty)
        if sym.position * delta >= 0:  # opens or adds: the cost gate applies (a reduction always goes)
            refused = cost_gate(state, ev, expected, ctx)
            if refused is not None:
                reason, message, details = refused
                events.append(entry_blocked(ev, side, qty, sleeves, expected, reason, message, details, ctx))
                return _with(state, ev.symbol, sym), events
        cid = client_order_id(
            strategy=cfg.strategy,
            symbol=ev.symbol,
            side=side,
            session=ev.session.replace("-", ""),
            horizon=ev.horizon,
            signal_hash=derive_id(ev.event_id, sorted(sleeves.items()), sym.emitted)[:12],
            qty=qty,
            version=cfg.cid_version,
        )
        events.append(
            OrderIntent(
                event_id=derive_id("risk.order_intent.v1", cid),
                correlation_id=ev.correlation_id,
                causation_id=ev.event_id,
                ts_event=ev.ts_event,
                ts_init=ctx.now_ns,
                intent_id=intent_id_for(cid),
                client_order_id=cid,
                symbol=ev.symbol,
                side=side,
                qty=qty,
                arrival_price=ev.reference_price,
                bar_ts=ev.bar_ts,
                strategy=cfg.strategy,
                sleeves=tuple(SleeveShare(sleeve=k, shares=v) for k, v in sorted(sleeves.items())),
                notional=qty * ev.reference_price,
                risk_seq=sym.emitted + 1,
                bar_volume=ev.bar_volume,
                spread_bps=ev.spread_bps,
                spread_is_proxy=ev.spread_is_proxy,
                sigma_bps=ev.sigma_bps,
                trading_profile=ctx.common.trading_profile,
                expected_cost_bps=expected,
                **order_terms(cfg, side, ev.reference_price, closing=sym.position * delta < 0),  # type: ignore[arg-type]
            )
        )
        sym = msgspec.structs.replace(
            sym,
            emitted=sym.emitted + 1,
            in_flight=(*sym.in_flight, InFlight(index=sym.emitted, qty=delta)),
        )
    return _with(state, ev.symbol, sym), events


# --- the cost gate (seed 000 §H, seed 002 C-TCA-01) ------------------------------------------

COST_GATE_BLOCK = "COST_GATE_BLOCK"
TCA_STALE_BLOCK = "TCA_STALE_BLOCK"
TCA_STALE = "TCA_STALE"
_BOUNDS = costmodel.Bounds()


def expected_cost(state: RiskState, ev: TargetProposed, qty: int) -> Decimal:
    """Return the expected one-way cost of an order of qty on the target's bar, in bps.

    Priced with TCA's latest calibration of the symbol (its default for a symbol it has no
    estimate of; the model's prior before any calibration arrived): half the spread, slippage,
    and the volatility and participation terms of the bar.
    """
    cost = costmodel.cost_of(state.cost_model, ev.symbol) if state.cost_model else costmodel.PRIOR
    participation = Decimal(qty) / Decimal(ev.bar_volume) if ev.bar_volume > 0 else None
    return costmodel.expected_cost_bps(cost, ev.sigma_bps, participation, _BOUNDS)


def _age(since: str, session: str) -> int:
    return costmodel.age_sessions(date.fromisoformat(since), date.fromisoformat(session))


def staleness(state: RiskState, session: str, cfg: RiskConfig) -> str:
    """Return why the cost model cannot be trusted for a session ("" when it can)."""
    if not session:
        return ""
    model = state.cost_model
    if model is None:
        # TCA publishes its first model in the first session risk trades: a whole session
        # without one is stale
        if state.first_session and _age(state.first_session, session) > 0:
            return f"no cost model calibrated since {state.first_session}"
        return ""
    age = _age(model.effective_session, session)
    if age > cfg.tca_max_age_sessions:
        return f"cost model made for {model.effective_session} is {age} sessions old (max {cfg.tca_max_age_sessions})"
    return ""


def cost_gate(
    state: RiskState, ev: TargetProposed, expected: Decimal, ctx: Ctx
) -> tuple[str, str, dict[str, str]] | None:
    """Decide whether an entry may go; return (reason, message, details) when it may not."""
    cfg: RiskConfig = ctx.config
    stale = staleness(state, ev.session, cfg)
    model = state.cost_model
    # the estimate the symbol is priced with left the model's bounds: its own, or the default's
    out_of_bounds = model is not None and costmodel.cost_of(model, ev.symbol).symbol in model.out_of_bounds
    if ctx.common.block_trading_if_tca_stale and (stale or out_of_bounds):
        why = stale or f"{ev.symbol}'s calibrated cost left the model's bounds"
        return TCA_STALE_BLOCK, why, {"session": ev.session}
    if expected > cfg.max_entry_cost_bps:
        return (
            COST_GATE_BLOCK,
            f"expected cost {expected} bps is above KEEL_RISK_MAX_ENTRY_COST_BPS {cfg.max_entry_cost_bps}",
            {"max_entry_cost_bps": str(cfg.max_entry_cost_bps)},
        )
    return None


def stale_alert(state: RiskState, ev: TargetProposed, ctx: Ctx) -> tuple[RiskState, list[Event]]:
    """Say once a session that the cost model is stale (TCA_STALE), blocking configured or not."""
    stale = staleness(state, ev.session, ctx.config)
    if not stale or state.stale_alerted == ev.session:
        return state, []
    alert = episode_alert(
        TCA_STALE, "warning", stale, ev.session, service=ctx.service, now_ns=ev.ts_event, session=ev.session
    )
    return msgspec.structs.replace(state, stale_alerted=ev.session), [alert]


def entry_blocked(
    ev: TargetProposed,
    side: str,
    qty: int,
    sleeves: dict[str, int],
    expected: Decimal,
    reason: str,
    message: str,
    details: dict[str, str],
    ctx: Ctx,
) -> EntryBlocked:
    """Say that risk did not order an entry, and why."""
    return EntryBlocked(
        event_id=derive_id("risk.entry_blocked.v1", ev.event_id, reason),
        correlation_id=ev.correlation_id,
        causation_id=ev.event_id,
        ts_event=ev.ts_event,
        ts_init=ctx.now_ns,
        symbol=ev.symbol,
        side=side,  # type: ignore[arg-type]
        qty=qty,
        reason_code=reason,
        message=message,
        bar_ts=ev.bar_ts,
        session=ev.session,
        strategy=ctx.config.strategy,
        sleeves=tuple(SleeveShare(sleeve=k, shares=v) for k, v in sorted(sleeves.items())),
        order_type=ctx.config.order_type,
        expected_cost_bps=expected,
        details=details,
    )


def on_cost_model(state: RiskState, ev: CostModelUpdated) -> RiskState:
    """Adopt TCA's newer calibration (an older one, redelivered, changes nothing)."""
    return msgspec.structs.replace(state, cost_model=ev) if costmodel.supersedes(ev, state.cost_model) else state


def on_position(state: RiskState, ev: PositionChanged) -> RiskState:
    """Adopt the OMS's view of a symbol and forget intents it has now seen."""
    prev = state.symbols.get(ev.symbol, SymbolRisk())
    if ev.intents_seen < prev.oms_intents_seen:
        return state  # an older report than one already applied
    sym = msgspec.structs.replace(
        prev,
        position=ev.qty,
        open_order_qty=ev.open_order_qty,
        open_buy_qty=ev.open_buy_qty,
        open_sell_qty=ev.open_sell_qty,
        oms_intents_seen=ev.intents_seen,
        in_flight=tuple(f for f in prev.in_flight if f.index >= ev.intents_seen),
    )
    return _with(state, ev.symbol, sym)


def _with(state: RiskState, symbol: str, sym: SymbolRisk) -> RiskState:
    return msgspec.structs.replace(state, symbols={**state.symbols, symbol: sym})


def step(state: RiskState, event: object, ctx: Ctx) -> tuple[RiskState, Sequence[Event]]:
    """Route one consumed event to its handler."""
    if isinstance(event, TargetProposed):
        return on_target(state, event, ctx)
    if isinstance(event, PositionChanged):
        return on_position(state, event), []
    if isinstance(event, Watermark) and event.source == "tca":
        return msgspec.structs.replace(state, tca_watermark=max(state.tca_watermark, event.bar_ts)), []
    if isinstance(event, Watermark) and event.source == UPSTREAM:
        wm, events = forward_watermark(state.last_watermark, event, ctx)
        return msgspec.structs.replace(state, last_watermark=wm), events
    if isinstance(event, FillsDone) and event.source == "oms":
        return msgspec.structs.replace(state, fills_done=max(state.fills_done, event.bar_ts)), []
    if isinstance(event, CostModelUpdated):
        return on_cost_model(state, event), []
    return state, []


def lockstep_ready(s: RiskState, bar_ts: int) -> bool:
    """Tell whether risk may decide bar_ts in lockstep: the OMS's FillsDone has reached it (every
    fill and end the exchange made up to it moved the positions) and TCA's watermark the previous
    bar (every cost model made before it is adopted)."""
    return s.fills_done >= bar_ts and s.tca_watermark >= s.last_watermark


def lockstep_stalled(s: RiskState, bar_ts: int) -> AlertRaised:
    """LOCKSTEP_STALLED: a bar held past the consumer's warning time (an exchange, execution, OMS or TCA that stopped)."""
    waiting = [
        *(
            ["the fill lane (FillsDone from the exchange through execution and the OMS)"]
            if s.fills_done < bar_ts
            else []
        ),
        *(["TCA's watermark"] if s.tca_watermark < s.last_watermark else []),
    ]
    return episode_alert(
        LOCKSTEP_STALLED, "warning", f"risk holds bar {bar_ts} for {' and '.join(waiting) or 'nothing'}",
        f"lockstep:{bar_ts}", service="risk", now_ns=bar_ts, bar_ts=str(bar_ts),
    )  # fmt: skip
