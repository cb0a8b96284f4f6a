"""EMA crossover with volatility-scaled targets: BarClosed -> TargetProposed (pure).

Long when the fast EMA is above the slow one, short below; the position size targets a
fixed annualised volatility (`dollars_per_symbol * target_vol / realised_vol`, capped by
`max_leverage`). Research math uses floats (STYLE 14); targets leave as integer shares.
A target is proposed only when it moves by more than the rebalance band or flips sign, so
noise in the volatility estimate does not turn into a stream of tiny orders.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from decimal import Decimal

import msgspec

from libs.contracts.base import Event, derive_id
from libs.contracts.marketdata import BarClosed
from libs.contracts.ops import Watermark
from libs.contracts.signal import TargetProposed
from libs.decide import Ctx, forward_watermark
from libs.fillsim import bar_sigma
from services.signal.config import SignalConfig
from services.signal.state import SignalState, SymbolSignal

SIGMA_Q = Decimal("0.0001")

MINUTES_PER_YEAR = 390 * 252


def _alpha(span: int) -> float:
    return 2.0 / (span + 1.0)


def evolve(sym: SymbolSignal, bar: BarClosed, cfg: SignalConfig) -> SymbolSignal:
    """Fold one bar into a symbol's indicators."""
    close = float(bar.close)
    if sym.bars == 0:
        return SymbolSignal(bars=1, last_close=close, ema_fast=close, ema_slow=close, last_bar_ts=bar.ts_event)
    ret = math.log(close / sym.last_close)
    a_vol = _alpha(cfg.vol_span)
    var = ret * ret if sym.bars == 1 else (1 - a_vol) * sym.var + a_vol * ret * ret
    return SymbolSignal(
        bars=sym.bars + 1,
        last_close=close,
        ema_fast=(1 - _alpha(cfg.fast_span)) * sym.ema_fast + _alpha(cfg.fast_span) * close,
        ema_slow=(1 - _alpha(cfg.slow_span)) * sym.ema_slow + _alpha(cfg.slow_span) * close,
        var=var,
        last_target=sym.last_target,
        last_bar_ts=bar.ts_event,
    )


def target_shares(sym: SymbolSignal, cfg: SignalConfig) -> int:
    """Return the volatility-scaled target of a symbol (0 while warming up)."""
    if sym.bars < cfg.slow_span or sym.var <= 0 or sym.ema_fast == sym.ema_slow:
        return 0
    ann_vol = math.sqrt(sym.var * MINUTES_PER_YEAR)
    leverage = min(cfg.max_leverage, cfg.target_annual_vol / ann_vol)
    shares = int(cfg.dollars_per_symbol * leverage / sym.last_close)
    return shares if sym.ema_fast > sym.ema_slow else -shares


def _outside_band(new: int, old: int, band: float) -> bool:
    if new == old:
        return False
    if old == 0 or new == 0 or (new > 0) != (old > 0):
        return True
    return abs(new - old) > band * abs(old)


def on_bar(state: SignalState, bar: BarClosed, ctx: Ctx) -> tuple[SignalState, list[Event]]:
    """Update the symbol and propose a new target when it moved enough."""
    cfg: SignalConfig = ctx.config
    prev = state.symbols.get(bar.symbol, SymbolSignal())
    if bar.ts_event <= prev.last_bar_ts:
        return state, []  # an old or repeated bar changes nothing
    sym = evolve(prev, bar, cfg)
    target = target_shares(sym, cfg)
    events: list[Event] = []
    if _outside_band(target, sym.last_target, cfg.rebalance_band):
        signal_hash = derive_id(cfg.sleeve, bar.symbol, bar.ts_event, target)[:12]
        events.append(
            TargetProposed(
                event_id=derive_id("signal.target_proposed.v1", cfg.sleeve, bar.symbol, bar.ts_event),
                correlation_id=bar.correlation_id,
                causation_id=bar.event_id,
                ts_event=bar.ts_event,
                ts_init=ctx.now_ns,
                sleeve=cfg.sleeve,
                symbol=bar.symbol,
                target_shares=target,
                reference_price=bar.close,
                bar_ts=bar.ts_event,
                score=Decimal(repr(round(sym.ema_fast - sym.ema_slow, 6))),
                signal_hash=signal_hash,
                session=bar.session,
                bar_volume=bar.volume,
                spread_bps=bar.spread_bps,
                spread_is_proxy=bar.spread_is_proxy,
                sigma_bps=(bar_sigma(bar) * 10_000).quantize(SIGMA_Q),
            )
        )
        sym = msgspec.structs.replace(sym, last_target=target)
    symbols = dict(state.symbols)
    symbols[bar.symbol] = sym
    return SignalState(symbols=symbols, last_watermark=state.last_watermark), events


def step(state: SignalState, event: object, ctx: Ctx) -> tuple[SignalState, Sequence[Event]]:
    """Route one consumed event to its handler."""
    if isinstance(event, BarClosed):
        return on_bar(state, event, ctx)
    if isinstance(event, Watermark):
        wm, events = forward_watermark(state.last_watermark, event, ctx)
        return SignalState(symbols=state.symbols, last_watermark=wm), events
    return state, []
