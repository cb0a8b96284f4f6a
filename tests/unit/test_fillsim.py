"""Fill simulator: given a cost model, an order and a closed bar -> when it is matched -> then a fill.

Every expectation is derived in the test itself (hand arithmetic with the formula written out, or
a published figure), never copied from the simulator's output. Bars are real XNYS minutes of the
2024-03-05 session.
"""

from __future__ import annotations

import random
from datetime import date
from decimal import ROUND_FLOOR, Decimal

import msgspec
import pytest

from libs import sessions
from libs.contracts.base import derive_id
from libs.contracts.marketdata import BarClosed
from libs.fillsim import (
    CostModel,
    Execution,
    Match,
    Spread,
    Working,
    capacity,
    fee,
    match,
    order_rng,
    spread,
    sqrt_impact,
    taker_fill,
)

D = Decimal
MINUTE = sessions.MINUTE_NS
SESSION = date(2024, 3, 5)  # a full XNYS session: 14:30-21:00 UTC, 390 one-minute bars
OPEN, CLOSE = sessions.session_open_close(SESSION)
LAST = (CLOSE - OPEN) // MINUTE - 1  # index of the session's last bar (389)
CENT = D("0.01")
BPS = D(10_000)
DEFAULT = CostModel()


def bar(
    minute: int = 5,
    *,
    open: str = "100.00",
    high: str | None = None,
    low: str | None = None,
    close: str | None = None,
    volume: int = 1_000_000,
    spread_bps: str = "4",
    quoted: bool = True,
    symbol: str = "AAPL",
) -> BarClosed:
    """Build the `minute`-th one-minute bar of the session (0 = the opening bar)."""
    start = OPEN + minute * MINUTE
    ts = start + MINUTE
    o = D(open)
    return BarClosed(
        event_id=derive_id("test_fillsim.bar", symbol, ts),
        correlation_id=derive_id("test_fillsim.cycle", ts),
        causation_id=derive_id("test_fillsim.cycle", ts),
        ts_event=ts,
        ts_init=ts,
        symbol=symbol,
        bar_start=start,
        session=SESSION.isoformat(),
        open=o,
        high=D(high) if high is not None else o + D("0.50"),
        low=D(low) if low is not None else o - D("0.50"),
        close=D(close) if close is not None else o,
        volume=volume,
        spread_bps=D(spread_bps),
        spread_is_proxy=not quoted,
    )


def order(type: str = "market", side: str = "buy", tif: str = "day", qty: int = 100, **kw: object) -> Working:
    """Build a working order with a readable id."""
    return Working(order_id=f"{type}-{side}-{tif}-{qty}", side=side, type=type, time_in_force=tif, leaves_qty=qty, **kw)


def parkinson(high: Decimal, low: Decimal) -> Decimal:
    # Parkinson (1980): sigma^2 = ln(H/L)^2 / (4 ln 2), so sigma = ln(H/L) / sqrt(4 ln 2)
    return (high / low).ln() / (4 * D(2).ln()).sqrt()


# --- 1. determinism -------------------------------------------------------------------------


def test_match_when_same_seed_order_and_bar_then_executions_are_identical_in_every_field() -> None:
    # Arrange: two independently built but equal inputs
    model_a, model_b = CostModel(seed=7), CostModel(seed=7)
    b1, b2 = (
        bar(open="100.00", close="100.40", high="100.60", low="99.80"),
        bar(open="100.00", close="100.40", high="100.60", low="99.80"),
    )

    # Act
    first = match(order(), b1, 1_000, model_a)
    second = match(order(), b2, 1_000, model_b)

    # Assert
    assert first.execution is not None
    assert msgspec.structs.asdict(first.execution) == msgspec.structs.asdict(second.execution)
    assert first == second


def test_match_when_model_seed_differs_then_prices_or_latencies_differ_over_a_sample() -> None:
    # Arrange: 50 market orders on one bar, under two model seeds
    b = bar(open="100.00", close="100.40", high="100.60", low="99.80")
    orders = [
        Working(order_id=f"o-{i}", side="buy", type="market", time_in_force="day", leaves_qty=100) for i in range(50)
    ]

    def fills(seed: int) -> list[Execution]:
        model = CostModel(seed=seed)
        out = [match(o, b, 1_000, model).execution for o in orders]
        assert all(e is not None for e in out)
        return out  # type: ignore[return-value]

    # Act
    one, two = fills(1), fills(2)

    # Assert: the seed matters ...
    assert any(a.price != c.price or a.latency_ns != c.latency_ns for a, c in zip(one, two, strict=True))
    # ... and each seed's draws are spread out, inside 50 ms +- 25 ms (latency_ms, latency_jitter_ms)
    for sample in (one, two):
        latencies = [e.latency_ns for e in sample]
        assert len(set(latencies)) >= 45, "50 draws from 50,001 microsecond values barely collide"
        assert all(25_000_000 <= lat <= 75_000_000 for lat in latencies)
        assert len({e.price for e in sample}) >= 3, "|z| * sigma varies the price by several cents here"


def test_order_rng_when_called_then_global_random_state_is_untouched() -> None:
    # Arrange
    random.seed(12345)
    before = random.getstate()

    # Act: draw from an order rng and run a whole taker fill with it
    rng = order_rng(3, "o-1", 42)
    [rng.random() for _ in range(10)]
    taker_fill("sell", 100, bar(), DEFAULT, order_rng(3, "o-2", 43))

    # Assert
    assert random.getstate() == before


def test_order_rng_when_parts_differ_then_streams_differ() -> None:
    # Arrange / Act
    a = [order_rng(0, "o-1", 1).random() for _ in range(3)]
    b = [order_rng(0, "o-1", 2).random() for _ in range(3)]
    c = [order_rng(0, "o-1", 1).random() for _ in range(3)]

    # Assert
    assert a == c
    assert a != b


# --- 2. square-root impact law ---------------------------------------------------------------


def test_sqrt_impact_when_toth_2011_example_then_twenty_bps() -> None:
    """Tóth et al. 2011, "Anomalous price impact and the critical nature of liquidity in
    financial markets", Phys. Rev. X 1, 021006, eq. (1): I = Y * sigma * sqrt(Q / V).

    With Y = 1, sigma_daily = 2 % and Q / V = 1,000 / 100,000 = 1 %:
    I = 1 * 0.02 * sqrt(0.01) = 0.02 * 0.1 = 0.002 = 20 bps.
    """
    # Arrange
    sigma, q, v, y = D("0.02"), 1_000, 100_000, D(1)

    # Act
    impact = sqrt_impact(sigma, q, v, y)

    # Assert
    assert impact == D("0.002")
    assert impact * BPS == 20


def test_sqrt_impact_when_participation_rises_then_it_grows_as_a_square_root_not_linearly() -> None:
    """ML4T primer, "Square-Root Market Impact and Participation-Based Cost Models"
    (https://ml3t.applikuapp.com/primer/square-root-market-impact-and-participation-based-cost-models),
    worked comparison: from 1 % to 4 % of ADV a linear model quadruples while square-root impact
    only doubles (sqrt 4 = 2); from 0.1 % to 1 % it grows by sqrt(10) ~ 3.162.
    """
    # Arrange
    sigma, y, adv = D("0.015"), D("0.7"), 1_000_000

    # Act
    at_01 = sqrt_impact(sigma, 1_000, adv, y)  # 0.1 % of ADV
    at_1 = sqrt_impact(sigma, 10_000, adv, y)  # 1 % of ADV
    at_4 = sqrt_impact(sigma, 40_000, adv, y)  # 4 % of ADV

    # Assert
    linear_ratio = (y * sigma * D("0.04")) / (y * sigma * D("0.01"))
    assert linear_ratio == 4
    assert at_4 / at_1 == 2
    assert abs(at_1 / at_01 - D(10).sqrt()) < D("1E-20")
    # and the absolute level: 0.7 * 0.015 * sqrt(0.01) = 0.00105
    assert at_1 == D("0.00105")


def test_sqrt_impact_when_no_quantity_or_no_volatility_then_zero() -> None:
    # Arrange / Act / Assert
    assert sqrt_impact(D("0.02"), 0, 100_000, D(1)) == 0
    assert sqrt_impact(D(0), 1_000, 100_000, D(1)) == 0
    with pytest.raises(ValueError, match="volume"):
        sqrt_impact(D("0.02"), 1_000, 0, D(1))


def test_cost_model_when_default_then_impact_coef_is_of_the_published_order() -> None:
    """arXiv 2606.24019 ("Empirical Confirmation of the Square-Root Law of Market Impact in a U.S.
    Large-Cap Equity", AAPL, Nasdaq TotalView-ITCH, 178 days) calibrates I / sigma_D =
    c * sqrt(Q / V_D) with c_raw = 0.69 (bias-corrected c_eff = 0.34, c_raw within 0.63..0.77
    across settings). The default Y must be of that order: between 0.3 and 1.0.

    Applying a daily Y to one bar's sigma and volume is consistent under diffusion:
    sigma_bar = sigma_D / sqrt(n) and V_bar = V_D / n give sigma_bar * sqrt(Q / V_bar) =
    sigma_D * sqrt(Q / V_D).
    """
    # Arrange / Act
    coef = CostModel().impact_coef

    # Assert
    assert D("0.3") <= coef <= D("1.0")


# --- 3. spread ------------------------------------------------------------------------------


def test_spread_when_bar_is_quoted_then_bar_spread_is_used_and_not_proxy() -> None:
    # Arrange
    b = bar(spread_bps="3.2", quoted=True)
    model = CostModel(proxy_spread_bps=D(9))

    # Act
    got = spread(b, model)
    fill = taker_fill("buy", 100, b, model, order_rng(0, "q", b.ts_event))

    # Assert
    assert got == Spread(bps=D("3.2"), is_proxy=False)
    assert fill is not None
    assert (fill.spread_bps, fill.spread_is_proxy) == (D("3.2"), False)


def test_spread_when_bar_is_a_proxy_then_model_proxy_spread_is_used_and_flagged() -> None:
    # Arrange
    b = bar(spread_bps="3.2", quoted=False)
    model = CostModel(proxy_spread_bps=D(9))

    # Act
    got = spread(b, model)
    fill = taker_fill("buy", 100, b, model, order_rng(0, "p", b.ts_event))

    # Assert
    assert got == Spread(bps=D(9), is_proxy=True)
    assert fill is not None
    assert (fill.spread_bps, fill.spread_is_proxy) == (D(9), True)


# --- 4. taker fills -------------------------------------------------------------------------


def test_taker_fill_when_no_volatility_slippage_then_price_follows_the_written_out_formula() -> None:
    # Arrange: vol term off so the fill is fully determined by the bar, the latency and the model
    model = CostModel(vol_slippage_coef=D(0))
    b = bar(open="100.00", close="100.60", high="100.80", low="99.90", volume=250_000, spread_bps="6")
    qty = 2_500

    # Act
    e = taker_fill("buy", qty, b, model, order_rng(0, "formula", b.ts_event))

    # Assert
    assert e is not None
    # arrival mid: straight line from open to close, at latency / 60 s into the bar
    mid = D("100.00") + D("0.60") * D(e.latency_ns) / D(MINUTE)
    assert e.arrival_price == mid
    # impact: Y * sigma_bar * sqrt(Q / V) in bps, sigma_bar from Parkinson
    sigma = parkinson(D("100.80"), D("99.90"))
    impact = D("0.7") * sigma * (D(qty) / D(250_000)).sqrt() * BPS
    assert abs(e.impact_bps - impact) < D("1E-18")
    # slippage: fixed 0.5 bps + 0 * vol + impact
    assert abs(e.slippage_bps - (D("0.5") + impact)) < D("1E-18")
    # price: mid * (1 + (spread / 2 + slippage) / 10,000), on the cent
    raw = mid * (1 + (D(3) + D("0.5") + impact) / BPS)
    assert abs(e.price - raw) < CENT
    assert e.price == e.price.quantize(CENT)
    assert e.liquidity == "taker"


def test_taker_fill_when_buy_or_sell_then_buy_pays_above_and_sell_receives_below_the_arrival_mid() -> None:
    # Arrange: a $100 bar with a 4 bps quote; half-spread + fixed slippage = 2.5 bps = 2.5 cents
    b = bar(open="100.00", close="100.20", high="100.40", low="99.90")

    # Act
    buys = [taker_fill("buy", 100, b, DEFAULT, order_rng(0, f"b{i}", b.ts_event)) for i in range(20)]
    sells = [taker_fill("sell", 100, b, DEFAULT, order_rng(0, f"s{i}", b.ts_event)) for i in range(20)]

    # Assert
    for e in buys:
        assert e is not None and e.price > e.arrival_price
        assert e.arrival_price != e.price
        assert e.slippage_bps >= DEFAULT.fixed_slippage_bps
    for e in sells:
        assert e is not None and e.price < e.arrival_price
        assert e.arrival_price != e.price
        assert e.slippage_bps >= DEFAULT.fixed_slippage_bps


@pytest.mark.parametrize(
    ("side", "high", "low", "close"),
    [("buy", "10.01", "10.00", "10.01"), ("sell", "10.00", "9.99", "9.99")],
    ids=["buy-drifting-up", "sell-drifting-down"],
)
def test_taker_fill_when_cost_is_under_half_a_tick_then_price_is_not_better_than_the_arrival_mid(
    side: str, high: str, low: str, close: str
) -> None:
    """A $10 stock under the default model: half the 5 bps proxy spread + 0.5 bps fixed = 3 bps
    = $0.003 < half a cent, so rounding the fill to the NEAREST cent gives the whole cost back.
    The arrival mid drifts a hair past $10.00 (the bar moves one cent over the minute), and a buy
    then fills at $10.00, below the mid it arrived at: a taker must never beat the mid.
    Expected: buy price >= arrival mid (sell price <= arrival mid), i.e. the tick rounding goes
    against the taker (up for buys, down for sells).
    """
    # Arrange
    b = bar(open="10.00", high=high, low=low, close=close, quoted=False)

    # Act
    fills = [taker_fill(side, 100, b, DEFAULT, order_rng(0, f"t{i}", b.ts_event)) for i in range(20)]

    # Assert
    better_than_mid = [
        (e.price, e.arrival_price)
        for e in fills
        if e is not None and (e.price < e.arrival_price if side == "buy" else e.price > e.arrival_price)
    ]
    assert better_than_mid == [], (
        f"BUG libs/fillsim/costs.py taker_fill: {side} taker filled better than its arrival mid "
        f"(price, arrival) = {better_than_mid[:3]}; round_to_tick rounds half-even instead of against the taker"
    )


def test_taker_fill_when_price_at_or_above_one_dollar_then_on_the_cent_and_below_then_on_the_hundredth_cent() -> None:
    # Arrange: a flat $0.5000 bar (mid exactly 0.5) and a flat $100 bar (mid exactly 100)
    penny = bar(open="0.5000", high="0.5010", low="0.4990", close="0.5000")
    dollar = bar(open="100.00", high="100.10", low="99.90", close="100.00")

    # Act
    sub = taker_fill("buy", 100, penny, DEFAULT, order_rng(0, "sub", penny.ts_event))
    big = taker_fill("buy", 100, dollar, DEFAULT, order_rng(0, "big", dollar.ts_event))

    # Assert: cost >= 2 + 0.5 bps -> 0.5 * 1.00025 = 0.500125: a sub-penny price in (0.5000, 0.5100)
    assert sub is not None and big is not None
    assert sub.price % D("0.0001") == 0
    assert D("0.5000") < sub.price < D("0.5100")
    assert sub.price % CENT != 0
    assert big.price % CENT == 0
    assert big.price > D("100.00")


def test_taker_fill_when_quantity_quadruples_then_impact_doubles() -> None:
    # Arrange: Q / V = 100 / 10,000 = 1 % and 400 / 10,000 = 4 %
    b = bar(open="50.00", high="50.40", low="49.80", close="50.10", volume=10_000)

    # Act
    small = taker_fill("buy", 100, b, DEFAULT, order_rng(0, "q", b.ts_event))
    large = taker_fill("buy", 400, b, DEFAULT, order_rng(0, "q", b.ts_event))

    # Assert: sqrt(0.04) / sqrt(0.01) = 0.2 / 0.1 = 2, and both equal 0.7 * sigma * sqrt(Q/V) in bps
    assert small is not None and large is not None
    sigma = parkinson(D("50.40"), D("49.80"))
    assert abs(small.impact_bps - D("0.7") * sigma * D("0.1") * BPS) < D("1E-18")
    assert large.impact_bps > small.impact_bps
    assert large.impact_bps == 2 * small.impact_bps
    # the same rng draws, so the extra slippage of the larger order is exactly its extra impact
    extra_slippage = large.slippage_bps - small.slippage_bps
    assert abs(extra_slippage - (large.impact_bps - small.impact_bps)) < D("1E-20")  # 28-digit Decimal sums


def test_taker_fill_when_bar_has_no_volume_then_no_impact() -> None:
    # Arrange
    b = bar(volume=0)

    # Act
    e = taker_fill("buy", 500, b, DEFAULT, order_rng(0, "z", b.ts_event))

    # Assert
    assert e is not None
    assert e.impact_bps == 0
    assert e.slippage_bps >= DEFAULT.fixed_slippage_bps


def test_taker_fill_when_limit_is_inside_the_cost_then_price_is_capped_at_the_limit() -> None:
    # Arrange: flat $100 bar, mid = 100.00; cost >= 2.5 bps -> raw price >= 100.025 > 100.01
    b = bar(open="100.00", close="100.00")

    # Act
    buy = taker_fill("buy", 100, b, DEFAULT, order_rng(0, "cap", b.ts_event), limit=D("100.01"))
    sell = taker_fill("sell", 100, b, DEFAULT, order_rng(0, "cap", b.ts_event), limit=D("99.99"))

    # Assert
    assert buy is not None and sell is not None
    assert (buy.price, buy.arrival_price, buy.liquidity) == (D("100.01"), D("100.00"), "taker")
    assert (sell.price, sell.arrival_price, sell.liquidity) == (D("99.99"), D("100.00"), "taker")


def test_taker_fill_when_buy_limit_is_below_the_arrival_mid_then_no_fill() -> None:
    # Arrange: mid = 100.00 for the whole (flat) bar
    b = bar(open="100.00", close="100.00")

    # Act
    buy = taker_fill("buy", 100, b, DEFAULT, order_rng(0, "lo", b.ts_event), limit=D("99.99"))
    sell = taker_fill("sell", 100, b, DEFAULT, order_rng(0, "hi", b.ts_event), limit=D("100.01"))

    # Assert
    assert buy is None
    assert sell is None


# --- 5. fees --------------------------------------------------------------------------------


def test_fee_when_buy_then_only_commission() -> None:
    # Arrange
    with_commission = CostModel(commission_per_share=D("0.005"))

    # Act / Assert: 0 by default; 1,000 * 0.005 = 5.00 with a commission, no SEC / TAF on buys
    assert fee("buy", 1_000, D("50"), DEFAULT) == D("0.00")
    assert fee("buy", 1_000, D("50"), with_commission) == D("5.00")


def test_fee_when_sell_then_sec_fee_plus_taf() -> None:
    # Arrange: sell 1,000 @ $50
    # SEC: 50,000 * 27.80 / 1,000,000 = 1.39 ; TAF: 1,000 * 0.000166 = 0.166 ; 1.556 -> 1.56
    expected = (D(50_000) * D("27.80") / D(1_000_000) + 1_000 * D("0.000166")).quantize(CENT)

    # Act
    got = fee("sell", 1_000, D("50"), DEFAULT)

    # Assert
    assert expected == D("1.56")
    assert got == D("1.56")


def test_fee_when_sell_total_ends_in_half_a_cent_then_rounds_half_even() -> None:
    # Arrange: sell 2,000 @ $17.50
    # SEC: 35,000 * 27.80 / 1,000,000 = 0.973 ; TAF: 2,000 * 0.000166 = 0.332 ; 1.305
    # half-even: 1.30 (the digit before the 5 is even), half-up would give 1.31

    # Act
    got = fee("sell", 2_000, D("17.50"), DEFAULT)

    # Assert
    assert got == D("1.30")


def test_fee_when_sell_is_large_then_taf_is_capped() -> None:
    # Arrange: sell 100,000 @ $10
    # SEC: 1,000,000 * 27.80 / 1,000,000 = 27.80 ; TAF: 100,000 * 0.000166 = 16.60 -> cap 8.30
    # total 36.10 (uncapped it would be 44.40)

    # Act
    got = fee("sell", 100_000, D("10"), DEFAULT)

    # Assert
    assert got == D("36.10")


# --- 6. capacity ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("volume", "participation", "expected"),
    [(12_355, "0.1", 1_235), (10, "0.15", 1), (999, "1", 999), (0, "0.1", 0)],
)
def test_capacity_when_bar_volume_given_then_floor_of_volume_times_participation(
    volume: int, participation: str, expected: int
) -> None:
    # Arrange
    b = bar(volume=volume)
    model = CostModel(max_participation=D(participation))

    # Act
    got = capacity(b, model)

    # Assert: floor(12,355 * 0.1 = 1,235.5) = 1,235 ; floor(10 * 0.15 = 1.5) = 1 (never rounded up)
    assert got == expected
    assert got == int((D(volume) * D(participation)).to_integral_value(rounding=ROUND_FLOOR))


# --- 7. match: order types ------------------------------------------------------------------


def test_match_when_market_order_on_an_eligible_bar_then_fills_as_taker() -> None:
    # Arrange
    b = bar(open="100.00", close="100.00")

    # Act
    m = match(order("market", qty=300), b, 1_000, DEFAULT)

    # Assert
    assert m.execution is not None
    assert (m.execution.qty, m.execution.liquidity, m.execution.arrival_price) == (300, "taker", D("100.00"))
    assert m.execution.price > D("100.00")
    assert m.cancel_rest is False


def test_match_when_bar_trades_through_a_resting_buy_limit_then_fills_as_maker_at_the_limit() -> None:
    # Arrange: mid 100.00 on arrival, limit 99.50 not marketable, the bar's low 99.49 is through it
    b = bar(open="100.00", high="100.20", low="99.49", close="100.00")

    # Act
    m = match(order("limit", limit_price=D("99.50")), b, 1_000, DEFAULT)

    # Assert
    assert m.execution is not None
    assert (m.execution.price, m.execution.liquidity, m.execution.qty) == (D("99.50"), "maker", 100)
    assert m.execution.impact_bps == 0


def test_match_when_bar_only_touches_a_resting_buy_limit_then_no_fill() -> None:
    # Arrange: low == limit; the queue ahead is unknown, so touching is not enough
    b = bar(open="100.00", high="100.20", low="99.50", close="100.00")

    # Act
    m = match(order("limit", limit_price=D("99.50")), b, 1_000, DEFAULT)

    # Assert
    assert m.execution is None
    assert m.cancel_rest is False


def test_match_when_bar_trades_through_a_resting_sell_limit_then_fills_as_maker_at_the_limit() -> None:
    # Arrange
    through = bar(open="100.00", high="100.51", low="99.90", close="100.00")
    touch = bar(open="100.00", high="100.50", low="99.90", close="100.00")
    o = order("limit", side="sell", limit_price=D("100.50"))

    # Act
    hit, miss = match(o, through, 1_000, DEFAULT), match(o, touch, 1_000, DEFAULT)

    # Assert
    assert hit.execution is not None
    assert (hit.execution.price, hit.execution.liquidity) == (D("100.50"), "maker")
    assert miss.execution is None


def test_match_when_limit_is_marketable_then_fills_as_taker_capped_at_the_limit() -> None:
    # Arrange: mid 100.00, buy limit 100.01 < mid + 2.5 bps (100.025)
    b = bar(open="100.00", close="100.00")

    # Act
    m = match(order("limit", limit_price=D("100.01")), b, 1_000, DEFAULT)

    # Assert
    assert m.execution is not None
    assert (m.execution.price, m.execution.liquidity) == (D("100.01"), "taker")


def test_match_when_bar_reaches_a_buy_stop_then_triggers_at_the_stop() -> None:
    # Arrange: opens 100.00 below the stop 100.40, its high just reaches it (high == stop)
    b = bar(open="100.00", high="100.40", low="99.90", close="100.10")

    # Act
    m = match(order("stop", stop_price=D("100.40")), b, 1_000, DEFAULT)

    # Assert
    assert m.triggered is True
    assert m.execution is not None
    assert m.execution.arrival_price == D("100.40")
    assert m.execution.price > D("100.40")


def test_match_when_bar_gaps_over_a_buy_stop_then_triggers_at_the_open() -> None:
    # Arrange
    b = bar(open="100.60", high="100.90", low="100.50", close="100.70")

    # Act
    m = match(order("stop", stop_price=D("100.40")), b, 1_000, DEFAULT)

    # Assert
    assert m.triggered is True
    assert m.execution is not None
    assert m.execution.arrival_price == D("100.60")


def test_match_when_bar_stays_below_a_buy_stop_then_no_trigger() -> None:
    # Arrange
    b = bar(open="100.00", high="100.39", low="99.90", close="100.10")

    # Act
    m = match(order("stop", stop_price=D("100.40")), b, 1_000, DEFAULT)

    # Assert
    assert (m.triggered, m.execution, m.stop_price) == (False, None, D("100.40"))


@pytest.mark.parametrize(
    ("open", "low", "arrival"),
    [("100.00", "99.60", "99.60"), ("99.40", "99.20", "99.40")],
    ids=["reaches-stop", "gaps-under-stop"],
)
def test_match_when_bar_reaches_a_sell_stop_then_triggers_at_the_stop_or_the_gap_open(
    open: str, low: str, arrival: str
) -> None:
    # Arrange
    b = bar(open=open, high=str(D(open) + D("0.10")), low=low, close=low)

    # Act
    m = match(order("stop", side="sell", stop_price=D("99.60")), b, 1_000, DEFAULT)

    # Assert
    assert m.triggered is True
    assert m.execution is not None
    assert m.execution.arrival_price == D(arrival)
    assert m.execution.price < D(arrival)


def test_match_when_stop_limit_triggers_then_fills_within_its_limit() -> None:
    # Arrange: stop 100.40, limit 100.60; the bar reaches 100.50
    b = bar(open="100.00", high="100.50", low="99.90", close="100.10")

    # Act
    m = match(order("stop_limit", stop_price=D("100.40"), limit_price=D("100.60")), b, 1_000, DEFAULT)

    # Assert
    assert m.triggered is True
    assert m.execution is not None
    assert m.execution.arrival_price == D("100.40")
    assert D("100.40") < m.execution.price <= D("100.60")


def test_match_when_stop_limit_triggers_but_its_limit_is_not_reachable_then_triggered_without_fill() -> None:
    # Arrange: stop 100.40 triggers (high 100.50), buy limit 100.30 < trigger mid, low 100.31 never
    # trades through the limit
    b = bar(open="100.35", high="100.50", low="100.31", close="100.45")
    o = order("stop_limit", stop_price=D("100.40"), limit_price=D("100.30"))

    # Act
    m = match(o, b, 1_000, DEFAULT)

    # Assert
    assert m.triggered is True
    assert m.execution is None
    assert m.cancel_rest is False


def test_match_when_triggered_stop_limit_meets_a_bar_through_its_limit_then_fills_at_the_limit() -> None:
    # Arrange: carried in as triggered; the next bar falls through 100.30
    o = order("stop_limit", stop_price=D("100.40"), limit_price=D("100.30"), triggered=True)
    b = bar(minute=6, open="100.45", high="100.50", low="100.20", close="100.25")

    # Act
    m = match(o, b, 1_000, DEFAULT)

    # Assert
    assert m.triggered is True
    assert m.execution is not None
    assert (m.execution.price, m.execution.liquidity) == (D("100.30"), "maker")


def test_match_when_trailing_stop_sell_then_stop_trails_the_high_water_mark_and_triggers_on_the_fall() -> None:
    # Arrange: hwm 110 carried in, trail $2 -> stop 110 - 2 = 108
    o = order("trailing_stop", side="sell", trail_price=D("2"), hwm=D("110"))
    quiet = bar(minute=5, open="109.00", high="109.50", low="108.20", close="109.00")
    rally = bar(minute=6, open="109.00", high="111.00", low="108.50", close="110.50")
    fall = bar(minute=7, open="110.00", high="110.50", low="108.90", close="109.00")

    # Act / Assert: the quiet bar neither triggers (108.20 > 108) nor raises the mark (109.50 < 110)
    m1 = match(o, quiet, 1_000, DEFAULT)
    assert (m1.triggered, m1.execution, m1.hwm, m1.stop_price) == (False, None, D("110"), D("108.00"))

    # the rally does not reach 108; the mark rises to its high 111 -> stop 111 - 2 = 109
    m2 = match(msgspec.structs.replace(o, hwm=m1.hwm), rally, 1_000, DEFAULT)
    assert (m2.triggered, m2.execution, m2.hwm, m2.stop_price) == (False, None, D("111.00"), D("109.00"))

    # the fall reaches 108.90 <= 109 (it would not have reached the old 108): triggers at 109
    m3 = match(msgspec.structs.replace(o, hwm=m2.hwm), fall, 1_000, DEFAULT)
    assert m3.triggered is True
    assert m3.execution is not None
    assert m3.execution.arrival_price == D("109.00")
    assert m3.execution.price < D("109.00")
    assert match(o, fall, 1_000, DEFAULT).triggered is False  # with the old mark 110 it would not


def test_match_when_trailing_stop_by_percent_then_stop_is_the_mark_less_its_percentage() -> None:
    # Arrange: hwm 200, 2.5 % -> stop 200 - 5.00 = 195.00
    o = order("trailing_stop", side="sell", trail_percent=D("2.5"), hwm=D("200"))
    up = bar(minute=5, open="199.00", high="204.00", low="196.00", close="203.00")
    down = bar(minute=6, open="200.00", high="200.50", low="198.80", close="199.00")

    # Act
    m1 = match(o, up, 1_000, DEFAULT)
    m2 = match(msgspec.structs.replace(o, hwm=m1.hwm), down, 1_000, DEFAULT)

    # Assert: 196 > 195 -> no trigger; mark 204, stop 204 - 204 * 0.025 = 204 - 5.10 = 198.90
    assert (m1.triggered, m1.hwm, m1.stop_price) == (False, D("204.00"), D("198.90"))
    # 198.80 <= 198.90 -> triggers at 198.90
    assert m2.triggered is True
    assert m2.execution is not None
    assert m2.execution.arrival_price == D("198.90")


# --- 7. match: time in force ----------------------------------------------------------------


def test_match_when_ioc_is_capped_by_capacity_then_partial_fill_and_cancel_rest() -> None:
    # Arrange
    b = bar()

    # Act
    m = match(order("market", tif="ioc", qty=1_000), b, 300, DEFAULT)

    # Assert
    assert m.execution is not None
    assert m.execution.qty == 300
    assert m.cancel_rest is True


@pytest.mark.parametrize("tif", ["ioc", "fok"])
def test_match_when_immediate_limit_is_not_marketable_then_it_does_not_rest_and_fill_as_maker(tif: str) -> None:
    """ioc / fok orders never rest on the book, so they can never be the maker of a later trade
    inside the bar. A buy limit 99.50 arriving at a 100.00 mid is not marketable: it must be
    canceled with no fill, even though the bar later trades through 99.50 (low 99.00).
    """
    # Arrange
    b = bar(open="100.00", high="100.50", low="99.00", close="100.20")

    # Act
    m = match(order("limit", tif=tif, limit_price=D("99.50")), b, 10_000, DEFAULT)

    # Assert
    assert m.cancel_rest is True
    assert m.execution is None, (
        f"BUG libs/fillsim/matching.py _as_limit: a non-marketable {tif} limit filled as "
        f"{m.execution.liquidity if m.execution else ''} at {m.execution.price if m.execution else ''}; "
        "immediate orders must not fall back to resting_fill"
    )


def test_match_when_fok_and_capacity_is_short_then_no_fill_and_cancel() -> None:
    # Arrange
    b = bar()

    # Act
    m = match(order("market", tif="fok", qty=1_000), b, 999, DEFAULT)

    # Assert
    assert m.execution is None
    assert m.cancel_rest is True


def test_match_when_fok_and_capacity_suffices_then_full_fill() -> None:
    # Arrange
    b = bar()

    # Act
    m = match(order("market", tif="fok", qty=1_000), b, 1_000, DEFAULT)

    # Assert
    assert m.execution is not None
    assert m.execution.qty == 1_000
    assert m.cancel_rest is True


def test_match_when_opg_on_the_sessions_first_bar_then_fills_at_its_open_in_the_auction() -> None:
    # Arrange: minute 0 starts at the 14:30 UTC open
    first = bar(minute=0, open="101.23", high="101.80", low="100.90", close="101.50")
    assert first.bar_start == OPEN

    # Act
    m = match(order("market", tif="opg", qty=200), first, 1_000, DEFAULT)

    # Assert
    assert m.execution is not None
    assert (m.execution.price, m.execution.qty, m.execution.liquidity) == (D("101.23"), 200, "auction")
    assert m.cancel_rest is True


def test_match_when_opg_limit_is_not_met_by_the_opening_price_then_canceled_without_fill() -> None:
    # Arrange: buy limit 101.00 below the 101.23 opening auction price
    first = bar(minute=0, open="101.23", high="101.80", low="100.90", close="101.50")

    # Act
    m = match(order("limit", tif="opg", limit_price=D("101.00")), first, 1_000, DEFAULT)

    # Assert
    assert m == Match(cancel_rest=True)


def test_match_when_opg_on_any_other_bar_then_canceled_without_fill() -> None:
    # Arrange
    later = bar(minute=1, open="101.23")

    # Act
    m = match(order("market", tif="opg"), later, 1_000, DEFAULT)

    # Assert
    assert m == Match(cancel_rest=True)


def test_match_when_cls_on_an_intraday_bar_then_waits() -> None:
    # Arrange
    intraday = bar(minute=200)

    # Act
    m = match(order("market", tif="cls"), intraday, 1_000, DEFAULT)

    # Assert
    assert m.execution is None
    assert m.cancel_rest is False


def test_match_when_cls_on_the_sessions_last_bar_then_fills_at_its_close_in_the_auction() -> None:
    # Arrange: minute 389 closes at the 21:00 UTC close
    last = bar(minute=LAST, open="101.00", high="101.40", low="100.80", close="101.37")
    assert last.ts_event == CLOSE

    # Act
    m = match(order("market", side="sell", tif="cls", qty=1_000), last, 5_000, DEFAULT)

    # Assert: sell 1,000 @ 101.37: SEC 101,370 * 27.80 / 1e6 = 2.818086, TAF 0.166 -> 2.984086 -> 2.98
    assert m.execution is not None
    assert (m.execution.price, m.execution.liquidity, m.execution.fee) == (D("101.37"), "auction", D("2.98"))
    assert m.cancel_rest is True


def test_match_when_order_exceeds_capacity_then_partial_fills_over_bars_sum_to_the_quantity() -> None:
    # Arrange: 2,500 shares, bars of 10,000 shares at 10 % participation -> 1,000 per bar
    model = CostModel(max_participation=D("0.1"))
    bars = [bar(minute=10 + i, volume=10_000) for i in range(5)]
    o = order("market", qty=2_500)
    fills: list[int] = []

    # Act
    for b in bars:
        if o.leaves_qty == 0:
            break
        m = match(o, b, capacity(b, model), model)
        assert m.execution is not None
        fills.append(m.execution.qty)
        o = msgspec.structs.replace(o, leaves_qty=o.leaves_qty - m.execution.qty)

    # Assert
    assert fills == [1_000, 1_000, 500]
    assert sum(fills) == 2_500
    assert o.leaves_qty == 0


def test_match_when_no_capacity_is_left_then_no_fill_and_order_keeps_working() -> None:
    # Arrange
    b = bar()

    # Act
    m = match(order("market", qty=100), b, 0, DEFAULT)

    # Assert
    assert m.execution is None
    assert m.cancel_rest is False


# --- 8. CostModel validation ----------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"proxy_spread_bps": D("-1")},
        {"fixed_slippage_bps": D("-0.1")},
        {"vol_slippage_coef": D("-0.1")},
        {"impact_coef": D("-0.7")},
        {"impact_coef": D("NaN")},
        {"max_participation": D(0)},
        {"max_participation": D("1.01")},
        {"max_participation": D("-0.1")},
        {"latency_ms": -1, "latency_jitter_ms": 0},
        {"latency_jitter_ms": -1},
        {"latency_ms": 50, "latency_jitter_ms": 60},
    ],
    ids=repr,
)
def test_cost_model_when_a_value_is_out_of_range_then_value_error(kwargs: dict[str, object]) -> None:
    # Arrange / Act / Assert
    with pytest.raises(ValueError, match="expected"):
        CostModel(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"commission_per_share": D("-0.005")},
        {"sec_fee_per_million": D("-27.80")},
        {"taf_per_share": D("-0.000166")},
        {"taf_max": D("-8.30")},
    ],
    ids=repr,
)
def test_cost_model_when_a_fee_rate_is_negative_then_value_error(kwargs: dict[str, object]) -> None:
    """A negative fee rate makes `fee` negative, and OrderFilled / OrderPartiallyFilled refuse a
    negative fee (libs/contracts/base.py NON_NEGATIVE_FIELDS), so the exchange would crash at the
    first fill instead of at configuration time.
    """
    # Arrange / Act
    try:
        model = CostModel(**kwargs)  # type: ignore[arg-type]
    except ValueError:
        return

    # Assert
    pytest.fail(
        f"BUG libs/fillsim/costs.py CostModel.__post_init__: accepted {kwargs}; "
        f"sell 1,000 @ $50 then costs fee = {fee('sell', 1_000, D('50'), model)} (negative)"
    )


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_participation": D(1)},
        {"latency_ms": 0, "latency_jitter_ms": 0},
        {"latency_ms": 25, "latency_jitter_ms": 25},
        {"proxy_spread_bps": D(0), "fixed_slippage_bps": D(0), "vol_slippage_coef": D(0), "impact_coef": D(0)},
    ],
    ids=repr,
)
def test_cost_model_when_values_are_on_the_boundary_then_accepted(kwargs: dict[str, object]) -> None:
    # Arrange / Act
    model = CostModel(**kwargs)  # type: ignore[arg-type]

    # Assert
    for name, value in kwargs.items():
        assert getattr(model, name) == value
