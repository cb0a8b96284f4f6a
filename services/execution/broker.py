"""The only code that talks to a broker: alpaca-py's TradingClient, for Alpaca paper, live and
keel's local exchange alike (url_override), and alpaca-py's TradingStream for the
trade_updates websocket. Errors are translated here, once (STYLE 23).

alpaca-py 0.44 retries POST /v2/orders on 429/504 by itself and sends requests without a
timeout (alpaca/common/rest.py): a retried submit can duplicate an order and a silent venue
hangs the caller. Both are switched off here; keel decides about retries itself.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Awaitable, Callable
from decimal import Decimal
from enum import Enum
from typing import TypeVar
from urllib.parse import urlsplit

import msgspec
import requests
import requests.adapters
from alpaca.common.exceptions import APIError
from alpaca.trading.client import TradingClient
from alpaca.trading.enums import QueryOrderStatus
from alpaca.trading.models import Order, TradeUpdate
from alpaca.trading.requests import GetOrderByIdRequest, GetOrdersRequest
from alpaca.trading.stream import TradingStream

from libs.alpacahttp import harden
from libs.errors import BadData, ErrorAction, Throttled, classify_exception
from libs.errors.ratelimit import RateLimiter, Throttle
from services.execution import handlers
from services.execution.orders import build_request
from services.execution.state import BrokerOrder, ExecOrder, Holdings

T = TypeVar("T")

log = logging.getLogger(__name__)

# Alpaca answers 422 40010001 to many invalid requests; a re-used client_order_id is the one whose
# message says so
INVALID_REQUEST = "40010001"
DUPLICATE_MESSAGE = "client_order_id must be unique"
ABSENT = "absent"


def _ns(value: dt.datetime | None) -> int:
    return int(value.timestamp() * 1_000_000_000) if value else 0


def to_broker_order(o: Order) -> BrokerOrder:
    """Take the fields keel acts on from an alpaca-py Order."""
    kind = o.order_type or o.type
    return BrokerOrder(
        id=str(o.id),
        client_order_id=o.client_order_id,
        status=_value(o.status),
        qty=int(Decimal(str(o.qty or 0))),
        filled_qty=int(Decimal(str(o.filled_qty or 0))),
        filled_avg_price=Decimal(str(o.filled_avg_price)) if o.filled_avg_price is not None else None,
        updated_at_ns=_ns(o.updated_at),
        order_type=_value(kind) if kind is not None else "",
        legs=tuple(to_broker_order(leg) for leg in o.legs or ()),
        symbol=o.symbol or "",
        side=_value(o.side) if o.side is not None else "",
        time_in_force=_value(o.time_in_force) if o.time_in_force is not None else "",
    )


def _money(value: object) -> Decimal:
    if value is None:
        raise BadData("the broker's account answer lacks a money field")
    return Decimal(str(value))


def _value(member: object) -> str:
    return str(member.value) if isinstance(member, Enum) else str(member)


def retry_after(e: APIError) -> float:
    """Return the seconds of an answer's Retry-After header (RFC 9110, delay-seconds form), or 0."""
    response = getattr(e, "response", None)
    value = response.headers.get("Retry-After", "") if response is not None else ""
    try:
        return max(float(value), 0.0)
    except ValueError:
        return 0.0  # absent, or an HTTP date: the breaker's own windows decide


def api_error_code(e: APIError) -> str:
    """Return Alpaca's error code from an APIError body, or ''."""
    try:
        return str(e.code)
    except (ValueError, KeyError, TypeError, AttributeError):
        return ""


def is_duplicate_client_order_id(e: APIError) -> bool:
    """True when the broker refused an order because it already holds one with its client_order_id."""
    return api_error_code(e) == INVALID_REQUEST and DUPLICATE_MESSAGE in str(e)


class AlpacaBroker:
    """A broker account reached through alpaca-py; every call runs in a worker thread."""

    def __init__(
        self, *, api_key: str, secret_key: str, paper: bool, base_url: str, timeout: float, venue: str = "alpaca"
    ) -> None:
        # the name OrderSubmitted records: the venue, not where this run happened to reach it (keel's
        # local exchange listens on a new port every run, and two replays must record the same)
        self.name = venue if venue == "keel-local" else base_url or ("alpaca-paper" if paper else "alpaca-live")
        # see the module docstring: no SDK retries, explicit timeouts
        self.client = harden(TradingClient(api_key, secret_key, paper=paper, url_override=base_url or None), timeout)
        self._clock_ns = 0
        self._clock_reading = asyncio.Lock()
        # the account's shared request budget (set by the app when the broker has a limit)
        self.limiter: RateLimiter | None = None
        self.read_wait_sec = 2.0

    async def reserve(self, max_wait_sec: float) -> Throttle | None:
        """Take a request token for a call about to be made; None when there is no limit."""
        if self.limiter is None:
            return None
        return await self.limiter.acquire(max_wait_sec=max_wait_sec)

    async def _call(self, what: str, fn: Callable[..., T], *args: object, reserved: bool = False) -> T:
        """Make one broker request within the account's budget; a 429 locks the budget for everyone.

        Raises Throttled when no token came within the read wait (nothing was sent).
        """
        if not reserved:
            got = await self.reserve(self.read_wait_sec)
            if got is not None and not got.taken:
                raise Throttled(got.reason, what, got.wait_sec)
        try:
            return await asyncio.to_thread(fn, *args)
        except APIError as e:
            if e.status_code == 429 and self.limiter is not None:
                # every process of the account waits the venue's Retry-After (1 s when it gave none)
                await self.limiter.lock(retry_after(e) or 1.0, "RATE_LIMIT_RETRY")
            raise

    async def wait_for_clock(self, ts_ns: int, *, timeout: float = 10.0) -> bool:
        """Wait until the broker's clock has reached ts_ns; False if it did not within timeout.

        An order decided on bar t must fill against bar t+1 (DESIGN, determinism). keel's local
        exchange runs on event time - its clock is the last bar it has seen - so an order that
        overtook bar t on its way there could fill on bar t. Asking GET /v2/clock first closes
        that race; Alpaca's real clock is the wall clock and passes at once.
        """
        if self._clock_ns >= ts_ns:
            return True
        # one reader at a time: the orders of one bar (a task per symbol) share its answer
        # instead of each spending a request of the account's budget on the same question
        async with self._clock_reading:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout
            while self._clock_ns < ts_ns:
                if loop.time() >= deadline:
                    return False
                clock = await self._call("GET /v2/clock", self.client.get_clock)
                self._clock_ns = max(self._clock_ns, _ns(clock.timestamp))  # type: ignore[union-attr]
                if self._clock_ns < ts_ns:
                    await asyncio.sleep(0.01)
            return True

    async def check(self) -> None:
        """Fetch the account; raises when the broker is unreachable or refuses the keys."""
        await self._call("GET /v2/account", self.client.get_account)

    async def submit(self, order: ExecOrder, *, reserved: bool = False) -> handlers.Outcome:
        """Submit an order; never raises. A timeout, lost response or 5xx is Unknown, never retried here.

        `reserved`: its request token was taken before the hand-over (the consumer's checks).
        """
        try:
            req = build_request(order)
        except ValueError as e:
            # the contracts make this a bug, not a market event: the order never left keel
            return handlers.Rejected(code="INVALID_ORDER", message=f"cannot build the request: {e}"[:300])
        try:
            placed = await self._call("POST /v2/orders", self.client.submit_order, req, reserved=reserved)
        except Throttled as e:
            # never sent (a re-send after a 404 found no token): still unknown, asked about again
            return handlers.Unknown(message=str(e)[:300])
        except APIError as e:
            if is_duplicate_client_order_id(e):
                # submitted before (a crash after the broker accepted, a lost response): adopt it
                return await self.resolve(order.client_order_id, str(e))
            info = classify_exception(e, dependency="broker_submit", symbol=order.symbol)
            if info.retryable:
                # 5xx / 429: the venue may or may not have taken it; only a lookup can tell
                return handlers.Unknown(
                    message=f"POST /v2/orders: {e}"[:300], failure=info.reason_code, retry_after_sec=retry_after(e)
                )
            halt = info.reason_code if info.action is ErrorAction.HALT_TRADING else ""
            return handlers.Rejected(code=api_error_code(e) or str(e.status_code), message=str(e)[:300], halt=halt)
        except (requests.RequestException, OSError) as e:
            info = classify_exception(e, dependency="broker_submit", symbol=order.symbol)
            return handlers.Unknown(message=f"POST /v2/orders: {type(e).__name__}: {e}"[:300], failure=info.reason_code)
        return handlers.Accepted(order=to_broker_order(placed))

    async def resolve(self, cid: str, why: str) -> handlers.Outcome:
        """Find out whether the broker holds an order; not finding it is not a verdict."""
        found = await self.lookup(cid)
        if isinstance(found, BrokerOrder):
            return handlers.Accepted(order=found)
        return handlers.Unknown(message=why[:300])

    async def recover(self, order: ExecOrder, *, resend: bool) -> handlers.Outcome:
        """Resolve an order of unknown status by GET by client_order_id, never by a blind re-send.

        Found: adopt it. 404: the broker proves it never took it, so (unless `resend` is off, as
        while halted) it is submitted again under the same client_order_id. No answer: still unknown.
        """
        found = await self.lookup(order.client_order_id)
        if isinstance(found, BrokerOrder):
            return handlers.Accepted(order=found)
        if found == ABSENT and resend:
            return await self.submit(order)
        why = "absent at the broker; not sent again while halted" if found == ABSENT else "lookup got no answer"
        return handlers.Unknown(message=f"GET /v2/orders:by_client_order_id: {why}")

    async def lookup(self, cid: str) -> BrokerOrder | str | None:
        """Return the order, ABSENT when the broker says 404, None when it cannot tell."""
        try:
            order = await self._call("GET /v2/orders:by_client_order_id", self.client.get_order_by_client_id, cid)
        except APIError as e:
            return ABSENT if e.status_code == 404 else None
        except (requests.RequestException, OSError, Throttled):
            return None
        return to_broker_order(order)

    async def order(self, order_id: str) -> BrokerOrder | None:
        """Return an order by the broker's id with its exit legs rolled up; None when it cannot tell."""
        try:
            order = await self._call(
                "GET /v2/orders/{id}", self.client.get_order_by_id, order_id, GetOrderByIdRequest(nested=True)
            )
        except (APIError, requests.RequestException, OSError, Throttled) as e:
            info = classify_exception(e, dependency="broker_open_orders")
            log.warning("order lookup failed", extra={"order_id": order_id, "reason": info.reason_code,
                                                      "error": str(e)[:300]})  # fmt: skip
            return None
        return msgspec.structs.replace(to_broker_order(order), nested=True)  # type: ignore[arg-type]

    async def cancel(self, order_id: str) -> str:
        """Ask the broker to cancel an order; return '' when it took the request, else why not."""
        try:
            await self._call("DELETE /v2/orders/{id}", self.client.cancel_order_by_id, order_id)
        except APIError as e:
            return f"DELETE /v2/orders/{order_id}: {e}"[:300]  # e.g. 422: already filled or canceled
        except (requests.RequestException, OSError, Throttled) as e:
            return f"DELETE /v2/orders/{order_id}: {type(e).__name__}: {e}"[:300]
        return ""

    async def open_orders(self) -> dict[str, BrokerOrder]:
        """Return every open order by client_order_id."""
        orders = await self._call(
            "GET /v2/orders", self.client.get_orders, GetOrdersRequest(status=QueryOrderStatus.OPEN, limit=500)
        )
        return {o.client_order_id: to_broker_order(o) for o in orders}  # type: ignore[union-attr]

    async def snapshot(self) -> Holdings:
        """Read the account, every position and every open order (exit legs rolled up under theirs)."""
        account = await self._call("GET /v2/account", self.client.get_account)
        positions = await self._call("GET /v2/positions", self.client.get_all_positions)
        orders = await self._call(
            "GET /v2/orders",
            self.client.get_orders,
            GetOrdersRequest(status=QueryOrderStatus.OPEN, limit=500, nested=True),
        )
        held: dict[str, int] = {}
        for p in positions:  # type: ignore[union-attr]
            qty = int(Decimal(str(p.qty)))
            held[p.symbol] = held.get(p.symbol, 0) + qty  # a short is listed with a negative qty
        return Holdings(
            cash=_money(account.cash),  # type: ignore[union-attr]
            buying_power=_money(account.buying_power),  # type: ignore[union-attr]
            equity=_money(account.equity),  # type: ignore[union-attr]
            positions=held,
            open_orders=tuple(to_broker_order(o) for o in orders),  # type: ignore[union-attr]
        )

    async def cancel_all(self) -> int:
        """Cancel every open order; return how many cancel requests the broker took."""
        responses = await self._call("DELETE /v2/orders", self.client.cancel_orders)
        return len(responses)  # type: ignore[arg-type]


def from_trade_update(update: TradeUpdate) -> BrokerOrder:
    """Take the order of a trade_updates frame, with the frame's execution id and event name."""
    bo = to_broker_order(update.order)
    event = _value(update.event)
    execution_id = str(update.execution_id) if update.execution_id is not None else ""
    return msgspec.structs.replace(bo, execution_id=execution_id, event=event)


def stream_url(stream_url: str, base_url: str) -> str:
    """Return the trade_updates URL: stream_url, else ws(s)://<host of base_url>/stream, else ''.

    '' leaves the choice to alpaca-py (Alpaca's own paper or live stream, by the paper flag).
    """
    if stream_url:
        return stream_url
    if not base_url:
        return ""
    parts = urlsplit(base_url)
    return f"{'wss' if parts.scheme == 'https' else 'ws'}://{parts.netloc}/stream"


class AlpacaStream(TradingStream):
    """alpaca-py's TradingStream run inside keel's event loop instead of its own asyncio.run.

    `on_update` gets every trade update as a BrokerOrder; `on_frame` hears of every frame
    (the auth reply and the listening ack too) and `on_connection` of every connect and close,
    which is what the staleness watchdog needs. These hook alpaca-py 0.44's private
    _start_ws/_dispatch/_run_forever (its run() would start a second event loop);
    tests/integration/test_execution_stream.py runs this class against the local exchange.
    """

    def __init__(
        self,
        *,
        api_key: str,
        secret_key: str,
        paper: bool,
        url: str,
        on_update: Callable[[BrokerOrder], Awaitable[None]],
        on_frame: Callable[[str], None],
        on_connection: Callable[[bool], None],
    ) -> None:
        # alpaca-py pings every 10 s but waits 180 s for the pong; a dead link shows far sooner
        # here, and a close never waits longer than 2 s for the venue's handshake
        params = {"ping_interval": 10, "ping_timeout": 20, "close_timeout": 2, "max_queue": 1024}
        super().__init__(api_key, secret_key, paper=paper, url_override=url or None, websocket_params=params)
        self.name = self._endpoint
        self._on_update = on_update
        self._on_frame = on_frame
        self._on_connection = on_connection
        self.subscribe_trade_updates(self._trade_update)

    async def _trade_update(self, update: TradeUpdate) -> None:
        await self._on_update(from_trade_update(update))

    async def _start_ws(self) -> None:
        await super()._start_ws()
        self._on_connection(True)

    async def _dispatch(self, msg: dict) -> None:  # type: ignore[type-arg]
        self._on_frame(str(msg.get("stream", "")))
        try:
            await super()._dispatch(msg)
        except (ValueError, TypeError, KeyError) as e:  # pydantic's ValidationError is a ValueError
            log.warning("trade update not understood", extra={"reason": "STREAM_BAD_FRAME", "error": str(e)[:300]})

    async def close(self) -> None:
        """Close the websocket (alpaca-py reconnects unless stopped) and say so."""
        try:
            await super().close()
        finally:
            self._on_connection(False)

    async def serve(self, stop: asyncio.Event) -> None:
        """Run the stream until stop is set, then close it; alpaca-py reconnects by itself."""
        runner = asyncio.create_task(self._run_forever())
        stopper = asyncio.create_task(stop.wait())
        try:
            while True:
                done, _ = await asyncio.wait({runner, stopper}, return_when=asyncio.FIRST_COMPLETED)
                if stopper in done:
                    return
                # _run_forever returns only when stopped; anything else is restarted after a pause
                error = runner.exception()
                log.warning("trade_updates stream ended; restarting", extra={"error": repr(error)[:300]})
                await asyncio.sleep(1.0)
                runner = asyncio.create_task(self._run_forever())
        finally:
            stopper.cancel()
            await self.stop_ws()
            await self.close()  # a pending recv ends at once, so _run_forever returns
            if not runner.done():
                await asyncio.wait({runner}, timeout=3.0)
            if not runner.done():
                runner.cancel()


class StreamWatch:
    """How far the trade_updates stream can be trusted for fills, on the wall clock.

    Operational, never a decision: it only sets the REST poller's cadence and raises alerts.
    The stream is stale while it has been disconnected for stale_sec, or while orders are open
    and no frame has arrived for stale_sec (counted from when an order was last open, so the
    first order after a quiet hour is not stale at once).
    """

    def __init__(self, stale_sec: float, *, enabled: bool = True, now: Callable[[], float] = time.monotonic) -> None:
        self.stale_sec = stale_sec
        self.enabled = enabled
        self.now = now
        started = now()
        self.connected = False
        self.changed_at = started  # when `connected` last changed
        self.last_frame = started
        self.quiet_since = started  # the last time no order was open
        self.reason = ""  # why it is stale now ("disconnected", "silent"), '' while it is not

    def frame(self) -> None:
        """Note a frame (any: auth reply, listening ack, trade update)."""
        self.last_frame = self.now()

    def connection(self, up: bool) -> None:
        """Note a connect (up) or a close."""
        now = self.now()
        if up != self.connected:
            self.connected, self.changed_at = up, now
        if up:
            self.last_frame = now

    def check(self, orders_open: bool) -> str:
        """Re-assess staleness; return the reason it is stale, or ''."""
        now = self.now()
        if not orders_open:
            self.quiet_since = now
        if not self.enabled:
            self.reason = ""
        elif not self.connected:
            self.reason = "disconnected" if now - self.changed_at >= self.stale_sec else ""
        elif orders_open and now - max(self.last_frame, self.quiet_since) >= self.stale_sec:
            self.reason = "silent"
        else:
            self.reason = ""
        return self.reason

    @property
    def trusted(self) -> bool:
        """True while fills can be left to the stream (the poller may run slowly)."""
        return self.enabled and self.connected and not self.reason

    def last_frame_age(self) -> float:
        """Seconds since the last frame."""
        return self.now() - self.last_frame
