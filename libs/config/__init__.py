"""Typed, frozen process configuration from `KEEL_*` environment and an optional file.

Every process loads the common keys plus its own service section. Keys are checked at start:
a `KEEL_*` key no section knows, a key set differently in the environment and the file, a bad
value, or the legacy overloaded `TRADING_MODE` stop the process with a message naming the key.
EXECUTION_MODE and TRADING_PROFILE are separate settings and nothing writes one into the other
(seed 000 §G).
"""

from __future__ import annotations

import hashlib
import json
import os
import tomllib
import typing
from collections.abc import Mapping
from decimal import Decimal
from pathlib import Path
from typing import Literal

import msgspec

ExecutionMode = Literal["paper", "live", "replay"]
TradingProfile = Literal["conservative", "balanced", "aggressive"]

ENV_PREFIX = "KEEL_"
CONFIG_FILE_KEY = "KEEL_CONFIG_FILE"
# seed 000 §G: TRADING_MODE meant both paper/live and the risk profile; refuse it outright.
FORBIDDEN_KEYS = {
    "TRADING_MODE": "TRADING_MODE is ambiguous; set EXECUTION_MODE (paper|live|replay) "
    "and TRADING_PROFILE (conservative|balanced|aggressive) instead",
}
# bare aliases accepted for the two mode settings the seeds name without a prefix, and for the
# broker keys under the names Alpaca's own tools use
BARE_ALIASES = {
    "EXECUTION_MODE": "KEEL_EXECUTION_MODE",
    "TRADING_PROFILE": "KEEL_TRADING_PROFILE",
    "ALPACA_API_KEY": "KEEL_EXEC_API_KEY_ID",
    "ALPACA_SECRET_KEY": "KEEL_EXEC_API_SECRET_KEY",
    # canary mode (seed 000 §F) under the name the seed gives it
    "KEEL_CANARY_SYMBOLS": "KEEL_OMS_CANARY_SYMBOLS",
    "KEEL_CANCEL_ALL_ON_KILL": "KEEL_EXEC_CANCEL_ALL_ON_KILL",
}
# where and how a process runs, not what it decides: left out of the config hash so the hash
# stamped on decisions is the same across restarts, free ports and machines
DEPLOYMENT_KEYS = frozenset(
    {
        "KEEL_NATS_URL",
        "KEEL_DATABASE_URL",
        "KEEL_PREFIX",
        "KEEL_SCHEMA_PREFIX",
        "KEEL_API_HOST",
        "KEEL_API_PORT",
        "KEEL_LOG_LEVEL",
        "KEEL_HEARTBEAT_SEC",
        "KEEL_INSTANCE",
        "KEEL_CONFIG_FILE",
        "KEEL_VAR",
        "KEEL_CRASH_AT",
        "KEEL_MD_RUN_ID",
    }
)
SECRET_MARKERS = ("SECRET", "PASSWORD", "TOKEN", "API_KEY", "_KEY_ID")


class ConfigError(Exception):
    """A configuration key is unknown, conflicting or invalid; the message names it."""


class CommonConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Keys every process reads (env `KEEL_<FIELD>`)."""

    execution_mode: ExecutionMode = "paper"
    trading_profile: TradingProfile = "conservative"
    nats_url: str = ""
    database_url: str = ""
    prefix: str = "keel"
    schema_prefix: str = "keel"
    api_host: str = "127.0.0.1"
    api_port: int = 0
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    heartbeat_sec: float = 1.0
    instance: str = ""
    config_file: str = ""
    var: str = "var"  # the keel CLI's state directory
    # dependency circuit breakers (libs/errors/breakers.py), shared by every process
    breaker_short_failures: int = 3
    breaker_short_window_sec: float = 60.0
    breaker_short_open_sec: float = 60.0
    breaker_long_failures: int = 10
    breaker_long_window_sec: float = 600.0
    breaker_long_open_sec: float = 900.0
    # marketdata may serve bars from its fallback provider while the primary's breaker is open;
    # then an open data_primary breaker no longer blocks new orders (data_fallback's does)
    data_fallback_allowed: bool = False
    # risk blocks new entries (TCA_STALE_BLOCK) while the cost model is stale or out of bounds
    # (seed 000: AI_TRADING_BLOCK_TRADING_IF_TCA_STALE; seed 002 C-TCA-01)
    block_trading_if_tca_stale: bool = False
    # replay determinism (DESIGN: lockstep): risk decides a bar only once the OMS's FillsDone and
    # TCA's watermark show every fill and cost model before it, so decisions never depend on
    # process timing. Needs the local exchange (it announces FillsDone); keel up and keel
    # replay turn it on. Off against Alpaca, where fills come on the market's time
    lockstep: bool = False
    # crash points this process SIGKILLs itself at (libs/runtime/crashpoints.py): the crash-safety
    # harness's only, refused in live mode
    crash_at: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.crash_at and self.execution_mode == "live":
            raise ValueError("KEEL_CRASH_AT: crash points are for the crash-safety harness; refused in live mode")
        if self.lockstep and self.execution_mode == "live":
            raise ValueError("KEEL_LOCKSTEP: needs the local exchange's FillsDone; refused in live mode")


class Section(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Base of a service's own keys; subclasses set `env_prefix` (e.g. `KEEL_OMS_`)."""


# every service section registers its env prefix here so other processes can tell a key that
# belongs to a sibling service from a typo
SECTION_PREFIXES = (
    "KEEL_MD_",
    "KEEL_SIGNAL_",
    "KEEL_RISK_",
    "KEEL_OMS_",
    "KEEL_EXEC_",
    "KEEL_TCA_",
    "KEEL_ALERTS_",
    "KEEL_EXCHANGE_",
    "KEEL_TEST_",  # the test harness's server URLs (DESIGN "Running it")
)


class Loaded(msgspec.Struct, frozen=True, kw_only=True):
    """A process's effective configuration and its fingerprint."""

    common: CommonConfig
    section: msgspec.Struct | None
    redacted: dict[str, object]
    sha256: str


def _is_secret(key: str) -> bool:
    return any(marker in key.upper() for marker in SECRET_MARKERS)


def redact_url(url: str) -> str:
    """Return a URL with its user:password replaced by *** (scheme, host and path kept)."""
    if "://" not in url or "@" not in url:
        return url
    scheme, rest = url.split("://", 1)
    return f"{scheme}://***@{rest.rsplit('@', 1)[1]}"


def _redact_value(key: str, value: object) -> object:
    if _is_secret(key) and value not in ("", None):
        return "***"
    if isinstance(value, str):
        return redact_url(value)
    return value


def _fields(typ: type[msgspec.Struct]) -> dict[str, object]:
    hints = typing.get_type_hints(typ)
    return {name: hints[name] for name in typ.__struct_fields__}


def _coerce(raw: str, hint: object) -> object:
    origin = typing.get_origin(hint)
    if origin is tuple:
        return [part.strip() for part in raw.split(",") if part.strip()]
    return raw


def _read_file(path: str) -> dict[str, str]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{CONFIG_FILE_KEY}: expected a readable TOML file, was {path!r}")
    try:
        data = tomllib.loads(p.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{CONFIG_FILE_KEY}: {path} is not valid TOML: {e}") from e
    out: dict[str, str] = {}
    for key, value in data.items():
        if not isinstance(value, str | int | float | bool):
            raise ConfigError(f"{key}: expected a scalar in {path}, was {type(value).__name__}")
        text = str(value).lower() if isinstance(value, bool) else str(value)
        out[key.upper() if key.upper().startswith(ENV_PREFIX) else ENV_PREFIX + key.upper()] = text
    return out


def _gather(env: Mapping[str, str]) -> dict[str, str]:
    for key, message in FORBIDDEN_KEYS.items():
        if key in env:
            raise ConfigError(f"{key}: {message}")
    merged: dict[str, str] = {k: v for k, v in env.items() if k.startswith(ENV_PREFIX)}
    for bare, full in BARE_ALIASES.items():
        if bare in env:
            if full in merged and merged[full] != env[bare]:
                raise ConfigError(f"{bare}: conflicts with {full} ({env[bare]!r} vs {merged[full]!r})")
            merged[full] = env[bare]
            merged.pop(bare, None)  # an alias that looks like a KEEL_ key is not a key of its own
    file_path = merged.get(CONFIG_FILE_KEY, "")
    if file_path:
        for key, value in _read_file(file_path).items():
            if key in merged and merged[key] != value:
                raise ConfigError(f"{key}: set to {merged[key]!r} in the environment and {value!r} in {file_path}")
            merged[key] = value
    return merged


def _build(typ: type[msgspec.Struct], prefix: str, values: Mapping[str, str]) -> msgspec.Struct:
    fields = _fields(typ)
    raw: dict[str, object] = {}
    for name, hint in fields.items():
        key = prefix + name.upper()
        if key in values:
            raw[name] = _coerce(values[key], hint)
    try:
        return msgspec.convert(raw, typ, strict=False)
    except msgspec.ValidationError as e:
        # msgspec says "at `$.field`": name the env key instead
        text = str(e)
        for name in fields:
            if f"$.{name}`" in text or text.endswith(f"$.{name}"):
                raise ConfigError(f"{prefix}{name.upper()}: {text}") from e
        raise ConfigError(text) from e


def load(
    section: type[Section] | None = None,
    *,
    section_prefix: str = "",
    env: Mapping[str, str] | None = None,
) -> Loaded:
    """Load common keys and one service section; raise ConfigError naming any bad key."""
    values = _gather(os.environ if env is None else env)
    common_keys = {ENV_PREFIX + name.upper() for name in CommonConfig.__struct_fields__}
    own_keys = {section_prefix + name.upper() for name in section.__struct_fields__} if section else set()
    for key in sorted(values):
        if key in common_keys or key in own_keys:
            continue
        if section_prefix and key.startswith(section_prefix):
            raise ConfigError(f"{key}: unknown key for this service (known: {sorted(own_keys)})")
        if any(key.startswith(p) for p in SECTION_PREFIXES):
            continue  # a sibling service's key
        raise ConfigError(f"{key}: unknown configuration key")
    common = typing.cast(CommonConfig, _build(CommonConfig, ENV_PREFIX, values))
    sect = _build(section, section_prefix, values) if section else None
    redacted: dict[str, object] = {}
    for prefix, obj in ((ENV_PREFIX, common), (section_prefix, sect)):
        if obj is None:
            continue
        for name, value in msgspec.to_builtins(obj).items():
            key = prefix + name.upper()
            redacted[key] = _redact_value(key, value)
    return Loaded(common=common, section=sect, redacted=redacted, sha256=config_hash(redacted))


def config_hash(redacted: Mapping[str, object]) -> str:
    """Return the sha256 of the decision-relevant keys (deployment keys left out)."""
    relevant = {k: v for k, v in redacted.items() if k not in DEPLOYMENT_KEYS}
    return hashlib.sha256(json.dumps(relevant, sort_keys=True, default=str).encode()).hexdigest()


__all__ = [
    "CommonConfig",
    "ConfigError",
    "config_hash",
    "Decimal",
    "ExecutionMode",
    "Loaded",
    "Section",
    "TradingProfile",
    "load",
]
