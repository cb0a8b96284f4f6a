"""The OMS's credit, liquidity, cancel-rate and breaker checks, and reconciliation with the broker
(issue 5 §2 and §4): one case per reason code that fails without its check, the case just inside
each limit that passes, and reconciliation's effects on broker snapshots (pure handlers)."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

import msgspec
import pytest

from libs.contracts.execution import BrokerOrderView, BrokerSnapshot, OrderPartiallyFilled
from libs.contracts.oms import CancelRequested, OrderLookupRequested, PretradeDecision, SessionSummary
from libs.contracts.ops import AlertRaised
from libs.contracts.risk import OrderIntent
from libs.sessions import session_open_close
from services.oms import state as st
from services.oms.config import OmsConfig
from services.oms.handlers import (
    BUYING_POWER_BLOCK,
    MINUTE_NS,
    PRICE_COLLAR_BLOCK,
    RATE_THROTTLE_BLOCK,
    RECON_MISMATCH,
    RECON_ORDER_ENDED_UNSEEN,
    SESSION_CLOSE_CLEANUP,
    STARTUP_CLEANUP,
    pretrade,
    step,
)
from tests.factories import FUNDED, SESSION, Events, ctx, minute, oms_state

D = Decimal
CFG = OmsConfig(buying_power_use_pct=D("0.5"), account_max_age_bars=3, max_cancels_per_min=2)
CTX = ctx("oms", CFG)


@pytest.fixture
def f() -> Events:
    return Events(seed=97)


def funded(bp: str, *, bar_ts: int = 0, **changes: object) -> st.OmsState:
    account = msgspec.structs.replace(FUNDED, buying_power=D(bp), bar_ts=bar_ts)
    return oms_state(account=account, **changes)


def snapshot(
    seq: int,
    *,
    positions: dict[str, int] | None = None,
    orders: tuple[BrokerOrderView, ...] = (),
    kind: str = "periodic",
    bar_ts: int = 0,
    bp: str = "100000",
) -> BrokerSnapshot:
    return BrokerSnapshot(
        event_id=f"snap-{seq}",
        correlation_id=f"snap-{seq}",
        causation_id=f"snap-{seq}",
        ts_event=bar_ts or minute(1),
        ts_init=minute(1),
        kind=kind,  # type: ignore[arg-type]
        seq=seq,
        bar_ts=bar_ts,
        cash=D(bp),
        buying_power=D(bp),
        equity=D(bp),
        positions=positions or {},
        open_orders=orders,
    )


def open_at_broker(intent: OrderIntent, *, filled: int = 0, avg: str | None = None, cid: str = "") -> BrokerOrderView:
    return BrokerOrderView(
        client_order_id=cid or intent.client_order_id,
        broker_order_id=f"bo-{cid or intent.client_order_id[-6:]}",
        symbol=intent.symbol,
        side=intent.side,
        qty=intent.qty,
        filled_qty=filled,
        filled_avg_price=D(avg) if avg else None,
        status="partially_filled" if filled else "new",
        time_in_force="day",
        keel_client_order_id="" if cid else intent.client_order_id,
    )


def apply(state: st.OmsState, *events: object) -> tuple[st.OmsState, list[object]]:
    out: list[object] = []
    for ev in events:
        state, produced = step(state, ev, CTX)
        out += produced
    return state, out


# --- BUYING_POWER_BLOCK (a credit check, fail closed) -----------------------------------------


def test_buying_power_when_no_broker_snapshot_yet_then_blocked_and_a_reducing_order_still_passes(f: Events) -> None:
    long = oms_state(account=None, positions={"AAPL": st.Position(qty=100, avg_price=D(50))})

    reason, details = pretrade(long, f.intent("AAPL", "buy", 10, "50"), CFG)
    assert (reason, details["missing"]) == (BUYING_POWER_BLOCK, "account")
    assert pretrade(long, f.intent("AAPL", "sell", 10, "50"), CFG)[0] == "APPROVED"  # needs no money


def test_buying_power_when_snapshot_older_than_the_limit_then_blocked(f: Events) -> None:
    intent = f.intent("AAPL", "buy", 10, "50", n=10)

    assert pretrade(funded("100000", bar_ts=minute(7)), intent, CFG)[0] == "APPROVED"  # 3 bars old
    reason, details = pretrade(funded("100000", bar_ts=minute(6)), intent, CFG)
    assert (reason, details["stale"], details["age_bars"]) == (BUYING_POWER_BLOCK, "account", "4")


def test_buying_power_when_order_costs_more_than_the_usable_share_then_blocked(f: Events) -> None:
    # usable: 50 % of 10,000 = 5,000; 100 x 50 = 5,000 passes, 101 x 50 does not
    assert pretrade(funded("10000"), f.intent("AAPL", "buy", 100, "50"), CFG)[0] == "APPROVED"
    reason, details = pretrade(funded("10000"), f.intent("AAPL", "buy", 101, "50"), CFG)
    assert (reason, details["cost"], details["available"]) == (BUYING_POWER_BLOCK, "5050", "5000.000000")


def test_buying_power_when_orders_decided_after_the_snapshot_work_then_they_count_against_it(f: Events) -> None:
    first, second = f.intent("AAPL", "buy", 60, "50", n=2), f.intent("MSFT", "buy", 60, "50", n=2)
    state = funded("10000", bar_ts=minute(1))

    state, out = apply(state, first, second)
    decisions = [e for e in out if isinstance(e, PretradeDecision)]
    assert [d.reason for d in decisions] == ["APPROVED", BUYING_POWER_BLOCK]  # 3,000 + 3,000 > 5,000
    # a newer snapshot includes the first order at the broker: it no longer counts twice
    state, _ = apply(state, snapshot(2, bar_ts=minute(2), bp="7000"))
    assert pretrade(state, f.intent("MSFT", "buy", 60, "50", n=3), CFG)[0] == "APPROVED"


# --- PRICE_COLLAR_BLOCK, tighter when liquidity is thin ---------------------------------------


def test_collar_when_decision_bar_thin_then_tighter_collar_blocks_what_a_liquid_bar_lets_through(f: Events) -> None:
    liquid = msgspec.structs.replace(f.intent("AAPL", "buy", 10, "50"), order_type="limit", limit_price=D("51"))
    thin = msgspec.structs.replace(liquid, bar_volume=4_999)  # below the default 5,000

    assert pretrade(oms_state(), liquid, CFG)[0] == "APPROVED"  # 2 % through: inside 3 %
    reason, details = pretrade(oms_state(), thin, CFG)
    assert (reason, details["max_pct"], details["thin"]) == (PRICE_COLLAR_BLOCK, "0.01", "true")
    unknown = msgspec.structs.replace(liquid, bar_volume=0)
    assert pretrade(oms_state(), unknown, CFG)[0] == PRICE_COLLAR_BLOCK  # not known: thin (fail closed)


# --- RATE_THROTTLE_BLOCK on cancels per minute -------------------------------------------------


def test_cancel_rate_when_cancels_in_the_minute_reach_the_limit_then_new_orders_throttled(f: Events) -> None:
    a, b = f.intent("AAPL", "buy", 10, "50", n=1), f.intent("MSFT", "buy", 10, "50", n=1)
    state, _ = apply(oms_state(), a, b, f.accepted(a), f.accepted(b, broker_order_id="bo-2"), f.canceled(a))
    nxt = f.intent("SPY", "buy", 10, "50", n=1)
    assert pretrade(state, nxt, CFG)[0] == "APPROVED"  # one cancel in the minute

    state, _ = apply(state, f.canceled(b))
    reason, details = pretrade(state, nxt, CFG)
    assert (reason, details["limit"], details["cancels"]) == (RATE_THROTTLE_BLOCK, "max_cancels_per_min", "2")
    later = f.intent("SPY", "buy", 10, "50", n=2)
    assert pretrade(state, later, CFG)[0] == "APPROVED"  # the minute has passed


# --- CIRCUIT_OPEN_<dep> at the OMS -------------------------------------------------------------


def test_circuit_when_a_dependency_breaker_is_open_then_denied_with_its_code(f: Events) -> None:
    intent = f.intent("AAPL", "buy", 10, "50")

    _, out = step(oms_state(), intent, CTX, ("broker_submit", "NET_RETRY"))
    decision = next(e for e in out if isinstance(e, PretradeDecision))
    assert (decision.approved, decision.reason) == (False, "CIRCUIT_OPEN_broker_submit")
    assert decision.details == {"dependency": "broker_submit", "failure": "NET_RETRY"}
    _, out = step(oms_state(), intent, CTX, None)
    assert next(e for e in out if isinstance(e, PretradeDecision)).approved


# --- reconciliation -----------------------------------------------------------------------------


def test_recon_when_position_differs_in_consecutive_snapshots_then_recon_mismatch_halts(f: Events) -> None:
    state = oms_state(positions={"AAPL": st.Position(qty=100, avg_price=D(50))})

    state, out = apply(state, snapshot(1, positions={"AAPL": 60}))
    assert not state.halted and not [e for e in out if isinstance(e, AlertRaised)]  # may be a fill on its way
    state, out = apply(state, snapshot(2, positions={"AAPL": 60}))
    alerts = [e for e in out if isinstance(e, AlertRaised)]
    assert [(a.code, a.severity, a.details["broker_qty"], a.details["keel_qty"]) for a in alerts] == [
        (RECON_MISMATCH, "critical", "60", "100")
    ]
    assert state.halted and state.halt_reason.startswith("RECON_MISMATCH: AAPL")
    state, out = apply(state, snapshot(3, positions={"AAPL": 60}))
    assert not [e for e in out if isinstance(e, AlertRaised)]  # said once


def test_recon_when_difference_changes_between_snapshots_then_it_is_not_confirmed(f: Events) -> None:
    state = oms_state(positions={"AAPL": st.Position(qty=100, avg_price=D(50))})

    state, _ = apply(state, snapshot(1, positions={"AAPL": 60}), snapshot(2, positions={"AAPL": 80}))
    assert not state.halted
    state, _ = apply(state, snapshot(3, positions={"AAPL": 100}))
    assert state.position_gaps == {}


def test_recon_when_reduce_only_configured_then_adding_denied_reducing_passes_until_resume(f: Events) -> None:
    cfg = msgspec.structs.replace(CFG, recon_mismatch_action="reduce_only")
    c = ctx("oms", cfg)
    state = oms_state(positions={"AAPL": st.Position(qty=100, avg_price=D(50))})
    for n in (1, 2):
        state, _ = step(state, snapshot(n, positions={"AAPL": 60}), c)
    assert not state.halted and state.reduce_only.startswith(RECON_MISMATCH)

    reason, _ = pretrade(state, f.intent("MSFT", "buy", 10, "50"), cfg)
    assert reason == RECON_MISMATCH
    assert pretrade(state, f.intent("AAPL", "sell", 10, "50"), cfg)[0] == "APPROVED"
    state, _ = step(state, f.resume("books agree"), c)
    assert state.reduce_only == "" and pretrade(state, f.intent("MSFT", "buy", 10, "50"), cfg)[0] == "APPROVED"


def test_recon_when_foreign_order_open_then_alerted_once_and_canceled_only_at_start_with_cleanup(f: Events) -> None:
    stranger = open_at_broker(f.intent("AAPL", "buy", 10, "50"), cid="placed-by-hand")
    cleanup = ctx("oms", msgspec.structs.replace(CFG, startup_cleanup=True))

    state, out = step(oms_state(), snapshot(1, orders=(stranger,), kind="startup"), CTX)
    assert [(type(e).__name__, getattr(e, "code", "")) for e in out] == [("AlertRaised", "FOREIGN_ORDER")]
    _, out = step(state, snapshot(2, orders=(stranger,)), CTX)
    assert out == []  # said once
    _, out = step(oms_state(), snapshot(1, orders=(stranger,), kind="startup"), cleanup)
    cancels = [e for e in out if isinstance(e, CancelRequested)]
    assert [(c.broker_order_id, c.reason) for c in cancels] == [(stranger.broker_order_id, STARTUP_CLEANUP)]
    _, out = step(oms_state(), snapshot(1, orders=(stranger,)), cleanup)
    assert not [e for e in out if isinstance(e, CancelRequested)]  # periodic: alert only


def test_recon_when_keel_order_open_then_not_foreign(f: Events) -> None:
    intent = f.intent("AAPL", "buy", 10, "50")
    state, _ = apply(oms_state(), intent, f.accepted(intent))

    _, out = step(state, snapshot(1, orders=(open_at_broker(intent),)), CTX)
    assert out == []


def test_recon_when_broker_filled_more_than_the_log_then_missing_fill_written_once_and_counted_once(
    f: Events,
) -> None:
    intent = f.intent("AAPL", "buy", 100, "50")
    state, _ = apply(oms_state(), intent, f.accepted(intent))
    at_broker = open_at_broker(intent, filled=40, avg="50.10")

    state, out = apply(state, snapshot(1, orders=(at_broker,), positions={"AAPL": 40}))
    assert not [e for e in out if isinstance(e, OrderPartiallyFilled)] and not state.halted  # on its way, perhaps
    state, out = apply(state, snapshot(2, orders=(at_broker,), positions={"AAPL": 40}))
    fills = [e for e in out if isinstance(e, OrderPartiallyFilled)]
    assert [(x.last_qty, x.cum_qty, x.last_px, x.execution_id) for x in fills] == [
        (40, 40, D("50.100000"), f"recon:{at_broker.broker_order_id}:40")
    ]
    assert not state.halted  # the unreported fill explains the position
    _, again = apply(state, snapshot(3, orders=(at_broker,), positions={"AAPL": 40}))
    assert [e.event_id for e in again if isinstance(e, OrderPartiallyFilled)] == [fills[0].event_id]  # same id

    state, _ = apply(state, fills[0])  # the written report comes back through the exec stream
    assert state.positions["AAPL"].qty == 40
    late = f.fill(intent, last_qty=40, last_px="50.10", cum_qty=40)  # execution's own report, late
    state, _ = apply(state, late)
    assert state.positions["AAPL"].qty == 40  # not counted twice


def test_session_close_when_last_bar_watermark_then_summary_and_day_orders_canceled(f: Events) -> None:
    _, close_ns = session_open_close(date.fromisoformat(SESSION))
    cfg = msgspec.structs.replace(CFG, session_close_cancel_day=True)
    c = ctx("oms", cfg)
    working, denied = f.intent("AAPL", "buy", 10, "50"), f.intent("MSFT", "buy", 10**6, "50")
    state = oms_state()
    for ev in (working, denied, f.accepted(working)):
        state, _ = step(state, ev, c)

    state, out = step(state, f.watermark("risk", close_ns - MINUTE_NS), c)
    assert not [e for e in out if isinstance(e, SessionSummary | CancelRequested)]  # not the close yet
    state, out = step(state, f.watermark("risk", close_ns), c)
    cancels = [e for e in out if isinstance(e, CancelRequested)]
    summary = next(e for e in out if isinstance(e, SessionSummary))
    assert [(x.client_order_id, x.reason) for x in cancels] == [(working.client_order_id, SESSION_CLOSE_CLEANUP)]
    assert (summary.session, summary.intents, summary.approved, summary.denied) == (
        SESSION,
        2,
        1,
        {"ORDER_SIZE_BLOCK": 1},
    )
    assert (summary.open_at_close, summary.canceled_at_close) == (1, 1)
    assert state.session_counts == {}


def test_recon_when_an_order_ended_at_the_broker_is_still_followed_then_its_symbol_is_not_judged(f: Events) -> None:
    # the broker filled the order while it was down; execution still follows it (its report is on
    # the way): the broker's position is explained, however many snapshots show it
    intent = f.intent("AAPL", "buy", 100, "50")
    state, _ = apply(oms_state(), intent, f.accepted(intent))
    followed = msgspec.structs.replace(snapshot(0, positions={"AAPL": 100}), tracked=(intent.client_order_id,))

    for seq in (1, 2, 3):
        state, out = apply(state, msgspec.structs.replace(followed, seq=seq, event_id=f"snap-{seq}"))
        assert not [e for e in out if isinstance(e, AlertRaised)] and not state.halted
    # execution stopped following it and no report came: it is looked up (RECON_ORDER_ENDED_UNSEEN),
    # and if that brings no report either, the difference is judged
    state, out = apply(state, *(snapshot(n, positions={"AAPL": 100}) for n in (4, 5, 6, 7)))
    assert [type(e).__name__ for e in out] == ["AlertRaised", "OrderLookupRequested"] and not state.halted
    state, _ = apply(state, snapshot(8, positions={"AAPL": 100}))
    assert state.halted and state.halt_reason.startswith("RECON_MISMATCH: AAPL position 100")


def test_recon_when_an_acked_order_ended_at_the_broker_unseen_then_looked_up_once_and_its_fill_explains_it(
    f: Events,
) -> None:
    # acknowledged, then nothing: the broker filled it and no report came (nobody follows it)
    intent = f.intent("AAPL", "buy", 100, "50")
    state, _ = apply(oms_state(), intent, f.accepted(intent, broker_order_id="bo-7"))

    state, first = apply(state, snapshot(1, positions={"AAPL": 100}))
    state, second = apply(state, snapshot(2, positions={"AAPL": 100}))
    # execution follows it again and reports the fill it finds; later snapshots see nothing odd
    fill = f.fill(intent, last_qty=100, last_px="50", cum_qty=100)
    state, later = apply(state, fill, snapshot(3, positions={"AAPL": 100}), snapshot(4, positions={"AAPL": 100}))

    assert first == []  # one snapshot is not yet a confirmed difference
    [said, lookup] = second
    assert isinstance(said, AlertRaised) and said.code == RECON_ORDER_ENDED_UNSEEN
    assert isinstance(lookup, OrderLookupRequested)
    assert (lookup.client_order_id, lookup.broker_order_id, lookup.qty, lookup.filled_qty, lookup.reason) == (
        intent.client_order_id,
        "bo-7",
        100,
        0,
        RECON_ORDER_ENDED_UNSEEN,
    )
    assert [e for e in later if isinstance(e, (AlertRaised, OrderLookupRequested))] == []
    assert not state.halted and state.intents[intent.intent_id].status == st.FILLED
    assert state.positions["AAPL"].qty == 100 and state.unseen_ends == {}


def test_recon_when_order_listed_open_or_followed_then_not_looked_up(f: Events) -> None:
    listed, followed = f.intent("AAPL", "buy", 10, "50"), f.intent("MSFT", "buy", 10, "50")
    state, _ = apply(oms_state(), listed, followed, f.accepted(listed), f.accepted(followed, broker_order_id="bo-2"))
    snap = msgspec.structs.replace(
        snapshot(0), open_orders=(open_at_broker(listed),), tracked=(followed.client_order_id,)
    )

    for n in (1, 2, 3):
        state, out = apply(state, msgspec.structs.replace(snap, seq=n, event_id=f"snap-{n}"))
        assert [e for e in out if isinstance(e, OrderLookupRequested)] == []
    assert state.unseen_ends == {}


def test_fills_when_reports_of_one_order_arrive_out_of_order_then_each_share_counted_once(f: Events) -> None:
    # a crashed consumer's fill (cum 100) comes back after the order's next fill (cum 150)
    intent = f.intent("AAPL", "buy", 150, "50")
    state, _ = apply(oms_state(), intent, f.accepted(intent))
    first = f.fill(intent, last_qty=100, last_px="50", cum_qty=100)
    second = f.fill(intent, last_qty=50, last_px="53", cum_qty=150, avg_px="51")

    state, _ = apply(state, second, first)

    assert state.positions["AAPL"] == st.Position(qty=150, avg_price=D("51.000000"))
    assert state.intents[intent.intent_id].filled_qty == 150
    assert {first.execution_id, second.execution_id} <= set(state.recent_fills)
