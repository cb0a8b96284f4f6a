"""Order types, classes, time in force, partial fills, replace and close on the exchange's pure handlers.

Prices are checked by hand against a frictionless model (no slippage, latency or fees, a quoted
10 bps spread): a taker buy pays open * (1 + 5 bps) on the tick. Partial-fill tests switch the
participation cap on.
"""

from __future__ import annotations

from datetime import date
from decimal import Decimal

from libs import fillsim, sessions
from libs.contracts.base import derive_id
from libs.contracts.marketdata import BarClosed
from services.exchange import handlers
from services.exchange.state import (
    INSUFFICIENT_QTY,
    INVALID_ORDER,
    MARKET_SESSION_RULE,
    ORDER_NOT_REPLACEABLE,
    SHORT_NOT_ALLOWED,
    ExchangeOrder,
    ExchangeState,
    Rejection,
    ReplaceOrder,
    SubmitOrder,
    initial_state,
)

D = Decimal
MINUTE = sessions.MINUTE_NS
DAY = date(2024, 3, 5)
OPEN, CLOSE = sessions.session_open_close(DAY)
LAST = (CLOSE - OPEN) // MINUTE
FRICTIONLESS = fillsim.CostModel(
    fixed_slippage_bps=D(0),
    vol_slippage_coef=D(0),
    impact_coef=D(0),
    latency_ms=0,
    latency_jitter_ms=0,
    sec_fee_per_million=D(0),
    taf_per_share=D(0),
    max_participation=D(1),
)
CTX = handlers.Ctx(model=FRICTIONLESS)


def bar(
    minute: int,
    open: str = "100",
    *,
    high: str | None = None,
    low: str | None = None,
    close: str | None = None,
    volume: int = 10_000,
    symbol: str = "AAPL",
) -> BarClosed:
    ts = OPEN + minute * MINUTE
    o = D(open)
    return BarClosed(
        event_id=derive_id("bar", symbol, ts),
        correlation_id=derive_id("bar", ts),
        causation_id=derive_id("bar", ts),
        ts_event=ts,
        ts_init=ts,
        symbol=symbol,
        bar_start=ts - MINUTE,
        session=DAY.isoformat(),
        open=o,
        high=D(high) if high else o + D("0.5"),
        low=D(low) if low else o - D("0.5"),
        close=D(close) if close else o,
        volume=volume,
        spread_bps=D(10),
        spread_is_proxy=False,
    )


def req(cid: str, **kw: object) -> SubmitOrder:
    fields: dict[str, object] = {"symbol": "AAPL", "qty": 10, "side": "buy", "type": "market", "time_in_force": "day"}
    fields.update(kw)
    for k in (
        "limit_price",
        "stop_price",
        "trail_price",
        "trail_percent",
        "take_profit_limit_price",
        "stop_loss_stop_price",
        "stop_loss_limit_price",
    ):
        if isinstance(fields.get(k), str):
            fields[k] = D(fields[k])  # type: ignore[arg-type]
    return SubmitOrder(client_order_id=cid, **fields)  # type: ignore[arg-type]


def started(cash: str = "1000000", ctx: handlers.Ctx = CTX) -> ExchangeState:
    state, _ = handlers.on_bar(initial_state("acct", D(cash)), bar(1), ctx)
    return state


def accept(state: ExchangeState, request: SubmitOrder, ctx: handlers.Ctx = CTX) -> tuple[ExchangeState, ExchangeOrder]:
    state, result = handlers.submit(state, request, ctx)
    assert isinstance(result, ExchangeOrder), result
    return state, result


def feed(state: ExchangeState, *bars: BarClosed, ctx: handlers.Ctx = CTX) -> ExchangeState:
    for b in bars:
        state, _ = handlers.on_bar(state, b, ctx)
    return state


def by_cid(state: ExchangeState, cid: str) -> ExchangeOrder:
    return state.orders[state.by_client_id[cid]]


# --- stops ------------------------------------------------------------------------------------


def test_stop_buy_when_high_reaches_stop_then_fills_from_the_stop_as_taker() -> None:
    state, _ = accept(started(), req("s", type="stop", stop_price="101.00", time_in_force="gtc"))
    state = feed(state, bar(2, "100", high="100.90"))
    assert by_cid(state, "s").status == "new"
    state = feed(state, bar(3, "100.50", high="101.50"))
    filled = by_cid(state, "s")
    assert filled.status == "filled"
    assert filled.triggered is True
    assert filled.filled_avg_price == D("101.06")  # 101.00 * 1.0005 = 101.0505 -> up to 101.06


def test_stop_sell_when_bar_gaps_below_stop_then_fills_from_the_open() -> None:
    state, _ = accept(started(), req("s", side="sell", type="stop", stop_price="99.00"))
    state = feed(state, bar(2, "98.00"))
    assert by_cid(state, "s").filled_avg_price == D("97.95")  # 98 * 0.9995 = 97.951 -> down to 97.95


def test_stop_limit_when_triggered_but_limit_not_reachable_then_rests_triggered_then_fills_at_limit() -> None:
    state, _ = accept(started(), req("sl", type="stop_limit", stop_price="101.00", limit_price="101.00"))
    # gaps to 102: triggered at the open, but the buy limit 101 is below the market
    state = feed(state, bar(2, "102.00", high="102.50", low="101.50"))
    resting = by_cid(state, "sl")
    assert (resting.status, resting.triggered) == ("new", True)
    state = feed(state, bar(3, "101.50", low="100.80"))
    assert by_cid(state, "sl").filled_avg_price == D("101.00")


def test_trailing_stop_when_price_rises_then_falls_then_stop_trails_the_high_and_triggers() -> None:
    state = started()
    state, placed = accept(state, req("tr", side="sell", type="trailing_stop", trail_price="1.00"))
    assert (placed.hwm, placed.stop_price) == (D("100"), D("99.00"))  # the mark at acceptance
    state = feed(state, bar(2, "100.50", high="103.00", low="100.20"))
    trailing = by_cid(state, "tr")
    assert (trailing.hwm, trailing.stop_price, trailing.status) == (D("103.00"), D("102.00"), "new")
    state = feed(state, bar(3, "102.50", high="102.60", low="101.50"))
    done = by_cid(state, "tr")
    assert done.status == "filled"
    assert done.filled_avg_price == D("101.94")  # stop 102.00 * 0.9995 = 101.949 -> down to 101.94


def test_trailing_stop_percent_when_buy_then_stop_trails_the_low_by_percent() -> None:
    state, placed = accept(started(), req("tp", type="trailing_stop", trail_percent="2"))
    assert placed.stop_price == D("102.00")  # 100 * 1.02
    state = feed(state, bar(2, "99", high="99.5", low="95.00"))
    assert by_cid(state, "tp").stop_price == D("96.90")  # 95 * 1.02


# --- classes ----------------------------------------------------------------------------------


def test_bracket_when_entry_fills_then_legs_activate_and_take_profit_cancels_stop_loss() -> None:
    state, entry = accept(
        started(),
        req("br", order_class="bracket", take_profit_limit_price="103.00", stop_loss_stop_price="97.00"),
    )
    tp, sl = (state.orders[i] for i in entry.legs)
    assert (tp.status, tp.type, tp.side, tp.leg_role) == ("held", "limit", "sell", "take_profit")
    assert (sl.status, sl.type, sl.stop_price) == ("held", "stop", D("97.00"))
    state = feed(state, bar(2, "100"))
    assert by_cid(state, "br").status == "filled"
    # as Alpaca shows them: the take-profit new (it holds the shares), the stop-loss armed but `held`
    assert [(state.orders[i].status, state.orders[i].armed) for i in entry.legs] == [("new", False), ("held", True)]
    state = feed(state, bar(3, "102", high="103.50"))
    assert [state.orders[i].status for i in entry.legs] == ["filled", "canceled"]
    assert "AAPL" not in state.positions


def test_bracket_when_stop_loss_armed_held_and_price_falls_then_it_fills_and_take_profit_canceled() -> None:
    state, entry = accept(
        started(),
        req("br", order_class="bracket", take_profit_limit_price="103.00", stop_loss_stop_price="97.00"),
    )
    state = feed(state, bar(2, "100"))

    state = feed(state, bar(3, "96", high="96.50", low="95.50"))

    assert [state.orders[i].status for i in entry.legs] == ["canceled", "filled"]
    assert "AAPL" not in state.positions


def test_held_legs_when_orders_listed_open_then_left_out_as_alpaca_lists_them() -> None:
    from services.exchange.api import list_orders

    state, entry = accept(
        started(),
        req("br", order_class="bracket", take_profit_limit_price="103.00", stop_loss_stop_price="97.00"),
    )
    before = [o.client_order_id for o in list_orders(state, {"status": "open"})]
    state = feed(state, bar(2, "100"))
    after = {o.leg_role or "entry" for o in list_orders(state, {"status": "open"})}
    closed = {o.leg_role or "entry" for o in list_orders(state, {"status": "closed"})}

    assert before == ["br"]  # the legs wait held: not listed as open
    assert (after, closed) == ({"take_profit"}, {"entry", "stop_loss"})


def test_bracket_when_entry_canceled_then_held_legs_are_canceled_with_it() -> None:
    state, entry = accept(
        started(),
        req(
            "br",
            type="limit",
            limit_price="90.00",
            order_class="bracket",
            take_profit_limit_price="95.00",
            stop_loss_stop_price="85.00",
        ),
    )
    state, canceled = handlers.cancel(state, entry.id, CTX)
    assert isinstance(canceled, ExchangeOrder)
    assert [state.orders[i].status for i in (entry.id, *entry.legs)] == ["canceled"] * 3
    assert "AAPL" not in state.working


def test_bracket_when_take_profit_below_base_then_rejected_with_alpacas_message() -> None:
    _, result = handlers.submit(
        started(),
        req("bad", order_class="bracket", take_profit_limit_price="99.00", stop_loss_stop_price="97.00"),
        CTX,
    )
    assert isinstance(result, Rejection)
    assert result.reason == INVALID_ORDER
    assert "take_profit.limit_price must be >= base_price + 0.01" in result.message


def test_bracket_when_short_entry_stop_loss_below_base_then_rejected_mirrored() -> None:
    # a sell entry's exits buy back: the stop-loss must be at least a cent ABOVE the base (100)
    _, result = handlers.submit(
        started(),
        req("bad", side="sell", order_class="bracket", take_profit_limit_price="97.00", stop_loss_stop_price="100.00"),
        CTX,
    )
    assert isinstance(result, Rejection)
    assert result.message == "stop_loss.stop_price must be >= base_price + 0.01 (base 100)"


def test_oco_when_stop_leg_triggers_then_take_profit_is_canceled() -> None:
    state = feed(started(), *[])
    state, held = accept(state, req("long", qty=10))
    state = feed(state, bar(2, "100"))
    state, oco = accept(
        state,
        req(
            "oco",
            side="sell",
            type="limit",
            order_class="oco",
            limit_price="105.00",
            take_profit_limit_price="105.00",
            stop_loss_stop_price="98.00",
        ),
    )
    (stop_leg_id,) = oco.legs
    # both work at once; the stop-loss reads `held` (the take-profit holds the shares), armed
    assert (oco.status, state.orders[stop_leg_id].status, state.orders[stop_leg_id].armed) == ("new", "held", True)
    state = feed(state, bar(3, "99", low="97.50"))
    assert state.orders[stop_leg_id].status == "filled"
    assert by_cid(state, "oco").status == "canceled"
    assert "AAPL" not in state.positions


def test_oto_when_entry_fills_then_its_single_leg_works() -> None:
    state, entry = accept(started(), req("oto", order_class="oto", stop_loss_stop_price="95.00"))
    (leg,) = entry.legs
    state = feed(state, bar(2, "100"))
    assert (state.orders[leg].status, state.orders[leg].armed) == ("held", True)
    state = feed(state, bar(3, "94", high="94.50", low="93.50"))
    assert state.orders[leg].status == "filled"


# --- time in force and participation ----------------------------------------------------------


def test_partial_fills_when_capacity_is_ten_percent_then_fills_over_bars_and_sum_to_qty() -> None:
    ctx = handlers.Ctx(model=fillsim.CostModel(max_participation=D("0.1")))
    state, order = accept(started(ctx=ctx), req("big", qty=2_500), ctx)
    state = feed(state, bar(2, volume=10_000), bar(3, volume=10_000), ctx=ctx)
    mid = by_cid(state, "big")
    assert (mid.status, mid.filled_qty) == ("partially_filled", 2_000)
    state = feed(state, bar(4, volume=10_000), ctx=ctx)
    done = by_cid(state, "big")
    assert done.status == "filled"
    assert [f.qty for f in done.fills] == [1_000, 1_000, 500]
    assert sum(f.qty for f in done.fills) == done.qty == state.positions["AAPL"].qty
    # fees and costs are recorded per fill, and the arrival price is kept apart from the fill price
    assert all(f.arrival_price is not None and f.price > f.arrival_price for f in done.fills)


def test_participation_when_two_orders_share_a_bar_then_the_older_fills_first() -> None:
    ctx = handlers.Ctx(model=fillsim.CostModel(max_participation=D("0.1")))
    state, _ = accept(started(ctx=ctx), req("first", qty=800), ctx)
    state, _ = accept(state, req("second", qty=800), ctx)
    state = feed(state, bar(2, volume=10_000), ctx=ctx)
    assert (by_cid(state, "first").filled_qty, by_cid(state, "second").filled_qty) == (800, 200)


def test_ioc_when_capacity_short_then_fills_part_and_cancels_the_rest() -> None:
    ctx = handlers.Ctx(model=fillsim.CostModel(max_participation=D("0.1")))
    state, _ = accept(started(ctx=ctx), req("ioc", qty=1_500, time_in_force="ioc"), ctx)
    state = feed(state, bar(2, volume=10_000), ctx=ctx)
    done = by_cid(state, "ioc")
    assert (done.status, done.filled_qty) == ("canceled", 1_000)


def test_fok_when_capacity_short_then_nothing_fills() -> None:
    ctx = handlers.Ctx(model=fillsim.CostModel(max_participation=D("0.1")))
    state, _ = accept(started(ctx=ctx), req("fok", qty=1_500, time_in_force="fok"), ctx)
    state = feed(state, bar(2, volume=10_000), ctx=ctx)
    assert (by_cid(state, "fok").status, by_cid(state, "fok").filled_qty) == ("canceled", 0)


def test_opg_when_submitted_during_the_session_then_refused_and_before_the_open_then_fills_at_the_open() -> None:
    _, refused = handlers.submit(started(), req("late", time_in_force="opg"), CTX)
    assert isinstance(refused, Rejection) and refused.reason == MARKET_SESSION_RULE
    state = initial_state("acct", D(1_000_000))  # no bar yet: before the open
    state, _ = accept(state, req("opg", time_in_force="opg"))
    state = feed(state, bar(1, "100.37"))  # the first bar of the session (its open is the auction)
    done = by_cid(state, "opg")
    assert (done.status, done.filled_avg_price) == ("filled", D("100.37"))


def test_cls_when_intraday_bars_then_waits_and_fills_at_the_closing_bar_close() -> None:
    state, _ = accept(started(), req("cls", time_in_force="cls"))
    state = feed(state, bar(2), bar(3))
    assert by_cid(state, "cls").status == "new"
    state = feed(state, bar(LAST, "100", close="100.42"))
    assert by_cid(state, "cls").filled_avg_price == D("100.42")
    _, late = handlers.submit(feed(started(), bar(LAST - 5)), req("late-cls", time_in_force="cls"), CTX)
    assert isinstance(late, Rejection) and late.reason == MARKET_SESSION_RULE


# --- replace, close, rejections ---------------------------------------------------------------


def test_replace_when_open_limit_then_old_is_replaced_and_new_points_back() -> None:
    state, old = accept(started(), req("l1", type="limit", limit_price="95.00", time_in_force="gtc"))
    state, result = handlers.replace_order(
        state, old.id, ReplaceOrder(limit_price=D("96.00"), client_order_id="l2"), CTX
    )
    assert not isinstance(result, Rejection)
    closed, new = result
    assert (closed.status, closed.replaced_by) == ("replaced", new.id)
    assert (new.replaces, new.limit_price, new.qty, new.status) == (old.id, D("96.00"), 10, "new")
    assert state.working["AAPL"] == (new.id,)
    _, again = handlers.replace_order(state, old.id, ReplaceOrder(qty=5), CTX)
    assert isinstance(again, Rejection) and again.reason == ORDER_NOT_REPLACEABLE


def test_close_position_when_part_held_by_a_sell_then_only_the_rest_is_available() -> None:
    state, _ = accept(started(), req("b", qty=100))
    state = feed(state, bar(2))
    state, _ = accept(state, req("s", side="sell", qty=60, type="limit", limit_price="150.00"))
    _, refused = handlers.close_position(state, "AAPL", CTX)
    assert isinstance(refused, Rejection) and refused.reason == INSUFFICIENT_QTY
    assert "(requested: 100, available: 40)" in refused.message
    state, closing = handlers.close_position(state, "AAPL", CTX, percentage=D(40))
    assert isinstance(closing, ExchangeOrder)
    assert (closing.side, closing.qty, closing.type) == ("sell", 40, "market")


def test_submit_when_shorting_disabled_then_opening_sell_refused_but_closing_sell_allowed() -> None:
    ctx = handlers.Ctx(model=FRICTIONLESS, allow_shorting=False)
    state = started(ctx=ctx)
    _, refused = handlers.submit(state, req("short", side="sell"), ctx)
    assert isinstance(refused, Rejection) and refused.reason == SHORT_NOT_ALLOWED
    state, _ = accept(state, req("buy", qty=10), ctx)
    state = feed(state, bar(2), ctx=ctx)
    _, closing = handlers.submit(state, req("sell", side="sell", qty=10), ctx)
    assert isinstance(closing, ExchangeOrder)


def test_fees_when_selling_then_cash_pays_sec_and_taf_fees() -> None:
    ctx = handlers.Ctx(
        model=fillsim.CostModel(
            fixed_slippage_bps=D(0),
            vol_slippage_coef=D(0),
            impact_coef=D(0),
            latency_ms=0,
            latency_jitter_ms=0,
            max_participation=D(1),
        )
    )
    state, _ = accept(started(ctx=ctx), req("short", side="sell", qty=1_000), ctx)
    state = feed(state, bar(2, "50"), ctx=ctx)
    (fill,) = by_cid(state, "short").fills
    # 1,000 @ 49.97 (50 * 0.9995 = 49.975 -> down to 49.97): SEC 49,970 * 27.80 / 1e6 =
    # 1.389166; TAF 1,000 * 0.000166 = 0.166; total 1.555166 -> 1.56
    assert fill.price == D("49.97")
    assert fill.fee == D("1.56")
    assert state.account.cash == D(1_000_000) + D("49970") - D("1.56")


def test_close_all_when_orders_open_and_asked_then_cancels_them_and_closes_every_position() -> None:
    state, _ = accept(started(), req("aapl", qty=10))
    state, _ = accept(state, req("msft", symbol="MSFT", side="sell", qty=5))
    state = feed(state, bar(2), bar(2, symbol="MSFT"))
    state, resting = accept(state, req("rest", type="limit", limit_price="50.00", time_in_force="gtc"))

    state, canceled, results = handlers.close_all(state, CTX, cancel_orders=True)

    assert [o.id for o in canceled] == [resting.id]
    closing = {symbol: (o.side, o.qty, o.type) for symbol, o in results if isinstance(o, ExchangeOrder)}
    assert closing == {"AAPL": ("sell", 10, "market"), "MSFT": ("buy", 5, "market")}
    assert [symbol for symbol, _ in results] == ["AAPL", "MSFT"]
