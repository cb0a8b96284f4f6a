"""The OMS's pre-trade blocks (seed 000 §D, issue 5): one case per reason code that fails without
its check, and the case just inside each limit that passes."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

import msgspec
import pytest

from libs.config import ConfigError, load
from libs.contracts.oms import PretradeDecision
from libs.contracts.ops import AlertRaised
from libs.contracts.risk import OrderIntent
from libs.sessions import session_open_close
from services.oms import state as st
from services.oms.config import OmsConfig
from services.oms.handlers import (
    CANARY_MODE_ACTIVE,
    CANCEL_LOOP_BLOCK,
    DUPLICATE_ORDER_BLOCK,
    MARKET_CLOSED_BLOCK,
    MINUTE_NS,
    POSITION_LIMIT_BLOCK,
    PRICE_COLLAR_BLOCK,
    RATE_THROTTLE_BLOCK,
    pretrade,
    step,
)
from tests.factories import SESSION, Events, ctx, minute, oms_state

D = Decimal
CFG = OmsConfig(
    max_orders_per_min=3,
    max_symbol_orders_per_min=2,
    max_position_dollars=D(10000),
    cancel_loop_max=2,
    cancel_loop_window_bars=10,
    cancel_loop_block_bars=5,
)
CTX = ctx("oms", CFG)


@pytest.fixture
def f() -> Events:
    return Events(seed=83)


def run(events: list[object], state: st.OmsState | None = None) -> tuple[st.OmsState, list[PretradeDecision]]:
    state = state or oms_state()
    decided: list[PretradeDecision] = []
    for ev in events:
        state, out = step(state, ev, CTX)
        decided += [e for e in out if isinstance(e, PretradeDecision)]
    return state, decided


def limit(intent: OrderIntent, price: str, *, field: str = "limit_price", order_type: str = "limit") -> OrderIntent:
    return msgspec.structs.replace(intent, order_type=order_type, **{field: D(price)})


def at(intent: OrderIntent, ts: int) -> OrderIntent:
    return msgspec.structs.replace(intent, bar_ts=ts, ts_event=ts)


def test_market_closed_when_the_decision_bar_is_the_close_or_outside_a_session_then_blocked(f: Events) -> None:
    open_ns, close_ns = session_open_close(date.fromisoformat(SESSION))
    inside = at(f.intent("AAPL", "buy", 10, "50"), close_ns - MINUTE_NS)

    assert pretrade(oms_state(), inside, CFG)[0] == "APPROVED"
    reason, details = pretrade(oms_state(), at(inside, close_ns), CFG)
    assert (reason, details) == (MARKET_CLOSED_BLOCK, {"bar_ts": str(close_ns)})
    assert pretrade(oms_state(), at(inside, close_ns + 60 * MINUTE_NS), CFG)[0] == MARKET_CLOSED_BLOCK
    assert pretrade(oms_state(), at(inside, open_ns - MINUTE_NS), CFG)[0] == MARKET_CLOSED_BLOCK


@pytest.mark.parametrize(
    ("side", "price", "field", "order_type", "blocked"),
    [
        ("buy", "51.50", "limit_price", "limit", False),  # 3 % through the market: at the collar
        ("buy", "51.51", "limit_price", "limit", True),
        ("buy", "40.00", "limit_price", "limit", False),  # a resting bid far below: passive
        ("sell", "48.49", "limit_price", "limit", True),
        ("sell", "55.00", "limit_price", "limit", False),  # a take-profit far above: passive
        ("buy", "48.49", "stop_price", "stop", True),  # a buy stop below the market triggers at once
        ("buy", "52.00", "stop_price", "stop", False),
        ("sell", "51.51", "stop_price", "stop", True),
        ("sell", "45.00", "stop_price", "stop", False),  # a protective stop-loss far below: passive
    ],
)
def test_price_collar_when_a_price_is_far_through_the_market_then_blocked(
    f: Events, side: str, price: str, field: str, order_type: str, blocked: bool
) -> None:
    intent = limit(f.intent("AAPL", side, 10, "50"), price, field=field, order_type=order_type)

    reason, details = pretrade(oms_state(), intent, CFG)

    assert (reason == PRICE_COLLAR_BLOCK) is blocked, (reason, details)
    if blocked:
        assert details == {"price": field, "value": price, "last": "50", "max_pct": "0.03"}


def test_duplicate_when_the_same_symbol_side_qty_and_bar_come_under_another_id_then_blocked(f: Events) -> None:
    first = f.intent("AAPL", "buy", 10, "50", n=3)
    again = msgspec.structs.replace(first, client_order_id="CID-other", intent_id="other", event_id="e-other")
    other_qty = msgspec.structs.replace(again, qty=11, notional=D(550))

    state, (one, two) = run([first, again])

    assert (one.approved, two.reason, two.details) == (
        True,
        DUPLICATE_ORDER_BLOCK,
        {"same_order": "AAPL|buy|10|" + str(minute(3))},
    )
    assert pretrade(state, other_qty, CFG)[0] == "APPROVED"


def test_position_limit_when_an_order_takes_exposure_past_the_limit_then_blocked_and_reducing_passes(f: Events) -> None:
    first = f.intent("AAPL", "buy", 150, "50", n=1)  # 7,500 working
    more = f.intent("AAPL", "buy", 60, "50", n=2)  # 210 shares: 10,500 > 10,000
    just = f.intent("AAPL", "buy", 50, "50", n=3)  # 200 shares: exactly 10,000
    state, _ = run([first])

    reason, details = pretrade(state, more, CFG)

    assert (reason, details) == (
        POSITION_LIMIT_BLOCK,
        {"shares_after": "210", "dollars_after": "10500", "max": "10000"},
    )
    assert pretrade(state, just, CFG)[0] == "APPROVED"
    # from beyond the limit (a price move), an order toward flat always passes
    big = msgspec.structs.replace(state, positions={"AAPL": st.Position(qty=400, avg_price=D(50))})
    assert pretrade(big, f.intent("AAPL", "sell", 100, "50", n=4), CFG)[0] == "APPROVED"


def test_rate_throttle_when_a_minute_holds_too_many_orders_then_blocked_in_all_and_per_symbol(f: Events) -> None:
    same_bar = [f.intent(s, "buy", q, "50", n=5) for s, q in (("AAPL", 1), ("AAPL", 2), ("AAPL", 3))]
    state, decided = run(same_bar)

    assert [d.reason for d in decided] == ["APPROVED", "APPROVED", RATE_THROTTLE_BLOCK]
    assert decided[2].details == {"limit": "max_symbol_orders_per_min", "orders": "2", "max": "2"}
    # the global limit: a third symbol's order still fits, a fourth order does not
    state, more = run([f.intent("MSFT", "buy", 1, "50", n=5), f.intent("SPY", "buy", 1, "50", n=5)], state)
    assert [d.reason for d in more] == ["APPROVED", RATE_THROTTLE_BLOCK]
    assert more[1].details == {"limit": "max_orders_per_min", "orders": "3", "max": "3"}
    # a minute later the window has moved on
    assert pretrade(state, f.intent("AAPL", "buy", 4, "50", n=6), CFG)[0] == "APPROVED"


def test_cancel_loop_when_orders_of_a_symbol_are_canceled_unfilled_then_it_is_blocked_for_n_bars(f: Events) -> None:
    first, second = f.intent("AAPL", "buy", 10, "50", n=1), f.intent("AAPL", "buy", 11, "50", n=2)
    events = [first, f.submitted(first), f.canceled(first), second, f.submitted(second), f.canceled(second)]
    state, _ = run(events)

    blocked = pretrade(state, f.intent("AAPL", "buy", 12, "50", n=6), CFG)
    later = pretrade(state, f.intent("AAPL", "buy", 13, "50", n=7), CFG)
    other = pretrade(state, f.intent("MSFT", "buy", 12, "50", n=6), CFG)

    assert blocked == (CANCEL_LOOP_BLOCK, {"until_bar_ts": str(minute(7)), "canceled_unfilled": "2"})
    assert (later[0], other[0]) == ("APPROVED", "APPROVED")


def test_cancel_loop_when_a_fill_comes_between_the_cancels_then_no_block(f: Events) -> None:
    first, filled, second = (f.intent("AAPL", "buy", q, "50", n=n) for q, n in ((10, 1), (5, 2), (11, 3)))
    events = [
        first, f.submitted(first), f.canceled(first),
        filled, f.submitted(filled), f.fill(filled, last_qty=5, last_px="50", cum_qty=5),
        second, f.submitted(second), f.canceled(second),
    ]  # fmt: skip
    state, _ = run(events)

    assert pretrade(state, f.intent("AAPL", "buy", 12, "50", n=4), CFG)[0] == "APPROVED"


def test_canary_when_symbols_listed_then_only_they_trade_and_the_rest_are_denied_canary_mode_active(f: Events) -> None:
    cfg = msgspec.structs.replace(CFG, canary_symbols=("MSFT",))

    reason, details = pretrade(oms_state(), f.intent("AAPL", "buy", 10, "50"), cfg)

    assert (reason, details) == (CANARY_MODE_ACTIVE, {"canary_symbols": "MSFT"})
    assert pretrade(oms_state(), f.intent("MSFT", "buy", 10, "50"), cfg)[0] == "APPROVED"
    assert pretrade(oms_state(), f.intent("AAPL", "buy", 10, "50"), CFG)[0] == "APPROVED"  # off: all trade


def test_canary_when_set_by_the_seeds_key_then_the_oms_reads_it_and_a_conflict_is_refused() -> None:
    loaded = load(OmsConfig, section_prefix="KEEL_OMS_", env={"KEEL_CANARY_SYMBOLS": "AAPL,SPY"})

    assert loaded.section.canary_symbols == ("AAPL", "SPY")  # type: ignore[union-attr]
    with pytest.raises(ConfigError, match="KEEL_CANARY_SYMBOLS: conflicts with KEEL_OMS_CANARY_SYMBOLS"):
        load(
            OmsConfig, section_prefix="KEEL_OMS_", env={"KEEL_CANARY_SYMBOLS": "AAPL", "KEEL_OMS_CANARY_SYMBOLS": "SPY"}
        )


# --- stuck intents (issue 5 §6) ----------------------------------------------------------------


def test_stuck_intent_when_not_acknowledged_n_bars_after_its_decision_then_one_alert_naming_it(f: Events) -> None:
    stuck, working = f.intent("AAPL", "buy", 10, "50", n=1), f.intent("MSFT", "buy", 10, "50", n=1)
    state, _ = run([stuck, f.submitted(stuck), working, f.submitted(working), f.accepted(working)])

    _, early = step(state, f.watermark("risk", minute(5)), CTX)  # 4 bars: not yet
    state, late = step(state, f.watermark("risk", minute(6)), CTX)
    _, again = step(state, f.watermark("risk", minute(7)), CTX)

    assert [e for e in early if isinstance(e, AlertRaised)] == []
    (alert,) = [e for e in late if isinstance(e, AlertRaised)]
    assert (alert.code, alert.details) == (
        "STUCK_INTENT",
        {"client_order_id": stuck.client_order_id, "status": "SUBMITTED", "bars": "5"},
    )
    assert [e for e in again if isinstance(e, AlertRaised)] == []  # said once


@pytest.mark.parametrize("key", ["KEEL_OMS_PRICE_COLLAR_PCT", "KEEL_OMS_MAX_POSITION_DOLLARS"])
@pytest.mark.parametrize("value", ["0", "-1", "NaN"])
def test_config_when_a_limit_is_not_positive_then_refused_naming_the_key(key: str, value: str) -> None:
    with pytest.raises(ConfigError, match=key):
        load(OmsConfig, section_prefix="KEEL_OMS_", env={key: value})
