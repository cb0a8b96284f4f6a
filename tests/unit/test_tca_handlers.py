"""TCA pure core: given intents and fills -> then TcaRecorded with implementation shortfall."""

from __future__ import annotations

from collections.abc import Iterable
from decimal import Decimal

import pytest

from libs.contracts.base import Event, derive_id
from libs.contracts.codec import encode
from libs.contracts.tca import TcaRecorded
from services.tca.config import TcaConfig
from services.tca.handlers import shortfall_bps, step
from services.tca.state import TcaState
from tests.factories import NOW_NS, Events, ctx

D = Decimal
CFG = TcaConfig()
CTX = ctx("tca", CFG)
MINUTES_PER_HOUR = 60
CFG_RETENTION_MINUTES = int(CFG.intent_retention_hours * MINUTES_PER_HOUR)  # 72 h = 4320 bars


@pytest.fixture
def f() -> Events:
    return Events(seed=53)


def given(events: Iterable[object], *, state: TcaState | None = None) -> tuple[TcaState, list[Event]]:
    state = state or TcaState()
    out: list[Event] = []
    for ev in events:
        state, emitted = step(state, ev, CTX)
        out.extend(emitted)
    return state, out


# --- shortfall_bps ---------------------------------------------------------------------------


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


# --- fills and intents -----------------------------------------------------------------------


def test_fill_when_intent_known_then_shortfall_is_recorded(f: Events) -> None:
    intent = f.intent("AAPL", "buy", 100, "100", strategy="trend")
    fill = f.fill(intent, last_qty=40, last_px="100.05", cum_qty=40)
    state, _ = given([intent])

    after, out = step(state, fill, CTX)

    (rec,) = out
    assert isinstance(rec, TcaRecorded)
    assert (rec.client_order_id, rec.execution_id, rec.symbol, rec.side) == (
        intent.client_order_id,
        fill.execution_id,
        "AAPL",
        "buy",
    )
    assert (rec.qty, rec.arrival_price, rec.fill_price, rec.shortfall_bps) == (40, D("100"), D("100.05"), D("5.0000"))
    assert rec.strategy == "trend"
    assert rec.event_id == derive_id("tca.tca_recorded.v1", fill.execution_id)
    assert (rec.causation_id, rec.correlation_id, rec.ts_event, rec.ts_init) == (
        fill.event_id,
        fill.correlation_id,
        fill.ts_event,
        NOW_NS,
    )
    assert after == state


def test_fill_when_sell_below_arrival_then_positive_cost(f: Events) -> None:
    intent = f.intent("AAPL", "sell", 10, "100")
    state, _ = given([intent])

    _, out = step(state, f.fill(intent, last_qty=10, last_px="99.90", cum_qty=10), CTX)

    assert out[0].shortfall_bps == D("10.0000")  # type: ignore[attr-defined]


def test_fill_when_before_its_intent_then_it_waits_and_is_measured_when_intent_arrives(f: Events) -> None:
    intent = f.intent("AAPL", "buy", 100, "100")
    fill = f.fill(intent, last_qty=100, last_px="100.02", cum_qty=100)

    waiting, early = step(TcaState(), fill, CTX)
    after, late = step(waiting, intent, CTX)

    assert early == []
    assert waiting.waiting == (fill,)
    (rec,) = late
    assert isinstance(rec, TcaRecorded)
    assert (rec.execution_id, rec.shortfall_bps) == (fill.execution_id, D("2.0000"))
    assert after.waiting == ()
    assert intent.client_order_id in after.arrivals


def test_intent_when_other_fills_wait_then_only_its_own_are_released(f: Events) -> None:
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

    assert [(r.qty, r.shortfall_bps) for r in out] == [(40, D("1.0000")), (60, D("3.0000"))]  # type: ignore[attr-defined]
    assert [w.client_order_id for w in after.waiting] == [other.client_order_id]


def test_intent_when_older_than_retention_then_its_arrival_is_pruned(f: Events) -> None:
    old = f.intent("AAPL", "buy", 10, "100", n=0)  # one minute older than the retention
    edge = f.intent("AAPL", "buy", 10, "100", n=1)  # exactly retention_hours old: still kept
    state, _ = given([old, edge])
    later = f.intent("MSFT", "buy", 10, "300", n=CFG_RETENTION_MINUTES + 1)

    after, _ = step(state, later, CTX)

    assert set(after.arrivals) == {edge.client_order_id, later.client_order_id}


def test_fill_when_its_arrival_was_pruned_then_it_waits(f: Events) -> None:
    old = f.intent("AAPL", "buy", 10, "100", n=0)
    state, _ = given([old, f.intent("MSFT", "buy", 10, "300", n=CFG_RETENTION_MINUTES + 1)])

    after, out = step(state, f.fill(old, last_qty=10, last_px="100", cum_qty=10), CTX)

    assert out == []
    assert len(after.waiting) == 1


def test_intent_when_retention_configured_shorter_then_prunes_sooner(f: Events) -> None:
    context = ctx("tca", TcaConfig(intent_retention_hours=1.0))
    old = f.intent("AAPL", "buy", 10, "100", n=0)
    state, _ = step(TcaState(), old, context)

    after, _ = step(state, f.intent("MSFT", "buy", 10, "300", n=61), context)

    assert old.client_order_id not in after.arrivals


def test_fills_when_replayed_then_records_are_byte_identical(f: Events) -> None:
    intent = f.intent("AAPL", "sell", 100, "100")
    stream = [
        f.fill(intent, last_qty=50, last_px="99.97", cum_qty=50),
        intent,
        f.fill(intent, last_qty=50, last_px="99.99", cum_qty=100),
    ]

    _, first = given(stream)
    _, second = given(stream)

    assert len(first) == 2
    assert [encode(e) for e in first] == [encode(e) for e in second]


def test_fill_when_its_intent_never_arrives_then_dropped_after_retention_with_an_alert() -> None:
    f = Events(seed=5)
    cfg = TcaConfig(intent_retention_hours=1.0)
    c = ctx("tca", cfg)
    early = f.intent("AAPL", "buy", 10, "50", n=1)
    late = f.intent("MSFT", "buy", 10, "50", n=200)
    state, _ = step(TcaState(), f.fill(early, last_qty=10, last_px="50", cum_qty=10), c)

    after, out = step(state, f.fill(late, last_qty=10, last_px="50", cum_qty=10), c)

    (alert,) = out
    assert alert.code == "TCA_ORPHAN_FILL" and alert.details["client_order_id"] == early.client_order_id
    assert [w.client_order_id for w in after.waiting] == [late.client_order_id]
