"""Real service processes for integration tests: `python -m services.<name>` under a namespace."""

from __future__ import annotations

import asyncio
import os
import subprocess
from pathlib import Path

import httpx

from libs.runtime import process
from tests.support.servers import Namespace

REPO_ROOT = Path(__file__).resolve().parents[2]
READY_TIMEOUT_SEC = 30.0
OUTSIDE_KEYS = ("TRADING_MODE", "EXECUTION_MODE", "TRADING_PROFILE")


class ServiceProcess(process.ServiceProcess):
    """A service process for a test: its log in the test's directory, failures as AssertionError."""

    def __init__(self, name: str, env: dict[str, str], log_dir: Path) -> None:
        super().__init__(name, env, log_dir / f"{name}.log")

    async def wait_ready(self, timeout: float = READY_TIMEOUT_SEC) -> None:
        """Wait for /readyz; fail the test with the log's tail otherwise."""
        try:
            await super().wait_ready(timeout)
        except RuntimeError as e:
            raise AssertionError(f"{e}\n{self.log_tail(30)}") from e

    async def get_json(self, path: str) -> object:
        """GET a JSON view of the service."""
        async with httpx.AsyncClient(timeout=2.0) as client:
            r = await client.get(f"{self.url}{path}")
            r.raise_for_status()
            return r.json()


def service_env(namespace: Namespace, nats_url: str, database_url: str) -> dict[str, str]:
    """Return a child environment holding only this namespace's KEEL_ keys."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEEL_") and k not in OUTSIDE_KEYS}
    env.update(
        PYTHONUNBUFFERED="1",
        KEEL_NATS_URL=nats_url,
        KEEL_DATABASE_URL=database_url,
        KEEL_PREFIX=namespace.prefix,
        KEEL_SCHEMA_PREFIX=namespace.schema_prefix,
    )
    return env


class Cluster:
    """The services of one test; every child is killed in a finally."""

    def __init__(self, namespace: Namespace, nats_url: str, database_url: str, log_dir: Path, **extra: str) -> None:
        self.env = {**service_env(namespace, nats_url, database_url), **extra}
        self.log_dir = log_dir
        self.children: dict[str, ServiceProcess] = {}

    async def start(self, *names: str) -> None:
        for name in names:
            child = ServiceProcess(name, self.env, self.log_dir)
            self.children[name] = child
            child.start()
        await asyncio.gather(*(self.children[n].wait_ready() for n in names))

    async def restart(self, name: str) -> None:
        child = self.children[name]
        await asyncio.to_thread(child.stop)
        assert child.process is not None and child.process.returncode == 0, child.log_tail()
        child.start()
        await child.wait_ready()

    async def start_with(self, name: str, **extra_env: str) -> None:
        """(Re)start one child on its port with the cluster's env plus `extra_env`; wait until ready.

        A running child is stopped first (SIGTERM, it must exit 0); a dead one is just started.
        Without `extra_env` the child runs as the others do, e.g. a crash-point key left off again.
        """
        child = self.children[name]
        if child.running:
            await asyncio.to_thread(child.stop)
            assert child.process is not None and child.process.returncode == 0, child.log_tail()
        child.env = {**self.env, **extra_env, "KEEL_API_PORT": str(child.port)}
        child.start()
        await child.wait_ready()

    async def wait_exit(self, name: str, timeout: float) -> int | None:
        """Wait for one child to exit; return its exit code (-9: SIGKILL), or None if it still runs."""
        child = self.children[name]
        assert child.process is not None, f"{name} was never started"
        try:
            return await asyncio.to_thread(child.process.wait, timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop_all(self) -> None:
        for child in self.children.values():
            child.stop()

    def __getitem__(self, name: str) -> ServiceProcess:
        return self.children[name]
