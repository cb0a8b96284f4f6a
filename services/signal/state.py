"""Signal state: per-symbol indicator values, folded bar by bar."""

from __future__ import annotations

import msgspec


class SymbolSignal(msgspec.Struct, frozen=True, kw_only=True):
    """Indicators of one symbol after the last bar."""

    bars: int = 0
    last_close: float = 0.0
    ema_fast: float = 0.0
    ema_slow: float = 0.0
    var: float = 0.0  # EWMA of squared one-minute log returns
    last_target: int = 0
    last_bar_ts: int = 0


class SignalState(msgspec.Struct, frozen=True, kw_only=True):
    """All symbols the sleeve has seen."""

    symbols: dict[str, SymbolSignal] = {}
    last_watermark: int = 0
