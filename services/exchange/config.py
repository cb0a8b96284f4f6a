"""Keys of the local paper exchange (env `KEEL_EXCHANGE_<FIELD>`)."""

from __future__ import annotations

import hmac
from datetime import date
from decimal import Decimal
from typing import Annotated, Literal

import msgspec

from libs import fillsim, synth
from libs.config import Section

SECTION_PREFIX = "KEEL_EXCHANGE_"
DATA_PAGE_MAX = 10_000  # Alpaca's cap on one page of market data (alpaca-py DATA_V2_MAX_LIMIT)


class ExchangeConfig(Section, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Credentials the exchange accepts, the one paper account it runs, its admin switch."""

    api_key_id: str = "keel-local-key"
    api_secret_key: str = "keel-local-secret"
    account_id: str = "keel-paper-0001"
    account_number: str = "PA0KEEL0001"
    initial_cash: Decimal = Decimal(100000)
    # the fault-injection API (/admin/faults, services/exchange/faults.py): tests and drills only;
    # while False the routes do not exist and no fault can fire
    admin_enabled: bool = False
    allow_shorting: bool = True  # False: opening sells are refused ("account is not allowed to short")
    # closed orders stay in memory this long (event time) after their family's last change, then
    # are served from the store only: memory holds open orders and recent days however long it runs
    retain_closed_hours: Annotated[int, msgspec.Meta(ge=1)] = 24
    # the fill simulator (libs/fillsim CostModel): same seed and bars -> the same fills.
    # "calibrated": from the session a TCA calibration (CostModelUpdated) holds for on, each
    # symbol's spread, slippage, volatility and impact coefficients come from it (the keys below
    # stay the rest, and everything before the first calibration)
    cost_model_source: Literal["static", "calibrated"] = "static"
    sim_seed: int = 0
    proxy_spread_bps: Decimal = Decimal(5)
    fixed_slippage_bps: Decimal = Decimal("0.5")
    vol_slippage_coef: Decimal = Decimal("0.1")
    impact_coef: Decimal = Decimal("0.7")
    max_participation: Decimal = Decimal("0.1")
    latency_ms: int = 50
    latency_jitter_ms: int = 25
    commission_per_share: Decimal = Decimal(0)
    sec_fee_per_million: Decimal = Decimal("27.80")
    taf_per_share: Decimal = Decimal("0.000166")
    taf_max: Decimal = Decimal("8.30")
    # Market Data API (GET /v2/stocks/bars, services/exchange/bars.py): where its bars come from.
    # "none" answers every request with no bars; "synthetic" serves libs/synth's path with the
    # data_* parameters below (the same values as marketdata's KEEL_MD_* keys give the same
    # bars); "file" serves a bar file (libs/barfile format, what marketdata's file feed reads)
    data_source: Literal["none", "synthetic", "file"] = "none"
    data_symbols: tuple[str, ...] = ("AAPL", "MSFT", "SPY")
    data_start_date: str = "2026-01-05"  # first session of the synthetic path, YYYY-MM-DD
    data_minutes: Annotated[int, msgspec.Meta(ge=0)] = 0  # bar timestamps in the path; 0 = unbounded
    data_seed: int = 7
    data_initial_price: Annotated[float, msgspec.Meta(gt=0)] = 100.0
    data_annual_vol: Annotated[float, msgspec.Meta(ge=0)] = 0.25
    data_annual_drift: float = 0.05
    data_base_volume: Annotated[int, msgspec.Meta(ge=1)] = 200_000
    data_file_path: str = ""
    data_page_max: Annotated[int, msgspec.Meta(ge=1, le=DATA_PAGE_MAX)] = DATA_PAGE_MAX  # bars per page at most

    def __post_init__(self) -> None:
        # msgspec has no bounds for Decimal: check here so a bad value fails at start
        if not self.initial_cash.is_finite() or self.initial_cash < 0:
            raise ValueError(f"expected initial_cash >= 0, was {self.initial_cash}")
        if not self.api_key_id or not self.api_secret_key:
            raise ValueError("expected non-empty api_key_id and api_secret_key, was empty")
        if not self.account_id:
            raise ValueError("expected a non-empty account_id, was empty")
        self.cost_model()  # the simulator checks its own bounds
        self.data_start  # noqa: B018 - parses data_start_date so a bad one fails at start
        if self.data_source == "file" and not self.data_file_path:
            raise ValueError("KEEL_EXCHANGE_DATA_FILE_PATH: expected a path when data_source is 'file', was empty")
        if self.data_source == "synthetic" and not self.data_symbols:
            raise ValueError("KEEL_EXCHANGE_DATA_SYMBOLS: expected at least one symbol for data_source 'synthetic'")
        if len(set(self.data_symbols)) != len(self.data_symbols):
            raise ValueError(f"KEEL_EXCHANGE_DATA_SYMBOLS: expected distinct symbols, was {self.data_symbols}")

    @property
    def data_start(self) -> date:
        """Return data_start_date as a date."""
        try:
            return date.fromisoformat(self.data_start_date)
        except ValueError as e:
            raise ValueError(f"KEEL_EXCHANGE_DATA_START_DATE: expected YYYY-MM-DD, was {self.data_start_date!r}") from e

    def synth_params(self) -> synth.SynthParams:
        """Return the synthetic generator's parameters (spread is not served, so it keeps its default)."""
        return synth.SynthParams(
            seed=self.data_seed,
            initial_price=self.data_initial_price,
            annual_vol=self.data_annual_vol,
            annual_drift=self.data_annual_drift,
            base_volume=self.data_base_volume,
        )

    def lockstep_problem(self, lockstep: bool) -> str:
        """Why this config cannot run under KEEL_LOCKSTEP ("" when it can)."""
        if lockstep and self.cost_model_source == "calibrated":
            # its models arrive on a consumer of their own, racing the bars: which bar first prices
            # with a new one would depend on timing, and a replay would not repeat itself
            return (
                "KEEL_EXCHANGE_COST_MODEL_SOURCE=calibrated: not deterministic under KEEL_LOCKSTEP yet; "
                "use static (the default) for keel up and keel replay"
            )
        return ""

    def cost_model(self) -> fillsim.CostModel:
        """Return the fill simulator's parameters."""
        return fillsim.CostModel(
            seed=self.sim_seed,
            proxy_spread_bps=self.proxy_spread_bps,
            fixed_slippage_bps=self.fixed_slippage_bps,
            vol_slippage_coef=self.vol_slippage_coef,
            impact_coef=self.impact_coef,
            max_participation=self.max_participation,
            latency_ms=self.latency_ms,
            latency_jitter_ms=self.latency_jitter_ms,
            commission_per_share=self.commission_per_share,
            sec_fee_per_million=self.sec_fee_per_million,
            taf_per_share=self.taf_per_share,
            taf_max=self.taf_max,
        )

    def accepts(self, key_id: str, secret_key: str) -> bool:
        """Tell whether credentials are the account's keys (constant-time comparison)."""
        ok_key = hmac.compare_digest(key_id.encode(), self.api_key_id.encode())
        ok_secret = hmac.compare_digest(secret_key.encode(), self.api_secret_key.encode())
        return ok_key and ok_secret
