"""The runtime contract: a service that cannot start says why in one line naming the culprit, fast.

Every case runs the real entry point (`python -m services.<name>`) as a child process.
"""

from __future__ import annotations

import ast
import asyncio
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.exchange import KEY, SECRET, exchange_env, running_exchange
from tests.support.servers import Namespace, migrate

REPO_ROOT = Path(__file__).resolve().parents[2]
# a failing start must end well within this (NATS connect timeout is 3 s, plus interpreter start)
START_DEADLINE_SEC = 8.0
# the settings the config loader reads besides KEEL_*: never inherit them from the test's env
OUTSIDE_KEYS = ("TRADING_MODE", "EXECUTION_MODE", "TRADING_PROFILE")


@dataclass(frozen=True)
class Exit:
    """How a child process ended."""

    code: int | None  # None: still running at the deadline (killed)
    stdout: str
    stderr: str
    seconds: float

    @property
    def stderr_lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.strip()]


def base_env(**keel: str) -> dict[str, str]:
    """The test's environment without any keel setting, plus the given ones."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEEL_") and k not in OUTSIDE_KEYS}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(keel)
    return env


def closed_port() -> int:
    """Return a local TCP port nobody listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_service(module: str, env: dict[str, str], deadline: float = START_DEADLINE_SEC) -> Exit:
    """Run `python -m <module>` until it exits or the deadline passes (then kill it)."""
    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", module],
        env=env,
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        out, err = proc.communicate(timeout=deadline)
        return Exit(proc.returncode, out, err, time.monotonic() - started)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        return Exit(None, out, err, time.monotonic() - started)


def service_env(namespace: Namespace, nats_url: str, database_url: str, **extra: str) -> dict[str, str]:
    return base_env(
        KEEL_NATS_URL=nats_url,
        KEEL_DATABASE_URL=database_url,
        KEEL_PREFIX=namespace.prefix,
        KEEL_SCHEMA_PREFIX=namespace.schema_prefix,
        **extra,
    )


async def test_start_when_nats_port_is_closed_then_exits_nonzero_fast_with_one_line_naming_nats(
    namespace: Namespace, database_url: str
):
    url = f"nats://127.0.0.1:{closed_port()}"
    env = service_env(namespace, url, database_url)

    result = await asyncio.to_thread(run_service, "services.oms", env)

    assert result.code is not None, (
        f"services.oms still running after {START_DEADLINE_SEC}s with KEEL_NATS_URL={url} (closed port); "
        f"stderr={result.stderr!r}"
    )
    assert result.code != 0
    assert len(result.stderr_lines) == 1, result.stderr
    assert "NATS" in result.stderr_lines[0] and url in result.stderr_lines[0]


async def test_start_when_schema_prefix_not_migrated_then_exits_naming_the_schema(
    namespace: Namespace, nats_url: str, database_url: str
):
    env = service_env(namespace, nats_url, database_url)

    result = await asyncio.to_thread(run_service, "services.oms", env)

    assert result.code == 2, result
    assert len(result.stderr_lines) == 1, result.stderr
    assert f"{namespace.schema_prefix}_oms" in result.stderr_lines[0]
    assert "not migrated" in result.stderr_lines[0]


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("KEEL_OMS_MAX_ORDER_SHARES", "abc"),  # a bad value
        ("KEEL_OMS_MAX_ORDR", "1"),  # a typo: unknown key
        ("TRADING_MODE", "paper"),  # the legacy overloaded setting (seed 000 §G)
    ],
)
async def test_start_when_config_key_is_bad_then_exits_2_naming_the_key(
    namespace: Namespace, nats_url: str, database_url: str, key: str, value: str
):
    env = service_env(namespace, nats_url, database_url, **{key: value})

    result = await asyncio.to_thread(run_service, "services.oms", env)

    assert result.code == 2, result
    assert len(result.stderr_lines) == 1, result.stderr
    line = result.stderr_lines[0]
    assert line.startswith("keel oms: configuration error:"), line
    assert f"{key}:" in line


async def test_start_when_config_keys_are_valid_then_gets_past_config_loading(
    namespace: Namespace, nats_url: str, database_url: str
):
    # Control case: the same env without the bad key gets past config loading (it then stops at
    # the unmigrated schema), so the exits above are caused by the key alone.
    env = service_env(namespace, nats_url, database_url, KEEL_OMS_MAX_ORDER_SHARES="500")

    result = await asyncio.to_thread(run_service, "services.oms", env)

    assert "configuration error" not in result.stderr
    assert "not migrated" in result.stderr


async def test_start_execution_when_broker_keys_empty_then_exits_naming_the_key(
    namespace: Namespace, nats_url: str, database_url: str
):
    await asyncio.to_thread(migrate, database_url, namespace.schema_prefix)
    env = service_env(namespace, nats_url, database_url, KEEL_EXEC_API_KEY_ID="", KEEL_EXEC_API_SECRET_KEY="")

    result = await asyncio.to_thread(run_service, "services.execution", env, 15.0)

    assert result.code == 2, result
    assert len(result.stderr_lines) == 1, result.stderr
    assert "KEEL_EXEC_API_KEY_ID" in result.stderr_lines[0]


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        (
            {"KEEL_RISK_ORDER_CLASS": "bracket", "KEEL_RISK_TAKE_PROFIT_BPS": "100", "KEEL_RISK_STOP_LOSS_BPS": "50",
             "KEEL_RISK_TIME_IN_FORCE": "ioc"},
            "KEEL_RISK_ORDER_CLASS=bracket: broker keel-local does not support order class bracket with time in force ioc",
        ),
        ({"KEEL_RISK_ALLOW_MARKET": "false"}, "KEEL_RISK_ORDER_TYPE=market"),
    ],
    ids=["unsupported-order-class", "market-forbidden-by-policy"],
)  # fmt: skip
async def test_start_execution_when_order_policy_unsupported_by_broker_then_exits_naming_the_key(
    namespace: Namespace, nats_url: str, database_url: str, policy: dict[str, str], expected: str
):
    # checked before the broker is reached: the keys below would otherwise get it to the broker
    await asyncio.to_thread(migrate, database_url, namespace.schema_prefix)
    env = service_env(
        namespace,
        nats_url,
        database_url,
        KEEL_EXEC_BROKER="keel-local",
        KEEL_EXEC_BASE_URL=f"http://127.0.0.1:{closed_port()}",
        KEEL_EXEC_API_KEY_ID="k",
        KEEL_EXEC_API_SECRET_KEY="s",
        **policy,
    )

    result = await asyncio.to_thread(run_service, "services.execution", env, 15.0)

    assert result.code == 2, result
    assert len(result.stderr_lines) == 1, result.stderr
    line = result.stderr_lines[0]
    assert line.startswith("keel execution: cannot start: "), line
    assert expected in line


@pytest.mark.parametrize("service", ["oms", "execution"])
async def test_start_when_postgres_port_is_closed_then_exits_fast_with_one_line_naming_postgres(
    namespace: Namespace, nats_url: str, service: str
):
    port = closed_port()
    # a password in the URL must never reach the log line
    url = f"postgresql://keel:not-this-secret@127.0.0.1:{port}/keel"
    env = service_env(namespace, nats_url, url, KEEL_EXEC_API_KEY_ID="k", KEEL_EXEC_API_SECRET_KEY="s")

    result = await asyncio.to_thread(run_service, f"services.{service}", env)

    assert result.code is not None, f"services.{service} still running with {url} (closed port): {result.stderr!r}"
    assert result.code != 0
    assert len(result.stderr_lines) == 1, result.stderr
    line = result.stderr_lines[0]
    assert line.startswith(f"keel {service}: cannot start: Postgres at 127.0.0.1:{port}"), line
    assert "not-this-secret" not in result.stderr + result.stdout


# the execution keys reach the broker: KEEL_EXEC_BROKER stays at its default (alpaca), whose
# capabilities take the default order policy, so the start stops at the broker and nowhere before
@pytest.mark.parametrize("mode", ["paper", "live"])
async def test_start_execution_when_broker_port_is_closed_then_exits_with_one_line_naming_the_broker_url(
    namespace: Namespace, nats_url: str, database_url: str, mode: str
):
    await asyncio.to_thread(migrate, database_url, namespace.schema_prefix)
    broker_url = f"http://127.0.0.1:{closed_port()}"
    env = service_env(
        namespace,
        nats_url,
        database_url,
        KEEL_EXECUTION_MODE=mode,
        KEEL_EXEC_BASE_URL=broker_url,
        KEEL_EXEC_API_KEY_ID=KEY,
        KEEL_EXEC_API_SECRET_KEY=SECRET,
    )

    result = await asyncio.to_thread(run_service, "services.execution", env, 15.0)

    assert result.code is not None, f"execution still running with the broker at {broker_url} (closed port)"
    assert result.code != 0
    assert len(result.stderr_lines) == 1, result.stderr
    line = result.stderr_lines[0]
    assert line.startswith(f"keel execution: cannot start: broker at {broker_url} "), line
    assert SECRET not in result.stderr + result.stdout


@pytest.mark.parametrize(
    ("key_id", "secret"), [(KEY, "not-the-secret"), ("not-the-key", SECRET)], ids=["secret", "key"]
)
async def test_start_execution_when_broker_refuses_the_keys_then_exits_with_one_line_saying_so(
    namespace: Namespace, nats_url: str, database_url: str, tmp_path: Path, key_id: str, secret: str
):
    exchange = await exchange_env(namespace, nats_url, database_url)
    async with running_exchange(exchange, tmp_path / "exchange.log") as venue:
        env = service_env(
            namespace,
            nats_url,
            database_url,
            KEEL_EXEC_BASE_URL=venue.url,
            KEEL_EXEC_API_KEY_ID=key_id,
            KEEL_EXEC_API_SECRET_KEY=secret,
        )

        result = await asyncio.to_thread(run_service, "services.execution", env, 15.0)

    assert result.code is not None, f"execution still running with keys the broker refuses: {result.stderr!r}"
    assert result.code != 0
    assert len(result.stderr_lines) == 1, result.stderr
    line = result.stderr_lines[0]
    assert line.startswith(f"keel execution: cannot start: broker at {venue.url} refused the keys"), line
    assert "KEEL_EXEC_API_KEY_ID" in line and "401" in line
    assert secret not in result.stderr + result.stdout


def shadow_package(root: Path, package: str) -> Path:
    """Write a package named `package` under root whose import fails as an uninstalled one does."""
    (root / package).mkdir(parents=True)
    (root / package / "__init__.py").write_text(
        f"raise ModuleNotFoundError(\"No module named '{package}'\", name={package!r})\n"
    )
    return root


@pytest.mark.parametrize(
    ("service", "package"),
    [
        ("oms", "asyncpg"),  # imported by the runtime every service shares
        ("execution", "nats"),
        ("execution", "alpaca"),  # imported by the service's own composition root
        ("exchange", "uvicorn"),
    ],
)
async def test_start_when_required_package_is_missing_then_exits_with_one_line_naming_it(
    tmp_path: Path, service: str, package: str
):
    shadows = shadow_package(tmp_path / "shadows", package)
    env = base_env(PYTHONPATH=os.pathsep.join(filter(None, [str(shadows), os.environ.get("PYTHONPATH", "")])))

    result = await asyncio.to_thread(run_service, f"services.{service}", env)

    assert result.code is not None, f"services.{service} still running without {package}: {result.stderr!r}"
    assert result.code == 2, result
    assert len(result.stderr_lines) == 1, result.stderr
    line = result.stderr_lines[0]
    assert line.startswith(f"keel {service}: cannot start: required package '{package}' is missing"), line


def _imports_of(tree: ast.AST) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute | ast.Name)
            and getattr(node.func, "attr", getattr(node.func, "id", "")) in ("import_module", "__import__")
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            found.append((node.lineno, node.args[0].value))
    return found


def test_product_code_when_scanned_then_nothing_imports_from_tests():
    sources = sorted([*(REPO_ROOT / "libs").rglob("*.py"), *(REPO_ROOT / "services").rglob("*.py")])
    assert len(sources) > 20  # the scan really covers the product

    offenders = [
        f"{path.relative_to(REPO_ROOT)}:{line} imports {name}"
        for path in sources
        for line, name in _imports_of(ast.parse(path.read_text(), filename=str(path)))
        if name == "tests" or name.startswith("tests.")
    ]

    assert offenders == []


def test_import_scan_when_given_test_imports_then_finds_every_form():
    tree = ast.parse(
        "import tests.support\nfrom tests.support.servers import migrate\n"
        "import importlib\nimportlib.import_module('tests.conftest')\nfrom libs import bus\n"
    )

    names = [name for _, name in _imports_of(tree)]

    assert [n for n in names if n.startswith("tests")] == ["tests.support", "tests.support.servers", "tests.conftest"]
