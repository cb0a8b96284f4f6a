"""The exchange's memory keeps open orders and recent days (handlers.evict_closed, handlers.recall).

Closed families leave memory at a session's first bar once their last change is older than
Ctx.retain_closed_ns; an open member pins its family; leaving never changes what matches, and a
recalled family is refused exactly as before it left.
"""

from __future__ import annotations

from datetime import date
from decimal import Decimal

import msgspec
import pytest

from libs import fillsim, sessions
from libs.contracts.marketdata import BarClosed
from libs.errors import InvariantViolation
from services.exchange import handlers
from services.exchange.config import ExchangeConfig
from services.exchange.state import (
    DUPLICATE_CLIENT_ORDER_ID,
    ExchangeOrder,
    ExchangeState,
    Rejection,
    SubmitOrder,
    initial_state,
)
from tests.support.exchange import make_bar

D = Decimal
MINUTE = sessions.MINUTE_NS
HOUR = 60 * MINUTE
DAY1, DAY2, DAY3 = date(2024, 3, 5), date(2024, 3, 6), date(2024, 3, 7)
MODEL = fillsim.CostModel(latency_ms=0, latency_jitter_ms=0, max_participation=D(1))
KEEP_ALL = handlers.Ctx(model=MODEL, retain_closed_ns=10**6 * HOUR)
ONE_HOUR = handlers.Ctx(model=MODEL, retain_closed_ns=HOUR)


def bar(day: date, minute: int, symbol: str = "AAPL", open: str = "100") -> BarClosed:
    return make_bar(symbol, minute, open, volume=100_000, day=day)


def submit(state: ExchangeState, cid: str, ctx: handlers.Ctx, **kw: object) -> ExchangeState:
    fields: dict[str, object] = {"symbol": "AAPL", "qty": 10, "side": "buy", "type": "market", "time_in_force": "day"}
    fields.update(kw)
    state, result = handlers.submit(state, SubmitOrder(client_order_id=cid, **fields), ctx)  # type: ignore[arg-type]
    assert isinstance(result, ExchangeOrder), result
    return state


def feed(state: ExchangeState, ctx: handlers.Ctx, *bars: BarClosed) -> ExchangeState:
    for b in bars:
        state, _ = handlers.on_bar(state, b, ctx)
    return state


def day_one(ctx: handlers.Ctx) -> ExchangeState:
    """A filled market order, a filled bracket whose gtc legs stay open, a day limit that
    expires at the close, an open gtc limit."""
    state = feed(initial_state("acct", D(1_000_000)), ctx, bar(DAY1, 1), bar(DAY1, 1, "MSFT", "200"))
    state = submit(state, "buy", ctx)
    state = submit(
        state,
        "bracket",
        ctx,
        time_in_force="gtc",
        order_class="bracket",
        take_profit_limit_price=D(150),
        stop_loss_stop_price=D(50),
    )
    state = submit(state, "day-limit", ctx, symbol="MSFT", type="limit", limit_price=D(100))
    state = submit(state, "gtc-limit", ctx, symbol="MSFT", type="limit", limit_price=D(90), time_in_force="gtc")
    return feed(state, ctx, bar(DAY1, 2), bar(DAY1, 2, "MSFT", "200"))


def cids(state: ExchangeState) -> set[str]:
    return set(state.by_client_id)


def test_evict_when_next_session_starts_then_old_closed_families_leave_and_open_ones_stay() -> None:
    state = day_one(ONE_HOUR)
    everything = cids(state)
    assert len(everything) == 6 and state.complete  # 4 orders and the bracket's 2 legs
    # later bars of the same session never evict, however old
    same_day = feed(state, ONE_HOUR, bar(DAY1, 200), bar(DAY1, 200, "MSFT", "200"))
    assert cids(same_day) == everything and same_day.complete

    rolled = feed(state, ONE_HOUR, bar(DAY2, 1))
    entry = rolled.orders[rolled.by_client_id["bracket"]]
    # the filled market order and the expired day limit left; the bracket stays whole (its legs
    # are open), so does the open gtc limit
    assert cids(rolled) == everything - {"buy", "day-limit"}
    assert entry.status == "filled" and all(rolled.orders[i].is_open for i in entry.legs)
    assert rolled.complete is False
    assert rolled.working == feed(state, KEEP_ALL, bar(DAY2, 1)).working
    assert rolled.next_seq == state.next_seq


def test_evict_when_retention_longer_than_the_gap_then_nothing_leaves() -> None:
    state = day_one(KEEP_ALL)
    rolled = feed(state, KEEP_ALL, bar(DAY2, 1), bar(DAY3, 1))
    assert cids(rolled) == cids(state) and rolled.complete


def test_evict_when_leaving_then_matching_account_and_positions_are_unchanged() -> None:
    later = [
        bar(d, m, sym, px) for d in (DAY2, DAY3) for m in (1, 2, 3) for sym, px in (("AAPL", "40"), ("MSFT", "80"))
    ]
    kept, full = feed(day_one(ONE_HOUR), ONE_HOUR, *later), feed(day_one(KEEP_ALL), KEEP_ALL, *later)
    assert not kept.complete and full.complete
    assert len(kept.orders) < len(full.orders)
    # the stop-loss leg and the gtc limit filled on day 2 either way
    entry = full.orders[full.by_client_id["bracket"]]
    assert "bracket" not in kept.by_client_id  # closed on day 2, left at day 3's first bar
    assert [(full.orders[i].leg_role, full.orders[i].status) for i in entry.legs] == [
        ("take_profit", "canceled"),
        ("stop_loss", "filled"),
    ]
    assert {s: p.qty for s, p in kept.positions.items()} == {"AAPL": 10, "MSFT": 10}
    assert (kept.account, kept.positions, kept.working, kept.marks) == (
        full.account,
        full.positions,
        full.working,
        full.marks,
    )
    assert {i: o for i, o in full.orders.items() if i in kept.orders} == kept.orders


def test_recall_when_a_left_family_comes_back_then_a_duplicate_client_id_is_refused_as_before() -> None:
    full = feed(day_one(KEEP_ALL), KEEP_ALL, bar(DAY2, 1))
    kept = feed(day_one(ONE_HOUR), ONE_HOUR, bar(DAY2, 1))
    again = SubmitOrder(client_order_id="buy", symbol="AAPL", qty=1, side="buy", type="market", time_in_force="day")
    _, before = handlers.submit(full, again, ONE_HOUR)
    assert isinstance(before, Rejection) and before.reason == DUPLICATE_CLIENT_ORDER_ID
    # without the store's family, memory alone would take it (the edges recall first)
    _, unaware = handlers.submit(kept, again, ONE_HOUR)
    assert isinstance(unaware, ExchangeOrder)
    family = [full.orders[full.by_client_id["buy"]]]
    recalled = handlers.recall(kept, family)
    _, refused = handlers.submit(recalled, again, ONE_HOUR)
    assert refused == before
    assert handlers.recall(recalled, family) is recalled  # already there: unchanged


def test_recall_when_an_open_order_is_offered_then_refused() -> None:
    state = day_one(KEEP_ALL)
    kept = feed(day_one(ONE_HOUR), ONE_HOUR, bar(DAY2, 1))
    open_order = state.orders[state.by_client_id["gtc-limit"]]
    stranger = handlers.evict_closed(kept, 0)  # nothing more leaves: cutoff before everything
    assert stranger is kept
    without = ExchangeState(account=kept.account, clock=kept.clock, complete=False)
    with pytest.raises(InvariantViolation, match="closed orders"):
        handlers.recall(without, [open_order])


def test_config_when_retention_is_below_an_hour_then_refused() -> None:
    assert msgspec.convert({"retain_closed_hours": 48}, ExchangeConfig).retain_closed_hours == 48
    with pytest.raises(msgspec.ValidationError, match="retain_closed_hours"):
        msgspec.convert({"retain_closed_hours": 0}, ExchangeConfig)
