"""OMS pure core: given intents, commands and execution reports -> then decisions, positions, alerts."""

from __future__ import annotations

from collections.abc import Iterable
from decimal import Decimal

import msgspec
import pytest

from libs.contracts.base import Event, derive_id
from libs.contracts.codec import encode
from libs.contracts.control import CancelAllOrders
from libs.contracts.execution import OrderStatusUnknown
from libs.contracts.oms import PositionChanged, PretradeDecision
from libs.contracts.ops import AlertRaised, Watermark
from libs.contracts.risk import OrderIntent
from services.oms import state as st
from services.oms.config import OmsConfig
from services.oms.handlers import (
    DUPLICATE_ORDER_BLOCK,
    KILL_SWITCH_BLOCK,
    ORDER_SIZE_BLOCK,
    apply_fill,
    pretrade,
    step,
)
from tests.factories import NOW_NS, Events, ctx, minute, oms_state

D = Decimal
CFG = OmsConfig()
CTX = ctx("oms", CFG, config_sha256="sha-of-oms-config")


@pytest.fixture
def f() -> Events:
    return Events(seed=37)


def given(events: Iterable[object], *, state: st.OmsState | None = None) -> tuple[st.OmsState, list[Event]]:
    state = state or oms_state()
    out: list[Event] = []
    for ev in events:
        state, emitted = step(state, ev, CTX)
        out.extend(emitted)
    return state, out


def of(cls: type, events: Iterable[Event]) -> list:
    return [e for e in events if isinstance(e, cls)]


def status(state: st.OmsState, intent: OrderIntent) -> str:
    return state.intents[intent.intent_id].status


# --- pre-trade -------------------------------------------------------------------------------


def assert_pruned_at_next_watermark(f: Events, state: st.OmsState, intent: OrderIntent) -> None:
    """A terminal intent leaves the OMS's working set at the next risk watermark."""
    pruned, _ = step(state, f.watermark("risk", intent.bar_ts + 60_000_000_000), CTX)
    assert intent.intent_id not in pruned.intents
    assert intent.client_order_id not in pruned.by_cid


def test_intent_when_within_limits_then_approved_and_position_reports_working_qty(f: Events) -> None:
    intent = f.intent("AAPL", "buy", 100, "50")

    state, out = step(oms_state(), intent, CTX)

    decision, pos = out
    assert isinstance(decision, PretradeDecision)
    assert decision.approved is True and decision.reason == "APPROVED" and decision.details == {}
    assert (decision.intent_id, decision.client_order_id) == (intent.intent_id, intent.client_order_id)
    assert (decision.symbol, decision.side, decision.qty, decision.arrival_price) == ("AAPL", "buy", 100, D("50"))
    assert decision.causation_id == intent.event_id and decision.ts_init == NOW_NS
    assert decision.config_sha256 == "sha-of-oms-config"
    assert isinstance(pos, PositionChanged)
    assert (pos.symbol, pos.qty, pos.open_order_qty, pos.intents_seen) == ("AAPL", 0, 100, 1)
    assert status(state, intent) == st.SUBMITTING
    assert state.by_cid == {intent.client_order_id: intent.intent_id}


def test_intent_when_sell_approved_then_open_order_qty_is_negative(f: Events) -> None:
    _, out = step(oms_state(), f.intent("AAPL", "sell", 30, "50"), CTX)

    (pos,) = of(PositionChanged, out)
    assert pos.open_order_qty == -30


def test_intent_when_a_buy_and_a_sell_work_at_once_then_position_report_splits_them_by_side(f: Events) -> None:
    state, _ = given([f.intent("AAPL", "buy", 50, "50", n=1)])

    _, out = step(state, f.intent("AAPL", "sell", 100, "50", n=2), CTX)

    (pos,) = of(PositionChanged, out)
    assert (pos.open_order_qty, pos.open_buy_qty, pos.open_sell_qty) == (-50, 50, 100)


def test_intent_when_second_for_symbol_then_intents_seen_counts_both(f: Events) -> None:
    state, _ = given([f.intent("AAPL", "buy", 100, "50", n=1)])

    _, out = step(state, f.intent("AAPL", "buy", 20, "50", n=2), CTX)

    (pos,) = of(PositionChanged, out)
    assert (pos.intents_seen, pos.open_order_qty) == (2, 120)


def test_intent_when_shares_above_max_then_order_size_block(f: Events) -> None:
    intent = f.intent("AAPL", "buy", CFG.max_order_shares + 1, "1")  # $10,001: inside the dollar limit

    state, out = step(oms_state(), intent, CTX)

    decision, pos = out
    assert decision.approved is False
    assert decision.reason == ORDER_SIZE_BLOCK
    assert decision.details["limit"] == "max_order_shares"
    assert (pos.open_order_qty, pos.intents_seen) == (0, 1)
    assert status(state, intent) == st.REJECTED
    assert_pruned_at_next_watermark(f, state, intent)


def test_intent_when_dollars_above_max_then_order_size_block(f: Events) -> None:
    intent = f.intent("AAPL", "buy", 1_000, "50.01")  # $50,010 with 1,000 shares: inside the share limit

    _, out = step(oms_state(), intent, CTX)

    decision, pos = out
    assert decision.approved is False
    assert decision.reason == ORDER_SIZE_BLOCK
    assert decision.details == {"limit": "max_order_dollars", "notional": "50010.00", "max": "50000"}
    assert pos.open_order_qty == 0


def test_intent_when_exactly_at_limits_then_approved(f: Events) -> None:
    _, out = step(oms_state(), f.intent("AAPL", "buy", 1_000, "50"), CTX)

    assert of(PretradeDecision, out)[0].approved is True


def test_intent_when_trading_halted_then_kill_switch_block(f: Events) -> None:
    state, halted = given([f.halt("desk says stop")])

    _, out = step(state, f.intent("AAPL", "buy", 10, "50", n=2), CTX)

    (alert,) = halted
    assert isinstance(alert, AlertRaised) and alert.code == "TRADING_HALTED" and alert.severity == "critical"
    decision, pos = out
    assert decision.approved is False
    assert decision.reason == KILL_SWITCH_BLOCK
    assert decision.details == {"halt_reason": "desk says stop"}
    assert pos.open_order_qty == 0


def test_intent_when_trading_resumed_after_halt_then_approved_again(f: Events) -> None:
    state, out = given([f.halt(n=1), f.resume(n=2)])

    after, decided = step(state, f.intent("AAPL", "buy", 10, "50", n=3), CTX)

    assert [a.code for a in of(AlertRaised, out)] == ["TRADING_HALTED", "TRADING_RESUMED"]
    assert after.halted is False
    assert of(PretradeDecision, decided)[0].reason == "APPROVED"


def test_pretrade_when_state_already_holds_client_order_id_then_duplicate_order_block(f: Events) -> None:
    intent = f.intent("AAPL", "buy", 10, "50")
    state = st.OmsState(by_cid={intent.client_order_id: "some-other-intent"})

    reason, details = pretrade(state, intent, CFG)

    assert reason == DUPLICATE_ORDER_BLOCK
    assert details == {"client_order_id": intent.client_order_id}
    assert pretrade(oms_state(), intent, CFG)[0] == "APPROVED"


def test_intent_when_same_intent_again_then_nothing_happens(f: Events) -> None:
    intent = f.intent("AAPL", "buy", 10, "50")
    state, _ = given([intent])

    after, out = step(state, intent, CTX)

    assert out == []
    assert after is state


def test_intent_when_replayed_then_decisions_are_byte_identical(f: Events) -> None:
    stream = [f.intent("AAPL", "buy", 10, "50", n=1), f.halt(n=2), f.intent("AAPL", "sell", 10, "50", n=3)]

    _, first = given(stream)
    _, second = given(stream)

    assert [encode(e) for e in first] == [encode(e) for e in second]
    assert of(PretradeDecision, first)[0].event_id == derive_id("oms.pretrade_decision.v1", stream[0].intent_id)


def test_cancel_all_when_requested_then_alert_and_no_state_change(f: Events) -> None:
    state, _ = given([f.intent()])

    after, out = step(state, CancelAllOrders(event_id="c1", reason="eod"), CTX)

    assert [a.code for a in out] == ["CANCEL_ALL_REQUESTED"]  # type: ignore[attr-defined]
    assert after is state


# --- lifecycle -------------------------------------------------------------------------------


def test_reports_when_order_fills_in_two_parts_then_status_walks_the_table_and_position_moves(f: Events) -> None:
    intent = f.intent("AAPL", "buy", 100, "50")
    state, _ = given([intent])
    seen = [status(state, intent)]

    state, out_sub = step(state, f.submitted(intent), CTX)
    seen.append(status(state, intent))
    state, out_ack = step(state, f.accepted(intent, broker_order_id="bo-9"), CTX)
    seen.append(status(state, intent))
    state, out_part = step(state, f.fill(intent, last_qty=40, last_px="50.10", cum_qty=40), CTX)
    seen.append(status(state, intent))
    state, out_fill = step(state, f.fill(intent, last_qty=60, last_px="50.20", cum_qty=100, avg_px="50.16"), CTX)
    seen.append(status(state, intent))

    assert seen == [st.SUBMITTING, st.SUBMITTED, st.ACKED, st.PARTIALLY_FILLED, st.FILLED]
    assert out_sub == [] and out_ack == []  # nothing the position view cares about changed
    (p1,) = out_part
    assert (p1.qty, p1.open_order_qty, p1.avg_price) == (40, 60, D("50.10"))
    (p2,) = out_fill
    assert (p2.qty, p2.open_order_qty, p2.avg_price, p2.intents_seen) == (100, 0, D("50.16"), 1)
    final = state.intents[intent.intent_id]
    assert (final.filled_qty, final.avg_fill_price, final.broker_order_id) == (100, D("50.16"), "bo-1")
    assert_pruned_at_next_watermark(f, state, intent)


def test_accepted_when_reported_then_broker_order_id_is_recorded(f: Events) -> None:
    intent = f.intent()
    state, _ = given([intent, f.submitted(intent)])

    after, _ = step(state, f.accepted(intent, broker_order_id="bo-42"), CTX)

    assert after.intents[intent.intent_id].broker_order_id == "bo-42"


def test_accepted_when_before_submitted_report_then_acked(f: Events) -> None:
    intent = f.intent()
    state, _ = given([intent])

    after, out = step(state, f.accepted(intent), CTX)

    assert out == []
    assert status(after, intent) == st.ACKED


@pytest.mark.parametrize(
    ("terminal", "before", "report"),
    [
        (st.CANCELED, ["submitted", "accepted"], lambda f, i: f.canceled(i)),
        (st.REJECTED, ["submitted"], lambda f, i: f.rejected(i)),
        (st.EXPIRED, ["submitted", "accepted"], lambda f, i: f.expired(i)),
        (st.FAILED, [], lambda f, i: f.submit_failed(i)),
    ],
    ids=["canceled", "rejected", "expired", "failed"],
)
def test_report_when_order_ends_then_open_order_qty_goes_to_zero(f: Events, terminal, before, report) -> None:
    intent = f.intent("AAPL", "buy", 100, "50")
    state, _ = given([intent, *(getattr(f, name)(intent) for name in before)])

    after, out = step(state, report(f, intent), CTX)

    (pos,) = out
    assert isinstance(pos, PositionChanged)
    assert (pos.symbol, pos.qty, pos.open_order_qty) == ("AAPL", 0, 0)
    assert status(after, intent) == terminal
    assert_pruned_at_next_watermark(f, after, intent)


def test_canceled_when_partly_filled_then_position_keeps_fills_and_working_is_zero(f: Events) -> None:
    intent = f.intent("AAPL", "sell", 100, "50")
    state, _ = given([intent, f.submitted(intent), f.fill(intent, last_qty=30, last_px="49.9", cum_qty=30)])

    after, out = step(state, f.canceled(intent, cum_qty=30), CTX)

    (pos,) = out
    assert (pos.qty, pos.open_order_qty) == (-30, 0)
    assert status(after, intent) == st.CANCELED


def test_rejected_when_reported_then_reason_is_recorded(f: Events) -> None:
    intent = f.intent()
    state, _ = given([intent, f.submitted(intent)])

    after, _ = step(state, f.rejected(intent, reason="no shortable shares"), CTX)

    assert after.intents[intent.intent_id].reason == "no shortable shares"


def test_report_when_partly_filled_order_rejected_by_the_venue_then_rejected_and_fills_kept(f: Events) -> None:
    intent = f.intent(qty=100)
    fill = f.fill(intent, last_qty=40, last_px="50", cum_qty=40)
    state, _ = given([intent, f.submitted(intent), f.accepted(intent), fill])

    after, out = step(state, f.rejected(intent, reason="broker status rejected", code="BROKER_REJECTED"), CTX)

    ended = after.intents[intent.intent_id]
    assert (ended.status, ended.filled_qty, ended.working_qty) == (st.REJECTED, 40, 0)
    assert after.positions[intent.symbol].qty == 40
    assert not [e for e in out if isinstance(e, AlertRaised)]


def test_report_when_transition_not_in_table_then_invalid_transition_alert_and_state_unchanged(f: Events) -> None:
    intent = f.intent()
    state, _ = given([intent, f.submitted(intent), f.accepted(intent)])

    after, out = step(state, f.submitted(intent), CTX)  # ACKED -> submitted again

    (alert,) = out
    assert isinstance(alert, AlertRaised)
    assert alert.code == "OMS_INVALID_TRANSITION"
    assert alert.details == {
        "client_order_id": intent.client_order_id,
        "status": st.ACKED,
        "report": "exec.order_submitted",
    }
    assert alert.source == "oms"
    assert after is state


def test_fill_when_order_not_yet_submitted_then_invalid_transition_alert_and_position_still_moves(f: Events) -> None:
    # a fill is a fact at the broker: the lifecycle anomaly is alerted, the shares are counted
    intent = f.intent()
    state, _ = given([intent])

    after, out = step(state, f.fill(intent, last_qty=10, last_px="50", cum_qty=10), CTX)

    alert, pos = out
    assert alert.code == "OMS_INVALID_TRANSITION"  # type: ignore[union-attr]
    assert isinstance(pos, PositionChanged) and pos.qty == 10
    assert after.positions["AAPL"].qty == 10
    assert after.intents[intent.intent_id].status == st.SUBMITTING  # the lifecycle did not move


def test_fill_when_order_was_pruned_then_unknown_order_alert_and_position_moves_once(f: Events) -> None:
    intent = f.intent()
    state, _ = given([intent, f.submitted(intent), f.accepted(intent), f.canceled(intent)])
    state, _ = step(state, f.watermark("risk", intent.bar_ts + 60_000_000_000), CTX)
    late = f.fill(intent, last_qty=100, last_px="50", cum_qty=100)

    after, out = step(state, late, CTX)
    again, out_again = step(after, late, CTX)

    assert [type(e) for e in out] == [AlertRaised, PositionChanged]
    assert after.positions["AAPL"].qty == 100
    assert (again.positions["AAPL"].qty, out_again) == (100, [])


def test_report_when_client_order_id_unknown_then_unknown_order_alert(f: Events) -> None:
    stranger = f.intent("AAPL", cid="CIDv2:other:AAPL:buy:20240305:1m:000000000000:1:1")

    after, out = step(oms_state(), f.accepted(stranger), CTX)

    (alert,) = out
    assert isinstance(alert, AlertRaised)
    assert alert.code == "OMS_UNKNOWN_ORDER"
    assert alert.details["client_order_id"] == stranger.client_order_id
    assert alert.details["report"] == "exec.order_accepted"
    assert after == oms_state()


def test_fill_when_same_execution_id_twice_then_position_moves_once(f: Events) -> None:
    intent = f.intent("AAPL", "buy", 100, "50")
    fill = f.fill(intent, last_qty=40, last_px="50", cum_qty=40)
    state, _ = given([intent, f.submitted(intent), fill])

    after, out = step(state, fill, CTX)

    assert out == []
    assert after is state
    assert after.positions["AAPL"].qty == 40


def test_fill_when_final_fill_repeats_then_position_moves_once(f: Events) -> None:
    intent = f.intent("AAPL", "buy", 100, "50")
    fill = f.fill(intent, last_qty=100, last_px="50", cum_qty=100)
    state, _ = given([intent, f.submitted(intent), fill])

    after, out = step(state, fill, CTX)

    assert after.positions["AAPL"].qty == 100
    assert out == []  # a repeat is not news: no position report, no invalid-transition alert


def test_fill_when_it_races_a_cancel_then_position_moves_and_order_is_filled(f: Events) -> None:
    # state.py: "canceled -> filled happens in real markets: the fill raced the cancel at the venue"
    intent = f.intent("AAPL", "buy", 100, "50")
    state, _ = given([intent, f.submitted(intent), f.accepted(intent), f.canceled(intent)])

    after, out = step(state, f.fill(intent, last_qty=100, last_px="50", cum_qty=100), CTX)

    assert [getattr(e, "code", type(e).__name__) for e in out] == ["PositionChanged"]
    assert after.positions["AAPL"].qty == 100
    assert status(after, intent) == st.FILLED


def test_fill_when_it_races_an_expiry_then_position_moves_and_order_is_filled(f: Events) -> None:
    intent = f.intent("AAPL", "buy", 100, "50")
    state, _ = given([intent, f.submitted(intent), f.accepted(intent), f.expired(intent)])

    after, _ = step(state, f.fill(intent, last_qty=100, last_px="50", cum_qty=100), CTX)

    assert after.positions.get("AAPL", st.Position()).qty == 100
    assert status(after, intent) == st.FILLED


# --- UNKNOWN: the submit's outcome was lost ----------------------------------------------------


def status_unknown(f: Events, intent: OrderIntent) -> OrderStatusUnknown:
    """Execution's report that the submit's outcome is not known."""
    return OrderStatusUnknown(
        event_id=derive_id("test.order_status_unknown", intent.client_order_id),
        correlation_id=intent.correlation_id,
        causation_id=intent.event_id,
        ts_event=intent.ts_event,
        ts_init=NOW_NS,
        intent_id=intent.intent_id,
        client_order_id=intent.client_order_id,
        symbol=intent.symbol,
        side=intent.side,
        reason="POST /v2/orders: ReadTimeout",
    )


def test_status_unknown_when_submitted_then_unknown_with_reason_and_still_working(f: Events) -> None:
    intent = f.intent("AAPL", "buy", 100, "50")
    state, _ = given([intent, f.submitted(intent)])

    after, out = step(state, status_unknown(f, intent), CTX)

    assert out == []  # the quantity is still working: the position view did not change
    assert status(after, intent) == st.UNKNOWN
    assert after.intents[intent.intent_id].reason == "POST /v2/orders: ReadTimeout"
    assert after.intents[intent.intent_id].working_qty == 100


def test_status_unknown_when_later_adopted_and_filled_then_acked_then_filled(f: Events) -> None:
    intent = f.intent("AAPL", "buy", 100, "50")
    state, _ = given([intent, f.submitted(intent), status_unknown(f, intent)])

    state, _ = step(state, f.accepted(intent), CTX)
    acked = status(state, intent)
    state, out = step(state, f.fill(intent, last_qty=100, last_px="50.05", cum_qty=100), CTX)

    assert (acked, status(state, intent)) == (st.ACKED, st.FILLED)
    (pos,) = out
    assert (pos.qty, pos.open_order_qty) == (100, 0)


@pytest.mark.parametrize(
    ("report", "expected"),
    [
        (lambda f, i: f.fill(i, last_qty=40, last_px="50", cum_qty=40), st.PARTIALLY_FILLED),
        (lambda f, i: f.fill(i, last_qty=100, last_px="50", cum_qty=100), st.FILLED),
        (lambda f, i: f.canceled(i), st.CANCELED),
        (lambda f, i: f.expired(i), st.EXPIRED),
        (lambda f, i: f.rejected(i), st.REJECTED),
    ],
    ids=["partial", "filled", "canceled", "expired", "rejected"],
)
def test_status_unknown_when_resolved_order_reports_then_it_moves_on(f: Events, report, expected) -> None:
    intent = f.intent("AAPL", "buy", 100, "50")
    state, _ = given([intent, f.submitted(intent), status_unknown(f, intent)])

    after, out = step(state, report(f, intent), CTX)

    assert status(after, intent) == expected
    assert of(AlertRaised, out) == []


# --- the transition table as data ------------------------------------------------------------

STATUSES = {s for s, _ in st.TRANSITIONS} | set(st.TRANSITIONS.values())
NON_TERMINAL = sorted({s for s, _ in st.TRANSITIONS} - st.TERMINAL)
# state.py documents these post-terminal edges: a fill that raced the cancel/expiry at the venue
DOCUMENTED_TERMINAL_EDGES = {
    (st.CANCELED, st.PARTIAL_EV),
    (st.CANCELED, st.FILLED_EV),
    (st.EXPIRED, st.FILLED_EV),
}


def reachable(start: str) -> set[str]:
    seen, todo = {start}, [start]
    while todo:
        s = todo.pop()
        for (frm, _), to in st.TRANSITIONS.items():
            if frm == s and to not in seen:
                seen.add(to)
                todo.append(to)
    return seen


@pytest.mark.parametrize("status_", NON_TERMINAL)
def test_transitions_when_non_terminal_then_a_terminal_status_is_reachable(status_: str) -> None:
    assert reachable(status_) & st.TERMINAL


def test_transitions_when_listed_then_non_terminal_keys_are_the_live_lifecycle() -> None:
    assert NON_TERMINAL == sorted([st.ACKED, st.CREATED, st.PARTIALLY_FILLED, st.SUBMITTED, st.SUBMITTING, st.UNKNOWN])
    assert STATUSES >= st.TERMINAL


@pytest.mark.parametrize(
    ("key", "target"),
    [(k, v) for k, v in st.TRANSITIONS.items() if k[0] in st.TERMINAL],
    ids=lambda x: "-".join(x) if isinstance(x, tuple) else x,
)
def test_transitions_when_from_terminal_then_only_documented_edges_to_terminal(
    key: tuple[str, str], target: str
) -> None:
    assert key in DOCUMENTED_TERMINAL_EDGES
    assert target in st.TERMINAL


def test_transitions_when_terminal_then_never_back_to_a_working_status() -> None:
    for (frm, _), to in st.TRANSITIONS.items():
        if frm in st.TERMINAL:
            assert to in st.TERMINAL, (frm, to)
    assert {k for k in st.TRANSITIONS if k[0] in st.TERMINAL} == DOCUMENTED_TERMINAL_EDGES


# --- apply_fill ------------------------------------------------------------------------------


def test_apply_fill_when_opening_then_average_is_fill_price() -> None:
    pos = apply_fill(st.Position(), "buy", 100, D("10"))

    assert (pos.qty, pos.avg_price, pos.realized_pnl) == (100, D("10"), D(0))


def test_apply_fill_when_adding_then_average_is_weighted() -> None:
    pos = apply_fill(st.Position(qty=100, avg_price=D("10")), "buy", 200, D("10.3"))

    assert (pos.qty, pos.avg_price, pos.realized_pnl) == (300, D("10.2"), D(0))


def test_apply_fill_when_average_repeats_then_quantized_to_micro() -> None:
    pos = apply_fill(st.Position(qty=1, avg_price=D("10")), "buy", 2, D("10.01"))

    assert str(pos.avg_price) == "10.006667"


def test_apply_fill_when_reducing_long_then_pnl_is_realised_and_average_kept() -> None:
    pos = apply_fill(st.Position(qty=100, avg_price=D("10")), "sell", 40, D("12"))

    assert (pos.qty, pos.avg_price, pos.realized_pnl) == (60, D("10"), D("80"))


def test_apply_fill_when_closing_then_flat_with_zero_average() -> None:
    pos = apply_fill(st.Position(qty=100, avg_price=D("10"), realized_pnl=D("5")), "sell", 100, D("9.5"))

    assert (pos.qty, pos.avg_price, pos.realized_pnl) == (0, D(0), D("-45"))


def test_apply_fill_when_flipping_through_zero_then_remainder_opens_at_fill_price() -> None:
    pos = apply_fill(st.Position(qty=100, avg_price=D("10")), "sell", 150, D("9"))

    assert (pos.qty, pos.avg_price, pos.realized_pnl) == (-50, D("9"), D("-100"))


def test_apply_fill_when_opening_short_then_negative_qty_at_fill_price() -> None:
    pos = apply_fill(st.Position(), "sell", 100, D("20"))

    assert (pos.qty, pos.avg_price) == (-100, D("20"))


def test_apply_fill_when_adding_to_short_then_average_is_weighted() -> None:
    pos = apply_fill(st.Position(qty=-100, avg_price=D("20")), "sell", 100, D("22"))

    assert (pos.qty, pos.avg_price) == (-200, D("21"))


def test_apply_fill_when_covering_short_below_entry_then_profit_is_realised() -> None:
    pos = apply_fill(st.Position(qty=-100, avg_price=D("20")), "buy", 30, D("18"))

    assert (pos.qty, pos.avg_price, pos.realized_pnl) == (-70, D("20"), D("60"))


def test_apply_fill_when_short_flips_to_long_then_remainder_opens_at_fill_price() -> None:
    pos = apply_fill(st.Position(qty=-50, avg_price=D("20")), "buy", 80, D("21"))

    assert (pos.qty, pos.avg_price, pos.realized_pnl) == (30, D("21"), D("-50"))


# --- watermark -------------------------------------------------------------------------------


def test_watermark_when_from_risk_then_forwarded_and_terminal_intents_pruned(f: Events) -> None:
    done = f.intent("AAPL", "buy", 10, "50", n=1)
    working = f.intent("MSFT", "buy", 10, "50", n=2)
    state, _ = given(
        [done, f.submitted(done), f.fill(done, last_qty=10, last_px="50", cum_qty=10), working, f.submitted(working)]
    )
    wm = f.watermark("risk", minute(2))

    after, out = step(state, wm, CTX)

    (fwd,) = out
    assert isinstance(fwd, Watermark)
    assert (fwd.source, fwd.bar_ts, fwd.causation_id) == ("oms", minute(2), wm.event_id)
    assert set(after.intents) == {working.intent_id}
    assert after.last_watermark == minute(2)
    assert after.positions == state.positions and after.intents_seen == state.intents_seen


def test_watermark_when_from_another_source_then_ignored(f: Events) -> None:
    done = f.intent("AAPL", "buy", 10, "50")
    state, _ = given([done, f.submitted(done), f.fill(done, last_qty=10, last_px="50", cum_qty=10)])

    after, out = step(state, f.watermark("execution", minute(2)), CTX)

    assert out == []
    assert after is state


def test_intent_when_resent_after_its_intent_was_pruned_then_duplicate_order_block(f: Events) -> None:
    intent = f.intent("AAPL", "buy", 100, "50")
    state, _ = given([intent, f.submitted(intent), f.accepted(intent), f.canceled(intent)])
    state, _ = step(state, f.watermark("risk", intent.bar_ts + 60_000_000_000), CTX)
    assert intent.intent_id not in state.intents

    after, out = step(state, intent, CTX)

    (decision,) = out
    assert isinstance(decision, PretradeDecision)
    assert (decision.approved, decision.reason) == (False, "DUPLICATE_ORDER_BLOCK")
    assert after.intents_seen == state.intents_seen  # the re-send is not a new intent
    original = derive_id("oms.pretrade_decision.v1", intent.intent_id)
    assert decision.event_id != original  # it must not vanish as a duplicate of the approval


def test_intent_when_risk_seq_skips_one_then_intents_seen_is_the_highest_seq(f: Events) -> None:
    first = msgspec.structs.replace(f.intent("AAPL", n=1), risk_seq=1)
    third = msgspec.structs.replace(f.intent("AAPL", n=3), risk_seq=3)  # intent 2 never arrived

    _, out = given([first, third])

    reports = [e for e in out if isinstance(e, PositionChanged)]
    assert [p.intents_seen for p in reports] == [1, 3]


# --- order family: the decision record carries the order as risk shaped it ------------------------

ORDER_FAMILY = (
    "order_type",
    "limit_price",
    "time_in_force",
    "order_class",
    "stop_price",
    "trail_price",
    "trail_percent",
    "take_profit_limit_price",
    "stop_loss_stop_price",
    "stop_loss_limit_price",
)


@pytest.mark.parametrize(
    "family",
    [
        {
            "order_type": "limit",
            "limit_price": D("50.05"),
            "time_in_force": "gtc",
            "order_class": "bracket",
            "take_profit_limit_price": D("50.50"),
            "stop_loss_stop_price": D("49.75"),
            "stop_loss_limit_price": D("49.70"),
        },
        {"order_type": "stop_limit", "stop_price": D("50.25"), "limit_price": D("50.31")},
        {
            "order_type": "trailing_stop",
            "trail_percent": D("1.5"),
            "order_class": "oto",
            "take_profit_limit_price": D("51"),
        },
        {"order_type": "trailing_stop", "trail_price": D("0.75")},
    ],
    ids=["bracket", "stop_limit", "trailing-oto", "trailing-by-price"],
)
@pytest.mark.parametrize("approved", [True, False], ids=["approved", "denied"])
def test_intent_when_order_family_set_then_decision_carries_family_legs_and_exit_parameters(
    f: Events, family: dict[str, object], approved: bool
) -> None:
    intent = msgspec.structs.replace(f.intent("AAPL", "buy", 100, "50"), **family)
    state = oms_state() if approved else msgspec.structs.replace(oms_state(), halted=True, halt_reason="manual")

    _, out = step(state, intent, CTX)

    (decision,) = of(PretradeDecision, out)
    assert decision.approved is approved
    assert {k: getattr(decision, k) for k in ORDER_FAMILY} == {k: getattr(intent, k) for k in ORDER_FAMILY}
