"""Risk pure core: given targets and OMS positions -> when a target -> then a capped OrderIntent."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from decimal import Decimal

import msgspec
import pytest

from libs import costmodel
from libs.config import CommonConfig
from libs.contracts.base import Event, derive_id
from libs.contracts.codec import encode
from libs.contracts.oms import PositionChanged
from libs.contracts.ops import AlertRaised, Watermark
from libs.contracts.risk import EntryBlocked, OrderIntent, SleeveShare
from libs.contracts.tca import CostModelUpdated, SymbolCost
from libs.decide import Ctx
from services.risk.config import RiskConfig
from services.risk.handlers import MAX_CID_LEN, client_order_id, one_side_at_a_time, step
from services.risk.state import InFlight, RiskState, SymbolRisk
from tests.factories import NOW_NS, SESSION, Events, ctx, minute

D = Decimal
CFG = RiskConfig()
CTX = ctx("risk", CFG)


@pytest.fixture
def f() -> Events:
    return Events(seed=23)


def given(events: Iterable[object], *, context=CTX, state: RiskState | None = None) -> tuple[RiskState, list[Event]]:
    state = state or RiskState()
    out: list[Event] = []
    for ev in events:
        state, emitted = step(state, ev, context)
        out.extend(emitted)
    return state, out


def intents(events: Iterable[Event]) -> list[OrderIntent]:
    return [e for e in events if isinstance(e, OrderIntent)]


def filled(f: Events, symbol: str, qty: int, *, intents: int = 1) -> PositionChanged:
    """The OMS's report that the first `intents` orders filled into a position of qty."""
    return f.position(symbol, qty=qty, open_order_qty=0, intents_seen=intents)


# --- netting and caps ------------------------------------------------------------------------


def test_target_when_first_for_symbol_then_intent_buys_the_target(f: Events) -> None:
    ev = f.target("AAPL", 100, "50")

    _, out = step(RiskState(), ev, CTX)

    (intent,) = intents(out)
    assert (intent.symbol, intent.side, intent.qty) == ("AAPL", "buy", 100)
    assert intent.causation_id == ev.event_id
    assert intent.correlation_id == ev.correlation_id
    assert intent.ts_event == ev.ts_event and intent.ts_init == NOW_NS
    assert intent.bar_ts == ev.bar_ts
    assert intent.strategy == CFG.strategy


def test_target_when_short_then_intent_sells(f: Events) -> None:
    _, out = step(RiskState(), f.target("AAPL", -80, "50"), CTX)

    (intent,) = intents(out)
    assert (intent.side, intent.qty) == ("sell", 80)


def test_target_when_second_sleeve_disagrees_then_intent_orders_the_netted_gap(f: Events) -> None:
    state, _ = given([f.target("AAPL", 100, "50", sleeve="trend"), filled(f, "AAPL", 100)])

    _, out = step(state, f.target("AAPL", -30, "50", sleeve="meanrev", n=2), CTX)

    (intent,) = intents(out)
    assert (intent.side, intent.qty) == ("sell", 30)  # net 70, expected 100
    assert intent.sleeves == (SleeveShare(sleeve="meanrev", shares=-30), SleeveShare(sleeve="trend", shares=100))


def test_target_when_sleeves_cancel_out_then_position_is_taken_flat(f: Events) -> None:
    state, _ = given([f.target("AAPL", 100, "50", sleeve="trend"), filled(f, "AAPL", 100)])

    after, out = step(state, f.target("AAPL", -100, "50", sleeve="meanrev", n=2), CTX)

    (intent,) = intents(out)
    assert (intent.side, intent.qty) == ("sell", 100)
    assert after.symbols["AAPL"].expected_position() == 0


def test_target_when_sleeve_updates_then_only_its_own_share_is_replaced(f: Events) -> None:
    state, _ = given(
        [
            f.target("AAPL", 100, "50", sleeve="trend"),
            f.target("AAPL", 50, "50", sleeve="meanrev", n=2),
            filled(f, "AAPL", 150, intents=2),
        ]
    )

    after, out = step(state, f.target("AAPL", 20, "50", sleeve="trend", n=3), CTX)

    (intent,) = intents(out)
    assert (intent.side, intent.qty) == ("sell", 80)  # net 70 from 150
    assert after.symbols["AAPL"].sleeves == {"trend": 20, "meanrev": 50}


def test_target_when_above_per_symbol_dollars_then_capped(f: Events) -> None:
    _, out = step(RiskState(), f.target("AAPL", 10_000, "30"), CTX)

    (intent,) = intents(out)
    assert intent.qty == 833  # floor(25_000 / 30)
    assert intent.notional <= CFG.max_symbol_dollars


def test_target_when_short_above_per_symbol_dollars_then_capped_symmetrically(f: Events) -> None:
    _, out = step(RiskState(), f.target("AAPL", -10_000, "30"), CTX)

    (intent,) = intents(out)
    assert (intent.side, intent.qty) == ("sell", 833)


def test_target_when_gross_cap_nearly_used_by_other_symbols_then_capped_to_remaining_room(f: Events) -> None:
    context = ctx("risk", RiskConfig(gross_cap_dollars=D(30_000)))
    state, _ = given([f.target("AAPL", -200, "100")], context=context)  # $20k short counts gross

    _, out = step(state, f.target("MSFT", 200, "100", n=2), context)

    (intent,) = intents(out)
    assert intent.qty == 100  # $10k of room left


def test_target_when_gross_cap_fully_used_then_nothing_is_ordered(f: Events) -> None:
    context = ctx("risk", RiskConfig(gross_cap_dollars=D(20_000)))
    state, _ = given([f.target("AAPL", 200, "100")], context=context)

    _, out = step(state, f.target("MSFT", 200, "100", n=2), context)

    assert intents(out) == []


def test_target_when_order_is_dust_then_no_intent(f: Events) -> None:
    _, out = step(RiskState(), f.target("AAPL", 1, "99.99"), CTX)

    assert out == []


def test_target_when_order_equals_min_dollars_then_intent_is_emitted(f: Events) -> None:
    _, out = step(RiskState(), f.target("AAPL", 2, "50"), CTX)

    (intent,) = intents(out)
    assert intent.notional == CFG.min_order_dollars


def test_target_when_change_from_expected_is_dust_then_no_intent(f: Events) -> None:
    state, _ = given([f.target("AAPL", 100, "50")])

    _, out = step(state, f.target("AAPL", 101, "50", n=2), CTX)

    assert out == []


# --- expected position -----------------------------------------------------------------------


def test_target_when_same_target_repeats_before_oms_reports_then_no_second_intent(f: Events) -> None:
    state, first = given([f.target("AAPL", 100, "50")])

    after, out = step(state, f.target("AAPL", 100, "50", n=2), CTX)

    assert len(intents(first)) == 1
    assert out == []
    assert after.symbols["AAPL"].expected_position() == 100


def test_target_when_oms_reports_working_and_filled_then_expected_counts_both(f: Events) -> None:
    state, _ = given(
        [
            f.target("AAPL", 100, "50"),
            f.position("AAPL", qty=40, open_order_qty=60, intents_seen=1, n=2),
        ]
    )

    _, out = step(state, f.target("AAPL", 100, "50", n=3), CTX)

    assert out == []


def test_target_when_rest_of_order_was_canceled_then_gap_is_ordered_again(f: Events) -> None:
    state, _ = given(
        [
            f.target("AAPL", 100, "50"),
            f.position("AAPL", qty=40, open_order_qty=0, intents_seen=1, n=2),
        ]
    )

    _, out = step(state, f.target("AAPL", 100, "50", n=3), CTX)

    (intent,) = intents(out)
    assert (intent.side, intent.qty) == ("buy", 60)


def test_position_when_oms_has_seen_the_intent_then_in_flight_is_pruned(f: Events) -> None:
    state, _ = given([f.target("AAPL", 100, "50"), f.target("AAPL", 300, "50", n=2)])
    assert [fl.qty for fl in state.symbols["AAPL"].in_flight] == [100, 200]

    after, out = step(state, f.position("AAPL", qty=0, open_order_qty=100, intents_seen=1, n=3), CTX)

    sym = after.symbols["AAPL"]
    assert out == []
    assert [(fl.index, fl.qty) for fl in sym.in_flight] == [(1, 200)]
    assert (sym.position, sym.open_order_qty, sym.oms_intents_seen) == (0, 100, 1)
    assert sym.expected_position() == 300


def test_position_when_oms_denied_the_intent_then_target_is_ordered_again(f: Events) -> None:
    state, _ = given(
        [
            f.target("AAPL", 100, "50"),
            f.position("AAPL", qty=0, open_order_qty=0, intents_seen=1, n=2),  # denied: nothing works
        ]
    )

    _, out = step(state, f.target("AAPL", 100, "50", n=3), CTX)

    (intent,) = intents(out)
    assert (intent.side, intent.qty) == ("buy", 100)


def test_position_when_older_than_one_applied_then_ignored(f: Events) -> None:
    state, _ = given(
        [
            f.target("AAPL", 100, "50"),
            f.target("AAPL", 300, "50", n=2),
            f.position("AAPL", qty=100, open_order_qty=200, intents_seen=2, n=3),
        ]
    )

    after, out = step(state, f.position("AAPL", qty=0, open_order_qty=100, intents_seen=1, n=2), CTX)

    assert out == []
    assert after == state
    assert after.symbols["AAPL"].expected_position() == 300


# --- the intent itself -----------------------------------------------------------------------


def test_target_when_ordered_then_arrival_price_is_the_reference_price(f: Events) -> None:
    ev = f.target("AAPL", 100, "187.23")

    _, out = step(RiskState(), ev, CTX)

    (intent,) = intents(out)
    assert intent.arrival_price == ev.reference_price == D("187.23")
    assert intent.notional == 100 * D("187.23")


def test_target_when_ordered_then_client_order_id_is_cidv2_of_the_intent(f: Events) -> None:
    ev = f.target("AAPL", 100, "50", horizon="5m")

    _, out = step(RiskState(), ev, CTX)

    (intent,) = intents(out)
    parts = intent.client_order_id.split(":")
    assert parts[:6] == ["CIDv2", CFG.strategy, "AAPL", "buy", "20240305", "5m"]
    assert len(parts[6]) == 12
    assert parts[7:] == ["100", CFG.cid_version]
    assert intent.intent_id == derive_id("intent", intent.client_order_id)
    assert intent.event_id == derive_id("risk.order_intent.v1", intent.client_order_id)


def test_target_when_replayed_then_intents_are_byte_identical(f: Events) -> None:
    stream = [
        f.target("AAPL", 100, "50"),
        f.target("MSFT", -40, "300", n=2),
        f.position("AAPL", qty=100, open_order_qty=0, intents_seen=1, n=3),
        f.target("AAPL", 300, "51", n=4),
    ]

    _, first = given(stream)
    _, second = given(stream)

    assert len(intents(first)) == 3
    assert [encode(e) for e in first] == [encode(e) for e in second]


def test_target_when_two_intents_for_same_symbol_and_qty_then_client_order_ids_differ(f: Events) -> None:
    state, first = given([f.target("AAPL", 100, "50")])
    state, _ = given([f.position("AAPL", qty=0, open_order_qty=0, intents_seen=1, n=2)], state=state)

    _, second = step(state, f.target("AAPL", 100, "50", n=3), CTX)

    (a,) = intents(first)
    (b,) = intents(second)
    assert a.qty == b.qty == 100
    assert a.client_order_id != b.client_order_id


def test_client_order_id_when_built_then_follows_cidv2_field_order() -> None:
    cid = client_order_id(
        strategy="keel",
        symbol="AAPL",
        side="buy",
        session="20240305",
        horizon="1m",
        signal_hash="abcdef012345",
        qty=100,
        version="1",
    )

    assert cid == "CIDv2:keel:AAPL:buy:20240305:1m:abcdef012345:100:1"


def test_client_order_id_when_called_twice_then_same_id() -> None:
    args = dict(
        strategy="keel",
        symbol="MSFT",
        side="sell",
        session="20240305",
        horizon="1m",
        signal_hash="0123456789ab",
        qty=7,
        version="2",
    )

    assert client_order_id(**args) == client_order_id(**args)  # type: ignore[arg-type]


def test_client_order_id_when_strategy_is_200_chars_then_at_most_128_and_other_fields_kept() -> None:
    strategy = "s" * 200
    tail = ":AAPL:buy:20240305:1m:abcdef012345:100:1"

    cid = client_order_id(
        strategy=strategy,
        symbol="AAPL",
        side="buy",
        session="20240305",
        horizon="1m",
        signal_hash="abcdef012345",
        qty=100,
        version="1",
    )

    assert len(cid) <= MAX_CID_LEN == 128
    assert cid.startswith("CIDv2:s")
    assert cid.endswith(tail)
    assert cid == "CIDv2:" + strategy[: MAX_CID_LEN - len("CIDv2:") - len(tail)] + tail


def test_client_order_id_when_fixed_fields_alone_exceed_128_then_raises_value_error() -> None:
    # horizon comes off the wire (TargetProposed.horizon has no length bound); shortening the
    # strategy cannot make room, and the function must say so instead of recursing forever
    with pytest.raises(ValueError):
        client_order_id(
            strategy="keel",
            symbol="AAPL",
            side="buy",
            session="20240305",
            horizon="h" * 130,
            signal_hash="abcdef012345",
            qty=100,
            version="1",
        )


# --- watermark -------------------------------------------------------------------------------


def test_watermark_when_signal_reports_bar_done_then_forwarded_as_risk(f: Events) -> None:
    wm = f.watermark("signal", minute(3))

    state, out = step(RiskState(), wm, CTX)

    (fwd,) = out
    assert isinstance(fwd, Watermark)
    assert (fwd.source, fwd.bar_ts, fwd.causation_id) == ("risk", minute(3), wm.event_id)
    assert state.last_watermark == minute(3)


def test_intents_when_numbered_then_risk_seq_counts_per_symbol(f: Events) -> None:
    _, out = given([f.target("AAPL", 100, "50", n=1), f.target("AAPL", 300, "50", n=2)])

    assert [i.risk_seq for i in out if isinstance(i, OrderIntent)] == [1, 2]


def test_position_when_oms_skipped_a_lost_intent_then_in_flight_is_cleared(f: Events) -> None:
    # intent 1 never reached the OMS (say it was dead-lettered); the OMS handled intent 2 and
    # reports risk_seq 2 as seen: nothing may stay in flight for ever
    state, _ = given([f.target("AAPL", 100, "50", n=1), f.target("AAPL", 300, "50", n=2)])
    assert state.symbols["AAPL"].expected_position() == 300

    after, _ = step(state, f.position("AAPL", qty=0, open_order_qty=200, intents_seen=2), CTX)

    assert after.symbols["AAPL"].in_flight == ()
    assert after.symbols["AAPL"].expected_position() == 200


# --- order policy: how a target becomes an order ------------------------------------------------


def policy(**keys: object) -> Ctx:
    return ctx("risk", RiskConfig(**keys))  # type: ignore[arg-type]


def one_intent(f: Events, context: Ctx, shares: int = 100, price: str = "50") -> OrderIntent:
    _, out = step(RiskState(), f.target("AAPL", shares, price), context)
    (intent,) = intents(out)
    return intent


FAMILY = (
    "order_type",
    "time_in_force",
    "order_class",
    "limit_price",
    "stop_price",
    "trail_price",
    "trail_percent",
    "take_profit_limit_price",
    "stop_loss_stop_price",
    "stop_loss_limit_price",
)


def family(intent: OrderIntent) -> dict[str, object]:
    return {k: v for k in FAMILY if (v := getattr(intent, k)) is not None}


def test_target_when_default_policy_then_simple_market_day_order_without_prices(f: Events) -> None:
    intent = one_intent(f, CTX)

    assert family(intent) == {"order_type": "market", "time_in_force": "day", "order_class": "simple"}


@pytest.mark.parametrize(
    ("keys", "shares", "expected"),
    [
        ({"order_type": "limit"}, 100, {"order_type": "limit", "limit_price": D("50.05")}),
        ({"order_type": "limit"}, -100, {"order_type": "limit", "limit_price": D("49.95")}),
        ({"order_type": "limit", "limit_offset_bps": D(0)}, 100, {"order_type": "limit", "limit_price": D("50.00")}),
        ({"order_type": "stop"}, 100, {"order_type": "stop", "stop_price": D("50.25")}),
        ({"order_type": "stop"}, -100, {"order_type": "stop", "stop_price": D("49.75")}),
        # the stop-limit's limit sits beyond its own stop, so it can fill once triggered
        (
            {"order_type": "stop_limit"},
            100,
            {"order_type": "stop_limit", "stop_price": D("50.25"), "limit_price": D("50.31")},
        ),
        (
            {"order_type": "stop_limit"},
            -100,
            {"order_type": "stop_limit", "stop_price": D("49.75"), "limit_price": D("49.70")},
        ),
        (
            {"order_type": "trailing_stop", "trail_percent": D("1.5")},
            -100,
            {"order_type": "trailing_stop", "trail_percent": D("1.5")},
        ),
    ],
    ids=[
        "limit-buy",
        "limit-sell",
        "limit-at-close",
        "stop-buy",
        "stop-sell",
        "stop_limit-buy",
        "stop_limit-sell",
        "trail",
    ],
)
def test_target_when_order_type_configured_then_priced_from_the_decision_close(f, keys, shares, expected) -> None:
    intent = one_intent(f, policy(**keys), shares)

    assert family(intent) == {"time_in_force": "day", "order_class": "simple", **expected}


@pytest.mark.parametrize(
    ("side_shares", "expected"),
    [
        (100, {"take_profit_limit_price": D("50.50"), "stop_loss_stop_price": D("49.75")}),
        (-100, {"take_profit_limit_price": D("49.50"), "stop_loss_stop_price": D("50.25")}),
    ],
    ids=["buy-long", "sell-short"],
)
def test_target_when_bracket_then_exit_legs_bracket_the_close_on_the_profit_side(f, side_shares, expected) -> None:
    context = policy(order_class="bracket", take_profit_bps=D(100), stop_loss_bps=D(50), time_in_force="gtc")

    intent = one_intent(f, context, side_shares)

    assert family(intent) == {"order_type": "market", "time_in_force": "gtc", "order_class": "bracket", **expected}


def test_target_when_oco_sell_then_limit_pair_exits_the_long_without_a_top_level_limit(f: Events) -> None:
    context = policy(order_type="limit", order_class="oco", take_profit_bps=D(100), stop_loss_bps=D(50))
    state, _ = given([f.target("AAPL", 100, "50"), filled(f, "AAPL", 100)], context=context)

    _, out = step(state, f.target("AAPL", 0, "50", n=2), context)

    (intent,) = intents(out)
    assert intent.side == "sell"
    assert family(intent) == {
        "order_type": "limit",
        "time_in_force": "day",
        "order_class": "oco",
        "take_profit_limit_price": D("50.50"),
        "stop_loss_stop_price": D("49.75"),
    }


@pytest.mark.parametrize(
    ("leg", "expected"),
    [
        ({"take_profit_bps": D(100)}, {"take_profit_limit_price": D("50.50")}),
        ({"stop_loss_bps": D(50)}, {"stop_loss_stop_price": D("49.75")}),
    ],
    ids=["take-profit", "stop-loss"],
)
def test_target_when_oto_then_the_one_configured_exit_leg(f, leg, expected) -> None:
    intent = one_intent(f, policy(order_type="limit", order_class="oto", **leg))

    assert family(intent) == {
        "order_type": "limit",
        "time_in_force": "day",
        "order_class": "oto",
        "limit_price": D("50.05"),
        **expected,
    }


@pytest.mark.parametrize(
    ("keys", "shares", "price", "expected"),
    [
        ({"order_type": "limit"}, 100, "187.25", {"limit_price": D("187.44")}),  # 187.43725 up to the cent
        ({"order_type": "limit"}, -100, "187.25", {"limit_price": D("187.06")}),  # 187.06275 down to the cent
        ({"order_type": "limit"}, -300, "0.5", {"limit_price": D("0.4995")}),  # sub-dollar: $0.0001 tick
        (
            {"order_class": "bracket", "take_profit_bps": D(1), "stop_loss_bps": D(1)},
            300,
            "0.5",
            {"take_profit_limit_price": D("0.5001"), "stop_loss_stop_price": D("0.4999")},
        ),
    ],
    ids=["limit-buy-up", "limit-sell-down", "sub-dollar", "tiny-legs-never-meet"],
)
def test_target_when_price_falls_between_ticks_then_rounded_away_from_the_close(f, keys, shares, price, expected):
    intent = one_intent(f, policy(**keys), shares, price)

    assert {k: getattr(intent, k) for k in expected} == expected


def test_target_when_policy_replayed_then_intents_are_byte_identical(f: Events) -> None:
    context = policy(order_type="limit", order_class="bracket", take_profit_bps=D(80), stop_loss_bps=D(40))
    stream = [f.target("AAPL", 100, "50.03"), f.target("MSFT", -40, "300.17", n=2), f.target("AAPL", 300, "51", n=3)]

    _, first = given(stream, context=context)
    _, second = given(stream, context=context)

    assert len(intents(first)) == 3
    assert [encode(e) for e in first] == [encode(e) for e in second]


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ({"allow_market": False}, "KEEL_RISK_ORDER_TYPE=market: expected a non-market order type"),
        ({"order_class": "bracket", "take_profit_bps": D(100)}, "KEEL_RISK_ORDER_CLASS=bracket: expected both"),
        ({"order_type": "limit", "order_class": "oco", "stop_loss_bps": D(50)}, "KEEL_RISK_ORDER_CLASS=oco: expected both"),
        (
            {"order_class": "oco", "take_profit_bps": D(100), "stop_loss_bps": D(50)},
            "KEEL_RISK_ORDER_CLASS=oco: expected KEEL_RISK_ORDER_TYPE=limit",
        ),
        ({"order_class": "oto"}, "KEEL_RISK_ORDER_CLASS=oto: expected exactly one of"),
        ({"take_profit_bps": D(100)}, "KEEL_RISK_ORDER_CLASS=simple: expected no KEEL_RISK_TAKE_PROFIT_BPS"),
        ({"stop_loss_bps": D(0), "order_class": "oto"}, "KEEL_RISK_STOP_LOSS_BPS: expected 0 < bps < 10000"),
        ({"limit_offset_bps": D(-1)}, "KEEL_RISK_LIMIT_OFFSET_BPS: expected 0 <= bps < 10000"),
        ({"trail_percent": D(100)}, "KEEL_RISK_TRAIL_PERCENT: expected 0 < percent < 100"),
        (
            {"order_type": "limit", "order_class": "bracket", "take_profit_bps": D(5), "stop_loss_bps": D(50)},
            "KEEL_RISK_TAKE_PROFIT_BPS: expected more than KEEL_RISK_LIMIT_OFFSET_BPS",
        ),
    ],
    ids=["market-forbidden", "bracket-one-leg", "oco-one-leg", "oco-market", "oto-no-leg", "simple-with-leg",
         "zero-stop-loss", "negative-offset", "trail-100", "take-profit-inside-entry"],
)  # fmt: skip
def test_config_when_order_policy_cannot_work_then_error_names_the_key(keys, message) -> None:
    with pytest.raises(ValueError) as e:
        RiskConfig(**keys)  # type: ignore[arg-type]

    assert str(e.value).startswith(message)


def test_config_when_market_forbidden_then_other_order_types_still_allowed(f: Events) -> None:
    intent = one_intent(f, policy(allow_market=False, order_type="limit"))

    assert intent.order_type == "limit"


# --- one side at a time (Alpaca never reverses a position with one order) -------------------


def test_target_when_it_flips_a_long_then_only_the_close_is_ordered_and_the_short_follows_once_flat(
    f: Events,
) -> None:
    state, _ = given([f.target("AAPL", 100, "50"), filled(f, "AAPL", 100)])

    state, flip = step(state, f.target("AAPL", -60, "50", n=2), CTX)
    state, _ = step(state, f.position("AAPL", qty=0, open_order_qty=0, intents_seen=2, n=3), CTX)
    _, short = step(state, f.target("AAPL", -60, "50", n=4), CTX)

    assert [(i.side, i.qty) for i in intents(flip)] == [("sell", 100)]
    assert [(i.side, i.qty) for i in intents(short)] == [("sell", 60)]


def test_target_when_an_order_the_other_way_is_still_working_then_nothing_until_it_ends(f: Events) -> None:
    state, first = given([f.target("AAPL", 100, "50")])  # the buy is in flight, nothing filled yet

    state, waiting = step(state, f.target("AAPL", -50, "50", n=2), CTX)
    state, _ = step(state, f.position("AAPL", qty=100, open_order_qty=0, intents_seen=1, n=3), CTX)
    _, after = step(state, f.target("AAPL", -50, "50", n=4), CTX)

    assert [(i.side, i.qty) for i in intents(first)] == [("buy", 100)]
    assert intents(waiting) == []
    assert [(i.side, i.qty) for i in intents(after)] == [("sell", 100)]  # to flat first


@pytest.mark.parametrize(
    ("position", "open_qty", "in_flight", "delta", "expected"),
    [
        (0, 0, 0, 40, 40),  # flat, nothing working: as asked
        (0, 0, 0, -40, -40),
        (100, 0, 0, -30, -30),  # a reduction within the position
        (100, 0, 0, -160, -100),  # a flip: the close only
        (-80, 0, 0, 200, 80),
        (100, -60, 0, -100, -40),  # 60 already working against the position: 40 left to close
        (100, -100, 0, -50, 0),  # all of it held by working orders: nothing
        (0, 50, 0, -20, 0),  # a buy still working: no sell meanwhile
        (0, 0, 30, -20, 0),  # nor while one is in flight to the OMS
        (0, -50, 0, -20, -20),  # the same side as the working order: fine
        (100, 50, 0, 10, 10),  # adding to the position beside a working add
        (100, 50, 0, -150, -100),  # a working add (a buy stop above) does not stop the close
        (100, 0, 0, 0, 0),
    ],
)
def test_one_side_at_a_time_when_position_and_working_orders_vary_then_broker_acceptable_part(
    position: int, open_qty: int, in_flight: int, delta: int, expected: int
) -> None:
    flights = (InFlight(index=0, qty=in_flight),) if in_flight else ()
    sym = SymbolRisk(position=position, open_order_qty=open_qty, in_flight=flights)

    assert one_side_at_a_time(sym, delta) == expected


@pytest.mark.parametrize("order_class", ["bracket", "oto"])
def test_target_when_bracket_policy_closes_a_position_then_simple_order_and_the_next_entry_bracketed(
    f: Events, order_class: str
) -> None:
    legs = {"take_profit_bps": D(100), "stop_loss_bps": D(50)} if order_class == "bracket" else {"stop_loss_bps": D(50)}
    context = policy(order_class=order_class, **legs)
    state, (entry,) = given([f.target("AAPL", 100, "50")], context=context)
    state, _ = step(state, filled(f, "AAPL", 100), context)

    state, out = step(state, f.target("AAPL", -100, "50", n=2), context)
    (close,) = intents(out)
    state, _ = step(state, f.position("AAPL", qty=0, open_order_qty=0, intents_seen=2, n=3), context)
    _, out = step(state, f.target("AAPL", -100, "50", n=4), context)
    (short,) = intents(out)

    # the close carries no legs: they would open the other side once it filled
    assert (entry.side, entry.order_class) == ("buy", order_class)
    assert (close.side, close.qty, family(close)) == (
        "sell",
        100,
        {"order_type": "market", "time_in_force": "day", "order_class": "simple"},
    )
    assert (short.side, short.order_class, short.stop_loss_stop_price) == ("sell", order_class, D("50.25"))


def test_one_side_at_a_time_when_both_sides_work_then_the_closing_side_decides_not_the_net() -> None:
    # long 100; a buy stop for 50 and a sell limit for 100 work at once: net -50, but every share
    # is already held by the sell, so nothing more can be sold
    sym = SymbolRisk(position=100, open_order_qty=-50, open_buy_qty=50, open_sell_qty=100)

    assert sym.working_by_side() == (50, 100)
    assert one_side_at_a_time(sym, -50) == 0


def test_target_when_the_close_is_a_leftover_below_the_minimum_then_it_still_goes(f: Events) -> None:
    # long 1 share at 50 (below min_order_dollars) and the target flips: the close must go, or
    # the flip would wait for ever
    state, _ = given([f.target("AAPL", 1, "50"), filled(f, "AAPL", 1)])

    state, out = step(state, f.target("AAPL", -100, "50", n=2), CTX)

    assert CFG.min_order_dollars > 50
    assert [(i.side, i.qty) for i in intents(out)] == [("sell", 1)]


def test_target_when_a_reduction_is_below_the_minimum_and_not_a_close_then_nothing(f: Events) -> None:
    state, _ = given([f.target("AAPL", 100, "50"), filled(f, "AAPL", 100)])

    _, out = step(state, f.target("AAPL", 99, "50", n=2), CTX)

    assert intents(out) == []


# --- the cost gate (seed 000 §H, seed 002 C-TCA-01) ------------------------------------------

STRICT = dataclasses.replace(CTX, common=CommonConfig(block_trading_if_tca_stale=True))


def costly(f: Events, symbol: str, shares: int, price: str, *, sigma: str, volume: int, session: str = SESSION):
    """A target on a bar with the given volatility (bps) and volume."""
    return msgspec.structs.replace(
        f.target(symbol, shares, price, session=session), sigma_bps=D(sigma), bar_volume=volume
    )


def model(effective: str, *symbols: SymbolCost, out_of_bounds: tuple[str, ...] = ()) -> CostModelUpdated:
    return CostModelUpdated(
        event_id=derive_id("model", effective),
        correlation_id="c",
        causation_id="c",
        ts_event=minute(0),
        ts_init=minute(0),
        session="",
        effective_session=effective,
        calibrated_ts=minute(0),
        default=costmodel.PRIOR,
        symbols=symbols,
        out_of_bounds=out_of_bounds,
    )


def blocks(events: Iterable[Event]) -> list[EntryBlocked]:
    return [e for e in events if isinstance(e, EntryBlocked)]


def test_entry_when_expected_cost_within_the_gate_then_the_intent_carries_it(f: Events) -> None:
    _, out = step(RiskState(), costly(f, "AAPL", 100, "50", sigma="10", volume=10_000), CTX)

    (intent,) = intents(out)
    # the prior: spread 5/2 + slippage 0.5 + 0.0798 * 10 + 0.7 * 10 * sqrt(100 / 10000)
    assert intent.expected_cost_bps == D("4.4980")  # 2.5 + 0.5 + 0.798 + 0.7
    assert intent.sigma_bps == D("10")


def test_entry_when_expected_cost_above_max_then_cost_gate_blocks_it(f: Events) -> None:
    # a thin, violent bar: 0.0798 * 400 + 0.7 * 400 * sqrt(0.5) = 229.9 bps, far above 50
    ev = costly(f, "AAPL", 100, "50", sigma="400", volume=200)

    state, out = step(RiskState(), ev, CTX)

    assert intents(out) == []
    (block,) = blocks(out)
    assert (block.reason_code, block.symbol, block.side, block.qty) == ("COST_GATE_BLOCK", "AAPL", "buy", 100)
    assert block.expected_cost_bps is not None and block.expected_cost_bps > CFG.max_entry_cost_bps
    assert block.sleeves == (SleeveShare(sleeve="ema_x", shares=100),)
    assert state.symbols["AAPL"].in_flight == ()  # nothing ordered, nothing in flight


def test_entry_when_max_entry_cost_raised_then_the_same_order_goes(f: Events) -> None:
    loose = ctx("risk", RiskConfig(max_entry_cost_bps=D(300)))

    _, out = step(RiskState(), costly(f, "AAPL", 100, "50", sigma="400", volume=200), loose)

    assert len(intents(out)) == 1 and blocks(out) == []


def test_reduction_when_expensive_then_never_blocked(f: Events) -> None:
    state, _ = given([f.target("AAPL", 100, "50"), filled(f, "AAPL", 100)])

    _, out = step(state, costly(f, "AAPL", 0, "50", sigma="400", volume=200), CTX)

    (intent,) = intents(out)
    assert (intent.side, intent.qty) == ("sell", 100)
    assert intent.expected_cost_bps is not None and intent.expected_cost_bps > CFG.max_entry_cost_bps


def test_entry_when_calibrated_spread_is_wide_then_the_symbol_is_gated_by_its_own_estimate(f: Events) -> None:
    wide = SymbolCost(
        symbol="PENNY", spread_bps=D(110), slippage_bps=D(2), vol_coef=D("0.1"), impact_coef=D("0.7"), samples=50
    )
    state, _ = given([model(SESSION, wide)])

    _, out = given([f.target("PENNY", 100, "50"), f.target("AAPL", 100, "50")], state=state)

    assert [b.symbol for b in blocks(out)] == ["PENNY"]  # 55 + 2 bps > 50
    assert [i.symbol for i in intents(out)] == ["AAPL"]  # the default: 3 bps


def test_entry_when_model_stale_and_blocking_configured_then_tca_stale_block(f: Events) -> None:
    old = model("2024-03-01")  # a Friday: Monday 4th and Tuesday 5th passed since

    _, out = given([old, f.target("AAPL", 100, "50", session="2024-03-05")], context=STRICT)

    assert intents(out) == []
    (block,) = blocks(out)
    assert block.reason_code == "TCA_STALE_BLOCK"
    assert "2 sessions old" in block.message
    assert any(isinstance(e, AlertRaised) and e.code == "TCA_STALE" for e in out)


def test_entry_when_model_stale_and_blocking_off_then_it_goes_with_one_alert_a_session(f: Events) -> None:
    targets = [f.target(s, 100, "50", session="2024-03-05") for s in ("AAPL", "MSFT", "SPY")]

    state, out = given([model("2024-03-01"), *targets])

    assert len(intents(out)) == 3 and blocks(out) == []
    (alert,) = [e for e in out if isinstance(e, AlertRaised)]
    assert (alert.code, alert.details["session"]) == ("TCA_STALE", "2024-03-05")
    _, next_day = step(state, f.target("QQQ", 100, "50", session="2024-03-06"), CTX)
    assert [e.code for e in next_day if isinstance(e, AlertRaised)] == ["TCA_STALE"]  # and again the next


def test_entry_when_model_one_session_old_then_not_stale(f: Events) -> None:
    # the calibration for the new session comes at its first bar: a day-old model is expected
    _, out = given([model("2024-03-04"), f.target("AAPL", 100, "50", session="2024-03-05")], context=STRICT)

    assert len(intents(out)) == 1
    assert [e for e in out if isinstance(e, AlertRaised)] == []


def test_entry_when_no_model_for_a_whole_session_then_stale(f: Events) -> None:
    state, first = given([f.target("AAPL", 100, "50", session="2024-03-04")], context=STRICT)
    assert len(intents(first)) == 1  # the first session: TCA's first model is due during it

    _, out = step(state, f.target("MSFT", 100, "50", session="2024-03-05"), STRICT)

    assert [b.reason_code for b in blocks(out)] == ["TCA_STALE_BLOCK"]


def test_entry_when_symbol_out_of_bounds_and_blocking_configured_then_tca_stale_block(f: Events) -> None:
    penny = msgspec.structs.replace(costmodel.PRIOR, symbol="PENNY", clamped=("spread_bps",))
    state, _ = given([model(SESSION, penny, out_of_bounds=("PENNY",))], context=STRICT)

    _, out = given([f.target("PENNY", 100, "50"), f.target("AAPL", 100, "50")], state=state, context=STRICT)

    assert [(b.symbol, b.reason_code) for b in blocks(out)] == [("PENNY", "TCA_STALE_BLOCK")]
    assert [i.symbol for i in intents(out)] == ["AAPL"]


def test_entry_when_the_default_estimate_is_out_of_bounds_then_symbols_priced_by_it_are_blocked(f: Events) -> None:
    own = msgspec.structs.replace(costmodel.PRIOR, symbol="AAPL")
    state, _ = given([model(SESSION, own, out_of_bounds=("*",))], context=STRICT)

    _, out = given([f.target("MSFT", 100, "50"), f.target("AAPL", 100, "50")], state=state, context=STRICT)

    assert [(b.symbol, b.reason_code) for b in blocks(out)] == [("MSFT", "TCA_STALE_BLOCK")]
    assert [i.symbol for i in intents(out)] == ["AAPL"]  # priced by its own, bounded estimate


def test_cost_model_when_older_than_the_one_held_then_ignored() -> None:
    newer, older = model("2024-03-05"), model("2024-03-04")

    state, _ = given([newer, older])

    assert state.cost_model == newer
