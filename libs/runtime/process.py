"""One service as a child process (`python -m services.<name>`): what `keel up` supervises."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from libs.runtime.migrate import REPO_ROOT
from libs.runtime.runner import free_port


class ServiceProcess:
    """A service process with its own API port and a log file it appends to."""

    def __init__(self, name: str, env: dict[str, str], log_path: Path, *, port: int = 0) -> None:
        self.name = name
        self.port = port or free_port()
        self.env = {**env, "KEEL_API_PORT": str(self.port)}
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        self.quick_exits = 0
        self.started_at = 0.0

    @property
    def url(self) -> str:
        """Return the service's API base URL."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        """Return whether the process is alive."""
        return self.process is not None and self.process.poll() is None

    def start(self) -> None:
        """Start the process in its own session (a terminal's Ctrl-C reaches only its parent)."""
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", f"services.{self.name}"],
                env=self.env,
                cwd=REPO_ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.started_at = time.monotonic()

    def log_tail(self, lines: int = 20) -> str:
        """Return the last lines of the log."""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    async def wait_ready(self, timeout: float = 60.0) -> None:
        """Wait for GET /readyz == 200; raise RuntimeError with the log's tail if it exits or times out."""
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient(timeout=1.0) as client:
            while True:
                if not self.running:
                    code = self.process.returncode if self.process else None
                    raise RuntimeError(f"{self.name} exited with {code} at start:\n{self.log_tail(5)}")
                try:
                    if (await client.get(f"{self.url}/readyz")).status_code == 200:
                        return
                except httpx.HTTPError:
                    # not listening yet: the loop below decides whether to wait more
                    await asyncio.sleep(0.05)
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{self.name} was not ready after {timeout:.0f}s (log: {self.log_path})")
                await asyncio.sleep(0.05)

    def terminate(self) -> None:
        """Send SIGTERM without waiting."""
        if self.running:
            self.process.send_signal(signal.SIGTERM)  # type: ignore[union-attr]

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, wait, then SIGKILL."""
        if not self.running:
            return
        self.terminate()
        try:
            self.process.wait(timeout=timeout)  # type: ignore[union-attr]
        except subprocess.TimeoutExpired:
            self.process.kill()  # type: ignore[union-attr]
            self.process.wait()  # type: ignore[union-attr]
