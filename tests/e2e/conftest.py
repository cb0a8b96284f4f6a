"""Run `keel up` as a user would, against the test servers, under the test's namespace."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from libs.runtime.migrate import REPO_ROOT


@dataclass
class KeelUp:
    """A running or finished `keel up` process."""

    proc: asyncio.subprocess.Process
    var: Path

    async def summary(self, timeout: float) -> dict[str, object]:
        """Wait for the process to end and return its JSON summary line."""
        out, err = await asyncio.wait_for(self.proc.communicate(), timeout=timeout)
        assert self.proc.returncode == 0, f"keel up exited {self.proc.returncode}: {err.decode()[-2000:]}"
        lines = [line for line in out.decode().splitlines() if line.startswith("{")]
        assert lines, f"no summary line; stderr: {err.decode()[-2000:]}"
        return json.loads(lines[-1])


@pytest.fixture
def keel_up(namespace, nats_url, database_url, tmp_path):  # type: ignore[no-untyped-def]
    """Start `keel up` with the given arguments; kill it at teardown if still running."""
    started: list[KeelUp] = []

    async def start(*args: str) -> KeelUp:
        env = {
            **os.environ,
            "KEEL_NATS_URL": nats_url,
            "KEEL_DATABASE_URL": database_url,
            "KEEL_PREFIX": namespace.prefix,
            "KEEL_SCHEMA_PREFIX": namespace.schema_prefix,
        }
        var = tmp_path / "var"
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "libs.cli.main",
            "--var",
            str(var),
            "up",
            "--quiet",
            *args,
            env=env,
            cwd=REPO_ROOT,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        run = KeelUp(proc, var)
        started.append(run)
        return run

    yield start
    for run in started:
        if run.proc.returncode is None:
            run.proc.kill()
