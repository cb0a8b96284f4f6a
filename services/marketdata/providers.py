"""Alpaca's market data API through alpaca-py: the primary feed, the fallback, their breakers.

Each bar close is asked for once per provider, with bounded retries (retry_idempotent, reads
only, seeded jitter). A provider whose breaker is open is left alone (DISABLE_PROVIDER): the
fallback feed answers instead when KEEL_DATA_FALLBACK_ALLOWED is on, and while no provider can
answer the minute is asked for again later - no bar is invented, and every open data breaker
blocks new orders (CIRCUIT_OPEN_data_primary) until a provider is back.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import random
from dataclasses import dataclass
from typing import Any

from alpaca.common.exceptions import APIError
from alpaca.data.enums import DataFeed
from alpaca.data.historical.stock import StockHistoricalDataClient
from alpaca.data.requests import StockBarsRequest
from alpaca.data.timeframe import TimeFrame

from libs.alpacahttp import harden
from libs.contracts.base import derive_id
from libs.errors import DependencyFailed, DependencyUnavailable
from libs.errors.breakers import Breakers
from libs.errors.handle import ErrorHandler
from libs.errors.retry import CircuitOpen, retry_idempotent
from libs.sessions import MINUTE_NS
from services.marketdata.config import MdConfig

PRIMARY = "data_primary"
FALLBACK = "data_fallback"
_NS = 1_000_000_000


@dataclass(frozen=True)
class Provider:
    """One feed of the data API, and the breaker that stands for it."""

    dependency: str
    feed: str

    @property
    def source(self) -> str:
        """The BarClosed.source of its bars."""
        return f"alpaca-{self.feed}"


def _utc(ns: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(ns // _NS, dt.UTC)


def values_of(bar: Any) -> dict[str, float]:
    """The fields of an alpaca-py Bar keel checks, by name."""
    return {"open": bar.open, "high": bar.high, "low": bar.low, "close": bar.close, "volume": bar.volume}


class AlpacaBars:
    """Fetch every symbol's bar of one minute from the first provider that can answer."""

    def __init__(self, cfg: MdConfig, *, fallback_allowed: bool, breakers: Breakers, errors: ErrorHandler) -> None:
        self.cfg = cfg
        self.client = harden(
            StockHistoricalDataClient(cfg.api_key_id, cfg.api_secret_key, url_override=cfg.data_url or None),
            cfg.data_timeout_sec,
        )
        self.providers = [Provider(PRIMARY, cfg.data_feed)]
        if fallback_allowed and not cfg.fallback_feed:
            # execution would let orders through while data_primary is open, counting on a
            # fallback that does not exist
            raise DependencyUnavailable(
                "KEEL_DATA_FALLBACK_ALLOWED is on but KEEL_MD_FALLBACK_FEED is empty: name the fallback feed or turn it off"
            )
        if fallback_allowed:
            self.providers.append(Provider(FALLBACK, cfg.fallback_feed))
        self.breakers = breakers
        self.errors = errors
        # backoff jitter of the retried reads: seeded, never the global RNG
        self.jitter = random.Random(int(derive_id("marketdata", "data-jitter"), 16))

    def request(self, ts_ns: int, feed: str) -> StockBarsRequest:
        """The request for the bar closing at ts (Alpaca labels a bar by its start; end is inclusive)."""
        start = _utc(ts_ns - MINUTE_NS)
        return StockBarsRequest(
            symbol_or_symbols=list(self.cfg.symbols),
            timeframe=TimeFrame.Minute,
            start=start,
            end=start,
            feed=DataFeed(feed),
        )

    async def _get(self, provider: Provider, ts_ns: int) -> dict[str, Any]:
        barset = await asyncio.to_thread(self.client.get_stock_bars, self.request(ts_ns, provider.feed))
        start = _utc(ts_ns - MINUTE_NS)
        return {sym: bar for sym, bars in barset.data.items() for bar in bars if bar.timestamp == start}  # type: ignore[union-attr]

    async def check(self, ts_ns: int) -> None:
        """Prove at start that a provider answers with these keys (the runtime contract)."""
        problems = []
        for provider in self.providers:
            try:
                await self._get(provider, ts_ns)
                return
            except APIError as e:
                problems.append(f"{provider.feed}: answered {e.status_code}: {str(e)[:200]}")
            except OSError as e:
                problems.append(f"{provider.feed}: did not answer: {type(e).__name__}: {e}")
        where = self.cfg.data_url or "data.alpaca.markets"
        raise DependencyUnavailable(f"market data API at {where} (GET /v2/stocks/bars): " + "; ".join(problems))

    async def fetch(self, ts_ns: int) -> tuple[Provider, dict[str, Any]] | None:
        """Return the first answering provider and its bars of the minute closing at ts, or None."""
        for provider in self.providers:
            try:
                bars = await retry_idempotent(
                    lambda p=provider: self._get(p, ts_ns),
                    dep=provider.dependency,
                    breakers=self.breakers,
                    jitter=self.jitter,
                    max_attempts=self.cfg.data_attempts,
                    max_total_seconds=self.cfg.data_timeout_sec * self.cfg.data_attempts,
                )
            except CircuitOpen:
                continue  # disabled while its breaker is open: the next provider, if any
            except DependencyFailed as e:
                context = f"GET /v2/stocks/bars for {_utc(ts_ns).isoformat()} feed={provider.feed}"
                await self.errors.handle(e, dependency=provider.dependency, context=context)
                continue
            return provider, bars
        return None
