"""Pure handlers of the local paper exchange: given state and bars -> when a command -> then state."""

from __future__ import annotations

import dataclasses
from datetime import date
from decimal import Decimal

import msgspec
import pytest

from libs import fillsim, sessions
from libs.contracts.base import derive_id, to_tick
from libs.contracts.marketdata import BarClosed
from libs.contracts.tca import CostModelUpdated, SymbolCost
from services.exchange import handlers
from services.exchange.state import (
    DUPLICATE_CLIENT_ORDER_ID,
    INSUFFICIENT_BUYING_POWER,
    INSUFFICIENT_QTY,
    INVALID_ORDER,
    OPPOSITE_SIDE_ORDER_OPEN,
    ORDER_NOT_CANCELABLE,
    ORDER_NOT_FOUND,
    VENUE_HOLDS,
    ExchangeOrder,
    ExchangeState,
    Rejection,
    ReplaceOrder,
    SubmitOrder,
    initial_state,
    rebuild,
)

D = Decimal
# frictionless apart from the spread: no slippage, impact, latency or fees, no volume cap, and a
# quoted spread on every bar, so prices here are the bar's open moved half a spread (by hand)
CTX = handlers.Ctx(
    model=fillsim.CostModel(
        proxy_spread_bps=D(10),
        fixed_slippage_bps=D(0),
        vol_slippage_coef=D(0),
        impact_coef=D(0),
        latency_ms=0,
        latency_jitter_ms=0,
        sec_fee_per_million=D(0),
        taf_per_share=D(0),
        max_participation=D(1),
    )
)
MINUTE = sessions.MINUTE_NS
DAY1 = date(2024, 3, 5)
DAY2 = date(2024, 3, 6)
OPEN1, CLOSE1 = sessions.session_open_close(DAY1)
OPEN2, CLOSE2 = sessions.session_open_close(DAY2)


def bar(
    symbol: str,
    minute: int,
    *,
    day_open: int = OPEN1,
    session: date = DAY1,
    open: str = "100",
    high: str | None = None,
    low: str | None = None,
    close: str | None = None,
    spread_bps: str = "10",
) -> BarClosed:
    ts = day_open + minute * MINUTE
    o = D(open)
    return BarClosed(
        event_id=derive_id("bar", symbol, ts),
        correlation_id=derive_id("bar", ts),
        causation_id=derive_id("bar", ts),
        ts_event=ts,
        ts_init=ts,
        symbol=symbol,
        bar_start=ts - MINUTE,
        session=session.isoformat(),
        open=o,
        high=D(high) if high else o + 1,
        low=D(low) if low else o - 1,
        close=D(close) if close else o,
        volume=10_000,
        spread_bps=D(spread_bps),
        spread_is_proxy=False,  # a quoted spread: the simulator pays exactly this one
    )


def order(
    cid: str,
    *,
    symbol: str = "AAPL",
    side: str = "buy",
    qty: int = 10,
    type: str = "market",
    tif: str = "day",
    limit: str | None = None,
) -> SubmitOrder:
    return SubmitOrder(
        symbol=symbol,
        qty=qty,
        side=side,  # type: ignore[arg-type]
        type=type,  # type: ignore[arg-type]
        time_in_force=tif,  # type: ignore[arg-type]
        limit_price=D(limit) if limit else None,
        client_order_id=cid,
    )


def fresh(cash: str = "100000") -> ExchangeState:
    return initial_state("acct-1", D(cash))


def accept(state: ExchangeState, request: SubmitOrder) -> tuple[ExchangeState, ExchangeOrder]:
    state, result = handlers.submit(state, request, CTX)
    assert isinstance(result, ExchangeOrder), result
    return state, result


def feed(state: ExchangeState, *bars: BarClosed) -> tuple[ExchangeState, list[ExchangeOrder]]:
    changed: list[ExchangeOrder] = []
    for b in bars:
        state, orders = handlers.on_bar(state, b, CTX)
        changed.extend(orders)
    return state, changed


def test_submit_when_bar_seen_then_fills_on_next_bar_not_the_current_one() -> None:
    # Arrange: the exchange has seen AAPL's 09:31 bar
    state, _ = feed(fresh(), bar("AAPL", 1, open="100"))
    state, accepted = accept(state, order("c1"))
    # Act: the same bar again (late copy) does nothing; the next bar fills
    state, changed_same = feed(state, bar("AAPL", 1, open="100"))
    state, changed_next = feed(state, bar("AAPL", 2, open="101"))
    # Assert
    assert accepted.status == "new"
    assert accepted.created_at == OPEN1 + MINUTE
    assert changed_same == []
    (filled,) = changed_next
    assert filled.status == "filled"
    assert filled.filled_qty == 10
    assert filled.filled_avg_price == D("101.06")  # 101 * (1 + 10/20000) = 101.0505 -> up to 101.06
    assert filled.filled_at == OPEN1 + 2 * MINUTE
    assert state.positions["AAPL"].qty == 10
    assert state.account.cash == D("100000") - D("1010.60")


def test_submit_when_clock_advanced_by_other_symbol_then_late_bar_of_same_minute_does_not_fill() -> None:
    # Arrange: MSFT's 09:31 bar moved the clock; AAPL's 09:31 bar arrives after the order
    state, _ = feed(fresh(), bar("MSFT", 1))
    state, _ = accept(state, order("c1", symbol="AAPL"))
    # Act
    state, on_same_minute = feed(state, bar("AAPL", 1))
    state, on_next_minute = feed(state, bar("AAPL", 2))
    # Assert
    assert on_same_minute == []
    assert [o.status for o in on_next_minute] == ["filled"]


def test_fills_when_bars_of_two_symbols_arrive_in_either_order_then_results_are_identical() -> None:
    base, _ = feed(fresh(), bar("AAPL", 1), bar("MSFT", 1))
    base, _ = accept(base, order("a", symbol="AAPL"))
    base, _ = accept(base, order("m", symbol="MSFT", side="sell"))
    one, _ = feed(base, bar("AAPL", 2, open="100"), bar("MSFT", 2, open="50"))
    two, _ = feed(base, bar("MSFT", 2, open="50"), bar("AAPL", 2, open="100"))
    assert one == two


def test_submit_when_no_bar_seen_then_fills_on_first_bar_and_day_order_binds_its_session() -> None:
    state, accepted = accept(fresh(), order("c1"))
    assert accepted.created_at == 0
    assert accepted.expires_at is None
    state, (filled,) = feed(state, bar("AAPL", 5, open="20"))
    assert filled.status == "filled"
    assert filled.filled_avg_price == D("20.01")  # 20 * 1.0005 = 20.01
    assert filled.expires_at == CLOSE1


def test_limit_buy_when_bar_trades_through_then_fills_at_better_of_limit_and_market() -> None:
    state, _ = feed(fresh(), bar("AAPL", 1))
    state, _ = accept(state, order("below", type="limit", limit="99.50"))
    state, _ = accept(state, order("above", type="limit", limit="105.00"))
    state, changed = feed(state, bar("AAPL", 2, open="100", low="99.40", high="100.50"))
    prices = {o.client_order_id: o.filled_avg_price for o in changed}
    assert prices == {"below": D("99.50"), "above": D("100.05")}


def test_limit_when_bar_does_not_reach_then_order_keeps_working() -> None:
    state, _ = feed(fresh(), bar("AAPL", 1), bar("MSFT", 1))
    state, buy = accept(state, order("b", type="limit", limit="98.00", tif="gtc"))
    state, sell = accept(state, order("s", symbol="MSFT", side="sell", type="limit", limit="102.00", tif="gtc"))
    state, changed = feed(
        state, bar("AAPL", 2, open="100", low="99", high="101"), bar("MSFT", 2, open="100", low="99", high="101")
    )
    assert changed == []
    assert (state.working["AAPL"], state.working["MSFT"]) == ((buy.id,), (sell.id,))


def test_limit_sell_when_high_reaches_limit_then_fills_at_max_of_limit_and_market() -> None:
    state, _ = feed(fresh(), bar("AAPL", 1))
    state, _ = accept(state, order("s", side="sell", type="limit", limit="100.80"))
    state, (filled,) = feed(state, bar("AAPL", 2, open="100", low="99", high="101"))
    assert filled.filled_avg_price == D("100.80")
    assert state.positions["AAPL"].qty == -10


@pytest.mark.parametrize("tif", ["ioc", "fok"])
def test_ioc_fok_when_first_bar_cannot_fill_then_canceled(tif: str) -> None:
    state, _ = feed(fresh(), bar("AAPL", 1))
    state, _ = accept(state, order("c", type="limit", limit="90.00", tif=tif))
    state, (done,) = feed(state, bar("AAPL", 2, low="99"))
    assert done.status == "canceled"
    assert done.canceled_at == OPEN1 + 2 * MINUTE
    assert "AAPL" not in state.working


def test_gtc_order_when_90_days_pass_unfilled_then_expires_at_that_close() -> None:
    # Alpaca ends a gtc order 90 days after it was placed: 2024-03-05 + 90 days = 2024-06-03 (a Monday)
    day90, day91 = date(2024, 6, 3), date(2024, 6, 4)
    open90, close90 = sessions.session_open_close(day90)
    open91, _ = sessions.session_open_close(day91)
    state, _ = feed(fresh(), bar("AAPL", 1))
    state, gtc = accept(state, order("gtc", type="limit", limit="50.00", tif="gtc"))

    state, on_day_90 = feed(state, bar("AAPL", 30, day_open=open90, session=day90))
    state, after = feed(state, bar("AAPL", 1, day_open=open91, session=day91))

    assert gtc.expires_at == close90
    assert on_day_90 == []  # still working through the 90th day
    assert [(o.id, o.status, o.expired_at) for o in after] == [(gtc.id, "expired", close90)]


def test_day_order_when_session_closes_unfilled_then_expires_at_the_close() -> None:
    state, _ = feed(fresh(), bar("AAPL", 1))
    state, day = accept(state, order("day", type="limit", limit="50.00"))
    state, gtc = accept(state, order("gtc", type="limit", limit="50.00", tif="gtc"))
    last_minute = (CLOSE1 - OPEN1) // MINUTE
    # the closing bar itself may still fill a day order: no expiry on it
    state, at_close = feed(state, bar("AAPL", last_minute))
    # Act: the first bar of the next session (another symbol is enough to move the clock)
    state, next_day = feed(state, bar("MSFT", 1, day_open=OPEN2, session=DAY2))
    assert day.expires_at == CLOSE1
    assert at_close == []
    assert [(o.id, o.status, o.expired_at) for o in next_day] == [(day.id, "expired", CLOSE1)]
    assert state.orders[gtc.id].status == "new"
    assert state.working["AAPL"] == (gtc.id,)


def test_day_order_when_accepted_after_the_close_then_works_in_the_next_session() -> None:
    last_minute = (CLOSE1 - OPEN1) // MINUTE
    state, _ = feed(fresh(), bar("AAPL", last_minute))
    state, accepted = accept(state, order("late"))
    state, (filled,) = feed(state, bar("AAPL", 1, day_open=OPEN2, session=DAY2, open="102"))
    assert accepted.expires_at == CLOSE2
    assert filled.status == "filled"
    assert filled.filled_avg_price == D("102.06")  # 102 * 1.0005 = 102.051 -> up to 102.06


def test_submit_when_client_order_id_reused_then_rejected_as_duplicate() -> None:
    state, first = accept(fresh(), order("same"))
    after, result = handlers.submit(state, order("same", qty=1), CTX)
    assert isinstance(result, Rejection)
    assert result.reason == DUPLICATE_CLIENT_ORDER_ID
    assert result.message == "client_order_id must be unique"
    assert after is state


def test_submit_when_cost_exceeds_buying_power_then_rejected() -> None:
    state, _ = feed(fresh(cash="1000"), bar("AAPL", 1, open="100", close="100"))
    # buying power = 2 * 1000 = 2000; 10 x 100 fits, 30 x 100 does not
    state, result = handlers.submit(state, order("big", qty=30), CTX)
    assert isinstance(result, Rejection)
    assert result.reason == INSUFFICIENT_BUYING_POWER
    assert result.details == {"buying_power": "2000", "cost_basis": "3000"}
    state, _ = accept(state, order("ok", qty=10))
    # the open order holds 1000 of buying power, so another 15 shares no longer fit
    _, second = handlers.submit(state, order("more", qty=15), CTX)
    assert isinstance(second, Rejection)
    assert handlers.buying_power(state, CTX) == D("1000")


def test_submit_when_order_closes_a_position_then_no_buying_power_needed() -> None:
    state, _ = feed(fresh(cash="1000"), bar("AAPL", 1, open="100"))
    state, _ = accept(state, order("buy", qty=15))
    state, _ = feed(state, bar("AAPL", 2, open="100", close="100"))
    state = handlers.on_bar(state, bar("MSFT", 2), CTX)[0]
    # selling what is held needs no buying power even when it is exhausted
    state, closing = accept(state, order("sell", side="sell", qty=15))
    assert closing.position_intent == "sell_to_close"


def test_cover_when_short_position_then_cash_and_positions_account_for_both_legs() -> None:
    state, _ = feed(fresh(), bar("XYZ", 1))
    state, short = accept(state, order("short", symbol="XYZ", side="sell", qty=10))
    state, _ = feed(state, bar("XYZ", 2, open="100", close="95"))
    position = state.positions["XYZ"]
    assert short.position_intent == "sell_to_open"
    assert position.qty == -10
    assert position.avg_entry_price == D("99.95")  # sell pays half the 10 bps spread
    assert state.account.cash == D("100999.50")
    assert handlers.short_market_value(state) == D("-950")
    assert handlers.equity(state) == D("100049.50")
    state, cover = accept(state, order("cover", symbol="XYZ", side="buy", qty=10))
    state, _ = feed(state, bar("XYZ", 3, open="90"))
    assert cover.position_intent == "buy_to_close"
    assert "XYZ" not in state.positions
    assert state.account.cash == D("100999.50") - D("900.50")  # 90 * 1.0005 = 90.045 -> up to 90.05
    assert handlers.equity(state) == D("100099.00")


def test_fills_when_buys_at_two_prices_then_average_entry_is_volume_weighted_and_sells_keep_it() -> None:
    state, _ = feed(fresh(), bar("AAPL", 1))
    state, _ = accept(state, order("b1", qty=10))
    state, _ = feed(state, bar("AAPL", 2, open="100", spread_bps="0"))
    state, _ = accept(state, order("b2", qty=30))
    state, _ = feed(state, bar("AAPL", 3, open="110", spread_bps="0"))
    assert state.positions["AAPL"].avg_entry_price == D("107.5")
    state, _ = accept(state, order("s1", side="sell", qty=20))
    state, _ = feed(state, bar("AAPL", 4, open="120", spread_bps="0"))
    assert state.positions["AAPL"].qty == 20
    assert state.positions["AAPL"].avg_entry_price == D("107.5")
    assert state.account.cash == D("100000") - 1000 - 3300 + 2400


def test_sell_when_more_than_held_then_refused_insufficient_qty_and_position_kept() -> None:
    # Alpaca never reverses a position with one order: close it, then open the other side
    state, _ = feed(fresh(), bar("AAPL", 1))
    state, _ = accept(state, order("b", qty=10))
    state, _ = feed(state, bar("AAPL", 2, open="100", spread_bps="0"))

    after, flip = handlers.submit(state, order("s", side="sell", qty=15), CTX)

    assert isinstance(flip, Rejection) and flip.reason == INSUFFICIENT_QTY
    assert flip.message == "insufficient qty available for order (requested: 15, available: 10)"
    assert flip.details == {"available": "10", "existing_qty": "10", "held_for_orders": "0", "symbol": "AAPL"}
    assert after is state


def test_sell_when_open_sells_hold_the_shares_then_only_the_rest_is_available() -> None:
    state, _ = feed(fresh(), bar("AAPL", 1))
    state, _ = accept(state, order("b", qty=10))
    state, _ = feed(state, bar("AAPL", 2, open="100", spread_bps="0"))
    state, _ = accept(state, order("tp", side="sell", qty=6, type="limit", limit="150.00", tif="gtc"))

    _, too_many = handlers.submit(state, order("s", side="sell", qty=5), CTX)
    state, rest = accept(state, order("s4", side="sell", qty=4))
    state, _ = feed(state, bar("AAPL", 3, open="104", spread_bps="0"))

    assert isinstance(too_many, Rejection) and too_many.reason == INSUFFICIENT_QTY
    assert too_many.details["held_for_orders"] == "6" and too_many.details["available"] == "4"
    assert rest.position_intent == "sell_to_close"
    assert state.positions["AAPL"].qty == 6


def test_sell_when_flat_then_short_opens_at_fill_price() -> None:
    state, _ = feed(fresh(), bar("AAPL", 1))
    state, _ = accept(state, order("b", qty=10))
    state, _ = feed(state, bar("AAPL", 2, open="100", spread_bps="0"))
    state, _ = accept(state, order("close", side="sell", qty=10))
    state, _ = feed(state, bar("AAPL", 3, open="102", spread_bps="0"))

    state, short = accept(state, order("short", side="sell", qty=5))
    state, _ = feed(state, bar("AAPL", 4, open="104", spread_bps="0"))

    assert short.position_intent == "sell_to_open"
    assert (state.positions["AAPL"].qty, state.positions["AAPL"].avg_entry_price) == (-5, D("104"))


@pytest.mark.parametrize(
    ("first", "second", "message"),
    [
        ("buy", "sell", "cannot open a short sell while a long buy order is open"),
        ("sell", "buy", "cannot open a long buy while a short sell order is open"),
    ],
)
def test_open_when_flat_and_an_order_the_other_way_is_open_then_refused(first: str, second: str, message: str) -> None:
    state, _ = feed(fresh(), bar("AAPL", 1))
    state, _ = accept(state, order("first", side=first, type="limit", limit="100.00", tif="gtc"))

    _, refused = handlers.submit(state, order("second", side=second), CTX)
    _, same_side = handlers.submit(state, order("third", side=first), CTX)
    _, other_symbol = handlers.submit(state, order("fourth", symbol="MSFT", side=second), CTX)

    assert isinstance(refused, Rejection) and (refused.reason, refused.message) == (OPPOSITE_SIDE_ORDER_OPEN, message)
    assert isinstance(same_side, ExchangeOrder) and isinstance(other_symbol, ExchangeOrder)


def test_cancel_when_open_then_canceled_and_when_filled_then_refused() -> None:
    state, _ = feed(fresh(), bar("AAPL", 1))
    state, working = accept(state, order("w", type="limit", limit="1.00", tif="gtc"))
    state, market = accept(state, order("m"))
    state, _ = feed(state, bar("AAPL", 2))
    state, canceled = handlers.cancel(state, working.id, CTX)
    _, refused = handlers.cancel(state, market.id, CTX)
    _, unknown = handlers.cancel(state, "00000000-0000-0000-0000-000000000000", CTX)
    assert isinstance(canceled, ExchangeOrder)
    assert canceled.status == "canceled"
    assert canceled.canceled_at == OPEN1 + 2 * MINUTE
    assert isinstance(refused, Rejection) and refused.reason == ORDER_NOT_CANCELABLE
    assert refused.message == 'order is already in "filled" state'
    assert isinstance(unknown, Rejection) and unknown.reason == ORDER_NOT_FOUND


def test_cancel_all_when_orders_open_then_every_one_canceled_oldest_first() -> None:
    state, _ = feed(fresh(), bar("AAPL", 1))
    state, a = accept(state, order("a", type="limit", limit="1.00", tif="gtc"))
    state, m = accept(state, order("m", symbol="MSFT", type="limit", limit="1.00", tif="gtc"))
    state, b = accept(state, order("b", type="limit", limit="1.00", tif="gtc"))
    state, done = handlers.cancel_all(state, CTX)
    assert [o.id for o in done] == [a.id, m.id, b.id]
    assert state.working == {}
    assert handlers.cancel_all(state, CTX)[1] == []


def test_ids_when_same_inputs_then_same_uuids() -> None:
    s1, o1 = accept(fresh(), order("cid-1"))
    s2, o2 = accept(fresh(), order("cid-1"))
    s1, (f1,) = feed(s1, bar("AAPL", 1))
    s2, (f2,) = feed(s2, bar("AAPL", 1))
    assert o1.id == o2.id == handlers.order_id_for("acct-1", "cid-1")
    assert f1.fills[0].execution_id == handlers.execution_id_for(o1.id, 1) == f2.fills[0].execution_id
    assert o1.id[14] == "8"  # UUID version 8 (RFC 9562 custom)


def test_submit_when_no_client_order_id_then_a_deterministic_one_is_assigned() -> None:
    request = SubmitOrder(symbol="AAPL", qty=1, side="buy", type="market", time_in_force="day")
    _, first = accept(fresh(), request)
    _, again = accept(fresh(), request)
    assert first.client_order_id == again.client_order_id
    assert len(first.client_order_id) == 36


def test_rebuild_when_state_round_trips_then_equal() -> None:
    state, _ = feed(fresh(), bar("AAPL", 1))
    state, _ = accept(state, order("a", type="limit", limit="1.00", tif="gtc"))
    state, _ = accept(state, order("b"))
    state, _ = feed(state, bar("AAPL", 2))
    rebuilt = rebuild(
        state.account,
        state.clock,
        list(state.orders.values()),
        list(state.positions.values()),
        list(state.marks.values()),
    )
    assert rebuilt == state


def test_on_bar_when_new_session_then_last_equity_is_equity_at_previous_close_marks() -> None:
    state, _ = feed(fresh(), bar("AAPL", 1))
    state, _ = accept(state, order("b", qty=100))
    last_minute = (CLOSE1 - OPEN1) // MINUTE
    state, _ = feed(state, bar("AAPL", 2, open="100", spread_bps="0"), bar("AAPL", last_minute, close="110"))
    state, _ = feed(state, bar("AAPL", 1, day_open=OPEN2, session=DAY2, close="120"))
    assert state.account.session == DAY2.isoformat()
    assert state.account.last_equity == D("101000")
    assert state.marks["AAPL"].lastday_price == D("110")
    assert handlers.equity(state) == D("102000")


def test_to_tick_when_above_or_below_a_dollar_then_cents_or_hundredths_of_cents() -> None:
    assert to_tick(D("12.345")) == D("12.34")  # half-even
    assert to_tick(D("0.123456")) == D("0.1235")
    assert (to_tick(D("12.341"), toward=1), to_tick(D("12.349"), toward=-1)) == (D("12.35"), D("12.34"))


def test_views_when_parsed_by_alpaca_py_then_expired_order_and_short_position_read_back() -> None:
    from alpaca.trading.enums import OrderStatus, PositionSide
    from alpaca.trading.models import Order, Position

    from services.exchange.api import order_view, position_view

    state, _ = feed(fresh(), bar("AAPL", 1))
    state, day = accept(state, order("day", side="sell", type="limit", limit="150.00"))
    state, _ = accept(state, order("short", side="sell", qty=3))
    state, _ = feed(state, bar("AAPL", 2), bar("MSFT", 1, day_open=OPEN2, session=DAY2))
    parsed = Order(**order_view(state.orders[day.id]))
    short = Position(**position_view(state, state.positions["AAPL"]))
    assert parsed.status == OrderStatus.EXPIRED
    assert parsed.expired_at is not None and parsed.limit_price == "150"
    assert (short.side, short.qty, short.market_value, short.cost_basis) == (
        PositionSide.SHORT,
        "-3",
        "-300.00",
        "-299.85",
    )


def test_clock_view_when_bars_seen_or_none_then_last_bar_ts_or_epoch_read_by_alpaca_py() -> None:
    from datetime import UTC, datetime

    from alpaca.trading.models import Clock

    from services.exchange.api import clock_view

    # Arrange: a late copy of bar 1 after bar 2
    state, _ = feed(fresh(), bar("AAPL", 1), bar("MSFT", 2), bar("AAPL", 1))

    # Act
    before_any_bar = Clock(**clock_view(fresh().clock))
    seen = Clock(**clock_view(state.clock))

    # Assert: the clock is the last bar seen (execution polls it), never the wall clock
    assert before_any_bar.timestamp == datetime(1970, 1, 1, tzinfo=UTC)
    assert state.clock == bar("MSFT", 2).ts_event
    assert seen.timestamp == datetime.fromtimestamp(state.clock / 1e9, tz=UTC)


# --- venue statuses (admin API) ---------------------------------------------------------------


@pytest.mark.parametrize("hold", sorted(VENUE_HOLDS))
def test_venue_status_when_order_held_by_the_venue_then_no_fill_until_released(hold: str) -> None:
    state, _ = feed(fresh(), bar("AAPL", 1))
    state, placed = accept(state, order("o"))

    state, held = handlers.set_venue_status(state, placed.id, hold, CTX)
    state, during = feed(state, bar("AAPL", 2))
    still_open = state.working["AAPL"]
    state, released = handlers.set_venue_status(state, placed.id, "new", CTX)
    state, after = feed(state, bar("AAPL", 3, open="101", spread_bps="0"))

    assert [o.status for o in held] == [hold]  # type: ignore[union-attr]
    assert (during, still_open) == ([], (placed.id,))
    assert [o.status for o in released] == ["new"]  # type: ignore[union-attr]
    assert [(o.status, o.filled_avg_price) for o in after] == [("filled", D("101"))]


def test_venue_status_when_partly_filled_order_released_then_partially_filled_again() -> None:
    state, _ = feed(fresh(), bar("AAPL", 1))
    state, placed = accept(state, order("o", qty=10))
    small = dataclasses.replace(CTX, model=msgspec.structs.replace(CTX.model, max_participation=D("0.0004")))
    state, (part,) = handlers.on_bar(state, bar("AAPL", 2), small)
    state, _ = handlers.set_venue_status(state, placed.id, "suspended", CTX)

    state, released = handlers.set_venue_status(state, placed.id, "new", CTX)

    assert (part.status, part.filled_qty) == ("partially_filled", 4)
    assert [(o.status, o.filled_qty) for o in released] == [("partially_filled", 4)]  # type: ignore[union-attr]


def test_venue_status_when_rejected_after_acceptance_then_terminal_and_held_legs_canceled() -> None:
    state, _ = feed(fresh(), bar("AAPL", 1))
    request = msgspec.structs.replace(
        order("b"), order_class="bracket", take_profit_limit_price=D("110"), stop_loss_stop_price=D("90")
    )
    state, placed = accept(state, request)

    state, changed = handlers.set_venue_status(state, placed.id, "rejected", CTX)
    _, again = handlers.set_venue_status(state, placed.id, "suspended", CTX)

    assert [(o.client_order_id == "b", o.status) for o in changed] == [  # type: ignore[union-attr]
        (True, "rejected"),
        (False, "canceled"),
        (False, "canceled"),
    ]
    assert "AAPL" not in state.working
    assert isinstance(again, Rejection) and again.message == 'cannot move an order in "rejected" to "suspended"'


@pytest.mark.parametrize(
    ("status", "message"),
    [
        ("filled", "expected status in"),
        ("held", "expected status in"),
        ("new", 'expected an order in a venue hold to release, was "new"'),
    ],
)
def test_venue_status_when_not_a_venue_status_then_refused(status: str, message: str) -> None:
    state, _ = feed(fresh(), bar("AAPL", 1))
    state, placed = accept(state, order("o"))

    after, refused = handlers.set_venue_status(state, placed.id, status, CTX)

    assert isinstance(refused, Rejection) and refused.reason == INVALID_ORDER and message in refused.message
    assert after is state


def test_venue_status_when_held_order_canceled_then_canceled() -> None:
    state, _ = feed(fresh(), bar("AAPL", 1))
    state, placed = accept(state, order("o"))
    state, _ = handlers.set_venue_status(state, placed.id, "pending_cancel", CTX)

    state, canceled = handlers.cancel(state, placed.id, CTX)

    assert isinstance(canceled, ExchangeOrder) and canceled.status == "canceled"


def test_replace_when_a_closing_order_grows_past_the_position_then_refused_insufficient_qty() -> None:
    state, _ = feed(fresh(), bar("AAPL", 1))
    state, _ = accept(state, order("b", qty=10))
    state, _ = feed(state, bar("AAPL", 2, open="100", spread_bps="0"))
    state, close = accept(state, order("tp", side="sell", qty=6, type="limit", limit="150.00", tif="gtc"))

    _, grown = handlers.replace_order(state, close.id, ReplaceOrder(qty=12), CTX)
    _, within = handlers.replace_order(state, close.id, ReplaceOrder(qty=10), CTX)

    assert isinstance(grown, Rejection) and grown.reason == INSUFFICIENT_QTY
    assert grown.message == "insufficient qty available for order (requested: 12, available: 10)"
    assert not isinstance(within, Rejection) and within[1].qty == 10


def test_sides_when_the_other_order_is_in_a_venue_hold_then_it_still_counts() -> None:
    state, _ = feed(fresh(), bar("AAPL", 1), bar("MSFT", 1))
    state, buy = accept(state, order("b", type="limit", limit="90.00", tif="gtc"))
    state, _ = handlers.set_venue_status(state, buy.id, "suspended", CTX)
    # MSFT: long 10, a sell of all 10 suspended by the venue still holds them
    state, _ = accept(state, order("mb", symbol="MSFT", qty=10))
    state, _ = feed(state, bar("MSFT", 2, spread_bps="0"))
    state, msell = accept(state, order("ms", symbol="MSFT", side="sell", qty=10, type="limit", limit="150.00"))
    state, _ = handlers.set_venue_status(state, msell.id, "done_for_day", CTX)

    _, short = handlers.submit(state, order("s", side="sell"), CTX)
    _, more = handlers.submit(state, order("ms2", symbol="MSFT", side="sell", qty=1), CTX)

    assert isinstance(short, Rejection) and short.reason == OPPOSITE_SIDE_ORDER_OPEN
    assert isinstance(more, Rejection) and more.details["held_for_orders"] == "10"


# --- the fill simulator priced by TCA's calibration ------------------------------------------


def calibration(effective: date, spread: str, *, symbol: str = "AAPL") -> CostModelUpdated:
    cost = SymbolCost(symbol=symbol, spread_bps=D(spread), slippage_bps=D(0), vol_coef=D(0), impact_coef=D(0))
    return CostModelUpdated(
        event_id=derive_id("cal", effective, spread),
        correlation_id="c",
        causation_id="c",
        ts_event=OPEN1,
        ts_init=OPEN1,
        session="",
        effective_session=effective.isoformat(),
        calibrated_ts=OPEN1,
        default=msgspec.structs.replace(cost, symbol="*"),
        symbols=(cost,),
    )


def proxy_bar(minute: int, *, session: date = DAY1, day_open: int = OPEN1) -> BarClosed:
    # no quoted spread: the simulator's spread is its proxy, which a calibration replaces
    return msgspec.structs.replace(bar("AAPL", minute, session=session, day_open=day_open), spread_is_proxy=True)


def fill_price(state: ExchangeState, *bars: BarClosed) -> Decimal:
    state, _ = feed(state, bars[0])
    state, _ = accept(state, order("c1"))
    _, changed = feed(state, *bars[1:])
    (filled,) = changed
    assert filled.status == "filled"
    return filled.filled_avg_price  # type: ignore[return-value]


def test_bar_when_calibration_holds_then_the_simulator_pays_the_calibrated_spread() -> None:
    calibrated = handlers.on_cost_model(fresh(), calibration(DAY1, "200"))

    static = fill_price(fresh(), proxy_bar(1), proxy_bar(2))
    priced = fill_price(calibrated, proxy_bar(1), proxy_bar(2))

    assert static == D("100.05")  # the configured proxy, 10 bps: half of it paid
    assert priced == D("101.00")  # the calibrated 200 bps: half of it paid


def test_bar_when_before_the_calibrations_session_then_the_configured_model() -> None:
    calibrated = handlers.on_cost_model(fresh(), calibration(DAY2, "200"))

    assert fill_price(calibrated, proxy_bar(1), proxy_bar(2)) == D("100.05")


def test_bar_when_quoted_spread_then_calibrated_spread_does_not_replace_it() -> None:
    calibrated = handlers.on_cost_model(fresh(), calibration(DAY1, "200"))

    assert fill_price(calibrated, bar("AAPL", 1), bar("AAPL", 2)) == D("100.05")  # the bar's own 10 bps


def test_cost_model_when_older_than_held_then_ignored() -> None:
    newer = handlers.on_cost_model(fresh(), calibration(DAY2, "50"))

    after = handlers.on_cost_model(newer, calibration(DAY1, "200"))

    assert after is newer


def test_touched_at_start_when_restarted_then_open_orders_and_those_changed_at_the_last_bar_are_named():
    state, _ = handlers.on_bar(fresh(), bar("AAPL", 1), CTX)
    state, _ = accept(state, order("early", qty=5))
    state, _ = handlers.on_bar(state, bar("AAPL", 2), CTX)  # fills "early" at minute 2
    state, _ = handlers.on_bar(state, bar("AAPL", 3), CTX)
    state, _ = accept(state, order("resting", type="limit", limit="50"))
    state, _ = accept(state, order("gone", qty=3))
    state, canceled = handlers.cancel(state, state.by_client_id["gone"], CTX)

    assert isinstance(canceled, ExchangeOrder)
    # "early" ended before the last bar: its FillsDone went out; the other two changed since
    assert list(handlers.touched_at_start(state)) == ["resting", "gone"]
