"""Costs of trading one order against one bar: spread, latency, slippage, impact and fees.

Pure and deterministic: every random draw comes from `order_rng`, a Random seeded with sha256
of (model seed, order id, bar time, ...), never from the global `random` (DESIGN: determinism).
Prices and money are Decimal; the few transcendental steps (ln, sqrt) use Decimal's own
correctly rounded functions, so results are identical on every machine.

Slippage of a taker fill, in bps of the arrival mid (seed 001 §2):
    fixed_bps + vol_coef * sigma_bar * |z| + impact_coef * sigma_bar * sqrt(qty / bar_volume)
where sigma_bar is the bar's own volatility (Parkinson's range estimator) and the last term is
the square-root impact law (Toth et al. 2011, Phys. Rev. X 1, 021006, eq. 1; Bouchaud et al.,
"Trades, Quotes and Prices", 2018, ch. 12): I = Y * sigma * sqrt(Q / V), with sigma and V taken
over the same horizon - here one bar.
"""

from __future__ import annotations

import hashlib
import random
from decimal import ROUND_FLOOR, ROUND_HALF_EVEN, Decimal

import msgspec

from libs.contracts.base import tick_size, to_tick
from libs.contracts.marketdata import BarClosed

ZERO = Decimal(0)
ONE = Decimal(1)
BPS = Decimal(10000)
MONEY = Decimal("0.01")
# Parkinson (1980): sigma = ln(H/L) / sqrt(4 ln 2) for one period's high and low
PARKINSON = (4 * Decimal(2).ln()).sqrt()
Z_QUANTUM = Decimal("1E-9")
MS_NS = 1_000_000


class CostModel(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Parameters of the fill simulator; every field is a configuration key of its users."""

    seed: int = 0
    # used whenever the bar carries no quoted spread (BarClosed.spread_is_proxy); flagged proxy
    proxy_spread_bps: Decimal = Decimal(5)
    fixed_slippage_bps: Decimal = Decimal("0.5")
    vol_slippage_coef: Decimal = Decimal("0.1")  # times sigma_bar times |N(0,1)|
    impact_coef: Decimal = Decimal("0.7")  # Y of the square-root law (order one; 0.69 on AAPL, arXiv 2606.24019)
    max_participation: Decimal = Decimal("0.1")  # share of a bar's volume all orders of a symbol may take
    latency_ms: int = 50  # mean order latency from decision to venue
    latency_jitter_ms: int = 25  # uniform +- around the mean
    commission_per_share: Decimal = ZERO  # Alpaca charges no commission on US equities
    # regulatory fees on sales, passed through by US brokers: SEC Section 31 (per $1M sold) and
    # FINRA Trading Activity Fee (per share sold, capped per trade)
    sec_fee_per_million: Decimal = Decimal("27.80")
    taf_per_share: Decimal = Decimal("0.000166")
    taf_max: Decimal = Decimal("8.30")

    def __post_init__(self) -> None:
        for name in (
            "proxy_spread_bps",
            "fixed_slippage_bps",
            "vol_slippage_coef",
            "impact_coef",
            "commission_per_share",
            "sec_fee_per_million",
            "taf_per_share",
            "taf_max",
        ):
            value = getattr(self, name)
            if not value.is_finite() or value < 0:
                raise ValueError(f"expected {name} >= 0, was {value}")
        if not (ZERO < self.max_participation <= ONE):
            raise ValueError(f"expected 0 < max_participation <= 1, was {self.max_participation}")
        if self.latency_ms < 0 or self.latency_jitter_ms < 0 or self.latency_jitter_ms > self.latency_ms:
            raise ValueError(
                f"expected 0 <= latency_jitter_ms <= latency_ms, was {self.latency_jitter_ms} / {self.latency_ms}"
            )


class Spread(msgspec.Struct, frozen=True, kw_only=True):
    """The spread a fill pays, and whether it was quoted or a proxy."""

    bps: Decimal
    is_proxy: bool


class Execution(msgspec.Struct, frozen=True, kw_only=True):
    """One simulated fill: what it cost and why."""

    qty: int
    price: Decimal  # the fill price, on the tick
    arrival_price: Decimal  # mid when the order reached the venue (distinct from the fill price)
    latency_ns: int
    spread_bps: Decimal
    spread_is_proxy: bool
    slippage_bps: Decimal  # fixed + volatility + impact, before rounding to the tick
    impact_bps: Decimal
    fee: Decimal
    liquidity: str  # "taker", "maker" or "auction"


def order_rng(seed: int, *parts: object) -> random.Random:
    """Return a Random seeded by sha256 of the model seed and the parts (an order, a bar ...)."""
    h = hashlib.sha256(str(seed).encode())
    for part in parts:
        h.update(b"\x1f")
        h.update(str(part).encode())
    return random.Random(int.from_bytes(h.digest()[:16], "big"))


def round_against(price: Decimal, side: str) -> Decimal:
    """Round a taker's price to the tick against it: up for a buy, down for a sell.

    Rounding to the nearest tick would let a cost below half a tick vanish, so a cheap stock
    could fill a buy below the mid.
    """
    return to_tick(price, toward=1 if side == "buy" else -1)


def on_tick(price: Decimal) -> bool:
    """Tell whether a price is on its tick (Alpaca refuses sub-penny prices from $1.00 up)."""
    return price == price.quantize(tick_size(price))


def spread(bar: BarClosed, model: CostModel) -> Spread:
    """Return the bar's quoted spread, or the configured proxy when the bar has no quotes."""
    if bar.spread_is_proxy:
        return Spread(bps=model.proxy_spread_bps, is_proxy=True)
    return Spread(bps=bar.spread_bps, is_proxy=False)


def bar_sigma(bar: BarClosed) -> Decimal:
    """Return the bar's volatility as a fraction (Parkinson's high-low estimator)."""
    if bar.high <= bar.low:
        return ZERO
    return (bar.high / bar.low).ln() / PARKINSON


def sqrt_impact(sigma: Decimal, qty: int, volume: int, coef: Decimal) -> Decimal:
    """Return the square-root law's impact as a fraction: coef * sigma * sqrt(qty / volume)."""
    if qty <= 0 or sigma <= 0:
        return ZERO
    if volume <= 0:
        raise ValueError(f"expected volume > 0 for an impact estimate, was {volume}")
    return coef * sigma * (Decimal(qty) / Decimal(volume)).sqrt()


def capacity(bar: BarClosed, model: CostModel) -> int:
    """Return how many shares all orders of the bar's symbol may fill on it."""
    return int((Decimal(bar.volume) * model.max_participation).to_integral_value(rounding=ROUND_FLOOR))


def latency_ns(rng: random.Random, model: CostModel) -> int:
    """Draw an order's latency to the venue."""
    jitter = rng.randint(-model.latency_jitter_ms * 1000, model.latency_jitter_ms * 1000)
    return max(model.latency_ms * 1000 + jitter, 0) * 1000


def path_price(bar: BarClosed, at_ns: int) -> Decimal:
    """Return the bar's mid at a time inside it, on the straight line from open to close."""
    length = bar.ts_event - bar.bar_start
    if length <= 0 or at_ns <= bar.bar_start:
        return bar.open
    frac = min(Decimal(at_ns - bar.bar_start) / Decimal(length), ONE)
    return bar.open + (bar.close - bar.open) * frac


def fee(side: str, qty: int, price: Decimal, model: CostModel) -> Decimal:
    """Return commission plus the regulatory fees of a fill (SEC and TAF apply to sales only)."""
    total = model.commission_per_share * qty
    if side == "sell":
        total += qty * price * model.sec_fee_per_million / Decimal(1_000_000)
        total += min(model.taf_per_share * qty, model.taf_max)
    return total.quantize(MONEY, rounding=ROUND_HALF_EVEN)


def _gauss(rng: random.Random) -> Decimal:
    return Decimal(repr(rng.gauss(0.0, 1.0))).quantize(Z_QUANTUM)


def taker_fill(
    side: str,
    qty: int,
    bar: BarClosed,
    model: CostModel,
    rng: random.Random,
    *,
    reference: Decimal | None = None,
    limit: Decimal | None = None,
) -> Execution | None:
    """Fill `qty` against the bar as a taker; None when a limit forbids the resulting price.

    The order reaches the venue after its latency; the mid then is `reference` (a triggered
    stop's trigger price) or the bar's path price. The fill pays half the spread and the
    slippage against the taker, is rounded to the tick against the taker, and is capped at
    `limit`.
    """
    lat = latency_ns(rng, model)
    mid = reference if reference is not None else path_price(bar, bar.bar_start + lat)
    sp = spread(bar, model)
    sigma = bar_sigma(bar)
    impact = sqrt_impact(sigma, qty, bar.volume, model.impact_coef) * BPS if bar.volume > 0 else ZERO
    slippage = model.fixed_slippage_bps + model.vol_slippage_coef * sigma * BPS * abs(_gauss(rng)) + impact
    cost = (sp.bps / 2 + slippage) / BPS
    sign = 1 if side == "buy" else -1
    price = round_against(mid * (1 + sign * cost), side)
    if limit is not None and ((side == "buy" and price > limit) or (side == "sell" and price < limit)):
        # the book would fill up to the limit at most: a marketable limit is capped there when
        # its arrival mid is still inside the limit, else it does not fill as a taker
        if (side == "buy" and mid > limit) or (side == "sell" and mid < limit):
            return None
        price = limit
    return Execution(
        qty=qty,
        price=price,
        arrival_price=mid,
        latency_ns=lat,
        spread_bps=sp.bps,
        spread_is_proxy=sp.is_proxy,
        slippage_bps=slippage,
        impact_bps=impact,
        fee=fee(side, qty, price, model),
        liquidity="taker",
    )


def resting_fill(side: str, qty: int, price: Decimal, bar: BarClosed, model: CostModel) -> Execution:
    """Fill a resting limit at its own price (the market traded through it): no spread paid."""
    sp = spread(bar, model)
    return Execution(
        qty=qty,
        price=price,
        arrival_price=price,
        latency_ns=0,
        spread_bps=sp.bps,
        spread_is_proxy=sp.is_proxy,
        slippage_bps=ZERO,
        impact_bps=ZERO,
        fee=fee(side, qty, price, model),
        liquidity="maker",
    )


def auction_fill(side: str, qty: int, price: Decimal, bar: BarClosed, model: CostModel) -> Execution:
    """Fill in the opening or closing auction at the single auction price."""
    return Execution(
        qty=qty,
        price=to_tick(price),
        arrival_price=price,
        latency_ns=0,
        spread_bps=ZERO,
        spread_is_proxy=spread(bar, model).is_proxy,
        slippage_bps=ZERO,
        impact_bps=ZERO,
        fee=fee(side, qty, to_tick(price), model),
        liquidity="auction",
    )
