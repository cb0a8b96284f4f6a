"""Composition root of the local paper exchange: its store, the bar consumer and the Alpaca API.

`build(deps)` is the one bootstrap for production and tests (STYLE 2); the shared runtime
(libs/runtime/runner.py) serves it with /healthz, /readyz, /metrics and heartbeats. Mutations
(REST submits and cancels, bar batches) run one at a time under one asyncio.Lock: the pure
handler computes the next state, the store commits it (with tracking rows for bars), and only
then does the in-memory state move and the HTTP answer or the ack go out.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import cast

from libs.bus import Bus, Inbound
from libs.contracts.marketdata import BarClosed
from libs.obs.metrics import Metrics
from libs.runtime.runner import Deps, Service
from services.exchange import api, handlers
from services.exchange.config import ExchangeConfig
from services.exchange.consumers import BARS_CONSUMER, bars_consumer
from services.exchange.state import ExchangeOrder, ExchangeState, Rejection, SubmitOrder
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

    @property
    def state(self) -> ExchangeState:
        """Return the current state (immutable: safe to read without the lock)."""
        if self._state is None:
            raise RuntimeError("expected ExchangeService.start() before use, was not started")
        return self._state

    async def start(self) -> None:
        """Load every order, position and the account from the store."""
        self._state = await self.store.load(self.config.account_id, self.config.initial_cash)
        log.info(
            "exchange state loaded",
            extra={
                "orders": len(self._state.orders),
                "open_orders": sum(len(ids) for ids in self._state.working.values()),
                "positions": len(self._state.positions),
                "clock_ns": self._state.clock,
            },
        )

    async def submit(self, request: SubmitOrder) -> ExchangeOrder | Rejection:
        """Accept or refuse an order; an accepted order is committed before this returns."""
        async with self._lock:
            before = self.state
            after, result = handlers.submit(before, request, self.ctx)
            if isinstance(result, ExchangeOrder):
                async with self.store.unit() as uow:
                    await self.store.save(uow, before, after, [result])
                self._state = after
                self.metrics.decision("order", "accepted")
            else:
                self.metrics.decision("order", result.reason)
            return result

    async def cancel(self, order_id: str) -> ExchangeOrder | Rejection:
        """Cancel one order; committed before this returns."""
        async with self._lock:
            before = self.state
            after, result = handlers.cancel(before, order_id, self.ctx)
            if isinstance(result, ExchangeOrder):
                async with self.store.unit() as uow:
                    await self.store.save(uow, before, after, [result])
                self._state = after
            return result

    async def cancel_all(self) -> list[ExchangeOrder]:
        """Cancel every open order; committed before this returns."""
        async with self._lock:
            before = self.state
            after, canceled = handlers.cancel_all(before, self.ctx)
            if canceled:
                async with self.store.unit() as uow:
                    await self.store.save(uow, before, after, canceled)
                self._state = after
            return canceled

    async def on_bars(self, batch: list[Inbound]) -> None:
        """Apply a batch of bars atomically with its tracking rows (STYLE 19)."""
        async with self._lock:
            before = self.state
            after = before
            changed: dict[str, ExchangeOrder] = {}
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


async def build(deps: Deps, *, ctx: handlers.Ctx = handlers.DEFAULT_CTX) -> Service:
    """Load the exchange's state from its schema and wire its bar consumer and Alpaca API."""
    store = ExchangeStore(deps.store.pool, deps.store.schema)
    await store.check_migrated()  # the runtime checked the base tables; this adds the exchange's
    service = ExchangeService(
        cast(ExchangeConfig, deps.section),
        bus=deps.bus,
        store=store,
        metrics=deps.metrics,
        clock=deps.clock.now_ns,
        ctx=ctx,
    )
    await service.start()
    return Service(
        consumers=[(bars_consumer(deps.bus.subjects), service.on_bars)],
        router=api.router(service),
        configure=lambda app: api.configure(app, service.config),
    )
