"""Pure synthetic feed: which bar comes next, and every symbol's bar for one close timestamp.

A bar is a pure function of (seed, symbol, bar close time, previous close): its randomness comes
from `random.Random` seeded with sha256 of those parts (DESIGN "Determinism"), so two runs, or a
run resumed from a stored FeedState, produce byte-identical bars.
"""

from __future__ import annotations

import hashlib
import math
import random
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Protocol

import msgspec

from libs import sessions
from libs.contracts.base import Symbol, derive_id, tag_of
from libs.contracts.marketdata import BarClosed
from libs.contracts.ops import Watermark
from libs.sessions import MINUTE_NS
from services.marketdata.config import MdConfig
from services.marketdata.state import FeedState

SOURCE = "marketdata"
MINUTES_PER_YEAR = 252 * 390
CENT = Decimal("0.01")
# an overnight gap is a fraction of a day's move: the first bar of a session opens near the close
OVERNIGHT_VOL_SHARE = 0.3
VOLUME_NOISE = 0.4  # log-sd of per-minute volume around the intraday profile


class Ctx(Protocol):
    """What a handler needs from its caller: the injected clock's reading."""

    @property
    def now_ns(self) -> int: ...


def cycle_id(ts_ns: int) -> str:
    """Return the correlation id of the bar cycle closing at ts."""
    return derive_id("bar", ts_ns)


def bar_closed(
    symbol: str,
    ts_ns: int,
    now_ns: int,
    *,
    open: Decimal,  # noqa: A002 - the wire field's name
    high: Decimal,
    low: Decimal,
    close: Decimal,
    volume: int,
    spread_bps: Decimal,
    spread_is_proxy: bool = True,
    source: str = "synthetic",
) -> BarClosed:
    """Build a BarClosed closing at ts with the feed's deterministic envelope."""
    day = sessions.session_of(ts_ns)
    if day is None:
        raise ValueError(f"expected a bar close inside an XNYS session, was {ts_ns} for {symbol}")
    cycle = cycle_id(ts_ns)
    return BarClosed(
        event_id=derive_id(tag_of(BarClosed), symbol, ts_ns),
        correlation_id=cycle,
        causation_id=cycle,
        ts_event=ts_ns,
        ts_init=now_ns,
        symbol=Symbol(symbol),
        bar_start=ts_ns - MINUTE_NS,
        session=day.isoformat(),
        open=open,
        high=high,
        low=low,
        close=close,
        volume=volume,
        spread_bps=spread_bps,
        spread_is_proxy=spread_is_proxy,
        source=source,
    )


def watermark(ts_ns: int, now_ns: int, *, final: bool = False) -> Watermark:
    """Build the watermark saying marketdata has published every bar up to ts."""
    cycle = cycle_id(ts_ns)
    return Watermark(
        event_id=derive_id(tag_of(Watermark), SOURCE, ts_ns),
        correlation_id=cycle,
        causation_id=cycle,
        ts_event=ts_ns,
        ts_init=now_ns,
        source=SOURCE,
        bar_ts=ts_ns,
        final=final,
    )


def next_timestamp(state: FeedState, cfg: MdConfig) -> int | None:
    """Return the next bar close to emit after state, or None when cfg.minutes are done."""
    if cfg.minutes and state.emitted >= cfg.minutes:
        return None
    if not state.last_ts:
        first = sessions.next_session(cfg.start, inclusive=True)
        return sessions.session_open_close(first)[0] + MINUTE_NS
    day = sessions.session_of(state.last_ts)
    if day is None:
        raise ValueError(f"expected state.last_ts inside an XNYS session, was {state.last_ts}")
    if state.last_ts < sessions.session_open_close(day)[1]:
        return state.last_ts + MINUTE_NS
    following = sessions.next_session(day, inclusive=False)
    return sessions.session_open_close(following)[0] + MINUTE_NS


def bars_for(state: FeedState, ts_ns: int, cfg: MdConfig, ctx: Ctx) -> tuple[FeedState, list[BarClosed], Watermark]:
    """Build every symbol's bar closing at ts, the watermark that follows them, and new state."""
    day = sessions.session_of(ts_ns)
    if day is None or not sessions.is_bar_close(ts_ns):
        raise ValueError(f"expected a 1-minute bar close inside an XNYS session, was {ts_ns}")
    if ts_ns <= state.last_ts:
        raise ValueError(f"expected a bar close after {state.last_ts}, was {ts_ns}")
    open_ns, close_ns = sessions.session_open_close(day)
    minute = (ts_ns - open_ns) // MINUTE_NS - 1
    shape = _u_shape(minute, (close_ns - open_ns) // MINUTE_NS)
    session = day.isoformat()
    now = ctx.now_ns  # read once: one cycle's events share one ts_init even on a live clock

    closes = dict(state.last_close)
    bars: list[BarClosed] = []
    for symbol in cfg.symbols:
        prev = state.last_close.get(symbol)
        o, h, lo, c, volume, spread = _bar(cfg, symbol, session, minute, shape, prev)
        bars.append(
            bar_closed(
                symbol,
                ts_ns,
                now,
                open=o,
                high=h,
                low=lo,
                close=c,
                volume=volume,
                spread_bps=spread,
            )
        )
        closes[symbol] = c
    emitted = state.emitted + 1
    new_state = msgspec.structs.replace(state, last_close=closes, last_ts=ts_ns, session=session, emitted=emitted)
    final = bool(cfg.minutes) and emitted >= cfg.minutes
    return new_state, bars, watermark(ts_ns, now, final=final)


def start_price(symbol: str, initial_price: float) -> Decimal:
    """Return a symbol's first open: between half and twice initial_price, fixed by its name."""
    u = int.from_bytes(hashlib.sha256(f"start:{symbol}".encode()).digest()[:8], "big") / 2**64
    return _cents(initial_price * 2 ** (2 * u - 1))


def _rng(seed: int, symbol: str, session: str, minute: int) -> random.Random:
    digest = hashlib.sha256(f"{seed}:{symbol}:{session}:{minute}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def _u_shape(minute: int, bars_in_session: int) -> float:
    # intraday activity: 2.0 at the open and close, 0.5 at midday, mean 1.0 over the session, so
    # base_volume stays the average and early-close days keep the same shape, compressed
    x = (minute + 0.5) / bars_in_session
    return 0.5 + 1.5 * (2 * x - 1) ** 2


def _cents(price: float) -> Decimal:
    # rounding is monotone, so a float high >= close stays >= after quantizing
    return max(CENT, Decimal(price).quantize(CENT, rounding=ROUND_HALF_EVEN))


def _bar(
    cfg: MdConfig, symbol: str, session: str, minute: int, shape: float, prev: Decimal | None
) -> tuple[Decimal, Decimal, Decimal, Decimal, int, Decimal]:
    rng = _rng(cfg.seed, symbol, session, minute)
    # draw every variate every time, so the stream never depends on which branch ran
    z_gap, z_move, z_high, z_low, z_volume = (rng.gauss(0.0, 1.0) for _ in range(5))

    if prev is None:
        open_ = start_price(symbol, cfg.initial_price)
    elif minute == 0:
        gap_sigma = cfg.annual_vol * math.sqrt(1 / 252) * OVERNIGHT_VOL_SHARE
        open_ = _cents(float(prev) * math.exp(gap_sigma * z_gap))
    else:
        open_ = prev

    # geometric Brownian motion over one minute, with volatility following the intraday U
    sigma = cfg.annual_vol * math.sqrt(shape / MINUTES_PER_YEAR)
    drift = cfg.annual_drift / MINUTES_PER_YEAR - 0.5 * sigma * sigma
    o = float(open_)
    c = o * math.exp(drift + sigma * z_move)
    high = max(o, c) * math.exp(0.5 * sigma * abs(z_high))
    low = min(o, c) * math.exp(-0.5 * sigma * abs(z_low))

    volume_noise = math.exp(VOLUME_NOISE * z_volume - 0.5 * VOLUME_NOISE**2)  # mean 1
    volume = max(1, round(cfg.base_volume * shape * volume_noise))
    # quoted spread widens at the open and close and on bars that moved a lot
    spread = cfg.spread_bps * math.sqrt(shape) * (1 + 0.5 * abs(z_move))
    spread_bps = Decimal(spread).quantize(CENT, rounding=ROUND_HALF_EVEN)
    return open_, _cents(high), _cents(low), _cents(c), volume, spread_bps
