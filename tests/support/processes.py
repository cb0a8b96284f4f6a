"""Real service processes for integration tests: `python -m services.<name>` under a namespace."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from libs.runtime.runner import free_port
from tests.support.servers import Namespace

REPO_ROOT = Path(__file__).resolve().parents[2]
READY_TIMEOUT_SEC = 30.0
OUTSIDE_KEYS = ("TRADING_MODE", "EXECUTION_MODE", "TRADING_PROFILE")


class ServiceProcess:
    """One real service started as `python -m services.<name>`, its output in a log file."""

    def __init__(self, name: str, env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.port = free_port()
        self.env = {**env, "KEEL_API_PORT": str(self.port)}
        self.log_path = log_dir / f"{name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", f"services.{self.name}"],
                env=self.env,
                cwd=REPO_ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    async def wait_ready(self, timeout: float = READY_TIMEOUT_SEC) -> None:
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient(timeout=1.0) as client:
            while True:
                if not self.running():
                    raise AssertionError(f"{self.name} exited with {self.process.returncode}:\n{self.log_tail()}")  # type: ignore[union-attr]
                try:
                    if (await client.get(f"{self.url}/readyz")).status_code == 200:
                        return
                except httpx.HTTPError:
                    pass  # not listening yet
                if time.monotonic() > deadline:
                    raise AssertionError(f"{self.name} not ready after {timeout}s:\n{self.log_tail()}")
                await asyncio.sleep(0.05)

    async def get_json(self, path: str) -> object:
        async with httpx.AsyncClient(timeout=2.0) as client:
            r = await client.get(f"{self.url}{path}")
            r.raise_for_status()
            return r.json()

    def stop(self, timeout: float = 10.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


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

    def stop_all(self) -> None:
        for child in self.children.values():
            child.stop()

    def __getitem__(self, name: str) -> ServiceProcess:
        return self.children[name]
