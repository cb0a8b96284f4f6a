"""Cost model calibration: given a model and a day's fills -> when calibrated -> then the new model.

Synthetic fills come from the fill simulator itself (libs.fillsim.taker_fill) with known
coefficients, or from seeded adversarial generators; every random draw is a random.Random seeded
with a constant shown in the test. Expectations are derived in the test (hand arithmetic or the
simulator's parameters), never copied from the calibration's output.
"""

from __future__ import annotations

import math
import random
from datetime import date
from decimal import Decimal

import msgspec
import pytest

from libs.contracts.base import derive_id
from libs.contracts.codec import AnyEvent
from libs.contracts.marketdata import BarClosed
from libs.contracts.tca import CostModelUpdated, SymbolCost
from libs.costmodel import (
    DEFAULT_SYMBOL,
    FIELDS,
    PRIOR,
    Bounds,
    Calibration,
    DayStats,
    Observation,
    Params,
    accumulate,
    age_sessions,
    calibrate,
    cost_of,
    expected_cost_bps,
    merge,
    observe,
    slippage_bps,
    to_event,
    violations,
)
from libs.fillsim import CostModel, bar_sigma, order_rng, taker_fill

D = Decimal
PARAMS = Params()
BOUNDS = PARAMS.bounds
BPS = D(10_000)
TS = 1_709_649_000_000_000_000  # 2024-03-05 14:30 UTC


def obs(
    symbol: str = "AAA",
    *,
    side: str = "buy",
    qty: int = 100,
    mid: str = "100",
    fill_px: str | None = None,
    cost_bps: float | None = None,
    spread_bps: str = "4",
    proxy: bool = False,
    sigma_bps: str = "10",
    bar_volume: int = 100_000,
) -> Observation:
    """Build one fill; `cost_bps` (one-way, positive = cost) sets the fill price from the mid."""
    if fill_px is None:
        sign = 1 if side == "buy" else -1
        c = cost_bps if cost_bps is not None else float(spread_bps) / 2
        fill_px = f"{float(mid) * (1 + sign * c / 1e4):.8f}"
    return Observation(
        symbol=symbol,
        side=side,
        qty=qty,
        mid=D(mid),
        fill_px=D(fill_px),
        spread_bps=D(spread_bps),
        spread_is_proxy=proxy,
        sigma_bps=D(sigma_bps),
        bar_volume=bar_volume,
    )


def cost(symbol: str = "AAA", samples: int = 1000, **values: str) -> SymbolCost:
    """Build a SymbolCost from the prior's values, some replaced."""
    fields = {f: D(values[f]) if f in values else getattr(PRIOR, f) for f in FIELDS}
    return SymbolCost(symbol=symbol, samples=samples, **fields)


def by_symbol(cal: Calibration) -> dict[str, SymbolCost]:
    return {c.symbol: c for c in cal.symbols}


def run_day(
    prev: dict[str, SymbolCost], default: SymbolCost, fills: list[Observation], params: Params = PARAMS
) -> Calibration:
    return calibrate(prev, default, accumulate(fills, params), params)


def assert_bounded(c: SymbolCost, bounds: Bounds = BOUNDS) -> None:
    for f in FIELDS:
        value = getattr(c, f)
        lo, hi = bounds.of(f)
        assert value.is_finite() and lo <= value <= hi, (c.symbol, f, value)
        assert value == value.quantize(D("0.0001")), (c.symbol, f, value)


# --- 1. recovering the fill simulator's coefficients ------------------------------------------


def simulated_fills(rng: random.Random, model: CostModel, symbol: str, n: int, day: int) -> list[Observation]:
    """Fill n orders with the simulator on bars whose open == close == mid, spreads uniform in 1..8 bps."""
    fills: list[Observation] = []
    for i in range(n):
        mid = D(f"{rng.uniform(900, 1100):.2f}")  # a cent is 0.1 bps here: tick rounding adds ~0.05 bps
        sigma_target = rng.uniform(2.0, 40.0) / 1e4
        half_range = (mid * D(repr(math.expm1(sigma_target * 1.6651092223153954 / 2)))).quantize(D("0.01"))
        volume = rng.randint(20_000, 2_000_000)
        qty = max(1, int(volume * rng.uniform(0.0005, 0.1)))
        spread = D(f"{rng.uniform(1.0, 8.0):.2f}")
        ts = TS + (day * 1000 + i) * 60_000_000_000
        bar = BarClosed(
            event_id=derive_id("test_costmodel.bar", symbol, ts),
            correlation_id="c",
            causation_id="c",
            ts_event=ts,
            ts_init=ts,
            symbol=symbol,
            bar_start=ts - 60_000_000_000,
            session="2024-03-05",
            open=mid,
            high=mid + half_range,
            low=mid - half_range,
            close=mid,
            volume=volume,
            spread_bps=spread,
            spread_is_proxy=False,
        )
        side = "buy" if rng.random() < 0.5 else "sell"
        ex = taker_fill(side, qty, bar, model, order_rng(model.seed, symbol, day, i))
        assert ex is not None and ex.arrival_price == mid
        fills.append(
            Observation(
                symbol=symbol,
                side=side,
                qty=qty,
                mid=mid,
                fill_px=ex.price,
                spread_bps=spread,
                spread_is_proxy=False,
                sigma_bps=(bar_sigma(bar) * BPS).quantize(D("0.0001")),
                bar_volume=volume,
            )
        )
    return fills


def test_calibrate_when_fills_come_from_the_fill_simulator_then_it_converges_to_the_simulator_coefficients() -> None:
    # Arrange: a simulator far from the prior (slippage 0.5, vol 0.0798, impact 0.7)
    truth = CostModel(seed=11, fixed_slippage_bps=D(3), vol_slippage_coef=D("0.3"), impact_coef=D("1.5"))
    # the simulator charges 0.3 * sigma * |z|, E|z| = sqrt(2/pi); rounding to the cent against the
    # taker adds half a cent on average, ~0.05 bps at $1000
    want = {"spread_bps": 4.5, "slippage_bps": 3.05, "vol_coef": 0.3 * math.sqrt(2 / math.pi), "impact_coef": 1.5}
    tolerance = {"spread_bps": 0.3, "slippage_bps": 0.4, "vol_coef": 0.03, "impact_coef": 0.15}
    rng = random.Random(20240305)
    prev: dict[str, SymbolCost] = {}
    default = PRIOR
    errors: list[dict[str, float]] = []

    # Act: 40 sessions of 150 fills
    for day in range(40):
        fills = simulated_fills(rng, truth, "SIM", 150, day)
        cal = run_day(prev, default, fills)
        prev, default = by_symbol(cal), cal.default
        errors.append({f: abs(float(getattr(prev["SIM"], f)) - want[f]) for f in FIELDS})

    # Assert: far off at first, within tolerance at the end, for the symbol and the pooled default
    assert errors[0]["vol_coef"] > 0.1 and errors[0]["impact_coef"] > 0.5 and errors[0]["slippage_bps"] > 1.5
    for f in FIELDS:
        assert errors[-1][f] < tolerance[f], (f, errors[-1][f])
        assert abs(float(getattr(default, f)) - want[f]) < tolerance[f], f
    assert prev["SIM"].samples == 40 * 150 and prev["SIM"].clamped == ()


def test_calibrate_when_the_day_is_noiseless_then_one_day_moves_alpha_of_the_way() -> None:
    # Arrange: slippage = 2 + 0.2 sigma + 1.0 sigma sqrt(p) exactly, sigma and p varied independently
    rng = random.Random(5)
    fills = []
    for _ in range(200):
        sigma = rng.uniform(1, 50)
        p = rng.uniform(0.001, 0.2)
        vol = 1_000_000
        qty = round(p * vol)
        y = 2 + 0.2 * sigma + 1.0 * sigma * math.sqrt(qty / vol)
        fills.append(obs(qty=qty, bar_volume=vol, sigma_bps=f"{sigma:.4f}", spread_bps="3", cost_bps=1.5 + y))
    prev = {"AAA": cost(slippage_bps="1.8", vol_coef="0.18", impact_coef="0.9", spread_bps="2.8")}
    a = PARAMS.alpha

    # Act
    new = by_symbol(run_day(prev, PRIOR, fills))["AAA"]

    # Assert: prev + alpha * (truth - prev), to the published quantum (fill prices carry 8 decimals)
    for f, old, truth in (
        ("slippage_bps", 1.8, 2),
        ("vol_coef", 0.18, 0.2),
        ("impact_coef", 0.9, 1.0),
        ("spread_bps", 2.8, 3),
    ):
        assert float(getattr(new, f)) == pytest.approx(old + a * (truth - old), abs=2e-4), f


# --- 2. bounded under adversarial inputs ------------------------------------------------------


def adversarial_fills(rng: random.Random, symbol: str) -> list[Observation]:
    """Return one symbol's day of one adversarial kind (or a mix of all of them)."""
    kind = rng.choice(
        ["zero_volume", "one_tick", "outliers", "single", "identical", "improvement", "zero_sigma", "wild", "mix"]
    )
    mid = rng.choice(["0.0105", "1.37", "100", "500", "5000", "650000"])

    def one(k: str) -> Observation:
        side = rng.choice(["buy", "sell"])
        vol = rng.choice([0, 1, 100, 10_000, 10**9])
        qty = rng.choice([1, 100, 10_000, 10**7])
        sigma = rng.choice(["0", "0.0001", "5", "80", "5000", "1000000"])
        spread = rng.choice(["0", "0.02", "4", "150", "20000"])
        if k == "zero_volume":
            return obs(symbol, side=side, mid=mid, bar_volume=0, qty=qty, sigma_bps=sigma, cost_bps=rng.uniform(0, 30))
        if k == "one_tick":
            m = D(mid)
            tick_bps = D("0.01") / m * BPS
            return obs(symbol, side=side, mid=mid, spread_bps=f"{tick_bps:.6f}", cost_bps=float(tick_bps) / 2)
        if k == "outliers":
            far = D(mid) * rng.choice([D(10), D("0.1"), D(100), D("0.001")])
            return obs(symbol, side=side, mid=mid, fill_px=str(far), sigma_bps=sigma, bar_volume=vol, qty=qty)
        if k == "improvement":
            return obs(symbol, side=side, mid=mid, spread_bps=spread, cost_bps=-rng.uniform(0, 400))
        if k == "zero_sigma":
            return obs(symbol, side=side, mid=mid, sigma_bps="0", cost_bps=rng.uniform(-5, 50), bar_volume=vol)
        return obs(
            symbol,
            side=side,
            mid=mid,
            qty=qty,
            bar_volume=vol,
            sigma_bps=sigma,
            spread_bps=spread,
            proxy=rng.random() < 0.3,
            cost_bps=rng.uniform(-1000, 1000),
        )

    if kind == "single":
        return [one("wild")]
    if kind == "identical":
        return [one(rng.choice(["wild", "outliers", "one_tick"]))] * rng.choice([25, 2000])
    if kind == "mix":
        kinds = ["zero_volume", "one_tick", "outliers", "improvement", "zero_sigma", "wild"]
        return [one(rng.choice(kinds)) for _ in range(rng.randint(1, 60))]
    return [one(kind) for _ in range(rng.randint(1, 60))]


def random_prev(rng: random.Random, symbols: list[str]) -> dict[str, SymbolCost]:
    """Return a model with every field anywhere within the bounds (edges included)."""
    out = {}
    for sym in symbols:
        values = {}
        for f in FIELDS:
            lo, hi = BOUNDS.of(f)
            values[f] = rng.choice([lo, hi, (lo + D(repr(rng.random())) * (hi - lo)).quantize(D("0.0001"))])
        out[sym] = SymbolCost(symbol=sym, samples=rng.choice([0, 5, 19, 20, 500]), **values)
    return out


def test_calibrate_when_days_are_adversarial_then_every_output_stays_finite_and_within_bounds() -> None:
    # Arrange: seed 6 drives 150 chains of 4 adversarial days over up to 6 symbols each
    rng = random.Random(6)
    kinds_seen = 0
    for _chain in range(150):
        symbols = [f"S{i}" for i in range(rng.randint(1, 6))]
        prev = random_prev(rng, symbols)
        default = rng.choice([PRIOR, random_prev(rng, [DEFAULT_SYMBOL])[DEFAULT_SYMBOL]])
        for _day in range(4):
            fills = [o for sym in symbols if rng.random() < 0.8 for o in adversarial_fills(rng, sym)]
            kinds_seen += len(fills)

            # Act
            cal = run_day(prev, default, fills)

            # Assert
            for c in (cal.default, *cal.symbols):
                assert_bounded(c)
                assert violations(c, BOUNDS) == ()
                assert set(c.clamped) <= set(FIELDS)
                for sigma in ("0", "12.5", "1000000"):
                    for p in (None, D(0), D("0.3"), D(50)):
                        e = expected_cost_bps(c, D(sigma), p, BOUNDS)
                        assert e.is_finite() and BOUNDS.min_expected_cost_bps <= e <= BOUNDS.max_expected_cost_bps
            assert set(cal.out_of_bounds) == {c.symbol for c in (cal.default, *cal.symbols) if c.clamped}
            assert cal.samples == len(fills) and 0 <= cal.winsorized <= len(fills)
            prev, default = by_symbol(cal), cal.default
    assert kinds_seen > 10_000  # the loop did run over many fills


def test_calibrate_when_one_fill_is_ten_times_away_then_it_counts_as_the_winsor_cap() -> None:
    # Arrange: 30 fills, one of them bought at 10x the mid (90000 bps)
    normal = [obs(cost_bps=2 + 3, sigma_bps="0") for _ in range(29)]  # slippage 3 beyond half the 4 bps spread
    fills = [*normal, obs(fill_px="1000", sigma_bps="0")]
    prev = {"AAA": cost(slippage_bps="3")}

    # Act
    stats = accumulate(fills, PARAMS)["AAA"]
    cal = run_day(prev, PRIOR, fills)

    # Assert: the day's mean slippage is (29 * 3 + 500) / 30, not (29 * 3 + 89998) / 30
    assert stats.n_winsorized == 1 and cal.winsorized == 1
    day_mean = (29 * 3 + PARAMS.winsor_bps) / 30
    want = 3 + PARAMS.alpha * (day_mean - 3)
    got = by_symbol(cal)["AAA"].slippage_bps
    assert float(got) == pytest.approx(min(want, 3 * 1.25), abs=2e-4)


def test_calibrate_when_the_raw_estimate_leaves_the_bounds_then_the_bound_is_kept_and_named() -> None:
    # Arrange: a symbol at the spread floor trading a $5000 stock with one-tick spreads (0.02 bps),
    # and one at the slippage ceiling whose fills all cost 600 bps beyond half the spread
    tick = obs("TICK", mid="5000", spread_bps="0.02", cost_bps=0.01)
    wide = obs("WIDE", cost_bps=602, sigma_bps="0")
    prev = {"TICK": cost("TICK", spread_bps="0.1"), "WIDE": cost("WIDE", slippage_bps="100")}

    # Act
    cal = run_day(prev, PRIOR, [tick] * 40 + [wide] * 40)

    # Assert
    got = by_symbol(cal)
    assert got["TICK"].spread_bps == BOUNDS.min_spread_bps and "spread_bps" in got["TICK"].clamped
    assert got["WIDE"].slippage_bps == BOUNDS.max_slippage_bps and got["WIDE"].clamped == ("slippage_bps",)
    assert {"TICK", "WIDE"} <= set(cal.out_of_bounds)


def test_calibrate_when_a_one_tick_spread_is_within_bounds_then_it_is_learnt_unflagged() -> None:
    # Arrange: $0.01 on $500 = 0.2 bps, above the 0.1 bps floor
    fills = [obs(mid="500", spread_bps="0.2", cost_bps=0.1, sigma_bps="0")] * 200
    prev = {"AAA": cost(spread_bps="0.21", slippage_bps="0")}

    # Act
    cal = run_day(prev, PRIOR, fills)

    # Assert
    a = by_symbol(cal)["AAA"]
    assert float(a.spread_bps) == pytest.approx(0.21 + PARAMS.alpha * (0.2 - 0.21), abs=1e-4)
    assert a.clamped == () and "AAA" not in cal.out_of_bounds


def test_calibrate_when_fills_improve_on_the_mid_then_slippage_goes_negative_and_cost_stays_non_negative() -> None:
    # Arrange: every fill 1 bps better than the mid on a 4 bps spread: slippage -3 beyond half the spread
    fills = [obs(side=s, cost_bps=-1, sigma_bps="0") for s in ("buy", "sell")] * 50
    prev = {"AAA": cost(slippage_bps="-2.5")}

    # Act
    a = by_symbol(run_day(prev, PRIOR, fills))["AAA"]

    # Assert
    assert float(a.slippage_bps) == pytest.approx(-2.5 + PARAMS.alpha * (-3 + 2.5), abs=1e-4)
    assert expected_cost_bps(a, D(0), None, BOUNDS) == max(a.spread_bps / 2 + a.slippage_bps, D(0))


def test_calibrate_when_volume_is_unknown_then_impact_is_left_as_it_was() -> None:
    # Arrange: 100 fills on bars without volume, slippage growing with sigma
    rng = random.Random(3)
    fills = []
    for _ in range(100):
        sigma = rng.uniform(1, 50)
        fills.append(obs(bar_volume=0, qty=5000, sigma_bps=f"{sigma:.4f}", cost_bps=2 + 1 + 0.3 * sigma))
    prev = {"AAA": cost(impact_coef="1.1", vol_coef="0.25", slippage_bps="1")}

    # Act
    a = by_symbol(run_day(prev, PRIOR, fills))["AAA"]

    # Assert: vol and slippage learn, impact does not move
    assert a.impact_coef == D("1.1")
    assert float(a.vol_coef) == pytest.approx(0.25 + PARAMS.alpha * (0.3 - 0.25), abs=2e-4)
    assert float(a.slippage_bps) == pytest.approx(1, abs=2e-4)


def test_calibrate_when_participation_is_the_same_all_day_then_impact_is_not_identified_and_kept() -> None:
    # Arrange: participation 1% on every fill makes sigma * sqrt(p) collinear with sigma
    rng = random.Random(4)
    fills = []
    for _ in range(100):
        sigma = rng.uniform(1, 50)
        fills.append(obs(qty=1000, bar_volume=100_000, sigma_bps=f"{sigma:.4f}", cost_bps=2 + 0.5 + 0.4 * sigma))
    prev = {"AAA": cost(impact_coef="0.8", vol_coef="0.3", slippage_bps="0.5")}

    # Act
    a = by_symbol(run_day(prev, PRIOR, fills))["AAA"]

    # Assert: the sigma slope takes what is left once impact is held at 0.8: 0.4 - 0.8 * 0.1 = 0.32
    assert a.impact_coef == D("0.8")
    assert float(a.vol_coef) == pytest.approx(0.3 + PARAMS.alpha * (0.32 - 0.3), abs=2e-4)


def test_calibrate_when_sigma_barely_varies_then_vol_coef_is_not_identified_and_kept() -> None:
    # Arrange: sigma 10.0000 or 10.0010 bps (relative variance 2.5e-9), slippage 3 or 4 with it:
    # a least squares would read a slope of 1000
    fills = [obs(bar_volume=0, sigma_bps=s, cost_bps=2 + y) for s, y in (("10", 3), ("10.001", 4))] * 30
    prev = {"AAA": cost(vol_coef="0.1", slippage_bps="2")}

    # Act
    a = by_symbol(run_day(prev, PRIOR, fills))["AAA"]

    # Assert: vol held at 0.1, so the intercept's day estimate is 3.5 - 0.1 * 10.0005
    assert a.vol_coef == D("0.1")
    assert float(a.slippage_bps) == pytest.approx(2 + PARAMS.alpha * (3.5 - 1.00005 - 2), abs=2e-4)


def test_calibrate_when_slippage_falls_with_volatility_then_the_slope_is_zero_not_negative() -> None:
    # Arrange: slippage 20 - 0.5 sigma: least squares would give a negative vol_coef
    rng = random.Random(8)
    fills = []
    for _ in range(100):
        sigma = rng.uniform(1, 30)
        fills.append(obs(bar_volume=0, sigma_bps=f"{sigma:.4f}", cost_bps=2 + 20 - 0.5 * sigma))
    prev = {"AAA": cost(vol_coef="0", slippage_bps="10")}

    # Act
    a = by_symbol(run_day(prev, PRIOR, fills))["AAA"]

    # Assert: with the slope at 0 the intercept is the mean slippage
    mean_y = sum(slippage_bps(o) for o in fills) / len(fills)
    assert a.vol_coef == D(0)
    assert float(a.slippage_bps) == pytest.approx(10 + PARAMS.alpha * (mean_y - 10), abs=2e-4)


# --- 3. the daily cap -------------------------------------------------------------------------


def test_calibrate_when_days_are_extreme_then_no_parameter_moves_more_than_the_daily_cap() -> None:
    # Arrange: seed 9, 200 random adversarial days against random previous models
    rng = random.Random(9)
    cap = PARAMS.max_daily_change
    cut = 0
    for _ in range(200):
        symbols = [f"S{i}" for i in range(rng.randint(1, 4))]
        prev = random_prev(rng, symbols)
        default = random_prev(rng, [DEFAULT_SYMBOL])[DEFAULT_SYMBOL]
        fills = [o for sym in symbols for o in adversarial_fills(rng, sym)]

        # Act
        cal = run_day(prev, default, fills)

        # Assert: |new - old| <= cap * max(|old|, floor) (+ the published quantum)
        for new in (cal.default, *cal.symbols):
            old = default if new.symbol == DEFAULT_SYMBOL else prev[new.symbol]
            for f in FIELDS:
                lo, hi = BOUNDS.of(f)
                floor = max(abs(getattr(PRIOR, f)), (hi - lo) / 100)
                limit = D(repr(cap)) * max(abs(getattr(old, f)), floor) + D("0.0001")
                assert abs(getattr(new, f) - getattr(old, f)) <= limit, (
                    new.symbol,
                    f,
                    getattr(old, f),
                    getattr(new, f),
                )
        cut += len(cal.capped)
    assert cut > 50  # the cap did bind on many of these days


def test_calibrate_when_a_parameter_is_zero_then_the_cap_still_lets_it_move() -> None:
    # Arrange: vol_coef at 0, the day says 0.5
    rng = random.Random(10)
    fills = [
        obs(bar_volume=0, sigma_bps=f"{s:.4f}", cost_bps=2 + 0.5 * s) for s in (rng.uniform(1, 40) for _ in range(200))
    ]
    prev = {"AAA": cost(vol_coef="0", slippage_bps="0")}

    # Act
    a = by_symbol(run_day(prev, PRIOR, fills))["AAA"]

    # Assert: the step floor is cap * the prior's 0.0798 (above 1% of the 0..2 range)
    assert float(a.vol_coef) == pytest.approx(0.25 * float(PRIOR.vol_coef), abs=1e-4)
    assert a.slippage_bps == D("0.0000") and not a.slippage_bps.is_signed()  # no "-0.0000" on the wire


# --- 4. the min-samples rule ------------------------------------------------------------------


def test_calibrate_when_a_symbol_has_fewer_than_min_samples_then_it_prices_at_the_default_until_it_has_enough() -> None:
    # Arrange: THIN trades 5 costly fills a day (slippage 40), THICK 100 cheap ones (slippage 1)
    thin = [obs("THIN", cost_bps=2 + 40, sigma_bps="0")] * 5
    thick = [obs("THICK", cost_bps=2 + 1, sigma_bps="0")] * 100
    prev: dict[str, SymbolCost] = {}
    default = PRIOR

    # Act / Assert: days 1-3 (5, 10, 15 fills) at the default; day 4 (20 fills) its own estimate
    for day in range(1, 5):
        cal = run_day(prev, default, thin + thick)
        prev, default = by_symbol(cal), cal.default
        t = prev["THIN"]
        assert t.samples == 5 * day
        if day < 4:
            assert [getattr(t, f) for f in FIELDS] == [getattr(default, f) for f in FIELDS]
        else:
            assert t.slippage_bps > default.slippage_bps
    without_thin = run_day({}, PRIOR, thick).default
    with_thin = run_day({}, PRIOR, thin + thick).default
    assert with_thin.slippage_bps > without_thin.slippage_bps  # young fills inform the default


def test_calibrate_when_an_adapted_symbol_has_a_thin_day_then_it_moves_in_proportion_to_its_fills() -> None:
    # Arrange: the same day estimate (slippage 5) from 2 fills and from 20
    prev = {"AAA": cost(slippage_bps="4")}
    one = obs(cost_bps=2 + 5, sigma_bps="0")

    # Act
    thin = by_symbol(run_day(prev, PRIOR, [one] * 2))["AAA"].slippage_bps
    full = by_symbol(run_day(prev, PRIOR, [one] * 20))["AAA"].slippage_bps

    # Assert: w = alpha * n / 20
    assert float(thin) == pytest.approx(4 + PARAMS.alpha * 0.1, abs=2e-4)
    assert float(full) == pytest.approx(4 + PARAMS.alpha, abs=2e-4)


def test_calibrate_when_an_adapted_symbol_has_no_fills_then_it_keeps_its_estimate() -> None:
    # Arrange
    prev = {"OLD": cost("OLD", slippage_bps="7.5", vol_coef="0.2"), "YOUNG": cost("YOUNG", samples=3)}

    # Act: a day of fills of another symbol only
    cal = run_day(prev, PRIOR, [obs("NEW", cost_bps=2 + 9, sigma_bps="0")] * 30)

    # Assert
    got = by_symbol(cal)
    assert got["OLD"] == prev["OLD"]
    assert [getattr(got["YOUNG"], f) for f in FIELDS] == [getattr(cal.default, f) for f in FIELDS]
    assert got["NEW"].slippage_bps > PRIOR.slippage_bps


# --- 5. determinism and the sufficient statistics ---------------------------------------------


def mixed_day(seed: int) -> list[Observation]:
    rng = random.Random(seed)
    return [o for sym in ("A", "B", "C", "D") for o in adversarial_fills(rng, sym)] + [
        obs(
            rng.choice("ABCD"),
            sigma_bps=f"{rng.uniform(0, 50):.3f}",
            qty=rng.randint(1, 9000),
            cost_bps=rng.gauss(5, 3),
        )
        for _ in range(300)
    ]


def test_calibrate_when_run_twice_on_the_same_fills_then_the_models_are_byte_identical() -> None:
    fills = mixed_day(12)
    prev = random_prev(random.Random(13), ["A", "C", "E"])

    first = run_day(prev, PRIOR, fills)
    second = run_day(dict(prev), PRIOR, list(fills))

    assert msgspec.json.encode(first) == msgspec.json.encode(second)


def test_accumulate_when_fills_are_reordered_then_the_statistics_and_the_model_are_identical() -> None:
    fills = mixed_day(14)
    shuffled = list(fills)
    random.Random(15).shuffle(shuffled)

    a, b = accumulate(fills, PARAMS), accumulate(shuffled, PARAMS)

    assert a == b
    assert msgspec.json.encode(calibrate({}, PRIOR, a, PARAMS)) == msgspec.json.encode(calibrate({}, PRIOR, b, PARAMS))


def test_observe_when_folded_or_merged_then_it_equals_accumulate() -> None:
    fills = [o for o in mixed_day(16) if o.symbol == "A"]
    half = len(fills) // 2

    folded = DayStats()
    for o in fills:
        folded = observe(folded, o, PARAMS)
    merged = merge(accumulate(fills[:half], PARAMS).get("A", DayStats()), accumulate(fills[half:], PARAMS)["A"])

    assert folded == accumulate(fills, PARAMS)["A"] == merged
    assert folded.n == len(fills)


# --- 6. expected cost, the event, staleness, validation ---------------------------------------


def test_expected_cost_when_computed_then_it_is_the_formula_clamped_to_the_bounds() -> None:
    c = cost(spread_bps="4", slippage_bps="1", vol_coef="0.1", impact_coef="0.5")

    # 4/2 + 1 + 0.1 * 20 + 0.5 * 20 * sqrt(0.04) = 2 + 1 + 2 + 2 = 7
    assert expected_cost_bps(c, D(20), D("0.04"), BOUNDS) == D(7)
    assert expected_cost_bps(c, D(20), None, BOUNDS) == D(5)
    assert expected_cost_bps(c, D(20), D(4), BOUNDS) == D(15)  # participation capped at 1
    assert expected_cost_bps(c, D(100_000), D(1), BOUNDS) == BOUNDS.max_expected_cost_bps
    assert expected_cost_bps(cost(spread_bps="1", slippage_bps="-20"), D(0), None, BOUNDS) == D(0)
    with pytest.raises(ValueError, match="sigma_bps"):
        expected_cost_bps(c, D(-1), None, BOUNDS)
    with pytest.raises(ValueError, match="participation"):
        expected_cost_bps(c, D(1), D("NaN"), BOUNDS)


def test_to_event_when_built_then_it_decodes_and_its_id_follows_session_and_content() -> None:
    cal = run_day({}, PRIOR, [obs(cost_bps=2 + 3, sigma_bps="0")] * 30)
    other = run_day({}, PRIOR, [obs(cost_bps=2.2 + 3, sigma_bps="0", spread_bps="4.4")] * 30)
    kw = {
        "effective_session": "2024-03-06",
        "calibrated_ts": TS,
        "ts_init": TS + 5,
        "correlation_id": "k",
        "causation_id": "k",
    }

    ev = to_event(cal, session="2024-03-05", **kw)
    back = msgspec.json.decode(msgspec.json.encode(ev), type=AnyEvent)

    assert isinstance(back, CostModelUpdated) and back == ev
    assert back.samples == 30 and back.default == cal.default and back.symbols == cal.symbols
    assert to_event(cal, session="2024-03-05", **kw).event_id == ev.event_id
    assert to_event(cal, session="2024-03-04", **kw).event_id != ev.event_id
    assert to_event(other, session="2024-03-05", **kw).event_id != ev.event_id
    assert cost_of(ev, "AAA") == cal.symbols[0] and cost_of(ev, "ZZZ") == cal.default


def test_age_sessions_when_sessions_pass_then_counts_trading_days_only() -> None:
    friday, monday, tuesday = date(2024, 3, 1), date(2024, 3, 4), date(2024, 3, 5)
    assert age_sessions(friday, friday) == 0
    assert age_sessions(friday, monday) == 1  # the weekend is no session
    assert age_sessions(friday, tuesday) == 2
    # Good Friday 2024-03-29 is an XNYS holiday: Thursday's model still prices Monday
    assert age_sessions(date(2024, 3, 28), date(2024, 4, 1)) == 1


def test_params_when_invalid_then_refused_with_what_was_expected() -> None:
    with pytest.raises(ValueError, match="prior within the bounds"):
        Params(prior=cost(DEFAULT_SYMBOL, impact_coef="5"))
    with pytest.raises(ValueError, match="min_vol_coef <= max_vol_coef"):
        Bounds(min_vol_coef=D(3))
    with pytest.raises(ValueError, match="min_samples"):
        Params(min_samples=0)
    with pytest.raises(ValueError, match="mid"):
        obs(mid="NaN", fill_px="1")
    with pytest.raises(ValueError, match="side"):
        obs(side="short")
    with pytest.raises(ValueError, match="sigma_bps"):
        obs(sigma_bps="-1")
    assert violations(cost(vol_coef="2.5", spread_bps="0.05"), BOUNDS) == ("spread_bps", "vol_coef")
