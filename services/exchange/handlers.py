"""Pure decisions of the local paper exchange: accept, replace, cancel, close, match in event time.

No await, no logging, no wall clock (STYLE 5-6). The exchange's clock is the last bar it has
seen; an order accepted while that clock is T fills against the first bar of its symbol with
ts_event > T, so fills never depend on process timing (DESIGN: determinism). Ids derive from
sha256 of their causes.

Prices, quantities and costs come from the fill simulator (libs/fillsim): per bar, all orders of
a symbol share a participation cap of the bar's volume in time priority, so large orders fill
partially over several bars; each fill pays spread, slippage, square-root impact and fees.
Order classes: a bracket's take-profit and stop-loss legs and an OTO's leg are `held` until
their entry fills completely, then work as one-cancels-other; an OCO's two legs work at once.
Day orders (and their legs) still open after their session's XNYS close expire at that close;
held legs of an entry that ends unfilled are canceled with it.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal

from msgspec.structs import replace

from libs import costmodel, fillsim, sessions
from libs.contracts.base import derive_id, exit_legs
from libs.contracts.marketdata import BarClosed
from libs.contracts.ops import FillsDone
from libs.contracts.tca import CostModelUpdated
from libs.errors import InvariantViolation
from services.exchange.state import (
    ACTIVE_STATUSES,
    CANCELED,
    DUPLICATE_CLIENT_ORDER_ID,
    EXPIRED,
    FILLED,
    HELD,
    INSUFFICIENT_BUYING_POWER,
    INSUFFICIENT_QTY,
    INVALID_ORDER,
    MARKET_SESSION_RULE,
    NEW,
    OPPOSITE_SIDE_ORDER_OPEN,
    ORDER_NOT_CANCELABLE,
    ORDER_NOT_FOUND,
    ORDER_NOT_REPLACEABLE,
    PARTIALLY_FILLED,
    POSITION_NOT_FOUND,
    REJECTED,
    REPLACED,
    SHORT_NOT_ALLOWED,
    TRANSITIONS,
    VENUE_HOLDS,
    WORKING_STATUSES,
    ExchangeOrder,
    ExchangeState,
    Fill,
    Mark,
    OrderStatus,
    Position,
    PositionIntent,
    Rejection,
    ReplaceOrder,
    SubmitOrder,
)

ZERO = Decimal(0)
AVG_PRICE_QUANTUM = Decimal("1E-10")
CLS_CUTOFF_NS = 10 * sessions.MINUTE_NS  # Alpaca takes cls orders until 15:50 ET (10 min before the close)


@dataclass(frozen=True, slots=True)
class Ctx:
    """Rules of the paper account and the fill simulator's cost model."""

    # Reg T: buying power = (equity - initial margin at 50%) * 2 = 2 * equity - gross exposure
    margin_multiplier: Decimal = Decimal(2)
    max_client_order_id_len: int = 128  # Alpaca's limit
    allow_shorting: bool = True
    model: fillsim.CostModel = field(default_factory=fillsim.CostModel)
    # closed orders whose whole family (entry and legs) last changed this long before the clock
    # leave memory at the next session's first bar; the store keeps them (KEEL_EXCHANGE_RETAIN_CLOSED_HOURS)
    retain_closed_ns: int = 24 * 3600 * 1_000_000_000


DEFAULT_CTX = Ctx()


def stable_uuid(*parts: object) -> str:
    """Return a UUID (version 8, RFC 9562 custom) from sha256 of the parts."""
    h = hashlib.sha256()
    for part in parts:
        h.update(str(part).encode())
        h.update(b"\x1f")
    raw = bytearray(h.digest()[:16])
    raw[6] = (raw[6] & 0x0F) | 0x80  # version 8
    raw[8] = (raw[8] & 0x3F) | 0x80  # RFC variant
    return str(uuid.UUID(bytes=bytes(raw)))


def order_id_for(account_id: str, client_order_id: str) -> str:
    """Return the order id of a client order id in an account."""
    return stable_uuid("order", account_id, client_order_id)


def execution_id_for(order_id: str, fill_number: int) -> str:
    """Return the id of an order's n-th fill (1-based)."""
    return stable_uuid("execution", order_id, fill_number)


def asset_id_for(symbol: str) -> str:
    """Return the asset id of a symbol."""
    return stable_uuid("asset", symbol)


def account_uuid(account_id: str) -> str:
    """Return the account's UUID (Alpaca's account `id`)."""
    return stable_uuid("account", account_id)


def auto_client_order_id(account_id: str, seq: int) -> str:
    """Return the client order id Alpaca would generate when none is given (deterministic here)."""
    return stable_uuid("client_order_id", account_id, seq)


# --- valuation -------------------------------------------------------------------------------


def mark_price(state: ExchangeState, symbol: str) -> Decimal | None:
    """Return the last bar close of a symbol, None before its first bar."""
    mark = state.marks.get(symbol)
    return mark.price if mark else None


def _position_price(state: ExchangeState, p: Position) -> Decimal:
    price = mark_price(state, p.symbol)
    return p.avg_entry_price if price is None else price


def long_market_value(state: ExchangeState) -> Decimal:
    """Return the market value of all long positions."""
    return sum((p.qty * _position_price(state, p) for p in state.positions.values() if p.qty > 0), ZERO)


def short_market_value(state: ExchangeState) -> Decimal:
    """Return the market value of all short positions (negative, as Alpaca reports it)."""
    return sum((p.qty * _position_price(state, p) for p in state.positions.values() if p.qty < 0), ZERO)


def equity(state: ExchangeState) -> Decimal:
    """Return cash + long market value + short market value."""
    return state.account.cash + long_market_value(state) + short_market_value(state)


def _opening_qty(position_qty: int, side: str, qty: int) -> int:
    # the part of an order that opens or grows exposure; the rest closes what is held
    if side == "buy":
        return qty if position_qty >= 0 else max(qty + position_qty, 0)
    return qty if position_qty <= 0 else max(qty - position_qty, 0)


def signed_qty(side: str, qty: int) -> int:
    """Return a fill's effect on a position: + for a buy, - for a sell."""
    return qty if side == "buy" else -qty


def pending_opening_notional(state: ExchangeState) -> Decimal:
    """Return the notional that open orders would add to gross exposure, in time priority."""
    total = ZERO
    for symbol, ids in state.working.items():
        projected = state.positions[symbol].qty if symbol in state.positions else 0
        for oid in ids:
            o = state.orders[oid]
            if o.parent_id is not None:
                continue  # exit legs close what their entry opens; only one of them can fill
            leaves = o.leaves_qty
            price = _estimate_price(state, symbol, o.type, o.limit_price, o.stop_price)
            if price is not None:
                total += _opening_qty(projected, o.side, leaves) * price
            projected += signed_qty(o.side, leaves)
    return total


def buying_power(state: ExchangeState, ctx: Ctx = DEFAULT_CTX) -> Decimal:
    """Return max(multiplier * equity - gross market value - open orders' opening notional, 0)."""
    gross = long_market_value(state) - short_market_value(state)
    value = ctx.margin_multiplier * equity(state) - gross - pending_opening_notional(state)
    return max(value, ZERO)


# --- commands --------------------------------------------------------------------------------


def _reject(reason: str, message: str, **details: str) -> Rejection:
    return Rejection(reason=reason, message=message, details=details)


def _check_sides(state: ExchangeState, request: SubmitOrder) -> Rejection | None:
    """Alpaca's one-side-at-a-time rules: a position is never reversed by one order.

    An order against a position may close at most the shares open closing orders do not already
    hold ("insufficient qty available for order"), so it never carries the position through
    flat; on a flat symbol, an order may not open one side while an order for the other is open.
    """
    position = state.positions.get(request.symbol)
    if position is not None and position.qty != 0:
        if (request.side == "sell") != (position.qty > 0):
            return None  # adds to the position: buying power decides
        held = held_for_orders(state, position)
        available = abs(position.qty) - held
        if request.qty <= available:
            return None
        return _reject(
            INSUFFICIENT_QTY,
            f"insufficient qty available for order (requested: {request.qty}, available: {available})",
            available=str(available),
            existing_qty=str(abs(position.qty)),
            held_for_orders=str(held),
            symbol=request.symbol,
        )
    if any(
        state.orders[oid].side != request.side and state.orders[oid].status in ACTIVE_STATUSES
        for oid in state.working.get(request.symbol, ())
    ):
        if request.side == "sell":
            return _reject(OPPOSITE_SIDE_ORDER_OPEN, "cannot open a short sell while a long buy order is open")
        return _reject(OPPOSITE_SIDE_ORDER_OPEN, "cannot open a long buy while a short sell order is open")
    return None


def _estimate_price(
    state: ExchangeState, symbol: str, kind: str, limit: Decimal | None, stop: Decimal | None
) -> Decimal | None:
    # what an order would cost per share, for buying power: its limit, else its stop, else the mark
    if kind in ("limit", "stop_limit") and limit is not None:
        return limit
    if kind == "stop" and stop is not None:
        return stop
    return mark_price(state, symbol)


def _check_session_rules(state: ExchangeState, request: SubmitOrder) -> Rejection | None:
    clock = state.clock
    if request.time_in_force == "opg" and clock > 0 and sessions.is_open(clock):
        # Alpaca takes opg orders only before the opening auction (until 09:28 ET)
        return _reject(MARKET_SESSION_RULE, "opg orders must be submitted before the market opens")
    near_close = clock > 0 and sessions.is_open(clock) and sessions.next_close(clock) - clock < CLS_CUTOFF_NS
    if request.time_in_force == "cls" and near_close:
        return _reject(MARKET_SESSION_RULE, "cls orders must be submitted before 15:50 ET")
    if request.order_class in ("bracket", "oto", "oco") and request.time_in_force not in ("day", "gtc"):
        return _reject(INVALID_ORDER, "time_in_force must be day or gtc for complex orders")
    return None


def _check_exits(state: ExchangeState, request: SubmitOrder) -> Rejection | None:
    # Alpaca's bracket rules: the take-profit above the base price and the stop-loss below it
    # when the exits sell a long (mirrored when they buy back a short), each by at least a cent
    if request.order_class == "simple":
        return None
    oco = request.order_class == "oco"  # an OCO is itself the exit: its base is the market
    base = request.limit_price if request.type == "limit" and not oco else mark_price(state, request.symbol)
    if base is None:
        return None  # no price yet: nothing to check against (first bar prices the entry)
    sign = 1 if (request.side == "sell") == oco else -1  # +1: exits sell a long
    cent = Decimal("0.01")
    rules = (
        ("take_profit.limit_price", request.take_profit_limit_price, sign),
        ("stop_loss.stop_price", request.stop_loss_stop_price, -sign),
    )
    for name, price, above in rules:
        if price is not None and (price - base) * above < cent:
            bound = ">= base_price + 0.01" if above > 0 else "<= base_price - 0.01"
            return _reject(INVALID_ORDER, f"{name} must be {bound} (base {base})")
    return None


def submit(
    state: ExchangeState, request: SubmitOrder, ctx: Ctx = DEFAULT_CTX
) -> tuple[ExchangeState, ExchangeOrder | Rejection]:
    """Accept an order (status new, exit legs held) or refuse it with Alpaca's reason."""
    account_id = state.account.account_id
    cid = request.client_order_id or auto_client_order_id(account_id, state.next_seq)
    if len(cid) > ctx.max_client_order_id_len:
        return state, _reject(
            INVALID_ORDER, f"client_order_id must be no more than {ctx.max_client_order_id_len} characters"
        )
    if cid in state.by_client_id:
        return state, _reject(
            DUPLICATE_CLIENT_ORDER_ID,
            "client_order_id must be unique",
            client_order_id=cid,
            order_id=state.by_client_id[cid],
        )
    refused = _check_session_rules(state, request) or _check_exits(state, request)
    if refused is not None:
        return state, refused
    held = state.positions[request.symbol].qty if request.symbol in state.positions else 0
    opening = _opening_qty(held, request.side, request.qty)
    if opening > 0 and request.side == "sell" and not ctx.allow_shorting:
        return state, _reject(SHORT_NOT_ALLOWED, "account is not allowed to short")
    refused = _check_sides(state, request)
    if refused is not None:
        return state, refused
    price = _estimate_price(state, request.symbol, request.type, request.limit_price, request.stop_price)
    # A market order for a symbol without any bar yet has no price to check against; it is
    # accepted and priced at its first bar (documented in the README).
    if opening > 0 and price is not None:
        cost = opening * price
        available = buying_power(state, ctx)
        if cost > available:
            return state, _reject(
                INSUFFICIENT_BUYING_POWER,
                "insufficient buying power",
                buying_power=str(available),
                cost_basis=str(cost),
            )

    ts = state.clock
    expires = _expiry(request.time_in_force, ts) if ts > 0 else None
    hwm = mark_price(state, request.symbol) if request.type == "trailing_stop" else None
    stop = request.stop_price
    if request.type == "trailing_stop" and hwm is not None:
        stop = fillsim.trailing_stop_price(request.side, hwm, request.trail_price, request.trail_percent)
    main = ExchangeOrder(
        id=order_id_for(account_id, cid),
        client_order_id=cid,
        seq=state.next_seq,
        symbol=request.symbol,
        side=request.side,
        type=request.type,
        time_in_force=request.time_in_force,
        qty=request.qty,
        limit_price=request.limit_price,
        stop_price=stop,
        trail_price=request.trail_price,
        trail_percent=request.trail_percent,
        hwm=hwm,
        order_class=request.order_class,
        status=NEW,
        position_intent=_intent(held, request.side),
        created_at=ts,
        submitted_at=ts,
        updated_at=ts,
        expires_at=expires,
        eligible_after=ts,
    )
    legs = _exit_legs(state, request, main, held)
    if legs:
        main = replace(main, legs=tuple(leg.id for leg in legs))
    accepted = [main, *legs]
    orders = {**state.orders, **{o.id: o for o in accepted}}
    by_client_id = {**state.by_client_id, **{o.client_order_id: o.id for o in accepted}}
    working = {**state.working, main.symbol: (*state.working.get(main.symbol, ()), *(o.id for o in accepted))}
    new_state = replace(
        state, orders=orders, by_client_id=by_client_id, working=working, next_seq=state.next_seq + len(accepted)
    )
    return new_state, main


def _exit_legs(state: ExchangeState, request: SubmitOrder, main: ExchangeOrder, held: int) -> list[ExchangeOrder]:
    # a bracket's/oto's legs wait (held) for their entry; an oco's stop-loss works beside it at
    # once, its status `held` as Alpaca shows it (the take-profit holds the shares)
    oco = request.order_class == "oco"
    position_after = held + (0 if request.order_class == "oco" else signed_qty(main.side, main.qty))
    legs = []
    for n, leg in enumerate(exit_legs(request), start=1):
        cid = stable_uuid("leg", main.client_order_id, leg.role)
        legs.append(
            replace(
                main,
                id=order_id_for(state.account.account_id, cid),
                client_order_id=cid,
                seq=main.seq + n,
                side=leg.side,
                type=leg.order_type,
                limit_price=leg.limit_price,
                stop_price=leg.stop_price,
                trail_price=None,
                trail_percent=None,
                hwm=None,
                status=HELD,
                armed=oco,
                parent_id=main.id,
                leg_role=leg.role,
                position_intent=_intent(position_after, leg.side),
            )
        )
    return legs


def replace_order(
    state: ExchangeState, order_id: str, request: ReplaceOrder, ctx: Ctx = DEFAULT_CTX
) -> tuple[ExchangeState, tuple[ExchangeOrder, ExchangeOrder] | Rejection]:
    """Replace an open simple order: the old one ends `replaced`, a new one `replaces` it."""
    old = state.orders.get(order_id)
    if old is None:
        return state, _reject(ORDER_NOT_FOUND, "order not found")
    if old.status not in WORKING_STATUSES:
        return state, _reject(ORDER_NOT_REPLACEABLE, f'order is already in "{old.status}" state', order_id=order_id)
    if old.order_class != "simple":
        return state, _reject(
            ORDER_NOT_REPLACEABLE, "the local exchange replaces simple orders only", order_id=order_id
        )
    if request.limit_price is not None and old.type not in ("limit", "stop_limit"):
        return state, _reject(INVALID_ORDER, f"limit_price is not valid for {old.type} orders")
    if request.stop_price is not None and old.type not in ("stop", "stop_limit"):
        return state, _reject(INVALID_ORDER, f"stop_price is not valid for {old.type} orders")
    if request.trail is not None and old.type != "trailing_stop":
        return state, _reject(INVALID_ORDER, f"trail is not valid for {old.type} orders")
    account_id = state.account.account_id
    cid = request.client_order_id or auto_client_order_id(account_id, state.next_seq)
    if cid in state.by_client_id:
        return state, _reject(DUPLICATE_CLIENT_ORDER_ID, "client_order_id must be unique", client_order_id=cid)
    ts = max(state.clock, old.updated_at)
    qty = request.qty if request.qty is not None else old.leaves_qty
    trail_price, trail_percent = old.trail_price, old.trail_percent
    if request.trail is not None:
        trail_price, trail_percent = (request.trail, None) if old.trail_price is not None else (None, request.trail)
    stop = request.stop_price if request.stop_price is not None else old.stop_price
    if old.type == "trailing_stop" and old.hwm is not None:
        stop = fillsim.trailing_stop_price(old.side, old.hwm, trail_price, trail_percent)
    tif = request.time_in_force or old.time_in_force
    new = replace(
        old,
        id=order_id_for(account_id, cid),
        client_order_id=cid,
        seq=state.next_seq,
        qty=qty,
        time_in_force=tif,
        limit_price=request.limit_price if request.limit_price is not None else old.limit_price,
        stop_price=stop,
        trail_price=trail_price,
        trail_percent=trail_percent,
        status=NEW,
        filled_qty=0,
        filled_avg_price=None,
        fills=(),
        replaces=old.id,
        created_at=ts,
        submitted_at=ts,
        updated_at=ts,
        expires_at=old.expires_at if tif == old.time_in_force else _expiry(tif, ts),
        eligible_after=max(old.eligible_after, state.clock),
    )
    closed = replace(_transition(old, REPLACED, ts), replaced_by=new.id, replaced_at=ts)
    after = _store_orders(state, [closed])
    # the same side rules as a new order, once the old one no longer holds its shares
    request_like = SubmitOrder(symbol=new.symbol, qty=qty, side=new.side, type=new.type, time_in_force=tif)
    refused = _check_sides(after, request_like)
    if refused is not None:
        return state, refused
    after = replace(
        after,
        orders={**after.orders, new.id: new},
        by_client_id={**after.by_client_id, cid: new.id},
        working={**after.working, new.symbol: (*after.working.get(new.symbol, ()), new.id)},
        next_seq=state.next_seq + 1,
    )
    held = after.positions[new.symbol].qty if new.symbol in after.positions else 0
    opening = _opening_qty(held, new.side, new.qty)
    price = _estimate_price(after, new.symbol, new.type, new.limit_price, new.stop_price)
    if opening > 0 and price is not None:
        # the replacement must fit what is left once the old order no longer counts
        bp = buying_power(after, ctx) + opening * price
        if opening * price > bp:
            return state, _reject(INSUFFICIENT_BUYING_POWER, "insufficient buying power", buying_power=str(bp))
    return after, (closed, new)


def cancel(
    state: ExchangeState, order_id: str, ctx: Ctx = DEFAULT_CTX
) -> tuple[ExchangeState, ExchangeOrder | Rejection]:
    """Cancel one open order (and its held legs), or say why not."""
    order = state.orders.get(order_id)
    if order is None:
        return state, _reject(ORDER_NOT_FOUND, "order not found")
    if not order.is_open:
        return state, _reject(ORDER_NOT_CANCELABLE, f'order is already in "{order.status}" state', order_id=order_id)
    ts = max(state.clock, order.updated_at)
    done = [_transition(order, CANCELED, ts)]
    done += [_transition(state.orders[i], CANCELED, ts) for i in order.legs if state.orders[i].is_open]
    return _store_orders(state, done), done[0]


def set_venue_status(
    state: ExchangeState, order_id: str, status: str, ctx: Ctx = DEFAULT_CTX
) -> tuple[ExchangeState, list[ExchangeOrder] | Rejection]:
    """Put an accepted order in a status a live venue sets on its own (admin API, tests and drills).

    `status` is a venue hold (VENUE_HOLDS: no fills while in it), `rejected` (the venue refused it
    after accepting it; its held legs are canceled with it), or `new` to release a hold (back to
    new, or partially_filled when it has fills). Return the orders changed.
    """
    order = state.orders.get(order_id)
    if order is None:
        return state, _reject(ORDER_NOT_FOUND, "order not found")
    if status == NEW:
        if order.status not in VENUE_HOLDS:
            return state, _reject(INVALID_ORDER, f'expected an order in a venue hold to release, was "{order.status}"')
        status = PARTIALLY_FILLED if order.filled_qty else NEW
    elif status not in VENUE_HOLDS | {REJECTED}:
        return state, _reject(
            INVALID_ORDER, f"expected status in {sorted(VENUE_HOLDS | {REJECTED, NEW})}, was {status!r}"
        )
    if status not in TRANSITIONS[order.status]:
        return state, _reject(INVALID_ORDER, f'cannot move an order in "{order.status}" to "{status}"')
    ts = max(state.clock, order.updated_at)
    done = [_transition(order, status, ts)]  # type: ignore[arg-type]
    if status == REJECTED:
        done += [_transition(state.orders[i], CANCELED, ts) for i in order.legs if state.orders[i].status == HELD]
    return _store_orders(state, done), done


def cancel_all(state: ExchangeState, ctx: Ctx = DEFAULT_CTX) -> tuple[ExchangeState, list[ExchangeOrder]]:
    """Cancel every open order, oldest first; return the canceled orders."""
    ids = sorted((oid for ids in state.working.values() for oid in ids), key=lambda i: state.orders[i].seq)
    done = [_transition(state.orders[oid], CANCELED, max(state.clock, state.orders[oid].updated_at)) for oid in ids]
    return (_store_orders(state, done) if done else state), done


def close_position(
    state: ExchangeState,
    symbol: str,
    ctx: Ctx = DEFAULT_CTX,
    *,
    qty: int | None = None,
    percentage: Decimal | None = None,
) -> tuple[ExchangeState, ExchangeOrder | Rejection]:
    """Send a market order that closes all, `qty` or `percentage` of a position."""
    position = state.positions.get(symbol)
    if position is None:
        return state, _reject(POSITION_NOT_FOUND, "position does not exist")
    available = abs(position.qty) - held_for_orders(state, position)
    wanted = abs(position.qty)
    if qty is not None:
        wanted = qty
    elif percentage is not None:
        wanted = int(abs(position.qty) * percentage / 100)
    if wanted <= 0 or wanted > available:
        return state, _reject(
            INSUFFICIENT_QTY, f"insufficient qty available for order (requested: {wanted}, available: {available})"
        )
    side = "sell" if position.qty > 0 else "buy"
    request = SubmitOrder(symbol=symbol, qty=wanted, side=side, type="market", time_in_force="day")  # type: ignore[arg-type]
    return submit(state, request, ctx)


def close_all(
    state: ExchangeState, ctx: Ctx = DEFAULT_CTX, *, cancel_orders: bool
) -> tuple[ExchangeState, list[ExchangeOrder], list[tuple[str, ExchangeOrder | Rejection]]]:
    """Cancel every open order if asked, then close every position by symbol.

    Return the new state, the canceled orders and, per symbol, the closing order or the refusal.
    """
    state, canceled = cancel_all(state, ctx) if cancel_orders else (state, [])
    results: list[tuple[str, ExchangeOrder | Rejection]] = []
    for symbol in sorted(state.positions):
        state, result = close_position(state, symbol, ctx)
        results.append((symbol, result))
    return state, canceled, results


def held_for_orders(state: ExchangeState, position: Position) -> int:
    """Return the shares of a position that open closing orders already hold (working, not legs)."""
    closing_side = "sell" if position.qty > 0 else "buy"
    held = sum(
        state.orders[oid].leaves_qty
        for oid in state.working.get(position.symbol, ())
        if state.orders[oid].side == closing_side and state.orders[oid].status in ACTIVE_STATUSES
    )
    return min(held, abs(position.qty))


E_ABS_Z = Decimal("0.7978845608")  # E|z| = sqrt(2 / pi) of a standard normal: the simulator draws |z| per fill


def simulator_model(base: fillsim.CostModel, calibration: CostModelUpdated | None, bar: BarClosed) -> fillsim.CostModel:
    """Return the fill simulator's parameters for a bar: the configured ones, or from the session
    the calibration holds for on, the symbol's calibrated spread (for bars without a quoted one),
    slippage, volatility and impact coefficients (libs/costmodel; the simulator multiplies its
    volatility term by |z|, so its coefficient is the calibrated one over E|z|)."""
    if calibration is None or bar.session < calibration.effective_session:
        return base
    cost = costmodel.cost_of(calibration, bar.symbol)
    return replace(
        base,
        proxy_spread_bps=cost.spread_bps,
        fixed_slippage_bps=max(cost.slippage_bps, ZERO),
        vol_slippage_coef=cost.vol_coef / E_ABS_Z,
        impact_coef=cost.impact_coef,
    )


def on_cost_model(state: ExchangeState, ev: CostModelUpdated) -> ExchangeState:
    """Adopt TCA's newer calibration for the fill simulator (an older one changes nothing)."""
    return replace(state, calibration=ev) if costmodel.supersedes(ev, state.calibration) else state


def on_bar(state: ExchangeState, bar: BarClosed, ctx: Ctx = DEFAULT_CTX) -> tuple[ExchangeState, list[ExchangeOrder]]:
    """Advance the event clock to a closed bar, match its symbol's orders, expire day orders."""
    ts = bar.ts_event
    account = state.account
    if ts > state.clock and bar.session != account.session:
        # first bar of a new session: equity at the old marks is the previous day's close
        account = replace(account, session=bar.session, last_equity=equity(state))
    clock = max(state.clock, ts)
    positions = state.positions
    cash = account.cash
    changed: dict[str, ExchangeOrder] = {}

    def current(oid: str) -> ExchangeOrder:
        return changed.get(oid) or state.orders[oid]

    model = simulator_model(ctx.model, state.calibration, bar)
    room = fillsim.capacity(bar, model)
    for oid in state.working.get(bar.symbol, ()):
        order = current(oid)
        if not order.works or order.eligible_after >= ts:
            continue  # held, finished earlier in this bar, or accepted at/after it: a later bar
        if order.time_in_force in ("day", "gtc") and order.expires_at is None:
            # accepted before any bar: its session is the one of its first eligible bar
            order = replace(order, expires_at=_expiry(order.time_in_force, ts - 1))
            changed[oid] = order
        if order.expires_at is not None and ts > order.expires_at:
            continue  # its session closed before this bar; expired below
        working = fillsim.Working(
            order_id=order.id,
            side=order.side,
            type=order.type,
            time_in_force=order.time_in_force,
            leaves_qty=order.leaves_qty,
            limit_price=order.limit_price,
            stop_price=order.stop_price,
            trail_price=order.trail_price,
            trail_percent=order.trail_percent,
            hwm=order.hwm,
            triggered=order.triggered,
        )
        m = fillsim.match(working, bar, room, model)
        if (m.hwm, m.stop_price, m.triggered) != (order.hwm, order.stop_price, order.triggered):
            order = replace(order, hwm=m.hwm, stop_price=m.stop_price, triggered=m.triggered)
            changed[oid] = order
        if m.execution is not None:
            ex = m.execution
            room -= ex.qty
            order = _fill(order, ex, ts)
            changed[oid] = order
            positions, cash = _apply_fill(
                positions, cash, bar.symbol, signed_qty(order.side, ex.qty), ex.price, bar.session
            )
            cash -= ex.fee
            for other in _on_leg_fill(order, current, ts):
                changed[other.id] = other
        if m.cancel_rest and order.is_open:
            changed[oid] = _transition(order, CANCELED, ts)
            for leg in _held_legs(order, current):
                changed[leg.id] = _transition(leg, CANCELED, ts)

    for ids in state.working.values():
        for oid in ids:
            order = current(oid)
            if order.is_open and order.expires_at is not None and order.expires_at < clock:
                end = order.expires_at
                # a dormant leg never worked: it ends canceled with its entry's day
                dormant = order.status == HELD and not order.armed
                changed[oid] = _transition(order, CANCELED if dormant else EXPIRED, end)

    marks = state.marks
    old = marks.get(bar.symbol)
    if old is None or ts >= old.ts:
        lastday = old.lastday_price if old else None
        if old is not None and old.session != bar.session:
            lastday = old.price
        marks = {
            **marks,
            bar.symbol: Mark(symbol=bar.symbol, price=bar.close, ts=ts, session=bar.session, lastday_price=lastday),
        }
    if cash != account.cash:
        account = replace(account, cash=cash)
    new_state = replace(state, account=account, clock=clock, positions=positions, marks=marks)
    done = sorted(changed.values(), key=lambda o: o.seq)
    new_state = _store_orders(new_state, done) if done else new_state
    if account.session != state.account.session:
        new_state = evict_closed(new_state, clock - ctx.retain_closed_ns)
    return new_state, done


def _family_key(order: ExchangeOrder) -> str:
    # an entry and its exit legs (an oco's stop-loss: its take-profit) live and leave together
    return order.parent_id or order.id


def evict_closed(state: ExchangeState, before_ns: int) -> ExchangeState:
    """Leave to the store the closed orders whose family all closed and last changed before
    `before_ns` (event time): memory then holds open orders and recent days only, however long
    the exchange runs. What a request names that memory lacks, the edges read from the store."""
    latest: dict[str, int] = {}
    for o in state.orders.values():
        key = _family_key(o)
        # an open member pins its family, whatever its times
        stamp = 2**63 - 1 if o.is_open else o.updated_at
        latest[key] = max(latest.get(key, stamp), stamp)
    gone = {key for key, ts in latest.items() if ts < before_ns}
    if not gone:
        return state
    orders = {oid: o for oid, o in state.orders.items() if _family_key(o) not in gone}
    by_client_id = {o.client_order_id: o.id for o in orders.values()}
    return replace(state, orders=orders, by_client_id=by_client_id, complete=False)


def recall(state: ExchangeState, family: Sequence[ExchangeOrder]) -> ExchangeState:
    """Return state with a stored, closed family back in memory, so a request that names it is
    answered as when it never left (a duplicate client id, a cancel of a filled order)."""
    missing = [o for o in family if o.id not in state.orders]
    if not missing:
        return state
    still_open = [o.id for o in missing if o.is_open]
    if still_open:
        raise InvariantViolation(f"expected only closed orders outside memory, was open {still_open}")
    return replace(
        state,
        orders={**state.orders, **{o.id: o for o in missing}},
        by_client_id={**state.by_client_id, **{o.client_order_id: o.id for o in missing}},
    )


def _held_legs(order: ExchangeOrder, current: Callable[[str], ExchangeOrder]) -> list[ExchangeOrder]:
    # the dormant legs of an entry (an armed stop-loss is held too, but works)
    return [current(i) for i in order.legs if current(i).status == HELD and not current(i).armed]


def _on_leg_fill(order: ExchangeOrder, current: Callable[[str], ExchangeOrder], ts: int) -> list[ExchangeOrder]:
    """Activate an entry's legs once it is filled; cancel the other side of a filled exit."""
    out: list[ExchangeOrder] = []
    if order.legs and order.order_class in ("bracket", "oto") and order.status == FILLED:
        for leg in _held_legs(order, current):
            # the legs work from the next bar on (the entry filled on this one): the take-profit
            # as new, the stop-loss armed but still `held` (Alpaca gives the shares to one of them)
            if leg.leg_role == "stop_loss":
                out.append(replace(leg, armed=True, eligible_after=ts, updated_at=ts))
            else:
                out.append(replace(_transition(leg, NEW, ts), eligible_after=ts))
        return out
    # one-cancels-other: the first fill of an exit cancels the exits beside it
    if order.order_class == "oco" and order.parent_id is None:
        siblings = list(order.legs)  # the OCO's own take-profit filled: cancel its stop-loss
    elif order.parent_id is not None and current(order.parent_id).order_class in ("bracket", "oco"):
        parent = current(order.parent_id)
        siblings = [i for i in parent.legs if i != order.id]
        if parent.order_class == "oco":
            siblings.append(parent.id)
    else:
        return out
    for sid in siblings:
        sibling = current(sid)
        if sibling.works:
            out.append(_transition(sibling, CANCELED, ts))
    return out


# --- matching --------------------------------------------------------------------------------


def _fill(order: ExchangeOrder, ex: fillsim.Execution, ts: int) -> ExchangeOrder:
    filled = order.filled_qty + ex.qty
    prior = (order.filled_avg_price or ZERO) * order.filled_qty
    avg = ((prior + ex.price * ex.qty) / filled).quantize(AVG_PRICE_QUANTUM)
    number = len(order.fills) + 1
    fill = Fill(
        execution_id=execution_id_for(order.id, number),
        qty=ex.qty,
        price=ex.price,
        ts=ts,
        arrival_price=ex.arrival_price,
        fee=ex.fee,
        liquidity=ex.liquidity,
        spread_bps=ex.spread_bps,
        spread_is_proxy=ex.spread_is_proxy,
        slippage_bps=ex.slippage_bps,
    )
    status: OrderStatus = FILLED if filled == order.qty else PARTIALLY_FILLED
    moved = _transition(order, status, ts)
    return replace(
        moved,
        filled_qty=filled,
        filled_avg_price=avg,
        filled_at=ts if status == FILLED else None,
        fills=(*order.fills, fill),
    )


def _apply_fill(
    positions: dict[str, Position],
    cash: Decimal,
    symbol: str,
    signed_qty: int,
    price: Decimal,
    session: str,
) -> tuple[dict[str, Position], Decimal]:
    held = positions.get(symbol)
    q = held.qty if held else 0
    avg = held.avg_entry_price if held else ZERO
    new_q = q + signed_qty
    cash = cash - signed_qty * price
    rest = {k: v for k, v in positions.items() if k != symbol}
    if new_q == 0:
        return rest, cash
    if q == 0 or (q > 0) == (signed_qty > 0):
        # opening or adding: volume-weighted average entry
        new_avg = ((abs(q) * avg + abs(signed_qty) * price) / abs(new_q)).quantize(AVG_PRICE_QUANTUM)
        opened = held.opened_session if held else session
    elif abs(signed_qty) < abs(q):
        new_avg, opened = avg, held.opened_session if held else session  # reducing
    else:
        new_avg, opened = price, session  # flipped through flat: the remainder opens at price
    rest[symbol] = Position(symbol=symbol, qty=new_q, avg_entry_price=new_avg, opened_session=opened)
    return rest, cash


# --- helpers ---------------------------------------------------------------------------------


def _intent(position_qty: int, side: str) -> PositionIntent:
    if side == "buy":
        return "buy_to_close" if position_qty < 0 else "buy_to_open"
    return "sell_to_close" if position_qty > 0 else "sell_to_open"


GTC_DAYS = 90  # Alpaca cancels a gtc order 90 days after it was placed
_DAY_NS = 86_400 * 1_000_000_000


def _expiry(tif: str, ts: int) -> int | None:
    # a day order ends at its session's close; a gtc order at the close 90 days on
    if tif == "day":
        return _day_close_after(ts)
    if tif == "gtc":
        return _day_close_after(ts + GTC_DAYS * _DAY_NS)
    return None


def _day_close_after(ts: int) -> int:
    # the close of the session trading at ts, or of the next session when ts is after a close
    return sessions.next_close(ts)


def _transition(order: ExchangeOrder, status: OrderStatus, ts: int) -> ExchangeOrder:
    if status not in TRANSITIONS[order.status]:
        raise InvariantViolation(
            f"expected a transition allowed from {order.status}, was {order.status} -> {status} (order {order.id})"
        )
    stamps: dict[str, int] = {}
    if status == CANCELED:
        stamps["canceled_at"] = ts
    elif status == EXPIRED:
        stamps["expired_at"] = ts
    return replace(order, status=status, updated_at=ts, **stamps)


def _store_orders(state: ExchangeState, changed: list[ExchangeOrder]) -> ExchangeState:
    orders = {**state.orders}
    working = {**state.working}
    closed: set[str] = set()
    for o in changed:
        orders[o.id] = o
        if not o.is_open:
            closed.add(o.id)
    for symbol in {o.symbol for o in changed if o.id in closed}:
        ids = tuple(i for i in working.get(symbol, ()) if i not in closed)
        if ids:
            working[symbol] = ids
        else:
            working.pop(symbol, None)
    return replace(state, orders=orders, working=working)


__all__ = [
    "DEFAULT_CTX",
    "Ctx",
    "account_uuid",
    "asset_id_for",
    "buying_power",
    "cancel",
    "cancel_all",
    "close_all",
    "close_position",
    "equity",
    "evict_closed",
    "execution_id_for",
    "held_for_orders",
    "long_market_value",
    "mark_price",
    "on_bar",
    "on_cost_model",
    "simulator_model",
    "order_id_for",
    "recall",
    "replace_order",
    "short_market_value",
    "signed_qty",
    "stable_uuid",
    "submit",
]


def touched_at_start(state: ExchangeState) -> dict[str, None]:
    """What the next FillsDone names after a restart: every open order and every order changed at
    the last bar's time or later (the exchange's clock is event time, so whatever changed since
    the last announcement did then). A superset is safe: reading back an unchanged order reports
    nothing."""
    open_ids = {i for ids in state.working.values() for i in ids}
    named = [o for o in state.orders.values() if o.id in open_ids or o.updated_at >= state.clock]
    return dict.fromkeys(o.client_order_id for o in sorted(named, key=lambda o: (o.updated_at, o.seq)))


def fills_done(bar_ts: int, orders: list[str]) -> FillsDone:
    """The exchange's announcement that matching is done for bars up to bar_ts (event time only)."""
    return FillsDone(
        event_id=derive_id("ops.fills_done.v1", "exchange", bar_ts, *orders),
        correlation_id=derive_id("bar", bar_ts),
        causation_id=derive_id("bar", bar_ts),
        ts_event=bar_ts,
        ts_init=bar_ts,  # the exchange lives in event time: its clock is the last bar it has seen
        source="exchange",
        bar_ts=bar_ts,
        orders=tuple(orders),
    )
