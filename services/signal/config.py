"""Signal service keys (env prefix KEEL_SIGNAL_)."""

from __future__ import annotations

from libs.config import Section

SECTION_PREFIX = "KEEL_SIGNAL_"


class SignalConfig(Section, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """EMA-crossover sleeve with volatility-scaled targets."""

    sleeve: str = "ema_x"
    fast_span: int = 5
    slow_span: int = 20
    vol_span: int = 30
    dollars_per_symbol: float = 10000.0
    target_annual_vol: float = 0.20
    max_leverage: float = 1.5
    rebalance_band: float = 0.25  # re-propose only when the target moves by this fraction
