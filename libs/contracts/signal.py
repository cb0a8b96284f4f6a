"""Signal family: per-sleeve target positions."""

from __future__ import annotations

from decimal import Decimal

from libs.contracts.base import Event, NanoTime, Price, SignedShares, Symbol


class TargetProposed(Event, kw_only=True, tag="signal.target_proposed.v1"):
    """A sleeve wants to hold target_shares of symbol as of the bar at bar_ts."""

    sleeve: str
    symbol: Symbol
    target_shares: SignedShares
    reference_price: Price
    bar_ts: NanoTime
    score: Decimal = Decimal(0)
    horizon: str = "1m"
    signal_hash: str = ""
    session: str = ""  # XNYS session date of the bar, YYYY-MM-DD
    bar_volume: int = 0  # the bar's traded shares (0: not known); the OMS's thin-liquidity collar reads it
    # the bar's quote and volatility, for the cost gate and TCA: its spread (quoted, or a proxy
    # when spread_is_proxy) and its Parkinson volatility in bps (0: not known)
    spread_bps: Decimal = Decimal(0)
    spread_is_proxy: bool = True
    sigma_bps: Decimal = Decimal(0)


SignalEvent = TargetProposed
