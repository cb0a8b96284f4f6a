"""Composition root of the local paper exchange: its store, the bar consumer and the Alpaca API.

`build(deps)` is the one bootstrap for production and tests (STYLE 2); the shared runtime
(libs/runtime/runner.py) serves it with /healthz, /readyz, /metrics and heartbeats. Mutations
(REST submits and cancels, bar batches) run one at a time under one asyncio.Lock: the pure
handler computes the next state, the store commits it (with tracking rows for bars), and only
then does the in-memory state move and the HTTP answer or the ack go out. Right after each
commit, still under the lock, `_announce` derives the commit's trade updates and hands them to
the `/stream` hub (services/exchange/stream.py), so frames go out in commit order; the hub never
blocks. Fault injection (services/exchange/faults.py) and bad market data (/admin/bars) exist
only with `admin_enabled`. The Market Data API (services/exchange/bars.py) reads its own bar
source (none, synthetic or a file), never the trading state, so it needs no lock.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import cast

from fastapi import FastAPI

from libs import sessions
from libs.bus import Bus, Inbound
from libs.config import ConfigError
from libs.contracts.marketdata import BarClosed
from libs.contracts.ops import Watermark
from libs.contracts.tca import CostModelUpdated
from libs.errors import classify_exception
from libs.obs.metrics import Metrics
from libs.runtime.runner import Deps, Service
from services.exchange import api, bars, faults, handlers, stream
from services.exchange.config import ExchangeConfig
from services.exchange.consumers import BARS_CONSUMER, COSTS_CONSUMER, bars_consumer, costs_consumer
from services.exchange.state import (
    ExchangeOrder,
    ExchangeState,
    OrderQuery,
    Rejection,
    ReplaceOrder,
    SubmitOrder,
)
from services.exchange.store import ExchangeStore

log = logging.getLogger(__name__)

SERVICE = "exchange"

Clock = Callable[[], int]


class ExchangeService:
    """The running exchange: current state, the lock that serializes mutations, the adapters."""

    def __init__(
        self,
        config: ExchangeConfig,
        *,
        bus: Bus,
        store: ExchangeStore,
        metrics: Metrics,
        clock: Clock,
        ctx: handlers.Ctx = handlers.DEFAULT_CTX,
    ) -> None:
        self.config = config
        self.bus = bus
        self.store = store
        self.metrics = metrics
        self.clock = clock  # wall clock for operations only; matching runs on bar time
        self.ctx = ctx
        self._state: ExchangeState | None = None
        self._lock = asyncio.Lock()
        self.faults = faults.Faults(enabled=config.admin_enabled, metrics=metrics)
        self.hub = stream.Hub(self.faults, metrics=metrics)
        # client_order_ids changed since the last FillsDone (bars and REST calls alike), in the
        # order they first changed (commit order, as the trade_updates frames go): execution reads
        # them back in that order, so its reports keep one order whichever path delivers them
        # first. Rebuilt at start from the store (`touched_at_start`)
        self._touched: dict[str, None] = {}

    @property
    def state(self) -> ExchangeState:
        """Return the current state (immutable: safe to read without the lock)."""
        if self._state is None:
            raise RuntimeError("expected ExchangeService.start() before use, was not started")
        return self._state

    async def start(self) -> None:
        """Load the open and recent orders, the positions and the account from the store."""
        self._state = await self.store.load(self.config.account_id, self.config.initial_cash, self.ctx.retain_closed_ns)
        self._touched = handlers.touched_at_start(self._state)
        log.info(
            "exchange state loaded",
            extra={
                "orders": len(self._state.orders),
                "all_in_memory": self._state.complete,
                "open_orders": sum(len(ids) for ids in self._state.working.values()),
                "positions": len(self._state.positions),
                "clock_ns": self._state.clock,
            },
        )

    async def _commit(self, before: ExchangeState, after: ExchangeState, changed: Sequence[ExchangeOrder]) -> None:
        # under the lock: store first, then the in-memory state, then the stream
        async with self.store.unit() as uow:
            await self.store.save(uow, before, after, changed)
        self._state = after
        self._announce(before, after, changed)
        self._touched.update(dict.fromkeys(o.client_order_id for o in changed))

    async def find(
        self, state: ExchangeState, *, order_id: str = "", client_order_id: str = ""
    ) -> tuple[ExchangeOrder, dict[str, ExchangeOrder]] | None:
        """Return an order (by id or client id) and its stored family when memory no longer
        holds it (closed days ago); None when the exchange never took it."""
        oid = order_id or state.by_client_id.get(client_order_id, "")
        if oid in state.orders:
            return state.orders[oid], {}
        if state.complete:
            return None
        family = {o.id: o for o in await self.store.family(order_id=order_id, client_order_id=client_order_id)}
        found = next((o for o in family.values() if o.id == order_id or o.client_order_id == client_order_id), None)
        return (found, family) if found is not None else None

    async def listed(self, state: ExchangeState, q: OrderQuery) -> list[ExchangeOrder]:
        """The stored orders a closed / all listing needs besides memory's (none when memory holds all)."""
        if q.status == "open" or state.complete:
            return []
        return await self.store.listed(q)

    async def _recalled(self, *, order_id: str = "", client_order_id: str | None = None) -> ExchangeState:
        # under the lock: the state with the stored family a request names back in memory, so
        # the handler answers as if it never left (a duplicate client id, a filled order's cancel)
        state = self.state
        if state.complete or not (order_id or client_order_id):
            return state
        if order_id and order_id not in state.orders:
            state = handlers.recall(state, await self.store.family(order_id=order_id))
        if client_order_id and client_order_id not in state.by_client_id:
            state = handlers.recall(state, await self.store.family(client_order_id=client_order_id))
        return state

    async def submit(self, request: SubmitOrder) -> ExchangeOrder | Rejection:
        """Accept or refuse an order; an accepted order is committed before this returns."""
        async with self._lock:
            before = await self._recalled(client_order_id=request.client_order_id)
            after, result = handlers.submit(before, request, self.ctx)
            if isinstance(result, ExchangeOrder):
                await self._commit(before, after, [after.orders[i] for i in (result.id, *result.legs)])
                self.metrics.decision("order", "accepted")
            else:
                self.metrics.decision("order", result.reason)
            return result

    async def replace(self, order_id: str, request: ReplaceOrder) -> ExchangeOrder | Rejection:
        """Replace an open order; return the new order (committed before this returns)."""
        async with self._lock:
            before = await self._recalled(order_id=order_id, client_order_id=request.client_order_id)
            after, result = handlers.replace_order(before, order_id, request, self.ctx)
            if isinstance(result, Rejection):
                self.metrics.decision("replace", result.reason)
                return result
            await self._commit(before, after, list(result))
            self.metrics.decision("replace", "accepted")
            return result[1]

    async def cancel(self, order_id: str) -> ExchangeOrder | Rejection:
        """Cancel one order and its held legs; committed before this returns."""
        async with self._lock:
            before = await self._recalled(order_id=order_id)
            after, result = handlers.cancel(before, order_id, self.ctx)
            if isinstance(result, ExchangeOrder):
                await self._commit(before, after, [after.orders[i] for i in (result.id, *result.legs)])
            return result

    async def set_venue_status(self, order_id: str, status: str) -> list[ExchangeOrder] | Rejection:
        """Put an order in a venue status (admin API); committed and streamed before this returns."""
        async with self._lock:
            before = await self._recalled(order_id=order_id)
            after, result = handlers.set_venue_status(before, order_id, status, self.ctx)
            if not isinstance(result, Rejection):
                await self._commit(before, after, result)
            return result

    async def cancel_all(self) -> list[ExchangeOrder]:
        """Cancel every open order; committed before this returns."""
        async with self._lock:
            before = self.state
            after, canceled = handlers.cancel_all(before, self.ctx)
            if canceled:
                await self._commit(before, after, canceled)
            return canceled

    async def close_position(
        self, symbol: str, *, qty: int | None = None, percentage: Decimal | None = None
    ) -> ExchangeOrder | Rejection:
        """Send the market order that closes (part of) a position; committed before this returns."""
        async with self._lock:
            before = self.state
            after, result = handlers.close_position(before, symbol, self.ctx, qty=qty, percentage=percentage)
            if isinstance(result, ExchangeOrder):
                await self._commit(before, after, [result])
            return result

    async def close_all(self, *, cancel_orders: bool) -> list[tuple[str, ExchangeOrder | Rejection]]:
        """Cancel open orders if asked, then close every position; one commit."""
        async with self._lock:
            before = self.state
            after, canceled, results = handlers.close_all(before, self.ctx, cancel_orders=cancel_orders)
            placed = [r for _, r in results if isinstance(r, ExchangeOrder)]
            if canceled or placed:
                await self._commit(before, after, [*canceled, *placed])
            return results

    async def on_bars(self, batch: list[Inbound]) -> None:
        """Apply a batch of bars atomically with its tracking rows (STYLE 19)."""
        async with self._lock:
            before = self.state
            after = before
            changed: dict[str, ExchangeOrder] = {}
            # marketdata's watermark follows every bar of its timestamp: matching for it is done.
            # A redelivered one is announced again (a crash may have come before its announcement)
            done = max((m.payload.bar_ts for m in batch if isinstance(m.payload, Watermark)), default=0)
            async with self.store.unit() as uow:
                fresh = await uow.track(BARS_CONSUMER, [m.stream_seq for m in batch])
                for inbound in batch:
                    if inbound.stream_seq not in fresh:
                        self.metrics.redelivered.labels(SERVICE, BARS_CONSUMER).inc()
                        continue
                    if not isinstance(inbound.payload, BarClosed):
                        continue  # watermarks and anything else on the filter: nothing to do
                    after, orders = handlers.on_bar(after, inbound.payload, self.ctx)
                    changed.update((o.id, o) for o in orders)
                if after is not before:
                    await self.store.save(uow, before, after, list(changed.values()))
            self._state = after
            if left := before.orders.keys() - after.orders.keys():  # only eviction takes an order out
                log.info(
                    "closed orders of earlier days left to the store",
                    extra={"left": len(left), "in_memory": len(after.orders), "clock_ns": after.clock},
                )
            if changed:
                self._announce(before, after, list(changed.values()))
                self._touched.update(dict.fromkeys(o.client_order_id for o in changed.values()))
            if done:
                await self.bus.publish(handlers.fills_done(done, list(self._touched)))
                self._touched.clear()

    async def on_costs(self, batch: list[Inbound]) -> None:
        """Adopt TCA's calibrations for the fill simulator, with their tracking rows."""
        async with self._lock:
            before = self.state
            after = before
            async with self.store.unit() as uow:
                fresh = await uow.track(COSTS_CONSUMER, [m.stream_seq for m in batch])
                for inbound in batch:
                    if inbound.stream_seq in fresh and isinstance(inbound.payload, CostModelUpdated):
                        after = handlers.on_cost_model(after, inbound.payload)
                if after is not before:
                    await self.store.save(uow, before, after, [])
            self._state = after

    def _announce(self, before: ExchangeState, after: ExchangeState, changed: Sequence[ExchangeOrder]) -> None:
        """Publish the trade updates of a committed mutation (call after `self._state = after`, under the lock)."""
        try:
            self.hub.publish(stream.trade_updates(before, after, changed))
        except Exception as e:  # the commit stands: its HTTP answer or ack must still go out
            info = classify_exception(e, dependency="exchange")
            self.metrics.errors.labels(SERVICE, info.category.value, "TRADE_UPDATES_FAILED").inc()
            log.exception("trade updates not published", extra={"orders": [o.id for o in changed]})


async def build(deps: Deps, *, ctx: handlers.Ctx | None = None) -> Service:
    """Load the exchange's state from its schema and wire its bar consumer and Alpaca API."""
    store = ExchangeStore(deps.store.pool, deps.store.schema)
    await asyncio.to_thread(sessions.load)  # the calendar, before the first request or bar needs it
    await store.check_migrated()  # the runtime checked the base tables; this adds the exchange's
    config = cast(ExchangeConfig, deps.section)
    problem = config.lockstep_problem(deps.common.lockstep)
    if problem:
        raise ConfigError(problem)
    if ctx is None:
        ctx = handlers.Ctx(
            allow_shorting=config.allow_shorting,
            model=config.cost_model(),
            retain_closed_ns=config.retain_closed_hours * 3600 * 1_000_000_000,
        )
    service = ExchangeService(
        config,
        bus=deps.bus,
        store=store,
        metrics=deps.metrics,
        clock=deps.clock.now_ns,
        ctx=ctx,
    )
    await service.start()
    # a file source reads and checks its whole file here: a bad row stops the exchange at start
    market_data = bars.MarketData(bars.source_for(config), clock=deps.clock.now_ns, page_max=config.data_page_max)
    log.info("market data source ready", extra={"data_source": config.data_source})

    def configure(app: FastAPI) -> None:
        # fault middleware first: api.configure's key check, added after it, wraps it
        faults.install(app, service.faults, service.config, service.set_venue_status)
        if config.admin_enabled:
            app.include_router(bars.admin_router(market_data, config))
        app.include_router(bars.router(market_data))
        api.configure(app, service.config)
        app.add_api_websocket_route("/stream", stream.endpoint(service.hub, service.config))

    consumers = [(bars_consumer(deps.bus.subjects), service.on_bars)]
    if config.cost_model_source == "calibrated":
        consumers.append((costs_consumer(deps.bus.subjects), service.on_costs))
    return Service(
        consumers=consumers,
        router=api.router(service),
        on_stop=[service.hub.close],
        configure=configure,
    )
