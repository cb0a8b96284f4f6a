"""Pure decisions of the local paper exchange: accept, cancel, match against bars in event time.

No await, no logging, no wall clock (STYLE 5-6). The exchange's clock is the last bar it has
seen; an order accepted while that clock is T fills against the first bar of its symbol with
ts_event > T, so fills never depend on process timing (DESIGN: determinism). Ids derive from
sha256 of their causes.

Fill model (this issue; volume participation and partial fills come with fill realism):
- market: the whole order at the bar open moved half the bar's spread against the taker;
- limit: when the bar trades through the limit (buy: low <= limit), at the better of the
  limit and that market price;
- ioc/fok that cannot fill on their first eligible bar are canceled; day orders still open
  after their session's XNYS close expire at that close; gtc works until canceled.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal

from msgspec.structs import replace

from libs import sessions
from libs.contracts.marketdata import BarClosed
from libs.errors import InvariantViolation
from services.exchange.state import (
    CANCELED,
    DUPLICATE_CLIENT_ORDER_ID,
    EXPIRED,
    FILLED,
    INSUFFICIENT_BUYING_POWER,
    INVALID_ORDER,
    NEW,
    ORDER_NOT_CANCELABLE,
    ORDER_NOT_FOUND,
    TRANSITIONS,
    ExchangeOrder,
    ExchangeState,
    Fill,
    Mark,
    OrderStatus,
    Position,
    PositionIntent,
    Rejection,
    SubmitOrder,
)

ZERO = Decimal(0)
CENT = Decimal("0.01")
# Reg NMS Rule 612: sub-penny increments only below $1.00
SUB_DOLLAR_TICK = Decimal("0.0001")
HALF_SPREAD_DIVISOR = Decimal(20000)  # bps -> fraction, halved
AVG_PRICE_QUANTUM = Decimal("1E-10")


@dataclass(frozen=True, slots=True)
class Ctx:
    """Rules of the paper account."""

    # Reg T: buying power = (equity - initial margin at 50%) * 2 = 2 * equity - gross exposure
    margin_multiplier: Decimal = Decimal(2)
    max_client_order_id_len: int = 128  # Alpaca's limit


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


def _signed(side: str, qty: int) -> int:
    return qty if side == "buy" else -qty


def pending_opening_notional(state: ExchangeState) -> Decimal:
    """Return the notional that open orders would add to gross exposure, in time priority."""
    total = ZERO
    for symbol, ids in state.working.items():
        projected = state.positions[symbol].qty if symbol in state.positions else 0
        for oid in ids:
            o = state.orders[oid]
            leaves = o.leaves_qty
            price = o.limit_price if o.limit_price is not None else mark_price(state, symbol)
            if price is not None:
                total += _opening_qty(projected, o.side, leaves) * price
            projected += _signed(o.side, leaves)
    return total


def buying_power(state: ExchangeState, ctx: Ctx = DEFAULT_CTX) -> Decimal:
    """Return max(multiplier * equity - gross market value - open orders' opening notional, 0)."""
    gross = long_market_value(state) - short_market_value(state)
    value = ctx.margin_multiplier * equity(state) - gross - pending_opening_notional(state)
    return max(value, ZERO)


# --- commands --------------------------------------------------------------------------------


def submit(
    state: ExchangeState, request: SubmitOrder, ctx: Ctx = DEFAULT_CTX
) -> tuple[ExchangeState, ExchangeOrder | Rejection]:
    """Accept an order (status new) or refuse it with a reason."""
    account_id = state.account.account_id
    cid = request.client_order_id or auto_client_order_id(account_id, state.next_seq)
    if len(cid) > ctx.max_client_order_id_len:
        return state, Rejection(
            reason=INVALID_ORDER,
            message=f"client_order_id must be no more than {ctx.max_client_order_id_len} characters",
        )
    if cid in state.by_client_id:
        return state, Rejection(
            reason=DUPLICATE_CLIENT_ORDER_ID,
            message="client_order_id must be unique",
            details={"client_order_id": cid, "order_id": state.by_client_id[cid]},
        )
    held = state.positions[request.symbol].qty if request.symbol in state.positions else 0
    opening = _opening_qty(held, request.side, request.qty)
    price = request.limit_price if request.type == "limit" else mark_price(state, request.symbol)
    # A market order for a symbol without any bar yet has no price to check against; it is
    # accepted and priced at its first bar (documented in the README).
    if opening > 0 and price is not None:
        cost = opening * price
        available = buying_power(state, ctx)
        if cost > available:
            return state, Rejection(
                reason=INSUFFICIENT_BUYING_POWER,
                message="insufficient buying power",
                details={"buying_power": str(available), "cost_basis": str(cost)},
            )
    ts = state.clock
    order_id = order_id_for(account_id, cid)
    order = ExchangeOrder(
        id=order_id,
        client_order_id=cid,
        seq=state.next_seq,
        symbol=request.symbol,
        side=request.side,
        type=request.type,
        time_in_force=request.time_in_force,
        qty=request.qty,
        limit_price=request.limit_price,
        status=NEW,
        position_intent=_intent(held, request.side),
        created_at=ts,
        submitted_at=ts,
        updated_at=ts,
        expires_at=_day_close_after(ts) if request.time_in_force == "day" and ts > 0 else None,
        eligible_after=ts,
    )
    new_state = replace(
        state,
        orders={**state.orders, order_id: order},
        by_client_id={**state.by_client_id, cid: order_id},
        working={**state.working, order.symbol: (*state.working.get(order.symbol, ()), order_id)},
        next_seq=state.next_seq + 1,
    )
    return new_state, order


def cancel(
    state: ExchangeState, order_id: str, ctx: Ctx = DEFAULT_CTX
) -> tuple[ExchangeState, ExchangeOrder | Rejection]:
    """Cancel one open order, or say why not."""
    order = state.orders.get(order_id)
    if order is None:
        return state, Rejection(reason=ORDER_NOT_FOUND, message="order not found")
    if not order.is_open:
        return state, Rejection(
            reason=ORDER_NOT_CANCELABLE,
            message=f'order is already in "{order.status}" state',
            details={"order_id": order_id},
        )
    done = _transition(order, CANCELED, max(state.clock, order.updated_at))
    return _store_orders(state, [done]), done


def cancel_all(state: ExchangeState, ctx: Ctx = DEFAULT_CTX) -> tuple[ExchangeState, list[ExchangeOrder]]:
    """Cancel every open order, oldest first; return the canceled orders."""
    ids = sorted((oid for ids in state.working.values() for oid in ids), key=lambda i: state.orders[i].seq)
    done = [_transition(state.orders[oid], CANCELED, max(state.clock, state.orders[oid].updated_at)) for oid in ids]
    return (_store_orders(state, done) if done else state), done


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

    for oid in state.working.get(bar.symbol, ()):
        order = state.orders[oid]
        if order.eligible_after >= ts:
            continue  # accepted at or after this bar: it fills on a later one
        if order.time_in_force == "day" and order.expires_at is None:
            # accepted before any bar: its session is the one of its first eligible bar
            order = replace(order, expires_at=_day_close_after(ts - 1))
            changed[oid] = order
        if order.expires_at is not None and ts > order.expires_at:
            continue  # its session closed before this bar; expired below
        price = fill_price(order, bar)
        if price is None:
            if order.time_in_force in ("ioc", "fok"):
                changed[oid] = _transition(order, CANCELED, ts)
            continue
        qty = order.leaves_qty  # whole order on one bar until the fill-realism issue
        order = _fill(order, qty, price, ts)
        changed[oid] = order
        positions, cash = _apply_fill(positions, cash, bar.symbol, _signed(order.side, qty), price, bar.session)

    for ids in state.working.values():
        for oid in ids:
            order = changed.get(oid, state.orders[oid])
            if order.is_open and order.expires_at is not None and order.expires_at < clock:
                changed[oid] = _transition(order, EXPIRED, order.expires_at)

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
    return (_store_orders(new_state, done) if done else new_state), done


# --- matching --------------------------------------------------------------------------------


def round_to_tick(price: Decimal) -> Decimal:
    """Round a price to its tick: $0.01 from $1.00 up, $0.0001 below."""
    tick = CENT if price >= 1 else SUB_DOLLAR_TICK
    return price.quantize(tick, rounding=ROUND_HALF_EVEN)


def taker_price(side: str, bar: BarClosed) -> Decimal:
    """Return the bar open moved half the bar's spread against a taker on `side`."""
    half = bar.spread_bps / HALF_SPREAD_DIVISOR
    factor = (1 + half) if side == "buy" else (1 - half)
    return round_to_tick(bar.open * factor)


def fill_price(order: ExchangeOrder, bar: BarClosed) -> Decimal | None:
    """Return the price an order fills at on a bar, None when the bar does not reach it."""
    market = taker_price(order.side, bar)
    if order.type == "market":
        return market
    limit = order.limit_price
    if limit is None:
        raise InvariantViolation(f"expected a limit price on limit order {order.id}, was None")
    if order.side == "buy":
        return min(limit, market) if bar.low <= limit else None
    return max(limit, market) if bar.high >= limit else None


def _fill(order: ExchangeOrder, qty: int, price: Decimal, ts: int) -> ExchangeOrder:
    filled = order.filled_qty + qty
    prior = (order.filled_avg_price or ZERO) * order.filled_qty
    avg = ((prior + price * qty) / filled).quantize(AVG_PRICE_QUANTUM)
    number = len(order.fills) + 1
    fill = Fill(execution_id=execution_id_for(order.id, number), qty=qty, price=price, ts=ts)
    status: OrderStatus = FILLED if filled == order.qty else "partially_filled"
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
    "equity",
    "execution_id_for",
    "fill_price",
    "long_market_value",
    "mark_price",
    "on_bar",
    "order_id_for",
    "round_to_tick",
    "short_market_value",
    "stable_uuid",
    "submit",
    "taker_price",
]
