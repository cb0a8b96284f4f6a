"""Marketdata's own configuration keys (env `KEEL_MD_<FIELD>`)."""

from __future__ import annotations

import math
from datetime import date
from typing import Annotated, ClassVar, Literal

import msgspec

from libs.config import Section

WATERMARK_SERVICES = ("signal", "risk", "oms", "execution", "tca")  # every service a bar passes through

NonNegative = Annotated[float, msgspec.Meta(ge=0)]


def _parse_date(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError as e:
        raise ValueError(f"KEEL_MD_START_DATE: expected YYYY-MM-DD, was {text!r}") from e


def _parse_speed(text: str) -> float | None:
    if text == "max":
        return None
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"KEEL_MD_SPEED: expected 'max' or a positive number, was {text!r}")
    return value


class MdConfig(Section, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Which feed runs, what it generates and how it paces itself."""

    env_prefix: ClassVar[str] = "KEEL_MD_"

    feed: Literal["synthetic", "file", "alpaca"] = "synthetic"
    symbols: Annotated[tuple[str, ...], msgspec.Meta(min_length=1)] = ("AAPL", "MSFT", "SPY")
    start_date: str = "2026-01-05"  # first session date to generate, YYYY-MM-DD
    minutes: Annotated[int, msgspec.Meta(ge=0)] = 0  # bar timestamps to emit in this run; 0 = unbounded
    # the run these minutes belong to (keel up sets it): a restart with the same id keeps the run's
    # end; without one, every start is a new run of `minutes`
    run_id: str = ""
    speed: str = "max"  # "max" or a positive multiple of real time
    file_path: str = ""
    # feed "file" only: operator commands to re-publish between bars (`keel replay` writes it from
    # the recorded control stream; libs.contracts.control.ScheduledCommand, one JSON per line)
    control_path: str = ""
    seed: int = 7
    initial_price: Annotated[float, msgspec.Meta(gt=0)] = 100.0
    annual_vol: NonNegative = 0.25
    annual_drift: float = 0.05
    spread_bps: NonNegative = 4.0
    base_volume: Annotated[int, msgspec.Meta(ge=1)] = 200_000  # mean shares per minute per symbol
    # feed "alpaca": 1-minute bars from Alpaca's market data API through alpaca-py (data_url empty =
    # data.alpaca.markets; keel's local exchange serves the same API). The primary feed is asked
    # first (unless its breaker is open); the fallback feed, when KEEL_DATA_FALLBACK_ALLOWED is on,
    # answers whenever the primary cannot. "iex" works on every Alpaca account; "sip" needs a
    # market data subscription.
    data_url: str = ""
    api_key_id: str = ""
    api_secret_key: str = ""
    data_feed: Literal["iex", "sip"] = "iex"
    fallback_feed: Literal["", "iex", "sip"] = ""
    data_lag_sec: NonNegative = 2.0  # a bar is asked for this long after its minute closes (live)
    data_timeout_sec: Annotated[float, msgspec.Meta(gt=0)] = 5.0
    data_attempts: Annotated[int, msgspec.Meta(ge=1)] = 3  # per provider and minute (retry_idempotent)
    data_retry_sec: Annotated[float, msgspec.Meta(gt=0)] = 1.0  # wait before asking again when none answered
    # services whose watermarks for a bar release the next one (comma-separated; "" = no lockstep);
    # "auto": every one of them with KEEL_LOCKSTEP (keel up, keel replay), else execution's only,
    # so outside the lockstep a TCA outage never stops the market data
    wait_for: str = "auto"
    watermark_timeout_sec: NonNegative = 0.0  # 0 = wait forever

    def __post_init__(self) -> None:
        # msgspec reports a ValueError raised here as a ValidationError (so a ConfigError) with no
        # field path, hence the env key in each message; checking now stops a bad value at start
        _parse_date(self.start_date)
        _parse_speed(self.speed)
        if self.feed == "file" and not self.file_path:
            raise ValueError("KEEL_MD_FILE_PATH: expected a path when feed is 'file', was empty")
        if self.control_path and self.feed != "file":
            raise ValueError(f"KEEL_MD_CONTROL_PATH: only with feed 'file', was given with feed {self.feed!r}")
        if self.feed == "alpaca" and not (self.api_key_id and self.api_secret_key):
            raise ValueError("KEEL_MD_API_KEY_ID / KEEL_MD_API_SECRET_KEY: expected data API keys for feed 'alpaca'")
        if self.feed == "alpaca" and self.fallback_feed == self.data_feed:
            raise ValueError(
                f"KEEL_MD_FALLBACK_FEED: expected a feed other than the primary, was {self.fallback_feed!r}"
            )
        if self.wait_for != "auto" and any(s not in WATERMARK_SERVICES for s in self.waits(lockstep=False)):
            raise ValueError(
                f"KEEL_MD_WAIT_FOR: expected services that emit watermarks ({', '.join(WATERMARK_SERVICES)}), "
                f"was {self.wait_for!r}"
            )
        if len(set(self.symbols)) != len(self.symbols):
            raise ValueError(f"KEEL_MD_SYMBOLS: expected distinct symbols, was {self.symbols}")

    def waits(self, *, lockstep: bool) -> tuple[str, ...]:
        """Return the services whose watermarks the lockstep waits for."""
        if self.wait_for == "auto":
            return WATERMARK_SERVICES if lockstep else ("execution",)
        return tuple(s.strip() for s in self.wait_for.split(",") if s.strip())

    @property
    def start(self) -> date:
        """Return start_date as a date."""
        return _parse_date(self.start_date)

    @property
    def speed_multiplier(self) -> float | None:
        """Return the real-time multiplier, or None when the feed runs as fast as it can."""
        return _parse_speed(self.speed)
