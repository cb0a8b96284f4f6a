"""Alpaca's `trade_updates` websocket (`/stream`) for the local paper exchange.

Three parts:
- `trade_updates(before, after, changed)`: pure; derives Alpaca's trade_update payloads from
  what one committed mutation changed, in a deterministic order (order seq, then fill order).
- `Hub`: the authenticated listeners. `publish` never blocks the exchange: each listener has a
  bounded queue drained by its own sender task; a listener whose queue overflows is
  disconnected. Fault rules of the ws kinds (services/exchange/faults.py) act here.
- `endpoint(hub, config)`: the websocket route, speaking the protocol of alpaca-py 0.44's
  TradingStream (alpaca/trading/stream.py) and Alpaca's docs (docs.alpaca.markets,
  "Websocket Streaming"): authenticate, then listen; every server frame is a binary frame
  holding JSON, like Alpaca's paper endpoint.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Protocol

import msgspec
from fastapi import WebSocket
from msgspec.structs import replace

from libs.errors import classify_exception
from services.exchange.api import iso_utc, order_view, plain
from services.exchange.handlers import AVG_PRICE_QUANTUM, signed_qty
from services.exchange.state import ExchangeOrder, ExchangeState, Fill

if TYPE_CHECKING:
    from libs.obs.metrics import Metrics
    from services.exchange.config import ExchangeConfig
    from services.exchange.faults import Faults

log = logging.getLogger(__name__)

TRADE_UPDATES = "trade_updates"
STREAMS = frozenset({TRADE_UPDATES})

# Alpaca's trade_update event names (alpaca/trading/enums.py TradeEvent and Alpaca's docs)
EVENT_NEW = "new"
EVENT_PARTIAL_FILL = "partial_fill"
EVENT_FILL = "fill"
# An order whose status changes to one of these gets an event of the same name.
STATUS_EVENTS = frozenset(
    {
        "canceled",
        "expired",
        "replaced",
        "rejected",
        "done_for_day",
        "pending_cancel",
        "pending_replace",
        "pending_new",
        "stopped",
        "suspended",
        "calculated",
    }
)
# Statuses of an order the venue has not accepted yet (a bracket leg is "held" until its parent
# fills): the "new" event goes out when the order leaves them for any status but "rejected".
NOT_YET_NEW = frozenset({"held", "pending_new", "accepted", "pending_review", "accepted_for_bidding"})
NEVER_NEW = frozenset({"rejected"})
FILLED = "filled"
PARTIALLY_FILLED = "partially_filled"

# frames a listener may have waiting; one commit can publish a burst (cancel all, a bar batch
# filling many orders), so this is far above any burst and only a stuck client reaches it
DEFAULT_QUEUE_SIZE = 10_000
AUTH_TIMEOUT_SEC = 10.0
CLOSE_TIMEOUT_SEC = 2.0
# RFC 6455 close codes: 1008 policy violation (bad credentials), 1013 try again later (overflow)
CLOSE_UNAUTHORIZED = 1008
CLOSE_OVERFLOW = 1013

_encoder = msgspec.json.Encoder(decimal_format="string")


# --- derivation (pure) -----------------------------------------------------------------------


def _as_of(order: ExchangeOrder, fills: Sequence[Fill], status: str, ts: int) -> ExchangeOrder:
    # the order as it stood at an earlier event of the same commit (Alpaca sends each event
    # with the order as of that event, e.g. a partial_fill never shows status "filled")
    qty = sum(f.qty for f in fills)
    avg = (sum((f.qty * f.price for f in fills), Decimal(0)) / qty).quantize(AVG_PRICE_QUANTUM) if qty else None
    return replace(
        order,
        status=status,  # type: ignore[arg-type]
        filled_qty=qty,
        filled_avg_price=avg,
        updated_at=ts,
        filled_at=ts if status == FILLED else None,
        canceled_at=None,
        expired_at=None,
    )


def trade_updates(before: ExchangeState, after: ExchangeState, changed: Sequence[ExchangeOrder]) -> list[dict]:
    """Return the trade_update payloads (Alpaca's `data` objects) of one committed mutation."""
    orders = sorted({o.id: o for o in changed}.values(), key=lambda o: o.seq)
    # (order id, fill index) -> position qty right after that fill: the committed position
    # minus every later new fill of the symbol, in execution order (fill ts, then order seq)
    new_fills: list[tuple[int, int, int, ExchangeOrder, Fill]] = []
    for order in orders:
        prior = before.orders.get(order.id)
        known = {f.execution_id for f in prior.fills} if prior else set()
        for i, fill in enumerate(order.fills):
            if fill.execution_id not in known:
                new_fills.append((fill.ts, order.seq, i, order, fill))
    position_after: dict[tuple[str, int], int] = {}
    running: dict[str, int] = {}
    for _, _, i, order, fill in sorted(new_fills, key=lambda t: t[:3], reverse=True):
        if order.symbol not in running:
            held = after.positions.get(order.symbol)
            running[order.symbol] = held.qty if held else 0
        position_after[(order.id, i)] = running[order.symbol]
        running[order.symbol] -= signed_qty(order.side, fill.qty)

    updates: list[dict] = []
    for order in orders:
        updates.extend(_order_updates(before.orders.get(order.id), order, position_after))
    return updates


def _order_updates(
    prior: ExchangeOrder | None, order: ExchangeOrder, position_after: dict[tuple[str, int], int]
) -> list[dict]:
    prior_status = prior.status if prior else None
    known = {f.execution_id for f in prior.fills} if prior else set()
    fresh = [(i, f) for i, f in enumerate(order.fills) if f.execution_id not in known]
    # (event name, timestamp, fill index or None); the order view is added below
    events: list[tuple[str, int, int | None]] = []
    if (prior is None or prior_status in NOT_YET_NEW) and order.status not in NOT_YET_NEW | NEVER_NEW:
        first = min([f.ts for _, f in fresh] + [order.updated_at])
        events.append((EVENT_NEW, first, None))
    for n, (i, fill) in enumerate(fresh):
        completes = n == len(fresh) - 1 and order.status == FILLED and prior_status != FILLED
        events.append((EVENT_FILL if completes else EVENT_PARTIAL_FILL, fill.ts, i))
    if order.status in STATUS_EVENTS and order.status != prior_status:
        events.append((order.status, order.updated_at, None))

    out: list[dict] = []
    for k, (event, ts, index) in enumerate(events):
        last = k == len(events) - 1
        if last:
            view = order
        elif event == EVENT_NEW:
            view = _as_of(order, order.fills[: fresh[0][0]] if fresh else order.fills, "new", ts)
        else:
            assert index is not None
            status = FILLED if event == EVENT_FILL else PARTIALLY_FILLED
            view = _as_of(order, order.fills[: index + 1], status, ts)
        update: dict[str, Any] = {"event": event}
        if index is not None:
            fill = order.fills[index]
            update["execution_id"] = fill.execution_id
        update["order"] = order_view(view)
        update["timestamp"] = iso_utc(ts)
        if index is not None:
            update["position_qty"] = str(position_after[(order.id, index)])
            update["price"] = plain(fill.price)
            update["qty"] = str(fill.qty)
        out.append(update)
    return out


# --- hub -------------------------------------------------------------------------------------


class Socket(Protocol):
    """The part of a websocket the hub uses (Starlette's WebSocket has it)."""

    async def send_bytes(self, data: bytes) -> None: ...

    async def close(self, code: int = 1000, reason: str | None = None) -> None: ...


class Listener:
    """One authenticated connection: the streams it listens to and its bounded send queue."""

    def __init__(self, socket: Socket, peer: str, queue_size: int) -> None:
        self.socket = socket
        self.peer = peer
        self.streams: frozenset[str] = frozenset()
        self.queue: asyncio.Queue[bytes] = asyncio.Queue(queue_size)
        self.open = True
        self.sender: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"Listener({self.peer}, streams={sorted(self.streams)}, queued={self.queue.qsize()})"


def frame(stream: str, data: object) -> bytes:
    """Encode one server message `{"stream": ..., "data": ...}` as JSON bytes."""
    return _encoder.encode({"stream": stream, "data": data})


class Hub:
    """Fan trade updates out to listeners without ever blocking the exchange."""

    def __init__(
        self,
        faults: Faults | None = None,
        *,
        metrics: Metrics | None = None,
        queue_size: int = DEFAULT_QUEUE_SIZE,
    ) -> None:
        self._faults = faults
        self._metrics = metrics
        self._queue_size = queue_size
        self._listeners: dict[int, Listener] = {}  # insertion order: stable fan-out order
        self._closing: set[asyncio.Task[None]] = set()

    @property
    def listeners(self) -> list[Listener]:
        """Return the connected listeners."""
        return list(self._listeners.values())

    def connect(self, socket: Socket, peer: str = "") -> Listener:
        """Register an authenticated connection and start its sender task."""
        listener = Listener(socket, peer, self._queue_size)
        self._listeners[id(listener)] = listener
        listener.sender = asyncio.create_task(self._send_loop(listener), name=f"trade-updates-sender {peer}")
        return listener

    def listen(self, listener: Listener, streams: Iterable[str]) -> list[str]:
        """Set the streams a listener gets (Alpaca: the full set, [] stops); acknowledge them."""
        listener.streams = frozenset(s for s in streams if s in STREAMS)
        accepted = sorted(listener.streams)
        self._enqueue(listener, frame("listening", {"streams": accepted}))
        return accepted

    def send(self, listener: Listener, stream: str, data: object) -> None:
        """Queue one control frame for a listener (after its earlier frames)."""
        self._enqueue(listener, frame(stream, data))

    def publish(self, updates: Sequence[dict]) -> None:
        """Queue each trade update for every listener of trade_updates, in order."""
        for update in updates:
            targets = [x for x in self._listeners.values() if TRADE_UPDATES in x.streams]
            if not targets:
                continue  # nobody listens: nothing to send, and no fault rule is consumed
            copies = self._faults.frame_copies() if self._faults is not None else 1
            data = frame(TRADE_UPDATES, update)
            for _ in range(copies):
                for listener in targets:
                    self._enqueue(listener, data)

    async def disconnect(self, listener: Listener) -> None:
        """Forget a listener and stop its sender task (idempotent)."""
        listener.open = False
        self._listeners.pop(id(listener), None)
        sender = listener.sender
        if sender is not None and not sender.done() and sender is not asyncio.current_task():
            sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)

    async def close(self) -> None:
        """Disconnect every listener (service stop)."""
        for listener in self.listeners:
            await self._kick(listener, 1001, "exchange stopping")
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)

    def _enqueue(self, listener: Listener, data: bytes) -> None:
        if not listener.open:
            return
        try:
            listener.queue.put_nowait(data)
        except asyncio.QueueFull:
            log.warning(
                "trade_updates listener overflowed its queue; disconnecting it",
                extra={"peer": listener.peer, "queue_size": self._queue_size},
            )
            if self._metrics is not None:
                self._metrics.decision("trade_updates", "LISTENER_OVERFLOW")
            listener.open = False
            self._listeners.pop(id(listener), None)
            task = asyncio.create_task(self._kick(listener, CLOSE_OVERFLOW, "trade_updates queue overflowed"))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    async def _kick(self, listener: Listener, code: int, reason: str) -> None:
        await self.disconnect(listener)
        try:
            await asyncio.wait_for(listener.socket.close(code=code, reason=reason), CLOSE_TIMEOUT_SEC)
        except Exception as e:  # classified: the peer may be gone already; the listener is dropped either way
            info = classify_exception(e, dependency="trade_updates_listener")
            log.debug("closing a listener failed", extra={"peer": listener.peer, "reason": info.reason_code,
                                                          "error": repr(e)})  # fmt: skip

    async def _send_loop(self, listener: Listener) -> None:
        try:
            while True:
                data = await listener.queue.get()
                await listener.socket.send_bytes(data)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # classified: the peer went away; the endpoint sees the disconnect too
            info = classify_exception(e, dependency="trade_updates_listener")
            log.info("trade_updates listener send failed", extra={"peer": listener.peer, "reason": info.reason_code,
                                                                  "error": repr(e)})  # fmt: skip
            listener.open = False
            self._listeners.pop(id(listener), None)


# --- endpoint --------------------------------------------------------------------------------


def _credentials(message: dict) -> tuple[str, str] | None:
    # {"action": "authenticate", "data": {"key_id", "secret_key"}} (alpaca-py 0.44, Alpaca docs)
    # {"action": "auth", "key": ..., "secret": ...} (older Alpaca clients)
    action = message.get("action")
    if action == "authenticate":
        data = message.get("data")
        if isinstance(data, dict):
            return str(data.get("key_id", "")), str(data.get("secret_key", ""))
        return "", ""
    if action == "auth":
        return str(message.get("key", "")), str(message.get("secret", ""))
    return None


def _authorization(status: str, action: str = "authenticate") -> bytes:
    return frame("authorization", {"status": status, "action": action})


async def _receive(websocket: WebSocket) -> dict | None:
    # the next client message (text or binary JSON); {} when it is not a JSON object, None
    # when the client has gone away
    message = await websocket.receive()
    if message["type"] == "websocket.disconnect":
        return None
    raw = message.get("text")
    if raw is None:
        raw = message.get("bytes") or b""
    try:
        decoded = msgspec.json.decode(raw)
    except msgspec.DecodeError:
        return {}
    return decoded if isinstance(decoded, dict) else {}


def endpoint(hub: Hub, config: ExchangeConfig) -> Callable[[WebSocket], Awaitable[None]]:
    """Return the `/stream` websocket route over a hub."""

    async def trade_stream(websocket: WebSocket) -> None:
        await websocket.accept()
        peer = f"{websocket.client.host}:{websocket.client.port}" if websocket.client else "?"
        try:
            first = await asyncio.wait_for(_receive(websocket), AUTH_TIMEOUT_SEC)
        except TimeoutError:
            await websocket.close(CLOSE_UNAUTHORIZED, "authentication timeout")
            return
        if first is None:
            return
        credentials = _credentials(first)
        if credentials is None or not config.accepts(*credentials):
            log.warning("trade_updates authentication refused", extra={"peer": peer, "action": first.get("action")})
            await websocket.send_bytes(_authorization("unauthorized", str(first.get("action") or "authenticate")))
            await websocket.close(CLOSE_UNAUTHORIZED, "unauthorized")
            return
        await websocket.send_bytes(_authorization("authorized"))
        listener = hub.connect(websocket, peer)
        log.info("trade_updates listener connected", extra={"peer": peer})
        try:
            while listener.open:
                message = await _receive(websocket)
                if message is None:
                    break
                action = message.get("action")
                if action == "listen":
                    data = message.get("data")
                    streams = data.get("streams") if isinstance(data, dict) else None
                    if not isinstance(streams, list):
                        hub.send(listener, "error", {"error_message": "listen expects data.streams as a list"})
                        continue
                    hub.listen(listener, [s for s in streams if isinstance(s, str)])
                elif _credentials(message) is not None:
                    hub.send(listener, "authorization", {"status": "authorized", "action": "authenticate"})
                else:
                    hub.send(listener, "error", {"error_message": f"expected action listen, was {action!r}"})
        finally:
            await hub.disconnect(listener)
            log.info("trade_updates listener disconnected", extra={"peer": peer})

    return trade_stream


__all__ = [
    "STATUS_EVENTS",
    "STREAMS",
    "TRADE_UPDATES",
    "Hub",
    "Listener",
    "Socket",
    "endpoint",
    "frame",
    "trade_updates",
]
