"""How one working order meets one closed bar: triggers, limits, auctions and time in force.

Pure and deterministic (DESIGN: determinism). Callers (the local exchange, replay, research)
hold their own order book and call `match` for each working order of a symbol in time priority,
passing what is left of the bar's participation capacity. Inside a bar the path is unknown, so
the rules are conservative and documented:

- market: fills as a taker at the bar's path price after the order's latency.
- limit: a taker fill when marketable on arrival (capped at the limit); otherwise it rests and
  fills at its own price only when the bar trades THROUGH it (low < buy limit, high > sell
  limit) - touching is not enough, the queue ahead is unknown. ioc/fok limits never rest.
- stop: triggers when the bar reaches the stop (at the open when it gaps through), then fills as
  a taker from the trigger price. stop_limit triggers the same way and then behaves as a limit.
- trailing_stop: the stop trails the high-water mark (low-water for buys) by trail_price or
  trail_percent; each bar is first checked against the mark carried in, then the mark moves to
  the bar's extreme, so a bar can never trigger on its own new extreme.
- time in force: ioc fills what it can on its first eligible bar and cancels the rest; fok fills
  all of it there or nothing; opg fills only in the session's opening auction (the first bar's
  open) and cls only in the closing auction (the last bar's close), the rest is canceled.
"""

from __future__ import annotations

from datetime import date
from decimal import Decimal

import msgspec

from libs import sessions
from libs.contracts.base import to_tick
from libs.contracts.marketdata import BarClosed
from libs.fillsim.costs import (
    CostModel,
    Execution,
    auction_fill,
    order_rng,
    resting_fill,
    taker_fill,
)

HUNDRED = Decimal(100)


class Working(msgspec.Struct, frozen=True, kw_only=True):
    """The simulator's view of a working order."""

    order_id: str
    side: str  # buy | sell
    type: str  # market | limit | stop | stop_limit | trailing_stop
    time_in_force: str  # day | gtc | ioc | fok | opg | cls
    leaves_qty: int
    limit_price: Decimal | None = None
    stop_price: Decimal | None = None
    trail_price: Decimal | None = None
    trail_percent: Decimal | None = None
    hwm: Decimal | None = None  # trailing stops: best price seen since acceptance
    triggered: bool = False  # stop / stop_limit / trailing_stop once their stop was reached


class Match(msgspec.Struct, frozen=True, kw_only=True):
    """What a bar did to a working order."""

    execution: Execution | None = None
    triggered: bool = False
    hwm: Decimal | None = None
    stop_price: Decimal | None = None
    cancel_rest: bool = False  # what did not fill is canceled (ioc, fok, opg, cls)


def trailing_stop_price(side: str, hwm: Decimal, trail_price: Decimal | None, trail_percent: Decimal | None) -> Decimal:
    """Return a trailing stop's current stop price from its high-water mark."""
    if trail_price is not None:
        offset = trail_price
    elif trail_percent is not None:
        offset = hwm * trail_percent / HUNDRED
    else:
        raise ValueError("expected trail_price or trail_percent on a trailing stop, was neither")
    return to_tick(hwm - offset if side == "sell" else hwm + offset)


def stop_trigger(side: str, stop: Decimal, bar: BarClosed) -> Decimal | None:
    """Return the price at which a stop triggers on the bar, None when the bar does not reach it."""
    if side == "buy":
        if bar.open >= stop:
            return bar.open  # gapped through: the stop becomes a market order at the open
        return stop if bar.high >= stop else None
    if bar.open <= stop:
        return bar.open
    return stop if bar.low <= stop else None


def auction_of(bar: BarClosed) -> str | None:
    """Return "open" for a session's first bar, "close" for its last, else None."""
    open_ns, close_ns = sessions.session_open_close(date.fromisoformat(bar.session))
    if bar.bar_start == open_ns:
        return "open"
    if bar.ts_event == close_ns:
        return "close"
    return None


def _limit_ok(side: str, limit: Decimal | None, price: Decimal) -> bool:
    if limit is None:
        return True
    return price <= limit if side == "buy" else price >= limit


def _as_limit(
    order: Working, qty: int, bar: BarClosed, model: CostModel, reference: Decimal | None
) -> Execution | None:
    limit = order.limit_price
    if limit is None:
        raise ValueError(f"expected a limit price on {order.type} order {order.order_id}, was None")
    rng = order_rng(model.seed, order.order_id, bar.ts_event)
    taken = taker_fill(order.side, qty, bar, model, rng, reference=reference, limit=limit)
    if taken is not None or order.time_in_force in ("ioc", "fok"):
        return taken  # an immediate order never rests on the book, so it cannot fill as a maker
    through = bar.low < limit if order.side == "buy" else bar.high > limit
    return resting_fill(order.side, qty, limit, bar, model) if through else None


def match(order: Working, bar: BarClosed, capacity: int, model: CostModel) -> Match:
    """Meet one working order with one bar it is eligible for; `capacity` is the volume left."""
    tif = order.time_in_force
    qty = min(order.leaves_qty, max(capacity, 0))
    if tif in ("opg", "cls"):
        return _auction(order, bar, qty, model)
    if tif == "fok" and qty < order.leaves_qty:
        return Match(cancel_rest=True, hwm=order.hwm, stop_price=order.stop_price)
    immediate = tif in ("ioc", "fok")

    triggered, reference, hwm, stop = order.triggered, None, order.hwm, order.stop_price
    if order.type == "trailing_stop" and not triggered:
        hwm = hwm if hwm is not None else bar.open
        stop = trailing_stop_price(order.side, hwm, order.trail_price, order.trail_percent)
        reference = stop_trigger(order.side, stop, bar)
        if reference is None:
            hwm = max(hwm, bar.high) if order.side == "sell" else min(hwm, bar.low)
            stop = trailing_stop_price(order.side, hwm, order.trail_price, order.trail_percent)
            return Match(hwm=hwm, stop_price=stop, cancel_rest=immediate)
        triggered = True
    elif order.type in ("stop", "stop_limit") and not triggered:
        if stop is None:
            raise ValueError(f"expected a stop price on {order.type} order {order.order_id}, was None")
        reference = stop_trigger(order.side, stop, bar)
        if reference is None:
            return Match(hwm=hwm, stop_price=stop, cancel_rest=immediate)
        triggered = True

    execution: Execution | None = None
    if qty > 0:
        if order.type in ("limit", "stop_limit"):
            execution = _as_limit(order, qty, bar, model, reference)
        else:
            rng = order_rng(model.seed, order.order_id, bar.ts_event)
            execution = taker_fill(order.side, qty, bar, model, rng, reference=reference)
    return Match(execution=execution, triggered=triggered, hwm=hwm, stop_price=stop, cancel_rest=immediate)


def _auction(order: Working, bar: BarClosed, qty: int, model: CostModel) -> Match:
    auction = auction_of(bar)
    wanted = "open" if order.time_in_force == "opg" else "close"
    if auction != wanted:
        # an opg order whose first eligible bar is not an opening bar missed its auction; a cls
        # order waits for the closing bar
        return Match(cancel_rest=order.time_in_force == "opg")
    price = bar.open if wanted == "open" else bar.close
    if qty <= 0 or not _limit_ok(order.side, order.limit_price, price):
        return Match(cancel_rest=True)
    return Match(execution=auction_fill(order.side, qty, price, bar, model), cancel_rest=True)
