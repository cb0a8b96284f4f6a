"""TCA pure core: given intents, execution reports and bars -> then per-fill and per-order records."""

from __future__ import annotations

from collections.abc import Iterable
from decimal import Decimal

import msgspec
import pytest

from libs import costmodel
from libs.contracts.base import Event, derive_id
from libs.contracts.codec import encode
from libs.contracts.execution import SubmitSkipped
from libs.contracts.ops import AlertRaised
from libs.contracts.risk import OrderIntent
from libs.contracts.tca import CostModelUpdated, TcaOrderRecorded, TcaRecorded
from services.tca import shortfall as sf
from services.tca.config import TcaConfig
from services.tca.handlers import shortfall_bps, step
from services.tca.state import TcaState
from tests.factories import MINUTE_NS, NOW_NS, Events, ctx, minute

D = Decimal
CFG = TcaConfig()
CTX = ctx("tca", CFG)
AT_END = ctx("tca", TcaConfig(opportunity_horizon_sec=0))  # unfilled shares marked when the order ends
MINUTES_PER_HOUR = 60
CFG_RETENTION_MINUTES = int(CFG.intent_retention_hours * MINUTES_PER_HOUR)  # 72 h = 4320 bars


@pytest.fixture
def f() -> Events:
    return Events(seed=53)


def given(events: Iterable[object], *, state: TcaState | None = None, context=CTX) -> tuple[TcaState, list[Event]]:  # type: ignore[no-untyped-def]
    state = state or TcaState()
    out: list[Event] = []
    for ev in events:
        state, emitted = step(state, ev, context)
        out.extend(emitted)
    return state, out


def orders(out: Iterable[Event]) -> list[TcaOrderRecorded]:
    return [e for e in out if isinstance(e, TcaOrderRecorded)]


def fills(out: Iterable[Event]) -> list[TcaRecorded]:
    return [e for e in out if isinstance(e, TcaRecorded)]


def at(ev: Event, n: int) -> Event:
    """The same report, stamped at the close of minute n (the broker's time)."""
    return msgspec.structs.replace(ev, ts_event=minute(n))


# --- the Perold decomposition: a published worked example -----------------------------------


def test_perold_when_cfa_worked_example_then_reproduces_its_decomposition() -> None:
    # CFA Institute, "Execution of Portfolio Decisions" (Wagner and Edwards; in Maginn, Tuttle,
    # Pinto and McLeavey, Managing Investment Portfolios, 3rd ed., 2007, ch. 10; CFA Program
    # Level III): buy 1,000 shares decided at the $10.00 close; nothing fills the next day, which
    # closes at $10.05; on the day after 800 shares fill at $10.07 with a $20 commission; the
    # rest is canceled with the stock at $10.08. Shortfall 0.92% = explicit 0.20% + realised
    # P&L 0.16% + delay 0.40% + missed-trade opportunity 0.16%.
    parts = sf.perold(
        side="buy",
        qty=1000,
        decision_price=D("10.00"),
        submit_price=D("10.05"),
        filled_qty=800,
        fill_notional=800 * D("10.07"),
        fees=D("20"),
        end_price=D("10.08"),
    )

    assert (parts.explicit_usd, parts.execution_usd, parts.delay_usd, parts.opportunity_usd) == (
        D("20"),
        D("16"),
        D("40"),
        D("16"),
    )
    assert (parts.explicit_bps, parts.execution_bps, parts.delay_bps, parts.opportunity_bps) == (
        D("20"),
        D("16"),
        D("40"),
        D("16"),
    )
    assert (parts.total_usd, parts.total_bps) == (D("92"), D("92"))


def test_order_record_when_cfa_example_through_the_handlers_then_the_final_record_matches(f: Events) -> None:
    intent = f.intent("IRBT", "buy", 1000, "10.00", n=1)
    stream = [
        intent,
        f.bar("IRBT", 1, "10.00"),
        at(f.submitted(intent), 1),
        f.bar("IRBT", 2, "10.05"),
        at(f.accepted(intent), 2),  # the broker took it when the stock stood at 10.05
        msgspec.structs.replace(at(f.fill(intent, last_qty=800, last_px="10.07", cum_qty=800), 3), fee=D("20")),
        at(f.canceled(intent, cum_qty=800), 4),
        f.bar("IRBT", 3, "10.07"),
        f.bar("IRBT", 4, "10.08"),
    ]

    _, out = given(stream, context=AT_END)

    final = orders(out)[-1]
    assert (final.final, final.status, final.partial_fill, final.filled_qty) == (True, "canceled", True, 800)
    assert (final.decision_price, final.submit_price, final.fill_vwap, final.end_price) == (
        D("10.00"),
        D("10.05"),
        D("10.07"),
        D("10.08"),
    )
    assert (final.explicit_bps, final.delay_bps, final.execution_bps, final.opportunity_bps) == (
        D("20"),
        D("40"),
        D("16"),
        D("16"),
    )
    assert (final.shortfall_bps, final.shortfall_usd) == (D("92"), D("92"))
    assert (final.fees, final.fees_estimated) == (D("20"), False)
    assert (final.decision_ts, final.submit_ts, final.first_fill_ts, final.end_ts) == (
        minute(1),
        minute(2),
        minute(3),
        minute(4),
    )
    assert final.fill_latency_ms == 60_000
    assert final.provider == "alpaca"


# --- sign conventions ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("side", "arrival", "fill", "bps"),
    [
        ("buy", "100", "100.05", "5.0000"),  # paid up: cost
        ("buy", "100", "99.95", "-5.0000"),  # bought cheaper: gain
        ("sell", "100", "99.95", "5.0000"),  # sold lower: cost
        ("sell", "100", "100.05", "-5.0000"),  # sold higher: gain
        ("buy", "100", "100", "0.0000"),
        ("buy", "250", "250.10", "4.0000"),
        ("sell", "30", "29.99", "3.3333"),  # 1/3 bp per cent at $30, quantized to 1e-4
    ],
)
def test_shortfall_bps_when_fill_differs_from_arrival_then_signed_cost_in_bps(
    side: str, arrival: str, fill: str, bps: str
) -> None:
    result = shortfall_bps(side, D(arrival), D(fill))

    assert result == D(bps)
    assert str(result) == bps  # four decimal places exactly


@pytest.mark.parametrize(
    ("side", "moves", "delay", "execution", "opportunity"),
    [
        # 200 shares decided at 100.00; the price is 100.10 when the order works, 100 shares fill
        # at 100.15 and the rest is marked at 100.20: per 20,000 of paper notional, delay
        # 100 * 0.10 = 5 bps, execution 100 * 0.05 = 2.5 bps, opportunity 100 * 0.20 = 10 bps
        ("buy", ("100.10", "100.15", "100.20"), "5", "2.5", "10"),  # a buyer pays for every rise
        ("sell", ("100.10", "100.15", "100.20"), "-5", "-2.5", "-10"),  # a seller gains from each
        # and the same falls
        ("buy", ("99.90", "99.85", "99.80"), "-5", "-2.5", "-10"),
        ("sell", ("99.90", "99.85", "99.80"), "5", "2.5", "10"),
    ],
)
def test_perold_when_price_moves_then_each_part_is_a_cost_for_the_side_it_hurts(
    side: str, moves: tuple[str, str, str], delay: str, execution: str, opportunity: str
) -> None:
    submit, fill, end = (D(m) for m in moves)

    parts = sf.perold(
        side=side,
        qty=200,
        decision_price=D("100"),
        submit_price=submit,
        filled_qty=100,
        fill_notional=100 * fill,
        fees=D(0),
        end_price=end,
    )

    assert (parts.delay_bps, parts.execution_bps, parts.opportunity_bps) == (D(delay), D(execution), D(opportunity))


def test_perold_when_submit_benchmark_then_no_delay_and_measured_from_the_submit_price() -> None:
    parts = sf.perold(
        side="buy",
        qty=1000,
        decision_price=D("10.00"),
        submit_price=D("10.05"),
        filled_qty=800,
        fill_notional=800 * D("10.07"),
        fees=D("20"),
        end_price=D("10.08"),
        benchmark="submit",
    )

    assert parts.delay_usd == 0
    assert (parts.execution_usd, parts.opportunity_usd, parts.explicit_usd) == (D("16"), D("6"), D("20"))
    assert parts.total_bps == (D(42) / D("10050") * 10_000).quantize(D("0.0001"))


def test_order_record_when_submit_benchmark_configured_then_arrival_is_the_submit_price(f: Events) -> None:
    context = ctx("tca", TcaConfig(arrival_benchmark="submit", opportunity_horizon_sec=0))
    intent = f.intent("AAPL", "buy", 100, "100", n=1)
    stream = [
        intent,
        f.bar("AAPL", 1, "100"),
        f.bar("AAPL", 2, "100.50"),
        at(f.accepted(intent), 2),
        at(f.fill(intent, last_qty=100, last_px="100.60", cum_qty=100), 3),
    ]

    _, out = given(stream, context=context)

    final = orders(out)[-1]
    assert (final.benchmark, final.arrival_price, final.delay_bps) == ("submit", D("100.50"), D(0))
    assert final.shortfall_bps == (D("0.10") / D("100.50") * 10_000).quantize(D("0.0001"))


# --- the arrival quote -----------------------------------------------------------------------


def quoted(intent: OrderIntent, spread: str) -> OrderIntent:
    return msgspec.structs.replace(intent, spread_bps=D(spread), spread_is_proxy=False)


def test_order_record_when_bar_has_no_quoted_spread_then_proxy_spread_flagged_and_no_bid_ask(f: Events) -> None:
    intent = f.intent("AAPL", "buy", 100, "100")  # spread_is_proxy by default

    _, out = given([intent, f.fill(intent, last_qty=100, last_px="100.06", cum_qty=100)])

    rec = orders(out)[-1]
    assert (rec.spread_is_proxy, rec.spread_bps_at_arrival) == (True, CFG.proxy_spread_bps)
    assert (rec.bid_at_arrival, rec.ask_at_arrival, rec.mid_at_arrival) == (None, None, D("100"))
    assert rec.spread_paid_bps == D("6.0000")


def test_order_record_when_bar_has_a_quoted_spread_then_bid_and_ask_around_the_mid(f: Events) -> None:
    intent = quoted(f.intent("AAPL", "sell", 100, "100"), "4")

    _, out = given([intent, f.fill(intent, last_qty=100, last_px="99.98", cum_qty=100)])

    rec = orders(out)[-1]
    assert (rec.spread_is_proxy, rec.spread_bps_at_arrival) == (False, D("4"))
    assert (rec.bid_at_arrival, rec.ask_at_arrival) == (D("99.98"), D("100.02"))
    assert rec.spread_paid_bps == D("2.0000")  # sold at the bid: half the quoted spread


# --- pending and final records ---------------------------------------------------------------


def test_order_when_working_past_pending_write_sec_then_a_pending_record(f: Events) -> None:
    intent = f.intent("AAPL", "buy", 100, "100", n=1)
    state, early = given([intent, at(f.submitted(intent), 1), f.watermark("execution", minute(1))])
    assert orders(early) == []  # not yet 60 s old

    after, out = step(state, f.watermark("execution", minute(2)), CTX)

    (rec,) = orders(out)
    assert (rec.revision, rec.final, rec.status, rec.filled_qty) == (0, False, "working", 0)
    assert rec.event_id == derive_id("tca.order_recorded.v1", intent.client_order_id, 0)
    _, again = step(after, f.watermark("execution", minute(3)), CTX)
    assert orders(again) == []  # written once


def test_order_record_when_each_fill_then_a_new_revision_and_the_last_is_final(f: Events) -> None:
    intent = f.intent("AAPL", "buy", 100, "100", n=1)
    stream = [
        intent,
        f.bar("AAPL", 1, "100"),
        f.fill(intent, last_qty=40, last_px="100.02", cum_qty=40),
        f.fill(intent, last_qty=60, last_px="100.05", cum_qty=100),
    ]

    _, out = given(stream)

    assert [(r.revision, r.final, r.status, r.filled_qty) for r in orders(out)] == [
        (0, False, "partially_filled", 40),
        (1, True, "filled", 100),
    ]
    assert orders(out)[-1].fill_vwap == D("100.038")
    assert [r.qty for r in fills(out)] == [40, 60]


def test_order_when_canceled_unfilled_then_final_waits_for_the_mark_price(f: Events) -> None:
    intent = f.intent("AAPL", "sell", 100, "100", n=1)
    state, out = given([intent, f.bar("AAPL", 1, "100"), at(f.canceled(intent), 3)], context=AT_END)
    assert orders(out) == []  # no bar at or after minute 3 yet: the mark is not known

    _, out = given([f.bar("AAPL", 2, "99.50"), f.bar("AAPL", 3, "99.00")], state=state, context=AT_END)

    (rec,) = orders(out)
    assert (rec.final, rec.status, rec.end_price) == (True, "canceled", D("99.00"))
    assert rec.opportunity_bps == D("100")  # the seller failed to sell before a 1% fall: a cost


def test_order_when_rejected_then_missed_trade_marked_at_the_opportunity_horizon(f: Events) -> None:
    context = ctx("tca", TcaConfig(opportunity_horizon_sec=120))
    intent = f.intent("AAPL", "buy", 100, "100", n=1)
    stream = [intent, f.bar("AAPL", 1, "100"), at(f.rejected(intent), 1), f.bar("AAPL", 2, "100.2")]
    state, out = given(stream, context=context)
    assert orders(out) == []

    _, out = step(state, f.bar("AAPL", 3, "100.5"), context)

    (rec,) = orders(out)
    assert (rec.status, rec.reason, rec.end_price, rec.opportunity_bps) == ("rejected", "40310000", D("100.5"), D(50))


def test_final_record_when_bars_and_reports_interleave_differently_then_identical(f: Events) -> None:
    intent = f.intent("AAPL", "buy", 100, "100", n=1)
    reports = [
        at(f.submitted(intent), 1),
        at(f.accepted(intent), 2),
        at(f.fill(intent, last_qty=30, last_px="100.10", cum_qty=30), 3),
        at(f.canceled(intent, cum_qty=30), 4),
    ]
    bars = [f.bar("AAPL", n, c) for n, c in ((1, "100"), (2, "100.05"), (3, "100.10"), (4, "100.30"))]

    _, reports_first = given([intent, *reports, *bars], context=AT_END)
    _, bars_first = given([intent, *bars, *reports], context=AT_END)
    _, zipped = given([intent, *(e for pair in zip(bars, reports, strict=True) for e in pair)], context=AT_END)

    finals = [encode(orders(out)[-1]) for out in (reports_first, bars_first, zipped)]
    assert finals[0] == finals[1] == finals[2]
    assert orders(reports_first)[-1].final


def test_order_when_marketdata_watermark_passes_the_mark_time_then_final_without_a_bar(f: Events) -> None:
    intent = f.intent("HALT", "buy", 100, "20", n=1)
    state, out = given([intent, f.bar("HALT", 1, "20"), at(f.expired(intent), 5)], context=AT_END)
    assert orders(out) == []

    _, out = step(state, f.watermark("marketdata", minute(5)), AT_END)

    (rec,) = orders(out)
    assert (rec.status, rec.end_price, rec.opportunity_bps) == ("expired", D("20"), D(0))


def test_fill_when_reported_after_the_cancel_then_the_final_record_is_revised(f: Events) -> None:
    intent = f.intent("AAPL", "buy", 100, "100", n=1)
    state, out = given(
        [intent, f.bar("AAPL", 1, "100"), f.bar("AAPL", 2, "100"), at(f.canceled(intent), 2)], context=AT_END
    )
    assert [(r.final, r.filled_qty) for r in orders(out)] == [(True, 0)]

    _, late = step(state, at(f.fill(intent, last_qty=50, last_px="100.01", cum_qty=50), 2), AT_END)

    assert [(r.revision, r.final, r.status, r.filled_qty) for r in orders(late)] == [(1, True, "canceled", 50)]


def test_order_when_skipped_then_no_order_record(f: Events) -> None:
    intent = f.intent("AAPL", "buy", 100, "100", n=1)
    skip = SubmitSkipped(
        **{k: getattr(f.submitted(intent), k) for k in ("event_id", "correlation_id", "causation_id", "ts_event")},
        ts_init=NOW_NS,
        intent_id=intent.intent_id,
        client_order_id=intent.client_order_id,
        symbol="AAPL",
        side="buy",
        qty=100,
        stage="oms",
        reason_code="PRICE_COLLAR_BLOCK",
        message="collar",
    )

    state, out = given([intent, skip, f.watermark("execution", minute(5))])

    assert orders(out) == []
    assert intent.client_order_id not in state.orders


def test_cancel_rate_when_orders_of_a_symbol_end_then_share_canceled_over_the_window(f: Events) -> None:
    a = f.intent("AAPL", "buy", 100, "100", n=1)
    b = f.intent("AAPL", "buy", 100, "100", n=2)
    c = f.intent("AAPL", "buy", 100, "100", n=3)
    stream = [
        a,
        b,
        c,
        *(f.bar("AAPL", n, "100") for n in range(1, 5)),
        at(f.fill(a, last_qty=100, last_px="100", cum_qty=100), 2),
        at(f.canceled(b), 3),
        at(f.fill(c, last_qty=100, last_px="100", cum_qty=100), 4),
    ]

    _, out = given(stream, context=AT_END)

    assert [r.cancel_rate for r in orders(out) if r.final] == [D(0), D("0.5"), D("0.3333")]


# --- fees ------------------------------------------------------------------------------------


def test_fill_when_broker_reports_no_fee_on_a_sale_then_the_schedule_fee_flagged_estimated(f: Events) -> None:
    intent = f.intent("AAPL", "sell", 1000, "100")

    _, out = given([intent, f.fill(intent, last_qty=1000, last_px="100", cum_qty=1000)])

    (rec,) = fills(out)
    # SEC Section 31: 100,000 * 27.80 / 1e6 = 2.78; FINRA TAF: 1000 * 0.000166 = 0.166
    assert rec.fee == D("2.95")
    order = orders(out)[-1]
    assert (order.fees, order.fees_estimated, order.explicit_bps) == (D("2.95"), True, D("0.2950"))


def test_fill_when_buy_without_fee_then_none_estimated(f: Events) -> None:
    intent = f.intent("AAPL", "buy", 1000, "100")

    _, out = given([intent, f.fill(intent, last_qty=1000, last_px="100", cum_qty=1000)])

    assert fills(out)[0].fee == 0
    assert orders(out)[-1].explicit_bps == 0


# --- per-fill records and fills that come early ----------------------------------------------


def test_fill_when_intent_known_then_shortfall_is_recorded(f: Events) -> None:
    intent = f.intent("AAPL", "buy", 100, "100", strategy="trend")
    fill = f.fill(intent, last_qty=40, last_px="100.05", cum_qty=40)
    state, _ = given([intent])

    _, out = step(state, fill, CTX)

    (rec,) = fills(out)
    assert (rec.client_order_id, rec.execution_id, rec.symbol, rec.side) == (
        intent.client_order_id,
        fill.execution_id,
        "AAPL",
        "buy",
    )
    assert (rec.qty, rec.arrival_price, rec.fill_price, rec.shortfall_bps) == (40, D("100"), D("100.05"), D("5.0000"))
    assert (rec.strategy, rec.session) == ("trend", "2024-03-05")
    assert rec.event_id == derive_id("tca.tca_recorded.v1", fill.execution_id)
    assert (rec.causation_id, rec.correlation_id, rec.ts_event, rec.ts_init) == (
        fill.event_id,
        fill.correlation_id,
        fill.ts_event,
        NOW_NS,
    )


def test_fill_when_before_its_intent_then_it_waits_and_is_measured_when_intent_arrives(f: Events) -> None:
    intent = f.intent("AAPL", "buy", 100, "100")
    fill = f.fill(intent, last_qty=100, last_px="100.02", cum_qty=100)

    waiting, early = step(TcaState(), fill, CTX)
    after, late = step(waiting, intent, CTX)

    assert early == []
    assert waiting.waiting == (fill,)
    (rec,) = fills(late)
    assert (rec.execution_id, rec.shortfall_bps) == (fill.execution_id, D("2.0000"))
    assert after.waiting == ()
    assert orders(late)[-1].filled_qty == 100


def test_intent_when_other_reports_wait_then_only_its_own_are_released(f: Events) -> None:
    mine = f.intent("AAPL", "buy", 100, "100", n=1)
    other = f.intent("MSFT", "buy", 100, "300", n=2)
    state, _ = given(
        [
            f.fill(mine, last_qty=40, last_px="100.01", cum_qty=40),
            f.fill(other, last_qty=10, last_px="300", cum_qty=10),
            f.fill(mine, last_qty=60, last_px="100.03", cum_qty=100),
        ]
    )

    after, out = step(state, mine, CTX)

    assert [(r.qty, r.shortfall_bps) for r in fills(out)] == [(40, D("1.0000")), (60, D("3.0000"))]
    assert [w.client_order_id for w in after.waiting] == [other.client_order_id]


def test_fills_when_replayed_then_records_are_byte_identical(f: Events) -> None:
    intent = f.intent("AAPL", "sell", 100, "100")
    stream = [
        f.fill(intent, last_qty=50, last_px="99.97", cum_qty=50),
        intent,
        f.fill(intent, last_qty=50, last_px="99.99", cum_qty=100),
    ]

    _, first = given(stream)
    _, second = given(stream)

    assert len(fills(first)) == 2 and len(orders(first)) == 2
    assert [encode(e) for e in first] == [encode(e) for e in second]


def test_fill_when_its_intent_never_arrives_then_dropped_after_retention_with_an_alert() -> None:
    f = Events(seed=5)
    c = ctx("tca", TcaConfig(intent_retention_hours=1.0))
    early = f.intent("AAPL", "buy", 10, "50", n=1)
    late = f.intent("MSFT", "buy", 10, "50", n=200)
    state, _ = step(TcaState(), f.fill(early, last_qty=10, last_px="50", cum_qty=10), c)

    after, out = step(state, f.fill(late, last_qty=10, last_px="50", cum_qty=10), c)

    (alert,) = out
    assert isinstance(alert, AlertRaised)
    assert alert.code == "TCA_ORPHAN_FILL" and alert.details["client_order_id"] == early.client_order_id
    assert [w.client_order_id for w in after.waiting] == [late.client_order_id]


def test_orders_when_final_and_long_ended_then_forgotten_at_an_execution_watermark(f: Events) -> None:
    intent = f.intent("AAPL", "buy", 100, "100", n=1)
    state, _ = given([intent, f.bar("AAPL", 1, "100"), f.fill(intent, last_qty=100, last_px="100", cum_qty=100)])
    assert state.orders[intent.client_order_id].final

    kept, _ = step(state, f.watermark("execution", minute(16)), CTX)
    gone, _ = step(kept, f.watermark("execution", minute(17)), CTX)

    assert intent.client_order_id in kept.orders
    assert intent.client_order_id not in gone.orders
    assert MINUTE_NS * 15 == 900 * 1_000_000_000


# --- the cost model's calibration ------------------------------------------------------------

NEXT_OPEN = minute(0) + 24 * 60 * MINUTE_NS  # 2024-03-06, the next session's open


def risk_done(f: Events, ts: int) -> Event:
    """Risk's watermark: every intent of bars up to ts is published."""
    return f.watermark("risk", ts)


def test_calibration_when_first_execution_watermark_then_the_prior_is_published_for_the_session(f: Events) -> None:
    waiting, early = step(TcaState(), f.watermark("execution", minute(1)), CTX)
    assert early == [] and len(waiting.closing) == 1  # risk has not said its intents are all out

    state, out = step(waiting, risk_done(f, minute(1)), CTX)

    (model,) = [e for e in out if isinstance(e, CostModelUpdated)]
    assert (model.session, model.effective_session, model.samples) == ("", "2024-03-05", 0)
    assert model.default == CFG.params().prior
    assert state.model == model and state.day_session == "2024-03-05" and state.closing == ()
    _, again = given([f.watermark("execution", minute(2)), risk_done(f, minute(2))], state=state)
    assert [e for e in again if isinstance(e, CostModelUpdated)] == []  # once a session


def test_calibration_when_next_session_starts_then_the_days_fills_are_folded_in(f: Events) -> None:
    context = ctx("tca", TcaConfig(min_samples_for_adapt=1))
    intent = msgspec.structs.replace(
        quoted(f.intent("AAPL", "buy", 100, "100", n=1), "4"), sigma_bps=D("10"), bar_volume=10_000
    )
    day = [
        f.watermark("execution", minute(1)),
        risk_done(f, minute(1)),
        intent,
        at(f.fill(intent, last_qty=100, last_px="100.05", cum_qty=100), 2),
    ]
    state, _ = given(day, context=context)
    assert state.day["AAPL"].n == 1

    after, out = given(
        [f.watermark("execution", NEXT_OPEN + MINUTE_NS), risk_done(f, NEXT_OPEN + MINUTE_NS)],
        state=state,
        context=context,
    )

    (model,) = [e for e in out if isinstance(e, CostModelUpdated)]
    assert (model.session, model.effective_session, model.samples) == ("2024-03-05", "2024-03-06", 1)
    (aapl,) = model.symbols
    assert (aapl.symbol, aapl.samples) == ("AAPL", 1)
    assert aapl.spread_bps != CFG.params().prior.spread_bps  # the quoted 4 bps moved it
    assert after.day == {} and after.closing == ()


def test_calibration_when_a_fill_before_the_close_waits_for_its_intent_then_it_counts_in_the_closed_session(
    f: Events,
) -> None:
    context = ctx("tca", TcaConfig(min_samples_for_adapt=1))
    late_intent = f.intent("AAPL", "buy", 100, "100", n=389)
    early_fill = at(f.fill(late_intent, last_qty=100, last_px="100.05", cum_qty=100), 390)
    state, _ = given([f.watermark("execution", minute(1)), risk_done(f, minute(1))], context=context)
    # execution reports the fill and moves on to the next session before TCA sees the intent
    state, out = given([early_fill, f.watermark("execution", NEXT_OPEN + MINUTE_NS)], state=state, context=context)
    assert [e for e in out if isinstance(e, CostModelUpdated)] == []
    nxt = f.intent("AAPL", "buy", 100, "101", n=24 * 60 + 1)

    _, out = given(
        [late_intent, nxt, at(f.fill(nxt, last_qty=100, last_px="101", cum_qty=100), 24 * 60 + 2),
         risk_done(f, NEXT_OPEN + MINUTE_NS)],
        state=state,
        context=context,
    )  # fmt: skip

    (model,) = [e for e in out if isinstance(e, CostModelUpdated)]
    assert (model.session, model.samples) == ("2024-03-05", 1)  # the early fill; not the new session's


def test_calibration_when_the_bounds_cut_an_estimate_then_an_alert(f: Events) -> None:
    context = ctx("tca", TcaConfig(min_samples_for_adapt=1, max_daily_change=100.0))
    events: list[object] = [f.watermark("execution", minute(1)), risk_done(f, minute(1))]
    for n in range(1, 40):
        intent = quoted(f.intent("WILD", "buy", 100, "10", n=n), "900")
        events += [intent, at(f.fill(intent, last_qty=100, last_px="14", cum_qty=100), n + 1)]
    state, _ = given(events, context=context)

    _, out = given(
        [f.watermark("execution", NEXT_OPEN + MINUTE_NS), risk_done(f, NEXT_OPEN + MINUTE_NS)],
        state=state,
        context=context,
    )

    (model,) = [e for e in out if isinstance(e, CostModelUpdated)]
    assert "WILD" in model.out_of_bounds
    (alert,) = [e for e in out if isinstance(e, AlertRaised)]
    assert alert.code == "TCA_CALIBRATION_OUT_OF_BOUNDS" and "WILD" in alert.details["symbols"]
    bounds = CFG.params().bounds
    (wild,) = model.symbols
    assert wild.spread_bps <= bounds.max_spread_bps and wild.slippage_bps <= bounds.max_slippage_bps


def test_calibration_when_consumers_interleave_differently_then_the_same_model(f: Events) -> None:
    intents = [f.intent("AAPL", "sell", 100, "100", n=n) for n in (1, 2, 3)]
    risk = [*intents, risk_done(f, minute(3)), risk_done(f, NEXT_OPEN + MINUTE_NS)]
    reports = [
        f.watermark("execution", minute(1)),
        *(at(f.fill(i, last_qty=100, last_px="99.9", cum_qty=100), n + 1) for n, i in enumerate(intents, 1)),
        f.watermark("execution", NEXT_OPEN + MINUTE_NS),
    ]
    bars = [f.bar("AAPL", n, "100") for n in (1, 2, 3, 4)]

    _, a = given([risk[0], reports[0], *risk[1:], *bars, *reports[1:]])
    _, b = given([*reports, *bars, *risk])
    _, c = given([r for pair in zip(reports, risk, strict=False) for r in pair] + bars + risk[len(reports) :])

    models = [[encode(e) for e in out if isinstance(e, CostModelUpdated)] for out in (a, b, c)]
    assert models[0] == models[1] == models[2] and len(models[0]) == 2


def test_calibration_when_spreads_are_proxies_then_the_model_prices_what_the_fills_cost(f: Events) -> None:
    # every bar's spread a proxy (marketdata's synthetic feed): 20 buys each filled 3 bps over the
    # decision close; the calibrated model must then expect 3 bps, whatever proxy anyone assumed
    context = ctx("tca", TcaConfig(min_samples_for_adapt=1, calibration_halflife_sessions=0.01, max_daily_change=100.0))
    day: list[object] = [f.watermark("execution", minute(1)), risk_done(f, minute(1))]
    for n in range(1, 21):
        intent = f.intent("AAPL", "buy", 100, "100", n=n)
        day += [intent, at(f.fill(intent, last_qty=100, last_px="100.03", cum_qty=100), n + 1)]
    day += [f.watermark("execution", NEXT_OPEN + MINUTE_NS), risk_done(f, NEXT_OPEN + MINUTE_NS)]

    _, out = given(day, context=context)

    model = [e for e in out if isinstance(e, CostModelUpdated)][-1]
    (aapl,) = model.symbols
    bounds = CFG.params().bounds
    assert costmodel.expected_cost_bps(aapl, D(0), None, bounds) == D("3.0000")
    assert aapl.spread_bps == CFG.params().prior.spread_bps  # no spread learnt from proxies


def test_final_records_when_intents_reports_bars_and_watermarks_interleave_then_the_same_but_revision(
    f: Events,
) -> None:
    # two AAPL orders, one canceled part-filled, one filled; execution's watermarks (pending
    # writes), bars past the mark; the intents early, late or between: the final records agree
    a = f.intent("AAPL", "buy", 100, "100", n=1)
    b = f.intent("AAPL", "sell", 50, "100", n=2)
    reports = [
        at(f.submitted(a), 1),
        at(f.accepted(a), 2),
        f.watermark("execution", minute(2)),
        at(f.fill(a, last_qty=30, last_px="100.10", cum_qty=30), 3),
        at(f.submitted(b), 3),
        f.watermark("execution", minute(3)),
        at(f.canceled(a, cum_qty=30), 4),
        at(f.fill(b, last_qty=50, last_px="99.95", cum_qty=50), 4),
        f.watermark("execution", minute(5)),
    ]
    bars = [f.bar("AAPL", n, c) for n, c in ((1, "100"), (2, "100.05"), (3, "100.10"), (4, "100.30"), (5, "100.2"))]
    orderings = [
        [a, b, *reports, *bars],
        [*bars, *reports, a, b],
        [*reports[:4], a, *bars[:2], *reports[4:], b, *bars[2:]],
        [*(e for pair in zip(bars, reports, strict=False) for e in pair), *reports[len(bars) :], b, a],
    ]

    finals = []
    for events in orderings:
        _, out = given(events, context=AT_END)
        last = {r.client_order_id: r for r in orders(out) if r.final}
        finals.append({cid: encode(msgspec.structs.replace(r, revision=0)) for cid, r in sorted(last.items())})

    assert len(finals[0]) == 2
    assert finals[0] == finals[1] == finals[2] == finals[3]
    canceled = [r for r in orders(given(orderings[0], context=AT_END)[1]) if r.final and r.status == "canceled"]
    assert canceled[0].cancel_rate == D("1.0000")  # the first of the symbol's ends: a cancel


def test_fill_when_delivered_twice_then_counted_once(f: Events) -> None:
    intent = f.intent("AAPL", "buy", 100, "100", n=1)
    fill = f.fill(intent, last_qty=40, last_px="100.02", cum_qty=40)
    state, _ = given([intent, fill])

    after, out = step(state, msgspec.structs.replace(fill, event_id="redelivered"), CTX)

    assert out == [] and after == state
    assert state.orders[intent.client_order_id].filled_qty == 40


def test_order_when_no_end_within_retention_then_dropped_with_an_alert() -> None:
    f = Events(seed=7)
    context = ctx("tca", TcaConfig(intent_retention_hours=1.0))
    intent = f.intent("AAPL", "buy", 100, "100", n=1)
    state, _ = given([intent, at(f.submitted(intent), 1)], context=context)

    kept, early = step(state, f.watermark("execution", minute(61)), context)
    gone, out = step(kept, f.watermark("execution", minute(62)), context)

    assert intent.client_order_id in kept.orders and not [e for e in early if isinstance(e, AlertRaised)]
    assert intent.client_order_id not in gone.orders
    (alert,) = [e for e in out if isinstance(e, AlertRaised)]
    assert (alert.code, alert.details["client_order_id"]) == ("TCA_ORDER_UNENDED", intent.client_order_id)
