"""Exit legs of bracket, oto and oco orders: each leg is an order of its own in the OMS, execution and TCA."""

from __future__ import annotations

from collections.abc import Iterable
from decimal import Decimal

import msgspec
import pytest

from libs.contracts.base import (
    Event,
    ExitLeg,
    derive_id,
    exit_legs,
    intent_id_for,
    leg_client_order_id,
)
from libs.contracts.codec import encode
from libs.contracts.execution import (
    OrderAccepted,
    OrderCanceled,
    OrderFilled,
    OrderRejected,
    OrderStatusUnknown,
    OrderSubmitted,
    SubmitFailed,
    SubmitSkipped,
)
from libs.contracts.oms import PositionChanged, PretradeDecision
from libs.contracts.ops import AlertRaised
from libs.contracts.risk import OrderIntent
from libs.contracts.tca import TcaOrderRecorded, TcaRecorded
from libs.errors import classify_exception
from services.execution import handlers as ex
from services.execution import state as est
from services.execution.config import ExecConfig
from services.oms import handlers as oms
from services.oms import state as ost
from services.oms.config import OmsConfig
from services.tca import handlers as tca
from services.tca.config import TcaConfig
from services.tca.state import TcaState
from tests.factories import NOW_NS, Events, ctx, minute, oms_state

D = Decimal
OMS_CTX = ctx("oms", OmsConfig(), config_sha256="sha-of-oms-config")
EXEC_CTX = ctx("execution", ExecConfig())
TCA_CTX = ctx("tca", TcaConfig())
UPDATED_NS = minute(3) + 1_234
# the broker names a leg itself; keel learns these from the parent's nested legs
BROKER_TP = "alpaca-leg-7f1e"
BROKER_SL = "alpaca-leg-2c9a"


@pytest.fixture
def f() -> Events:
    return Events(seed=43)


# --- builders --------------------------------------------------------------------------------


def bracket(
    f: Events, side: str = "buy", *, tp: str = "55", sl: str = "45", sl_limit: str | None = None, qty: int = 100
) -> OrderIntent:
    """A market bracket: entry at 50 and its two exits."""
    return msgspec.structs.replace(
        f.intent("AAPL", side, qty, "50"),
        order_class="bracket",
        take_profit_limit_price=D(tp),
        stop_loss_stop_price=D(sl),
        stop_loss_limit_price=D(sl_limit) if sl_limit is not None else None,
    )


def oco(f: Events, side: str = "sell", *, tp: str = "55", sl: str = "45") -> OrderIntent:
    """An oco exit: itself the take-profit limit, its one leg the stop-loss."""
    return msgspec.structs.replace(
        f.intent("AAPL", side, 100, "50"),
        order_class="oco",
        order_type="limit",
        take_profit_limit_price=D(tp),
        stop_loss_stop_price=D(sl),
    )


def oto(f: Events, *, tp: str | None = None, sl: str | None = None) -> OrderIntent:
    """A buy entry with exactly one exit."""
    return msgspec.structs.replace(
        f.intent("AAPL", "buy", 100, "50"),
        order_class="oto",
        take_profit_limit_price=D(tp) if tp is not None else None,
        stop_loss_stop_price=D(sl) if sl is not None else None,
    )


def decided(f: Events, intent: OrderIntent, *, approved: bool = True) -> PretradeDecision:
    """The OMS's decision on an intent, carrying its order family as on_intent does."""
    return msgspec.structs.replace(
        f.decision(intent, approved=approved),
        order_type=intent.order_type,
        limit_price=intent.limit_price,
        order_class=intent.order_class,
        stop_price=intent.stop_price,
        take_profit_limit_price=intent.take_profit_limit_price,
        stop_loss_stop_price=intent.stop_loss_stop_price,
        stop_loss_limit_price=intent.stop_loss_limit_price,
    )


def cid_of(parent: OrderIntent | PretradeDecision, role: str) -> str:
    return leg_client_order_id(parent.client_order_id, role)


def leg_reports(f: Events, parent: OrderIntent, role: str) -> OrderIntent:
    """A stand-in whose ids, side and qty are the leg's, for the factory's execution reports."""
    (leg,) = (x for x in exit_legs(parent) if x.role == role)
    return f.intent(parent.symbol, leg.side, parent.qty, leg.reference_price, n=2, cid=cid_of(parent, role))


def broker(
    cid: str,
    status: str = "accepted",
    *,
    id: str = "bo-1",
    qty: int = 100,
    filled: int = 0,
    avg: str | None = None,
    order_type: str = "market",
    legs: tuple[est.BrokerOrder, ...] = (),
    execution_id: str = "",
) -> est.BrokerOrder:
    return est.BrokerOrder(
        id=id,
        client_order_id=cid,
        status=status,
        qty=qty,
        filled_qty=filled,
        filled_avg_price=D(avg) if avg is not None else None,
        updated_at_ns=UPDATED_NS,
        order_type=order_type,
        legs=legs,
        execution_id=execution_id,
    )


def tp_leg(status: str = "held", *, filled: int = 0, avg: str | None = None, execution_id: str = "") -> est.BrokerOrder:
    return broker(BROKER_TP, status, id="bo-tp", filled=filled, avg=avg, order_type="limit", execution_id=execution_id)


def sl_leg(status: str = "held", *, order_type: str = "stop", execution_id: str = "") -> est.BrokerOrder:
    return broker(BROKER_SL, status, id="bo-sl", order_type=order_type, execution_id=execution_id)


def handed_over(d: PretradeDecision) -> est.ExecState:
    state, _ = ex.hand_over(est.ExecState(), d, "alpaca-paper", "", EXEC_CTX)
    return state


def adopted(d: PretradeDecision) -> est.ExecState:
    """Given: the bracket was accepted with both legs rolled up under it (held)."""
    state, _ = ex.on_outcome(
        handed_over(d),
        d.client_order_id,
        ex.Accepted(order=broker(d.client_order_id, legs=(tp_leg(), sl_leg()))),
        EXEC_CTX,
    )
    return state


def oms_given(events: Iterable[object], *, state: ost.OmsState | None = None) -> tuple[ost.OmsState, list[Event]]:
    state = state or oms_state()
    out: list[Event] = []
    for ev in events:
        state, emitted = oms.step(state, ev, OMS_CTX)
        out.extend(emitted)
    return state, out


def reported(events: Iterable[Event]) -> list[tuple[str, str]]:
    return [(type(e).__name__, e.client_order_id) for e in events]  # type: ignore[attr-defined]


# --- contracts: exit_legs, leg ids, order-family rules ---------------------------------------


def test_exit_legs_when_bracket_buy_then_sell_take_profit_first_then_sell_stop_loss(f: Events) -> None:
    legs = exit_legs(bracket(f, "buy", tp="55", sl="45"))

    assert legs == (
        ExitLeg(role="take_profit", side="sell", order_type="limit", limit_price=D("55")),
        ExitLeg(role="stop_loss", side="sell", order_type="stop", stop_price=D("45")),
    )
    assert [leg.reference_price for leg in legs] == [D("55"), D("45")]


def test_exit_legs_when_bracket_sell_then_legs_buy_back_with_take_profit_below_stop(f: Events) -> None:
    legs = exit_legs(bracket(f, "sell", tp="45", sl="55"))

    assert [(leg.role, leg.side, leg.reference_price) for leg in legs] == [
        ("take_profit", "buy", D("45")),
        ("stop_loss", "buy", D("55")),
    ]


def test_exit_legs_when_oco_then_only_a_stop_loss_on_the_oco_own_side(f: Events) -> None:
    (leg,) = exit_legs(oco(f, "sell", tp="55", sl="45"))

    assert (leg.role, leg.side, leg.order_type, leg.stop_price, leg.limit_price) == (
        "stop_loss",
        "sell",
        "stop",
        D("45"),
        None,
    )


@pytest.mark.parametrize(
    ("tp", "sl", "expected"),
    [("55", None, ("take_profit", "sell", D("55"))), (None, "45", ("stop_loss", "sell", D("45")))],
    ids=["take-profit", "stop-loss"],
)
def test_exit_legs_when_oto_then_only_its_one_leg_on_the_other_side(
    f: Events, tp: str | None, sl: str | None, expected: tuple[str, str, Decimal]
) -> None:
    (leg,) = exit_legs(oto(f, tp=tp, sl=sl))

    assert (leg.role, leg.side, leg.reference_price) == expected


def test_exit_legs_when_stop_loss_has_a_limit_then_stop_limit_leg_referenced_at_its_stop(f: Events) -> None:
    _, sl = exit_legs(bracket(f, "buy", tp="55", sl="45", sl_limit="44.5"))

    assert (sl.order_type, sl.stop_price, sl.limit_price, sl.reference_price) == (
        "stop_limit",
        D("45"),
        D("44.5"),
        D("45"),
    )


def test_exit_legs_when_simple_then_none(f: Events) -> None:
    assert exit_legs(f.intent("AAPL", "buy", 100, "50")) == ()


def test_leg_client_order_id_when_role_then_parent_cid_with_suffix_and_intent_id_derived_from_it() -> None:
    tp, sl = leg_client_order_id("CID-1", "take_profit"), leg_client_order_id("CID-1", "stop_loss")

    assert (tp, sl) == ("CID-1:tp", "CID-1:sl")
    assert intent_id_for(tp) == derive_id("intent", "CID-1:tp")
    assert intent_id_for(tp) != intent_id_for(sl)


@pytest.mark.parametrize(
    ("changes", "rule"),
    [
        ({"order_class": "bracket", "take_profit_limit_price": D("55")}, "on a bracket order, was 55 and None"),
        ({"order_class": "oco", "order_type": "limit", "stop_loss_stop_price": D("45")}, "on a oco order"),
        (
            {"order_class": "oto", "take_profit_limit_price": D("55"), "stop_loss_stop_price": D("45")},
            "exactly one exit leg .* was 2",
        ),
        ({"order_class": "oto"}, "exactly one exit leg .* was 0"),
        (
            {"order_class": "oco", "take_profit_limit_price": D("55"), "stop_loss_stop_price": D("45")},
            "order_type limit for an oco order, was market",
        ),
        (
            {"order_class": "bracket", "take_profit_limit_price": D("45"), "stop_loss_stop_price": D("55")},
            "take_profit_limit_price above stop_loss_stop_price for a buy bracket",
        ),
        ({"order_class": "simple", "stop_loss_stop_price": D("45")}, "no exit legs on a simple order"),
        (
            {"order_class": "bracket", "take_profit_limit_price": D("55"), "stop_loss_limit_price": D("44")},
            "stop_loss_stop_price with stop_loss_limit_price",
        ),
    ],
    ids=[
        "bracket-without-stop-loss",
        "oco-without-take-profit",
        "oto-with-both-legs",
        "oto-without-legs",
        "oco-market",
        "long-bracket-take-profit-below-stop",
        "simple-with-a-leg",
        "stop-limit-without-stop",
    ],
)
def test_check_order_family_when_family_inconsistent_then_intent_refused(f: Events, changes: dict, rule: str) -> None:
    intent = f.intent("AAPL", "buy", 100, "50")

    with pytest.raises(ValueError, match=rule):
        msgspec.structs.replace(intent, **changes)


def test_check_order_family_when_oco_sell_exit_take_profit_below_stop_then_refused(f: Events) -> None:
    # an oco is itself the exit: a sell oco closes a long, so its take-profit must be above its stop
    with pytest.raises(ValueError, match="take_profit_limit_price above stop_loss_stop_price for a sell oco"):
        oco(f, "sell", tp="45", sl="55")


# --- oms: child intents ----------------------------------------------------------------------


def test_intent_when_bracket_approved_then_two_child_intents_submitting_beside_the_parent(f: Events) -> None:
    intent = bracket(f, "buy")

    state, out = oms.on_intent(oms_state(), intent, OMS_CTX)

    assert isinstance(out[0], PretradeDecision) and out[0].approved is True
    assert set(state.intents) == {
        intent.intent_id,
        intent_id_for(cid_of(intent, "take_profit")),
        intent_id_for(cid_of(intent, "stop_loss")),
    }
    tp = state.intents[intent_id_for(cid_of(intent, "take_profit"))]
    sl = state.intents[intent_id_for(cid_of(intent, "stop_loss"))]
    assert (tp.client_order_id, tp.side, tp.qty, tp.arrival_price, tp.status) == (
        cid_of(intent, "take_profit"),
        "sell",
        100,
        D("55"),
        ost.SUBMITTING,
    )
    assert (sl.client_order_id, sl.side, sl.qty, sl.arrival_price, sl.status) == (
        cid_of(intent, "stop_loss"),
        "sell",
        100,
        D("45"),
        ost.SUBMITTING,
    )
    assert (tp.parent_intent_id, tp.leg_role, sl.parent_intent_id, sl.leg_role) == (
        intent.intent_id,
        "take_profit",
        intent.intent_id,
        "stop_loss",
    )
    for leg in (tp, sl):
        assert state.by_cid[leg.client_order_id] == leg.intent_id
        assert state.recent_cids[leg.client_order_id] == intent.bar_ts
    assert state.intents_seen == {"AAPL": 1}  # the family is one intent of risk's


def test_intent_when_bracket_approved_then_working_qty_counts_the_entry_only(f: Events) -> None:
    intent = bracket(f, "buy", qty=100)

    state, out = oms.on_intent(oms_state(), intent, OMS_CTX)

    pos = out[1]
    assert isinstance(pos, PositionChanged)
    assert (pos.qty, pos.open_order_qty) == (0, 100)  # the two sell legs would net it to -100
    assert oms.open_order_qty(state, "AAPL") == 100
    assert [i.working_qty for i in state.intents.values() if i.leg_role] == [0, 0]


def test_intent_when_bracket_denied_then_no_child_intents(f: Events) -> None:
    intent = bracket(f, "buy", qty=OmsConfig().max_order_shares + 1)

    state, out = oms.on_intent(oms_state(), intent, OMS_CTX)

    assert isinstance(out[0], PretradeDecision)
    assert (out[0].approved, out[0].reason) == (False, oms.ORDER_SIZE_BLOCK)
    assert list(state.intents) == [intent.intent_id]
    assert set(state.by_cid) == {intent.client_order_id}
    assert set(state.recent_cids) == {intent.client_order_id}


def test_intent_when_oco_approved_then_one_stop_loss_child_on_the_same_side(f: Events) -> None:
    intent = oco(f, "sell", tp="55", sl="45")

    state, _ = oms.on_intent(oms_state(), intent, OMS_CTX)

    (child,) = (i for i in state.intents.values() if i.parent_intent_id)
    assert (child.client_order_id, child.leg_role, child.side, child.arrival_price, child.qty) == (
        cid_of(intent, "stop_loss"),
        "stop_loss",
        "sell",
        D("45"),
        100,
    )
    assert len(state.intents) == 2


def test_intent_when_simple_approved_then_no_child_intents(f: Events) -> None:
    intent = f.intent("AAPL", "buy", 100, "50")

    state, out = oms.on_intent(oms_state(), intent, OMS_CTX)

    assert list(state.intents) == [intent.intent_id]
    assert all(not i.leg_role and not i.parent_intent_id for i in state.intents.values())
    assert [type(e) for e in out] == [PretradeDecision, PositionChanged]


def test_intent_when_bracket_decided_twice_then_byte_identical(f: Events) -> None:
    intent = bracket(f, "buy")

    first_state, first = oms.on_intent(oms_state(), intent, OMS_CTX)
    second_state, second = oms.on_intent(oms_state(), intent, OMS_CTX)

    assert [encode(e) for e in first] == [encode(e) for e in second]
    assert encode(first_state) == encode(second_state)
    assert first[0].take_profit_limit_price == D("55")  # type: ignore[attr-defined]


# --- oms: leg lifecycle and fills ------------------------------------------------------------


def test_report_when_take_profit_leg_fills_after_the_entry_then_position_flat_with_realized_pnl(f: Events) -> None:
    intent = bracket(f, "buy", tp="55", sl="45")
    tp = leg_reports(f, intent, "take_profit")
    state, _ = oms_given(
        [
            intent,
            f.submitted(intent),
            f.submitted(tp),
            f.accepted(intent),
            f.fill(intent, last_qty=100, last_px="50", cum_qty=100),
            f.accepted(tp, broker_order_id="bo-tp"),
        ]
    )

    state, out = oms_given([f.fill(tp, last_qty=100, last_px="55", cum_qty=100, broker_order_id="bo-tp")], state=state)

    (pos,) = out
    assert isinstance(pos, PositionChanged)
    assert (pos.qty, pos.avg_price, pos.realized_pnl, pos.open_order_qty) == (0, D(0), D("500.000000"), 0)
    leg = state.intents[tp.intent_id]
    assert (leg.status, leg.filled_qty, leg.avg_fill_price, leg.broker_order_id) == (
        ost.FILLED,
        100,
        D("55"),
        "bo-tp",
    )
    assert state.intents[intent.intent_id].status == ost.FILLED


def test_report_when_stop_loss_leg_fills_then_position_moves_by_the_leg_side(f: Events) -> None:
    intent = bracket(f, "sell", tp="45", sl="55")  # a short: its legs buy back
    sl = leg_reports(f, intent, "stop_loss")
    state, _ = oms_given([intent, f.fill(intent, last_qty=100, last_px="50", cum_qty=100), f.submitted(sl)])

    state, _ = oms_given([f.fill(sl, last_qty=100, last_px="55.2", cum_qty=100)], state=state)

    assert state.positions["AAPL"] == ost.Position(qty=0, avg_price=D(0), realized_pnl=D("-520.000000"))


def test_report_when_leg_accepted_then_canceled_then_only_the_leg_moves(f: Events) -> None:
    intent = bracket(f, "buy")
    sl = leg_reports(f, intent, "stop_loss")
    state, _ = oms_given([intent, f.submitted(intent), f.submitted(sl)])
    assert state.intents[sl.intent_id].status == ost.SUBMITTED

    state, out = oms_given([f.accepted(sl, broker_order_id="bo-sl"), f.canceled(sl)], state=state)

    leg = state.intents[sl.intent_id]
    assert (leg.status, leg.broker_order_id) == (ost.CANCELED, "bo-sl")
    assert state.intents[intent.intent_id].status == ost.SUBMITTED
    assert state.intents[intent_id_for(cid_of(intent, "take_profit"))].status == ost.SUBMITTING
    assert out == []  # a leg's lifecycle changes no working quantity


def test_report_when_execution_hands_over_and_adopts_a_bracket_then_oms_legs_follow(f: Events) -> None:
    # the ids execution gives a leg are those the OMS gave its child intent
    intent = bracket(f, "buy")
    d = decided(f, intent)
    exec_state, submitted = ex.hand_over(est.ExecState(), d, "alpaca-paper", "", EXEC_CTX)
    _, accepted = ex.on_outcome(
        exec_state,
        d.client_order_id,
        ex.Accepted(order=broker(d.client_order_id, legs=(tp_leg(), sl_leg()))),
        EXEC_CTX,
    )

    state, out = oms_given([intent, *submitted, *accepted])

    assert [e for e in out if isinstance(e, AlertRaised)] == []
    assert {i.leg_role or "entry": i.status for i in state.intents.values()} == {
        "entry": ost.ACKED,
        "take_profit": ost.ACKED,
        "stop_loss": ost.ACKED,
    }
    assert state.intents[intent_id_for(cid_of(intent, "take_profit"))].broker_order_id == "bo-tp"


# --- execution: hand-off, refusals, outcomes -------------------------------------------------


def test_exec_order_when_bracket_or_oco_or_simple_then_pending_leg_roles_follow_the_family(f: Events) -> None:
    assert ex.exec_order(decided(f, bracket(f))).legs_pending == ("take_profit", "stop_loss")
    assert ex.exec_order(decided(f, oco(f))).legs_pending == ("stop_loss",)
    assert ex.exec_order(decided(f, oto(f, tp="55"))).legs_pending == ("take_profit",)
    assert ex.exec_order(decided(f, f.intent("AAPL", "buy", 100, "50"))).legs_pending == ()


def test_hand_over_when_bracket_then_order_submitted_for_the_parent_and_each_leg(f: Events) -> None:
    d = decided(f, bracket(f, "buy"))

    state, out = ex.hand_over(est.ExecState(), d, "alpaca-paper", "00-tp", EXEC_CTX)

    assert all(isinstance(e, OrderSubmitted) for e in out)
    tp_cid, sl_cid = cid_of(d, "take_profit"), cid_of(d, "stop_loss")
    assert [(e.client_order_id, e.intent_id, e.side, e.qty) for e in out] == [  # type: ignore[attr-defined]
        (d.client_order_id, d.intent_id, "buy", 100),
        (tp_cid, intent_id_for(tp_cid), "sell", 100),
        (sl_cid, intent_id_for(sl_cid), "sell", 100),
    ]
    assert [e.event_id for e in out] == [ex.submitted_event_id(c) for c in (d.client_order_id, tp_cid, sl_cid)]
    assert {(e.correlation_id, e.causation_id, e.ts_event, e.ts_init) for e in out} == {
        (d.correlation_id, d.event_id, d.ts_event, NOW_NS)
    }
    assert list(state.orders) == [d.client_order_id]  # legs are held once the broker shows them


def test_hand_over_when_simple_then_only_the_order_itself_is_submitted(f: Events) -> None:
    d = decided(f, f.intent("AAPL", "buy", 100, "50"))

    state, out = ex.hand_over(est.ExecState(), d, "alpaca-paper", "", EXEC_CTX)

    assert reported(out) == [("OrderSubmitted", d.client_order_id)]
    assert state.orders[d.client_order_id].legs_pending == ()
    assert state.aliases == {}


def test_skip_when_bracket_then_submit_skipped_for_the_parent_and_each_leg(f: Events) -> None:
    d = decided(f, bracket(f, "buy"))

    state, out = ex.skip(est.ExecState(), d, ex.KILL_SWITCH_BLOCK, "halted: manual", EXEC_CTX)

    assert all(isinstance(e, SubmitSkipped) for e in out)
    assert state.cycles[d.bar_ts].skipped == {ex.KILL_SWITCH_BLOCK: 1}  # one intent, counted once
    assert [(e.client_order_id, e.side, e.reason_code) for e in out] == [
        (d.client_order_id, "buy", ex.KILL_SWITCH_BLOCK),
        (cid_of(d, "take_profit"), "sell", ex.KILL_SWITCH_BLOCK),
        (cid_of(d, "stop_loss"), "sell", ex.KILL_SWITCH_BLOCK),
    ]
    assert len({e.event_id for e in out}) == 3


def test_fail_when_bracket_then_submit_failed_for_the_parent_and_each_leg(f: Events) -> None:
    d = decided(f, bracket(f, "buy"))
    info = classify_exception(TimeoutError("halt flag read timed out"), dependency="bus")

    _, out = ex.fail(est.ExecState(), d, info, EXEC_CTX)

    assert all(isinstance(e, SubmitFailed) for e in out)
    assert [(e.client_order_id, e.reason_code) for e in out] == [
        (d.client_order_id, "NET_RETRY"),
        (cid_of(d, "take_profit"), "NET_RETRY"),
        (cid_of(d, "stop_loss"), "NET_RETRY"),
    ]


def test_outcome_when_bracket_rejected_then_order_rejected_for_the_parent_and_each_leg(f: Events) -> None:
    d = decided(f, bracket(f, "buy"))

    state, out = ex.on_outcome(
        handed_over(d), d.client_order_id, ex.Rejected(code="42210000", message="bad take_profit"), EXEC_CTX
    )

    assert all(isinstance(e, OrderRejected) for e in out)
    assert [(e.client_order_id, e.intent_id, e.side, e.code) for e in out] == [  # type: ignore[attr-defined]
        (d.client_order_id, d.intent_id, "buy", "42210000"),
        (cid_of(d, "take_profit"), intent_id_for(cid_of(d, "take_profit")), "sell", "42210000"),
        (cid_of(d, "stop_loss"), intent_id_for(cid_of(d, "stop_loss")), "sell", "42210000"),
    ]
    assert state.orders == {}


def test_outcome_when_bracket_unknown_then_status_unknown_for_the_parent_and_each_leg(f: Events) -> None:
    d = decided(f, bracket(f, "buy"))

    state, out = ex.on_outcome(handed_over(d), d.client_order_id, ex.Unknown(message="ReadTimeout"), EXEC_CTX)

    assert all(isinstance(e, OrderStatusUnknown) for e in out)
    assert reported(out) == [
        ("OrderStatusUnknown", d.client_order_id),
        ("OrderStatusUnknown", cid_of(d, "take_profit")),
        ("OrderStatusUnknown", cid_of(d, "stop_loss")),
    ]
    assert [e.side for e in out] == ["buy", "sell", "sell"]  # type: ignore[attr-defined]
    assert state.orders[d.client_order_id].broker_status == est.UNKNOWN


# --- execution: adopting the broker's legs ---------------------------------------------------


def test_outcome_when_accepted_with_nested_legs_then_each_adopted_by_role_under_keel_id(f: Events) -> None:
    d = decided(f, bracket(f, "buy"))
    nested = broker(d.client_order_id, legs=(sl_leg(), tp_leg()))  # the broker's order, not keel's

    state, out = ex.on_outcome(handed_over(d), d.client_order_id, ex.Accepted(order=nested), EXEC_CTX)

    assert all(isinstance(e, OrderAccepted) for e in out)
    tp_cid, sl_cid = cid_of(d, "take_profit"), cid_of(d, "stop_loss")
    assert reported(out) == [("OrderAccepted", d.client_order_id), ("OrderAccepted", sl_cid), ("OrderAccepted", tp_cid)]
    assert [(e.broker_order_id, e.broker_status, e.side) for e in out] == [  # type: ignore[attr-defined]
        ("bo-1", "accepted", "buy"),
        ("bo-sl", "held", "sell"),
        ("bo-tp", "held", "sell"),
    ]
    assert state.aliases == {BROKER_TP: tp_cid, BROKER_SL: sl_cid}
    tp, sl = state.orders[tp_cid], state.orders[sl_cid]
    assert (tp.leg_role, tp.parent_cid, tp.broker_client_order_id, tp.broker_cid, tp.side, tp.qty) == (
        "take_profit",
        d.client_order_id,
        BROKER_TP,
        BROKER_TP,
        "sell",
        100,
    )
    assert (tp.order_type, tp.limit_price, sl.order_type, sl.stop_price) == ("limit", D("55"), "stop", D("45"))
    assert (sl.leg_role, sl.intent_id, sl.broker_order_id) == ("stop_loss", intent_id_for(sl_cid), "bo-sl")
    assert state.orders[d.client_order_id].legs_pending == ()


def test_poll_when_nested_leg_already_filled_then_leg_accepted_and_filled_on_its_own_side(f: Events) -> None:
    d = decided(f, bracket(f, "buy"))
    state, _ = ex.on_outcome(handed_over(d), d.client_order_id, ex.Accepted(order=broker(d.client_order_id)), EXEC_CTX)
    entry_filled = broker(
        d.client_order_id,
        "filled",
        filled=100,
        avg="50",
        legs=(tp_leg("filled", filled=100, avg="55.05"), sl_leg("canceled")),
    )

    state, out = ex.on_broker_order(state, d.client_order_id, entry_filled, EXEC_CTX)

    tp_cid, sl_cid = cid_of(d, "take_profit"), cid_of(d, "stop_loss")
    assert reported(out) == [
        ("OrderFilled", d.client_order_id),
        ("OrderAccepted", tp_cid),
        ("OrderFilled", tp_cid),
        ("OrderAccepted", sl_cid),
        ("OrderCanceled", sl_cid),
    ]
    fill = out[2]
    assert isinstance(fill, OrderFilled)
    assert (fill.intent_id, fill.side, fill.last_qty, fill.last_px, fill.broker_order_id) == (
        intent_id_for(tp_cid),
        "sell",
        100,
        D("55.0500"),
        "bo-tp",
    )
    assert fill.execution_id == derive_id("execution", "bo-tp", 100)
    assert (state.orders, state.aliases) == ({}, {})


def test_poll_when_parent_ends_before_its_legs_are_seen_then_kept_until_adopted_without_repeating_its_end(
    f: Events,
) -> None:
    d = decided(f, bracket(f, "buy"))
    state, _ = ex.on_outcome(handed_over(d), d.client_order_id, ex.Accepted(order=broker(d.client_order_id)), EXEC_CTX)
    filled = broker(d.client_order_id, "filled", filled=100, avg="50")

    state, out1 = ex.on_broker_order(state, d.client_order_id, filled, EXEC_CTX)
    state, out2 = ex.on_broker_order(state, d.client_order_id, filled, EXEC_CTX)
    kept = state.orders[d.client_order_id]
    state, out3 = ex.on_broker_order(
        state, d.client_order_id, msgspec.structs.replace(filled, legs=(tp_leg("new"), sl_leg("new"))), EXEC_CTX
    )

    assert reported(out1) == [("OrderFilled", d.client_order_id)]
    assert (kept.ended, kept.legs_pending) == (True, ("take_profit", "stop_loss"))
    assert out2 == []
    assert reported(out3) == [("OrderAccepted", cid_of(d, "take_profit")), ("OrderAccepted", cid_of(d, "stop_loss"))]
    assert set(state.orders) == {cid_of(d, "take_profit"), cid_of(d, "stop_loss")}


@pytest.mark.parametrize(("status", "filled", "alerted"), [("filled", 100, True), ("canceled", 0, False)])
def test_poll_when_ended_order_fetched_nested_shows_no_legs_then_legs_rejected_and_unprotected_fill_alerted(
    f: Events, status: str, filled: int, alerted: bool
) -> None:
    d = decided(f, bracket(f, "buy"))
    state, _ = ex.on_outcome(handed_over(d), d.client_order_id, ex.Accepted(order=broker(d.client_order_id)), EXEC_CTX)
    ended = broker(d.client_order_id, status, filled=filled, avg="50" if filled else None)
    state, _ = ex.on_broker_order(state, d.client_order_id, ended, EXEC_CTX)

    # a flat listing says nothing about legs; the nested fetch (broker.order) proves there are none
    state, flat = ex.on_broker_order(state, d.client_order_id, ended, EXEC_CTX)
    state, out = ex.on_broker_order(state, d.client_order_id, msgspec.structs.replace(ended, nested=True), EXEC_CTX)

    assert flat == []
    rejected = [e for e in out if isinstance(e, OrderRejected)]
    assert [(e.client_order_id, e.code) for e in rejected] == [
        (cid_of(d, "take_profit"), ex.LEGS_NOT_AT_BROKER),
        (cid_of(d, "stop_loss"), ex.LEGS_NOT_AT_BROKER),
    ]
    alerts = [(a.code, a.severity) for a in out if isinstance(a, AlertRaised)]
    assert alerts == ([(ex.EXIT_LEGS_MISSING, "critical")] if alerted else [])
    assert state.orders == {}


def test_poll_when_only_one_leg_is_seen_then_parent_waits_for_the_other(f: Events) -> None:
    d = decided(f, bracket(f, "buy"))
    state, _ = ex.on_outcome(handed_over(d), d.client_order_id, ex.Accepted(order=broker(d.client_order_id)), EXEC_CTX)

    state, out = ex.on_broker_order(
        state,
        d.client_order_id,
        broker(d.client_order_id, "filled", filled=100, avg="50", legs=(tp_leg("new"),)),
        EXEC_CTX,
    )

    assert reported(out) == [("OrderFilled", d.client_order_id), ("OrderAccepted", cid_of(d, "take_profit"))]
    parent = state.orders[d.client_order_id]
    assert (parent.ended, parent.legs_pending) == (True, ("stop_loss",))
    assert state.aliases == {BROKER_TP: cid_of(d, "take_profit")}


def test_poll_when_adopted_leg_fills_then_order_filled_for_the_leg_and_leg_forgotten(f: Events) -> None:
    d = decided(f, bracket(f, "buy"))
    tp_cid = cid_of(d, "take_profit")

    state, out = ex.on_broker_order(
        adopted(d), tp_cid, tp_leg("filled", filled=100, avg="55.1", execution_id="x-9"), EXEC_CTX
    )

    (fill,) = out
    assert isinstance(fill, OrderFilled)
    assert (fill.client_order_id, fill.intent_id, fill.side, fill.symbol) == (
        tp_cid,
        intent_id_for(tp_cid),
        "sell",
        "AAPL",
    )
    assert (fill.last_qty, fill.last_px, fill.cum_qty, fill.leaves_qty) == (100, D("55.1000"), 100, 0)
    assert (fill.correlation_id, fill.causation_id, fill.ts_event) == (d.correlation_id, d.event_id, UPDATED_NS)
    assert tp_cid not in state.orders
    assert state.aliases == {BROKER_SL: cid_of(d, "stop_loss")}


def test_poll_when_leg_canceled_as_oco_sibling_then_order_canceled_and_its_alias_dropped(f: Events) -> None:
    d = decided(f, bracket(f, "buy"))
    sl_cid = cid_of(d, "stop_loss")

    state, out = ex.on_broker_order(adopted(d), sl_cid, sl_leg("canceled"), EXEC_CTX)

    (ev,) = out
    assert isinstance(ev, OrderCanceled)
    assert (ev.client_order_id, ev.intent_id, ev.side, ev.broker_order_id) == (
        sl_cid,
        intent_id_for(sl_cid),
        "sell",
        "bo-sl",
    )
    assert sl_cid not in state.orders
    assert state.aliases == {BROKER_TP: cid_of(d, "take_profit")}


def test_stream_when_same_leg_frame_twice_then_second_reports_nothing(f: Events) -> None:
    d = decided(f, bracket(f, "buy"))
    tp_cid = cid_of(d, "take_profit")
    frame = broker(
        BROKER_TP, "partially_filled", id="bo-tp", filled=40, avg="55", order_type="limit", execution_id="x-1"
    )
    state, first = ex.on_broker_order(adopted(d), tp_cid, frame, EXEC_CTX)

    after, second = ex.on_broker_order(state, tp_cid, frame, EXEC_CTX)

    assert reported(first) == [("OrderPartiallyFilled", tp_cid)]
    assert second == []
    assert after is state


@pytest.mark.parametrize("order_type", ["stop", "stop_limit"])
def test_outcome_when_oco_accepted_with_its_stop_leg_then_adopted_as_stop_loss(f: Events, order_type: str) -> None:
    d = decided(f, oco(f, "sell"))
    nested = broker(d.client_order_id, "new", order_type="limit", legs=(sl_leg(order_type=order_type),))

    state, out = ex.on_outcome(handed_over(d), d.client_order_id, ex.Accepted(order=nested), EXEC_CTX)

    sl_cid = cid_of(d, "stop_loss")
    assert reported(out) == [("OrderAccepted", d.client_order_id), ("OrderAccepted", sl_cid)]
    assert [e.side for e in out] == ["sell", "sell"]  # type: ignore[attr-defined]
    assert state.aliases == {BROKER_SL: sl_cid}
    assert state.orders[sl_cid].leg_role == "stop_loss"


def test_outcome_when_bracket_adoption_replayed_then_byte_identical(f: Events) -> None:
    d = decided(f, bracket(f, "buy"))
    answer = ex.Accepted(order=broker(d.client_order_id, legs=(tp_leg("filled", filled=100, avg="55"), sl_leg())))

    first_state, first = ex.on_outcome(handed_over(d), d.client_order_id, answer, EXEC_CTX)
    second_state, second = ex.on_outcome(handed_over(d), d.client_order_id, answer, EXEC_CTX)

    assert len(first) == 4
    assert [encode(e) for e in first] == [encode(e) for e in second]
    assert encode(first_state) == encode(second_state)


def test_poll_when_simple_order_fills_then_no_leg_events_and_order_forgotten(f: Events) -> None:
    d = decided(f, f.intent("AAPL", "buy", 100, "50"))
    state, _ = ex.on_outcome(handed_over(d), d.client_order_id, ex.Accepted(order=broker(d.client_order_id)), EXEC_CTX)

    state, out = ex.on_broker_order(
        state, d.client_order_id, broker(d.client_order_id, "filled", filled=100, avg="50"), EXEC_CTX
    )

    assert reported(out) == [("OrderFilled", d.client_order_id)]
    assert (state.orders, state.aliases) == ({}, {})


# --- tca: leg arrivals -----------------------------------------------------------------------


def test_tca_intent_when_bracket_then_an_order_per_leg_at_its_reference_price_and_side(f: Events) -> None:
    intent = bracket(f, "buy", tp="55", sl="45")

    state, out = tca.on_intent(TcaState(), intent, TCA_CTX)

    assert out == []
    orders = {cid: (o.side, o.decision_price, o.strategy, o.leg) for cid, o in state.orders.items()}
    assert orders == {
        intent.client_order_id: ("buy", D("50"), "keel", False),
        cid_of(intent, "take_profit"): ("sell", D("55"), "keel", True),
        cid_of(intent, "stop_loss"): ("sell", D("45"), "keel", True),
    }


def test_tca_intent_when_simple_then_only_its_own_order(f: Events) -> None:
    intent = f.intent("AAPL", "buy", 100, "50")

    state, _ = tca.on_intent(TcaState(), intent, TCA_CTX)

    assert list(state.orders) == [intent.client_order_id]


def test_tca_fill_when_leg_fill_arrived_before_its_intent_then_measured_when_the_intent_arrives(f: Events) -> None:
    intent = bracket(f, "buy", tp="55", sl="45")
    sl = leg_reports(f, intent, "stop_loss")
    fill = f.fill(sl, last_qty=100, last_px="44.91", cum_qty=100)
    waiting, early = tca.on_report(TcaState(), fill, TCA_CTX)
    assert early == [] and waiting.waiting == (fill,)

    state, out = tca.on_intent(waiting, intent, TCA_CTX)

    rec = next(e for e in out if isinstance(e, TcaRecorded))
    assert (rec.client_order_id, rec.side, rec.arrival_price, rec.fill_price, rec.qty) == (
        cid_of(intent, "stop_loss"),
        "sell",
        D("45"),
        D("44.91"),
        100,
    )
    assert rec.shortfall_bps == D("20.0000")  # sold 9 cents below the stop: slippage past the trigger
    assert state.waiting == ()
    # the leg's order record: its price is the stop, and a leg misses nothing it did not fill
    (order,) = [e for e in out if isinstance(e, TcaOrderRecorded)]
    assert (order.client_order_id, order.final, order.filled_qty, order.opportunity_bps) == (
        cid_of(intent, "stop_loss"),
        True,
        100,
        D(0),
    )
    assert order.execution_bps == D("20.0000")  # 0.09 a share of a 45.00 paper price


# --- exit legs in the way of a reducing order -------------------------------------------------


def test_exits_in_the_way_when_legs_work_on_the_position_then_those_on_the_order_side_only(f: Events) -> None:
    d = decided(f, bracket(f, "buy"))
    held = adopted(d)
    # the entry filled: its legs now hold the position's shares - the take-profit shows new, the
    # stop-loss stays `held` until it triggers, as Alpaca shows it: the status says nothing here
    working, _ = ex.on_broker_order(
        held, d.client_order_id, broker(d.client_order_id, "filled", filled=100, avg="50"), EXEC_CTX
    )
    working, _ = ex.on_broker_order(working, cid_of(d, "take_profit"), tp_leg("new"), EXEC_CTX)

    in_the_way = ex.exits_in_the_way(working, "AAPL", "sell")

    assert working.orders[cid_of(d, "stop_loss")].broker_status == "held"
    assert [o.client_order_id for o in in_the_way] == [cid_of(d, "stop_loss"), cid_of(d, "take_profit")]
    assert ex.exits_in_the_way(working, "AAPL", "buy") == []  # adds to the position: no competition
    assert ex.exits_in_the_way(working, "MSFT", "sell") == []
    assert ex.exits_in_the_way(held, "AAPL", "sell") == []  # entry not filled: its legs hold nothing yet


def test_exits_in_the_way_when_an_oco_rests_then_the_order_and_its_leg_both(f: Events) -> None:
    d = decided(f, oco(f, "sell"))
    state, _ = ex.on_outcome(
        handed_over(d),
        d.client_order_id,
        ex.Accepted(order=broker(d.client_order_id, "new", order_type="limit", legs=(sl_leg("new"),))),
        EXEC_CTX,
    )

    in_the_way = ex.exits_in_the_way(state, "AAPL", "sell")

    assert [o.client_order_id for o in in_the_way] == [d.client_order_id, cid_of(d, "stop_loss")]


@pytest.mark.parametrize(("status", "alerted"), [("expired", True), ("canceled", True), ("filled", False)])
def test_report_when_bracket_entry_ends_part_filled_then_unprotected_shares_alerted(
    f: Events, status: str, alerted: bool
) -> None:
    d = decided(f, bracket(f, "buy"))
    filled = 100 if status == "filled" else 60

    _, out = ex.on_broker_order(
        adopted(d), d.client_order_id, broker(d.client_order_id, status, filled=filled, avg="50"), EXEC_CTX
    )

    alerts = [(a.code, a.details["client_order_id"]) for a in out if isinstance(a, AlertRaised)]
    assert alerts == ([(ex.BRACKET_ENTRY_PARTIAL, d.client_order_id)] if alerted else [])


def test_adopt_when_broker_sizes_legs_to_the_fill_then_leg_takes_the_broker_qty(f: Events) -> None:
    d = decided(f, bracket(f, "buy"))
    state, _ = ex.on_outcome(handed_over(d), d.client_order_id, ex.Accepted(order=broker(d.client_order_id)), EXEC_CTX)
    small_tp = msgspec.structs.replace(tp_leg("new"), qty=60)

    state, _ = ex.on_broker_order(
        state, d.client_order_id, broker(d.client_order_id, "filled", filled=100, avg="50", legs=(small_tp,)), EXEC_CTX
    )
    state, out = ex.on_broker_order(
        state, cid_of(d, "take_profit"), msgspec.structs.replace(small_tp, status="filled", filled_qty=60,
                                                                 filled_avg_price=D("55")), EXEC_CTX
    )  # fmt: skip

    assert [type(e).__name__ for e in out] == ["OrderFilled"]
    assert cid_of(d, "take_profit") not in state.orders
