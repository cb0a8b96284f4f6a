"""Typed config: keys are checked at start, modes stay separate, the fingerprint is honest."""

from __future__ import annotations

from decimal import Decimal

import pytest

from libs.config import ConfigError, load
from services.oms.config import SECTION_PREFIX, OmsConfig


def oms(env: dict[str, str]):  # type: ignore[no-untyped-def]
    return load(OmsConfig, section_prefix=SECTION_PREFIX, env=env)


def test_load_when_keys_given_then_typed_values_and_defaults():
    loaded = oms({"KEEL_OMS_MAX_ORDER_DOLLARS": "1234.5", "KEEL_API_PORT": "8080"})

    assert loaded.section.max_order_dollars == Decimal("1234.5")
    assert loaded.section.max_order_shares == 10000
    assert loaded.common.api_port == 8080


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"KEEL_OMS_MAX_ORDR": "1"}, "KEEL_OMS_MAX_ORDR"),
        ({"KEEL_NOPE": "1"}, "KEEL_NOPE"),
        ({"KEEL_OMS_MAX_ORDER_SHARES": "abc"}, "KEEL_OMS_MAX_ORDER_SHARES"),
        ({"KEEL_EXECUTION_MODE": "demo"}, "KEEL_EXECUTION_MODE"),
        ({"TRADING_MODE": "paper"}, "TRADING_MODE"),
        ({"EXECUTION_MODE": "paper", "KEEL_EXECUTION_MODE": "live"}, "EXECUTION_MODE"),
    ],
    ids=["typo-in-own-section", "unknown-prefix", "bad-int", "bad-mode", "overloaded-trading-mode", "alias-conflict"],
)
def test_load_when_key_is_wrong_then_config_error_names_it(env, named):
    with pytest.raises(ConfigError) as e:
        oms(env)

    assert str(e.value).startswith(named)


def test_load_when_a_sibling_services_key_is_set_then_it_is_ignored_here():
    loaded = oms({"KEEL_MD_SYMBOLS": "AAPL", "KEEL_SIGNAL_FAST_SPAN": "3"})

    assert loaded.section == OmsConfig()


def test_load_when_execution_mode_and_trading_profile_set_then_neither_is_written_into_the_other():
    live = oms({"EXECUTION_MODE": "live"})
    aggressive = oms({"TRADING_PROFILE": "aggressive"})

    assert (live.common.execution_mode, live.common.trading_profile) == ("live", "conservative")
    assert (aggressive.common.execution_mode, aggressive.common.trading_profile) == ("paper", "aggressive")


def test_load_when_file_and_env_agree_then_file_fills_the_rest(tmp_path):
    path = tmp_path / "keel.toml"
    path.write_text('oms_max_order_shares = 7\nKEEL_LOG_LEVEL = "DEBUG"\n')

    loaded = oms({"KEEL_CONFIG_FILE": str(path), "KEEL_LOG_LEVEL": "DEBUG"})

    assert loaded.section.max_order_shares == 7
    assert loaded.common.log_level == "DEBUG"


def test_load_when_file_and_env_disagree_then_config_error_names_the_key(tmp_path):
    path = tmp_path / "keel.toml"
    path.write_text("KEEL_OMS_MAX_ORDER_SHARES = 7\n")

    with pytest.raises(ConfigError, match="^KEEL_OMS_MAX_ORDER_SHARES: set to '9' in the environment and '7'"):
        oms({"KEEL_CONFIG_FILE": str(path), "KEEL_OMS_MAX_ORDER_SHARES": "9"})


def test_load_when_file_is_missing_then_config_error(tmp_path):
    with pytest.raises(ConfigError, match="^KEEL_CONFIG_FILE"):
        oms({"KEEL_CONFIG_FILE": str(tmp_path / "nope.toml")})


def test_redacted_when_secrets_and_url_credentials_then_hidden_and_hash_covers_values():
    from services.execution.config import SECTION_PREFIX as EXEC
    from services.execution.config import ExecConfig

    env = {
        "KEEL_EXEC_API_SECRET_KEY": "s3cret",
        "KEEL_EXEC_API_KEY_ID": "PKID",
        "KEEL_DATABASE_URL": "postgresql://keel:pw@db:5432/keel",
    }
    loaded = load(ExecConfig, section_prefix=EXEC, env=env)
    changed = load(ExecConfig, section_prefix=EXEC, env={**env, "KEEL_EXEC_POLL_INTERVAL_SEC": "2"})

    text = repr(loaded.redacted)
    assert "s3cret" not in text and "PKID" not in text and "pw@" not in text
    assert loaded.redacted["KEEL_DATABASE_URL"] == "postgresql://***@db:5432/keel"
    assert loaded.section.api_secret_key == "s3cret"  # the process itself still has it
    assert loaded.sha256 == load(ExecConfig, section_prefix=EXEC, env=env).sha256
    assert changed.sha256 != loaded.sha256


def test_hash_when_only_deployment_keys_differ_then_same_hash():
    # a restart on another free port or another server must stamp the same config hash
    a = oms({"KEEL_API_PORT": "8080", "KEEL_NATS_URL": "nats://a:4222", "KEEL_OMS_MAX_ORDER_SHARES": "5"})
    b = oms({"KEEL_API_PORT": "9090", "KEEL_NATS_URL": "nats://b:4222", "KEEL_OMS_MAX_ORDER_SHARES": "5"})
    c = oms({"KEEL_API_PORT": "9090", "KEEL_NATS_URL": "nats://b:4222", "KEEL_OMS_MAX_ORDER_SHARES": "6"})

    assert a.sha256 == b.sha256
    assert c.sha256 != b.sha256


def test_load_when_alpaca_key_names_set_then_execution_reads_them_and_conflicts_are_refused():
    from services.execution.config import SECTION_PREFIX as EXEC_PREFIX
    from services.execution.config import ExecConfig

    env = {"ALPACA_API_KEY": "PKTEST", "ALPACA_SECRET_KEY": "s3cret", "EXECUTION_MODE": "paper"}
    loaded = load(ExecConfig, section_prefix=EXEC_PREFIX, env=env)
    assert (loaded.section.api_key_id, loaded.section.api_secret_key, loaded.section.base_url) == (
        "PKTEST",
        "s3cret",
        "",  # empty: alpaca-py's own paper endpoint
    )
    assert oms(env).section == OmsConfig()  # other services ignore the broker keys
    with pytest.raises(ConfigError, match="ALPACA_API_KEY"):
        load(ExecConfig, section_prefix=EXEC_PREFIX, env={**env, "KEEL_EXEC_API_KEY_ID": "other"})
