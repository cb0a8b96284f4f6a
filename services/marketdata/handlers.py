"""Pure synthetic feed: which bar comes next, and every symbol's bar for one close timestamp.

The bars themselves come from the shared generator libs/synth (a pure function of seed, symbol,
session, minute and previous close, seeded with sha256 of those parts: DESIGN "Determinism"), so
two runs, or a run resumed from a stored FeedState, produce byte-identical bars, and the local
exchange's Market Data API serves the very same bars for the same parameters.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from decimal import Decimal
from typing import Protocol

import msgspec

from libs import sessions, synth
from libs.contracts.base import Symbol, derive_id, tag_of
from libs.contracts.control import ScheduledCommand
from libs.contracts.marketdata import BarClosed
from libs.contracts.ops import Watermark
from libs.errors import BadData, InvariantViolation
from libs.sessions import MINUTE_NS
from libs.synth import start_price
from services.marketdata.config import MdConfig
from services.marketdata.state import FeedState

SOURCE = "marketdata"


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


def due_commands(commands: Sequence[ScheduledCommand], sent: int, next_ts: int) -> list[ScheduledCommand]:
    """The control file's commands to publish before the bars of `next_ts` (those placed after a
    bar before it, not yet sent), in file order."""
    due = []
    for cmd in commands[sent:]:
        if cmd.after >= next_ts:
            break
        due.append(cmd)
    return due


def start_run(state: FeedState, cfg: MdConfig) -> FeedState:
    """Fix where this run starts and ends, counted from its first start, not from each restart.

    The same run_id as the stored state's is the same run going on (a restart under `keel up`):
    its end stays. Anything else starts a run of cfg.minutes from what was emitted so far.
    """
    if cfg.run_id and state.run_id == cfg.run_id:
        return state
    end = state.emitted + cfg.minutes if cfg.minutes else 0
    return msgspec.structs.replace(state, run_id=cfg.run_id, run_start=state.emitted, run_end=end)


def next_timestamp(state: FeedState, cfg: MdConfig) -> int | None:
    """Return the next bar close to emit after state, or None when cfg.minutes are done."""
    if cfg.minutes and state.emitted >= cfg.minutes:
        return None
    if not state.last_ts:
        return synth.first_close(cfg.start)
    return synth.next_close(state.last_ts)


def bars_for(state: FeedState, ts_ns: int, cfg: MdConfig, ctx: Ctx) -> tuple[FeedState, list[BarClosed], Watermark]:
    """Build every symbol's bar closing at ts, the watermark that follows them, and new state."""
    day, _, _ = synth.position(ts_ns)  # a bar close inside a session, or ValueError naming ts
    if ts_ns <= state.last_ts:
        raise ValueError(f"expected a bar close after {state.last_ts}, was {ts_ns}")
    closes, generated = synth.step(cfg, cfg.symbols, state.last_close, ts_ns)
    now = ctx.now_ns  # read once: one cycle's events share one ts_init even on a live clock
    bars = [
        bar_closed(
            g.symbol,
            ts_ns,
            now,
            open=g.values.open,
            high=g.values.high,
            low=g.values.low,
            close=g.values.close,
            volume=g.values.volume,
            spread_bps=g.values.spread_bps,
        )
        for g in generated
    ]
    emitted = state.emitted + 1
    new_state = msgspec.structs.replace(
        state, last_close=closes, last_ts=ts_ns, session=day.isoformat(), emitted=emitted
    )
    final = bool(cfg.minutes) and emitted >= cfg.minutes
    return new_state, bars, watermark(ts_ns, now, final=final)


def provider_bar(
    symbol: str,
    ts_ns: int,
    now_ns: int,
    *,
    values: dict[str, float],
    spread_bps: Decimal,
    source: str,
) -> BarClosed:
    """Check one provider bar (floats as its client gives them) and build its BarClosed.

    A price that is NaN, infinite, zero or negative is impossible: InvariantViolation (trading
    halts, seed 000 §B). Prices that contradict each other (high below low, ...) or a volume that
    is not whole shares are one symbol's bad data: BadData (the symbol is skipped this minute).
    """
    where = f"{symbol} bar closing {ts_ns} from {source}"
    prices: dict[str, Decimal] = {}
    for name in ("open", "high", "low", "close"):
        value = values[name]
        if not math.isfinite(value) or value <= 0:
            raise InvariantViolation(f"{where}: expected a finite {name} > 0, was {value!r}")
        prices[name] = Decimal(repr(value))  # the shortest text that reads back as the float
    o, h, lo, c = (prices[k] for k in ("open", "high", "low", "close"))
    if not lo <= min(o, c) <= max(o, c) <= h:
        raise BadData(f"{where}: expected low <= open, close <= high, was o={o} h={h} l={lo} c={c}")
    volume = values["volume"]
    if not math.isfinite(volume) or volume < 0 or volume != int(volume):
        raise BadData(f"{where}: expected volume as whole shares >= 0, was {volume!r}")
    return bar_closed(
        symbol, ts_ns, now_ns, open=o, high=h, low=lo, close=c, volume=int(volume),
        spread_bps=spread_bps, spread_is_proxy=True, source=source,
    )  # fmt: skip


__all__ = [
    "SOURCE",
    "Ctx",
    "bar_closed",
    "bars_for",
    "due_commands",
    "cycle_id",
    "next_timestamp",
    "provider_bar",
    "start_price",
    "watermark",
]
