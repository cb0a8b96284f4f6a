"""Synthetic 1-minute bars: a seeded GBM path per symbol on the XNYS session grid (pure).

A bar is a pure function of (parameters, symbol, session, minute of the session, previous close):
its randomness comes from `random.Random` seeded with sha256 of those parts (DESIGN
"Determinism"), so two runs, or a run resumed from a stored close, produce byte-identical bars.
The marketdata service emits these bars as BarClosed events; the local exchange serves the same
bars on its Market Data API (services/exchange/bars.py), so both agree for the same parameters.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Iterable
from datetime import date
from decimal import ROUND_HALF_EVEN, Decimal
from typing import NamedTuple, Protocol

import msgspec

from libs import sessions
from libs.sessions import MINUTE_NS

MINUTES_PER_YEAR = 252 * 390
CENT = Decimal("0.01")
# an overnight gap is a fraction of a day's move: the first bar of a session opens near the close
OVERNIGHT_VOL_SHARE = 0.3
VOLUME_NOISE = 0.4  # log-sd of per-minute volume around the intraday profile


class Params(Protocol):
    """What shapes a symbol's path (MdConfig and SynthParams both have these attributes)."""

    @property
    def seed(self) -> int: ...
    @property
    def initial_price(self) -> float: ...
    @property
    def annual_vol(self) -> float: ...
    @property
    def annual_drift(self) -> float: ...
    @property
    def spread_bps(self) -> float: ...
    @property
    def base_volume(self) -> int: ...


class SynthParams(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The generator's parameters on their own (defaults equal marketdata's KEEL_MD_ defaults)."""

    seed: int = 7
    initial_price: float = 100.0
    annual_vol: float = 0.25
    annual_drift: float = 0.05
    spread_bps: float = 4.0
    base_volume: int = 200_000  # mean shares per minute per symbol


class BarValues(NamedTuple):
    """One generated bar: prices in cents, whole-share volume, quoted spread in bps."""

    open: Decimal
    high: Decimal
    low: Decimal
    close: Decimal
    volume: int
    spread_bps: Decimal


class SynthBar(NamedTuple):
    """A generated bar with its symbol and close time (ns UTC)."""

    symbol: str
    ts: int
    values: BarValues


def first_close(start: date) -> int:
    """Return the close of the first 1-minute bar of the first session on or after start."""
    first = sessions.next_session(start, inclusive=True)
    return sessions.session_open_close(first)[0] + MINUTE_NS


def next_close(last_ts: int) -> int:
    """Return the 1-minute bar close that follows last_ts on the XNYS session grid."""
    day = sessions.session_of(last_ts)
    if day is None:
        raise ValueError(f"expected state.last_ts inside an XNYS session, was {last_ts}")
    if last_ts < sessions.session_open_close(day)[1]:
        return last_ts + MINUTE_NS
    following = sessions.next_session(day, inclusive=False)
    return sessions.session_open_close(following)[0] + MINUTE_NS


def position(ts_ns: int) -> tuple[date, int, float]:
    """Return a bar close's session, its 0-based minute in the session and the intraday shape."""
    day = sessions.session_of(ts_ns)
    if day is None or not sessions.is_bar_close(ts_ns):
        raise ValueError(f"expected a 1-minute bar close inside an XNYS session, was {ts_ns}")
    open_ns, close_ns = sessions.session_open_close(day)
    minute = (ts_ns - open_ns) // MINUTE_NS - 1
    return day, minute, u_shape(minute, (close_ns - open_ns) // MINUTE_NS)


def start_price(symbol: str, initial_price: float) -> Decimal:
    """Return a symbol's first open: between half and twice initial_price, fixed by its name."""
    u = int.from_bytes(hashlib.sha256(f"start:{symbol}".encode()).digest()[:8], "big") / 2**64
    return cents(initial_price * 2 ** (2 * u - 1))


def u_shape(minute: int, bars_in_session: int) -> float:
    """Return the intraday activity of a minute: 2.0 at the open and close, 0.5 at midday."""
    # mean 1.0 over the session, so base_volume stays the average and early-close days keep the
    # same shape, compressed
    x = (minute + 0.5) / bars_in_session
    return 0.5 + 1.5 * (2 * x - 1) ** 2


def cents(price: float) -> Decimal:
    """Round a float price to whole cents (half-even), at least one cent."""
    # rounding is monotone, so a float high >= close stays >= after quantizing
    return max(CENT, Decimal(price).quantize(CENT, rounding=ROUND_HALF_EVEN))


def _rng(seed: int, symbol: str, session: str, minute: int) -> random.Random:
    digest = hashlib.sha256(f"{seed}:{symbol}:{session}:{minute}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def bar_values(params: Params, symbol: str, session: str, minute: int, shape: float, prev: Decimal | None) -> BarValues:
    """Generate one symbol's bar for a minute of a session, given its previous close (None: first bar)."""
    rng = _rng(params.seed, symbol, session, minute)
    # draw every variate every time, so the stream never depends on which branch ran
    z_gap, z_move, z_high, z_low, z_volume = (rng.gauss(0.0, 1.0) for _ in range(5))

    if prev is None:
        open_ = start_price(symbol, params.initial_price)
    elif minute == 0:
        gap_sigma = params.annual_vol * math.sqrt(1 / 252) * OVERNIGHT_VOL_SHARE
        open_ = cents(float(prev) * math.exp(gap_sigma * z_gap))
    else:
        open_ = prev

    # geometric Brownian motion over one minute, with volatility following the intraday U
    sigma = params.annual_vol * math.sqrt(shape / MINUTES_PER_YEAR)
    drift = params.annual_drift / MINUTES_PER_YEAR - 0.5 * sigma * sigma
    o = float(open_)
    c = o * math.exp(drift + sigma * z_move)
    high = max(o, c) * math.exp(0.5 * sigma * abs(z_high))
    low = min(o, c) * math.exp(-0.5 * sigma * abs(z_low))

    volume_noise = math.exp(VOLUME_NOISE * z_volume - 0.5 * VOLUME_NOISE**2)  # mean 1
    volume = max(1, round(params.base_volume * shape * volume_noise))
    # quoted spread widens at the open and close and on bars that moved a lot
    spread = params.spread_bps * math.sqrt(shape) * (1 + 0.5 * abs(z_move))
    spread_bps = Decimal(spread).quantize(CENT, rounding=ROUND_HALF_EVEN)
    return BarValues(open_, cents(high), cents(low), cents(c), volume, spread_bps)


def step(
    params: Params, symbols: Iterable[str], closes: dict[str, Decimal], ts_ns: int
) -> tuple[dict[str, Decimal], list[SynthBar]]:
    """Generate every symbol's bar closing at ts after `closes`; return the new closes and the bars."""
    day, minute, shape = position(ts_ns)
    session = day.isoformat()
    after = dict(closes)
    bars: list[SynthBar] = []
    for symbol in symbols:
        values = bar_values(params, symbol, session, minute, shape, closes.get(symbol))
        after[symbol] = values.close
        bars.append(SynthBar(symbol, ts_ns, values))
    return after, bars


__all__ = [
    "CENT",
    "MINUTES_PER_YEAR",
    "OVERNIGHT_VOL_SHARE",
    "VOLUME_NOISE",
    "BarValues",
    "Params",
    "SynthBar",
    "SynthParams",
    "bar_values",
    "cents",
    "first_close",
    "next_close",
    "position",
    "start_price",
    "step",
]
