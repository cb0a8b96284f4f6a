"""Signal pure core: given bars -> when a bar or watermark -> then TargetProposed / Watermark."""

from __future__ import annotations

import math
from collections.abc import Iterable

import pytest

from libs.contracts.base import Event, derive_id
from libs.contracts.codec import encode
from libs.contracts.marketdata import BarClosed
from libs.contracts.ops import Watermark
from libs.contracts.signal import TargetProposed
from services.signal import handlers
from services.signal.config import SignalConfig
from services.signal.handlers import MINUTES_PER_YEAR, step, target_shares
from services.signal.state import SignalState, SymbolSignal
from tests.factories import NOW_NS, Events, ctx, minute

CFG = SignalConfig()
CTX = ctx("signal", CFG)


@pytest.fixture
def f() -> Events:
    return Events(seed=11)


def given(
    events: Iterable[object], *, context=CTX, state: SignalState | None = None
) -> tuple[SignalState, list[Event]]:
    state = state or SignalState()
    out: list[Event] = []
    for ev in events:
        state, emitted = step(state, ev, context)
        out.extend(emitted)
    return state, out


def targets(events: Iterable[Event]) -> list[int]:
    return [e.target_shares for e in events if isinstance(e, TargetProposed)]


def rising(f: Events, n: int, *, vol_bps: float = 1.0) -> list[BarClosed]:
    return f.bars("AAPL", f.closes(n, drift_bps=10, vol_bps=vol_bps))


def falling(f: Events, n: int, *, vol_bps: float = 1.0) -> list[BarClosed]:
    return f.bars("AAPL", f.closes(n, drift_bps=-10, vol_bps=vol_bps))


# --- warm-up and direction -------------------------------------------------------------------


def test_bar_when_fewer_than_slow_span_bars_then_nothing_is_proposed(f: Events) -> None:
    bars = rising(f, CFG.slow_span)
    state, before = given(bars[:-1])

    _, last = step(state, bars[-1], CTX)

    assert before == []
    assert len(last) == 1 and isinstance(last[0], TargetProposed)


def test_bar_when_series_rises_then_long_target_is_proposed(f: Events) -> None:
    bars = rising(f, 25)

    _, out = given(bars)

    assert targets(out)
    assert all(t > 0 for t in targets(out))
    first = out[0]
    assert isinstance(first, TargetProposed)
    assert first.symbol == "AAPL" and first.sleeve == CFG.sleeve
    assert first.bar_ts == bars[CFG.slow_span - 1].ts_event
    assert first.reference_price == bars[CFG.slow_span - 1].close
    assert first.session == bars[0].session
    assert first.score > 0  # fast EMA above slow


def test_bar_when_series_falls_then_short_target_is_proposed(f: Events) -> None:
    _, out = given(falling(f, 25))

    assert targets(out)
    assert all(t < 0 for t in targets(out))
    assert out[0].score < 0  # type: ignore[attr-defined]


def test_bar_when_target_proposed_then_it_is_caused_by_the_bar(f: Events) -> None:
    bars = rising(f, CFG.slow_span)

    _, out = given(bars)

    (ev,) = out
    assert ev.causation_id == bars[-1].event_id
    assert ev.correlation_id == bars[-1].correlation_id
    assert ev.ts_event == bars[-1].ts_event
    assert ev.ts_init == NOW_NS


# --- sizing ----------------------------------------------------------------------------------


def test_bar_when_volatility_is_higher_then_fewer_shares_are_targeted(f: Events) -> None:
    calm = f.bars("AAPL", f.closes(CFG.slow_span, drift_bps=10, vol_bps=1))
    wild = f.bars("AAPL", f.closes(CFG.slow_span, drift_bps=10, vol_bps=20))

    calm_state, calm_out = given(calm)
    wild_state, wild_out = given(wild)

    assert wild_state.symbols["AAPL"].var > calm_state.symbols["AAPL"].var
    (calm_target,) = targets(calm_out)
    (wild_target,) = targets(wild_out)
    assert 0 < wild_target < calm_target


def sym_with_vol(ann_vol: float, *, close: float = 99.0, long: bool = True) -> SymbolSignal:
    return SymbolSignal(
        bars=CFG.slow_span,
        last_close=close,
        ema_fast=close + (0.5 if long else -0.5),
        ema_slow=close,
        var=ann_vol**2 / MINUTES_PER_YEAR,
    )


@pytest.mark.parametrize(
    ("ann_vol", "expected"),
    [
        (0.25, 80),  # 10_000 * 0.20/0.25 / 99 = 80.8
        (0.50, 40),  # 10_000 * 0.20/0.50 / 99 = 40.4
    ],
)
def test_target_shares_when_volatility_given_then_dollars_scale_by_target_vol(ann_vol: float, expected: int) -> None:
    assert target_shares(sym_with_vol(ann_vol), CFG) == expected
    assert target_shares(sym_with_vol(ann_vol, long=False), CFG) == -expected


def test_target_shares_when_volatility_is_tiny_then_leverage_is_capped() -> None:
    sym = sym_with_vol(0.05)  # uncapped leverage would be 4x: 404 shares

    assert target_shares(sym, CFG) == int(10_000 * CFG.max_leverage / 99.0) == 151


def test_bar_when_series_is_nearly_riskless_then_target_is_capped_by_max_leverage(f: Events) -> None:
    bars = f.bars("AAPL", f.closes(CFG.slow_span, drift_bps=1, vol_bps=0))

    state, out = given(bars)

    sym = state.symbols["AAPL"]
    uncapped = int(
        CFG.dollars_per_symbol * CFG.target_annual_vol / math.sqrt(sym.var * MINUTES_PER_YEAR) / sym.last_close
    )
    capped = int(CFG.dollars_per_symbol * CFG.max_leverage / sym.last_close)
    assert uncapped > capped
    assert targets(out) == [capped]


def test_target_shares_when_warming_up_then_zero() -> None:
    sym = SymbolSignal(bars=CFG.slow_span - 1, last_close=99.0, ema_fast=100.0, ema_slow=99.0, var=1e-6)

    assert target_shares(sym, CFG) == 0


# --- rebalance band --------------------------------------------------------------------------


def test_bar_when_new_target_is_inside_rebalance_band_then_it_is_not_reproposed(f: Events) -> None:
    bars = rising(f, 30)
    state, out = given(bars[:-1])
    (proposed,) = targets(out)

    after, emitted = step(state, bars[-1], CTX)

    moved_to = target_shares(after.symbols["AAPL"], CFG)
    assert moved_to != proposed, "precondition: the target moved"
    assert abs(moved_to - proposed) <= CFG.rebalance_band * abs(proposed)
    assert emitted == []
    assert after.symbols["AAPL"].last_target == proposed


def test_bar_when_target_moves_beyond_rebalance_band_then_it_is_reproposed(f: Events) -> None:
    prev = SymbolSignal(
        bars=40, last_close=100.0, ema_fast=100.5, ema_slow=100.0, var=1e-6, last_target=10, last_bar_ts=minute(40)
    )
    state = SignalState(symbols={"AAPL": prev})

    after, out = step(state, f.bar("AAPL", 41, "100.05"), CTX)

    (new,) = targets(out)
    assert new > 10 * (1 + CFG.rebalance_band)
    assert after.symbols["AAPL"].last_target == new


def test_bar_when_target_flips_sign_inside_band_then_it_is_reproposed(f: Events) -> None:
    # a band of 300% would swallow the flip by size alone; only the sign rule proposes it
    context = ctx("signal", SignalConfig(rebalance_band=3.0))
    up = f.closes(30, drift_bps=10, vol_bps=1)
    down = f.closes(30, drift_bps=-10, vol_bps=1, start=str(up[-1]))

    _, out = given(f.bars("AAPL", up + down), context=context)

    proposed = targets(out)
    assert len(proposed) == 2
    long, short = proposed
    assert long > 0 > short
    assert abs(short - long) <= 3.0 * abs(long)


# --- ordering and idempotence ----------------------------------------------------------------


def test_bar_when_repeated_then_state_and_output_are_unchanged(f: Events) -> None:
    bars = rising(f, CFG.slow_span)
    state, _ = given(bars)

    after, out = step(state, bars[-1], CTX)

    assert out == []
    assert after == state


def test_bar_when_older_than_last_then_state_and_output_are_unchanged(f: Events) -> None:
    bars = rising(f, CFG.slow_span + 2)
    state, _ = given(bars)

    after, out = step(state, f.bar("AAPL", 3, "1000"), CTX)

    assert out == []
    assert after == state


def test_bar_when_other_symbol_then_each_symbol_keeps_its_own_indicators(f: Events) -> None:
    state, _ = given(rising(f, 5))

    after, _ = step(state, f.bar("MSFT", 6, "300"), CTX)

    assert after.symbols["AAPL"] == state.symbols["AAPL"]
    assert after.symbols["MSFT"].bars == 1
    assert after.symbols["MSFT"].last_close == 300.0


# --- watermark -------------------------------------------------------------------------------


def test_watermark_when_feed_reports_bar_done_then_forwarded_once_as_signal(f: Events) -> None:
    wm = f.watermark("marketdata", minute(5))

    state, out = step(SignalState(), wm, CTX)

    assert len(out) == 1
    (fwd,) = out
    assert isinstance(fwd, Watermark)
    assert fwd.source == "signal"
    assert fwd.bar_ts == wm.bar_ts
    assert fwd.causation_id == wm.event_id
    assert fwd.correlation_id == wm.correlation_id
    assert fwd.event_id == derive_id("ops.watermark.v1", "signal", wm.bar_ts, False)
    assert state.last_watermark == wm.bar_ts


def test_watermark_when_older_than_last_then_not_forwarded(f: Events) -> None:
    state, _ = step(SignalState(), f.watermark("marketdata", minute(5)), CTX)

    after, out = step(state, f.watermark("marketdata", minute(4)), CTX)

    assert out == []
    assert after.last_watermark == minute(5)


def test_watermark_when_redelivered_then_forwarded_copy_has_the_same_id(f: Events) -> None:
    wm = f.watermark("marketdata", minute(5))
    state, first = step(SignalState(), wm, CTX)

    _, again = step(state, wm, CTX)

    # JetStream de-duplicates on Nats-Msg-Id = event_id, so a redelivery forwards nothing new
    assert [encode(e) for e in again] in ([], [encode(e) for e in first])


def test_watermark_when_final_then_forwarded_final(f: Events) -> None:
    _, out = step(SignalState(), f.watermark("marketdata", minute(390), final=True), CTX)

    (fwd,) = out
    assert fwd.final is True  # type: ignore[attr-defined]


# --- determinism -----------------------------------------------------------------------------


def test_bars_when_replayed_twice_then_output_is_byte_identical(f: Events) -> None:
    stream: list[object] = []
    for b in rising(f, 30) + f.bars("AAPL", f.closes(30, drift_bps=-10, vol_bps=5, start="103"), first_minute=31):
        stream += [b, f.watermark("marketdata", b.ts_event)]

    _, first = given(stream)
    _, second = given(stream)

    assert targets(first), "precondition: something was proposed"
    assert [encode(e) for e in first] == [encode(e) for e in second]
    ids = [e.event_id for e in first]
    assert len(set(ids)) == len(ids)


def test_target_when_proposed_then_event_id_derives_from_sleeve_symbol_and_bar(f: Events) -> None:
    bars = rising(f, CFG.slow_span)

    _, out = given(bars)

    (ev,) = out
    assert ev.event_id == derive_id("signal.target_proposed.v1", CFG.sleeve, "AAPL", bars[-1].ts_event)


def test_evolve_when_called_then_input_state_is_not_mutated(f: Events) -> None:
    state, _ = given(rising(f, 3))
    snapshot = encode(state)

    handlers.on_bar(state, f.bar("AAPL", 4, "120"), CTX)

    assert encode(state) == snapshot
