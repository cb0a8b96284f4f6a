"""Harness for integration tests of the local paper exchange through the real alpaca-py clients.

- `ExchangeProcess`: `python -m services.exchange` in a child process, started with env, stopped
  with SIGTERM; `url` for TradingClient(url_override=...), `stream_url` for TradingStream.
- `exchange_env(...)`: migrate a namespace's schemas and return the child's KEEL_ env.
- `bar_publisher(...)`: a Bus that publishes market-data events (the exchange's clock and fills).
- `make_bar(symbol, minute, open)`: a BarClosed `minute` minutes after the 2024-03-05 open (or `day`'s).
- `call`, `eventually`, `expect_api_error`: run alpaca-py's blocking calls from async tests.
- `TradeUpdates`: alpaca-py's real TradingStream run as a task in the test's loop, collecting
  every TradeUpdate it dispatches.
- `add_fault`, `list_faults`, `clear_faults`: the exchange's /admin/faults API (the process
  must run with `KEEL_EXCHANGE_ADMIN_ENABLED=true`, e.g. `exchange_env(..., admin=True)`).

Test modules keep their fixtures thin, e.g.

    @pytest.fixture
    async def env(namespace, nats_url, database_url):
        return await exchange_env(namespace, nats_url, database_url)
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

import httpx
from alpaca.common.exceptions import APIError
from alpaca.trading.models import TradeUpdate
from alpaca.trading.stream import TradingStream

from libs import sessions
from libs.bus import Bus
from libs.contracts.base import derive_id
from libs.contracts.marketdata import BarClosed
from libs.contracts.subjects import Subjects
from libs.runtime.runner import free_port
from tests.support.servers import REPO_ROOT, Namespace, migrate

T = TypeVar("T")

KEY = "it-key"
SECRET = "it-secret"
ACCOUNT = "it-account-1"
AUTH_HEADERS = {"APCA-API-KEY-ID": KEY, "APCA-API-SECRET-KEY": SECRET}
SESSION_DAY = datetime(2024, 3, 5).date()
OPEN_NS, CLOSE_NS = sessions.session_open_close(SESSION_DAY)
MINUTE = sessions.MINUTE_NS
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
START_TIMEOUT_S = 60.0
# Bus.close() flushes and closes (no drain), so SIGTERM ends the process in well under this
STOP_TIMEOUT_S = 5.0
STREAM_READY_TIMEOUT_S = 10.0


def make_bar(
    symbol: str, minute: int, open: str, *, close: str | None = None, volume: int = 1000, day: date = SESSION_DAY
) -> BarClosed:
    """Return a 1-minute bar of `day` (a session) closing `minute` minutes after its open (high/low: open +/- 1)."""
    ts = sessions.session_open_close(day)[0] + minute * MINUTE
    o = Decimal(open)
    return BarClosed(
        event_id=derive_id("it-bar", symbol, ts),
        correlation_id=derive_id("it-bar", ts),
        causation_id=derive_id("it-bar", ts),
        ts_event=ts,
        ts_init=ts,
        symbol=symbol,
        bar_start=ts - MINUTE,
        session=day.isoformat(),
        open=o,
        high=o + 1,
        low=o - 1,
        close=Decimal(close) if close else o,
        volume=volume,
        spread_bps=Decimal(10),
    )


def bar_time(minute: int, *, day: date = SESSION_DAY) -> datetime:
    """Return the close time of `make_bar(..., minute, ..., day=day)` as an aware datetime."""
    return datetime.fromtimestamp((sessions.session_open_close(day)[0] + minute * MINUTE) / 1e9, tz=UTC)


class ExchangeProcess:
    """`python -m services.exchange` in a child process, ready once its /readyz answers 200."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.env = env
        self.log_path = log_path
        self.url = ""
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def stream_url(self) -> str:
        """Return the trade_updates websocket URL (TradingStream's url_override)."""
        return self.url.replace("http://", "ws://", 1) + "/stream"

    async def start(self) -> ExchangeProcess:
        """Start the process on a free port and wait until it is ready."""
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        # only this test's KEEL_ keys: the child refuses keys it does not know
        child_env = {k: v for k, v in os.environ.items() if not k.startswith("KEEL_")}
        child_env.update(self.env, KEEL_API_PORT=str(port), PYTHONUNBUFFERED="1")
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "services.exchange"],
                cwd=REPO_ROOT,
                env=child_env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        await self._wait_ready()
        return self

    async def _wait_ready(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + START_TIMEOUT_S
        async with httpx.AsyncClient(base_url=self.url, timeout=1.0) as http:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise AssertionError(f"exchange exited with {self.process.returncode} at start:\n{self.log_tail()}")
                try:
                    if (await http.get("/readyz")).status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.1)
        raise AssertionError(f"exchange not ready after {START_TIMEOUT_S}s:\n{self.log_tail()}")

    async def stop(self) -> tuple[int, float]:
        """Send SIGTERM; return the exit code and how long the process took to exit."""
        assert self.process is not None
        if self.process.poll() is not None:
            return self.process.returncode, 0.0
        started = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        try:
            code = await asyncio.to_thread(self.process.wait, STOP_TIMEOUT_S * 4)
        except subprocess.TimeoutExpired:
            self.process.kill()
            await asyncio.to_thread(self.process.wait)
            raise AssertionError(f"exchange ignored SIGTERM:\n{self.log_tail()}") from None
        return code, time.monotonic() - started

    def log_tail(self, lines: int = 20) -> str:
        """Return the last lines of the process's log."""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


@asynccontextmanager
async def running_exchange(env: dict[str, str], log_path: Path) -> AsyncIterator[ExchangeProcess]:
    """Run an exchange process for the block; assert it exits 0 on SIGTERM within STOP_TIMEOUT_S."""
    exchange = await ExchangeProcess(env, log_path).start()
    try:
        yield exchange
    finally:
        code, took = await exchange.stop()
    assert code == 0, exchange.log_tail()
    assert took < STOP_TIMEOUT_S, f"SIGTERM took {took:.1f}s"


async def call(fn: Callable[..., T], *args: object) -> T:
    """Run a blocking (alpaca-py) call in a thread."""
    return await asyncio.to_thread(fn, *args)


async def eventually(check: Callable[[], T], *, timeout: float = 15.0) -> T:
    """Run a blocking check in a thread until it returns something truthy; return that."""
    deadline = time.monotonic() + timeout
    while True:
        result = await asyncio.to_thread(check)
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s: last result {result!r}")
        await asyncio.sleep(0.05)


def expect_api_error(fn: Callable[[], object]) -> APIError:
    """Call fn (blocking) and return the alpaca-py APIError it raises; fail if it raises none."""
    try:
        fn()
    except APIError as e:
        return e
    raise AssertionError("expected APIError, was none")


# a cost model whose prices can be checked by hand: no slippage, impact, latency or fees, no
# volume cap, and a 10 bps spread (harness bars carry a proxy spread, so the proxy applies): a
# taker buy pays open * (1 + 5 bps) rounded up to the cent, a sell open * (1 - 5 bps) rounded down
FRICTIONLESS = {
    "KEEL_EXCHANGE_FIXED_SLIPPAGE_BPS": "0",
    "KEEL_EXCHANGE_VOL_SLIPPAGE_COEF": "0",
    "KEEL_EXCHANGE_IMPACT_COEF": "0",
    "KEEL_EXCHANGE_LATENCY_MS": "0",
    "KEEL_EXCHANGE_LATENCY_JITTER_MS": "0",
    "KEEL_EXCHANGE_SEC_FEE_PER_MILLION": "0",
    "KEEL_EXCHANGE_TAF_PER_SHARE": "0",
    "KEEL_EXCHANGE_MAX_PARTICIPATION": "1",
    "KEEL_EXCHANGE_PROXY_SPREAD_BPS": "10",
}


async def exchange_env(
    namespace: Namespace, nats_url: str, database_url: str, *, admin: bool = False, **extra: str
) -> dict[str, str]:
    """Migrate the namespace's schemas; return the exchange's KEEL_ env (KEY/SECRET/ACCOUNT)."""
    await asyncio.to_thread(migrate, database_url, namespace.schema_prefix)
    env = {
        "KEEL_NATS_URL": nats_url,
        "KEEL_DATABASE_URL": database_url,
        "KEEL_PREFIX": namespace.prefix,
        "KEEL_SCHEMA_PREFIX": namespace.schema_prefix,
        "KEEL_EXCHANGE_API_KEY_ID": KEY,
        "KEEL_EXCHANGE_API_SECRET_KEY": SECRET,
        "KEEL_EXCHANGE_ACCOUNT_ID": ACCOUNT,
        "KEEL_EXCHANGE_INITIAL_CASH": "100000",
    }
    if admin:
        env["KEEL_EXCHANGE_ADMIN_ENABLED"] = "true"
    env.update(extra)
    return env


@asynccontextmanager
async def bar_publisher(namespace: Namespace, nats_url: str) -> AsyncIterator[Bus]:
    """Yield a provisioned Bus of the namespace that publishes as the marketdata service."""
    bus = await Bus.connect(nats_url, Subjects(namespace.prefix), service="marketdata")
    await bus.provision()
    try:
        yield bus
    finally:
        await bus.close()


# --- admin API (fault injection) -------------------------------------------------------------


async def add_fault(exchange: ExchangeProcess, **rule: Any) -> dict[str, Any]:
    """Add a fault rule (services/exchange/faults.py FaultRule fields); return it as the exchange lists it."""
    async with httpx.AsyncClient(base_url=exchange.url, headers=AUTH_HEADERS, timeout=5.0) as http:
        r = await http.post("/admin/faults", json=rule)
    assert r.status_code == 201, r.text
    return r.json()


async def set_venue_status(exchange: ExchangeProcess, order_id: str, status: str) -> list[dict[str, Any]]:
    """Put an order in a live venue's own status (POST /admin/orders/{id}/status); return the orders changed."""
    async with httpx.AsyncClient(base_url=exchange.url, headers=AUTH_HEADERS, timeout=5.0) as http:
        r = await http.post(f"/admin/orders/{order_id}/status", json={"status": status})
    assert r.status_code == 200, r.text
    return r.json()


async def list_faults(exchange: ExchangeProcess) -> list[dict[str, Any]]:
    """Return the active fault rules with their remaining counts."""
    async with httpx.AsyncClient(base_url=exchange.url, headers=AUTH_HEADERS, timeout=5.0) as http:
        r = await http.get("/admin/faults")
    assert r.status_code == 200, r.text
    return r.json()


async def clear_faults(exchange: ExchangeProcess) -> int:
    """Clear every fault rule; return how many were active."""
    async with httpx.AsyncClient(base_url=exchange.url, headers=AUTH_HEADERS, timeout=5.0) as http:
        r = await http.delete("/admin/faults")
    assert r.status_code == 200, r.text
    return r.json()["cleared"]


# --- trade_updates stream --------------------------------------------------------------------


class _ObservedTradingStream(TradingStream):
    # the real client; it only also notes the server's `listening` acknowledgement, which
    # alpaca-py reads and ignores, so a test knows when updates start to flow
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.acks = 0
        self.listening = asyncio.Event()

    async def _dispatch(self, msg: dict) -> None:
        if msg.get("stream") == "listening" and "trade_updates" in (msg.get("data") or {}).get("streams", ()):
            self.acks += 1
            self.listening.set()
        await super()._dispatch(msg)


class TradeUpdates:
    """alpaca-py's TradingStream on the exchange's /stream, run in the test's loop; collects TradeUpdates.

    `async with TradeUpdates(exchange) as updates:` waits until the server acknowledged the
    listen; `await updates.next()` returns the next update; `updates.received` holds them all.
    """

    def __init__(self, exchange: ExchangeProcess, key: str = KEY, secret: str = SECRET) -> None:
        self.client = _ObservedTradingStream(key, secret, url_override=exchange.stream_url)
        self.received: list[TradeUpdate] = []
        self._queue: asyncio.Queue[TradeUpdate] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    async def _on_update(self, update: TradeUpdate) -> None:
        self.received.append(update)
        self._queue.put_nowait(update)

    async def __aenter__(self) -> TradeUpdates:
        self.client.subscribe_trade_updates(self._on_update)
        self._task = asyncio.create_task(self.client._run_forever())
        await self.wait_listening()
        return self

    async def wait_listening(self, *, acks: int = 1, timeout: float = STREAM_READY_TIMEOUT_S) -> None:
        """Wait until the server has acknowledged `acks` listens in total (1 per connection)."""
        deadline = time.monotonic() + timeout
        while self.client.acks < acks:
            if self._task is not None and self._task.done():
                raise AssertionError(f"trade stream ended: {self._task!r}")
            if time.monotonic() > deadline:
                raise AssertionError(f"trade_updates not acknowledged within {timeout}s")
            await asyncio.sleep(0.02)

    async def next(self, timeout: float = 10.0) -> TradeUpdate:
        """Return the next update received, or fail after `timeout` seconds."""
        try:
            return await asyncio.wait_for(self._queue.get(), timeout)
        except TimeoutError:
            raise AssertionError(f"no trade update within {timeout}s (received so far: {self.received})") from None

    async def nothing_within(self, seconds: float) -> None:
        """Assert no update arrives within `seconds`."""
        try:
            update = await asyncio.wait_for(self._queue.get(), seconds)
        except TimeoutError:
            return
        raise AssertionError(f"expected no trade update, got {update!r}")

    async def __aexit__(self, *exc: object) -> None:
        # stop_ws alone is seen only when recv times out (5 s in alpaca-py); closing the socket
        # ends the pending recv at once and the stopped run loop then returns
        await self.client.stop_ws()
        await self.client.close()
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, 5.0)
            except TimeoutError:
                self._task.cancel()
                await asyncio.gather(self._task, return_exceptions=True)


__all__ = [
    "ACCOUNT",
    "AUTH_HEADERS",
    "CLOSE_NS",
    "EPOCH",
    "KEY",
    "MINUTE",
    "OPEN_NS",
    "SECRET",
    "SESSION_DAY",
    "START_TIMEOUT_S",
    "STOP_TIMEOUT_S",
    "ExchangeProcess",
    "TradeUpdates",
    "add_fault",
    "bar_publisher",
    "bar_time",
    "call",
    "clear_faults",
    "eventually",
    "exchange_env",
    "expect_api_error",
    "list_faults",
    "make_bar",
    "running_exchange",
]
