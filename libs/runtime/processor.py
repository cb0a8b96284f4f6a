"""Apply consumed batches to a pure core atomically: tracking + state + outbox in one transaction.

`step(state, payload, ctx) -> (state, events)` is the service's pure decision (STYLE 5). The
processor owns everything impure around it: the transaction, tracking rows (STYLE 19), the
state snapshot, the outbox rows and a trace span per message whose context rides on every
event the message caused.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Generic, TypeVar

import msgspec

from libs.bus import Bus, Inbound
from libs.config import CommonConfig
from libs.contracts import subjects as sj
from libs.contracts.base import Event
from libs.contracts.codec import encode
from libs.db import Store, UnitOfWork
from libs.decide import Ctx
from libs.errors import classify_exception
from libs.obs import tracing
from libs.obs.metrics import Metrics
from libs.runtime.clock import Clock
from libs.runtime.crashpoints import crash_point

log = logging.getLogger(__name__)

S = TypeVar("S")


Step = Callable[[S, object, Ctx], tuple[S, Sequence[Event]]]
Project = Callable[[UnitOfWork, S, S, object, Sequence[Event]], Awaitable[None]]


class OutboxRelay:
    """Publish committed outbox rows in order; Nats-Msg-Id makes a re-publish harmless."""

    def __init__(self, bus: Bus, store: Store, metrics: Metrics | None = None) -> None:
        self.bus = bus
        self.store = store
        self.metrics = metrics
        self._kick = asyncio.Event()
        self._lock = asyncio.Lock()

    def kick(self) -> None:
        """Ask the relay to publish now."""
        self._kick.set()

    async def flush(self) -> int:
        """Publish every pending row; return how many were published."""
        total = 0
        async with self._lock:
            while rows := await self.store.pending_outbox(1000):
                futures = []
                for row in rows:
                    headers = json.loads(row["headers"])
                    headers[sj.H_EMITTED_AT] = str(time.time_ns())
                    futures.append(await self.bus.publish_encoded(row["subject"], row["data"], headers))
                acks = await asyncio.gather(*futures, return_exceptions=True)
                crash_point(f"{self.bus.service}.after_publish")
                failed = next((i for i, a in enumerate(acks) if isinstance(a, BaseException)), len(acks))
                # only the rows up to the first failure are known stored in order; the rest go
                # again (Nats-Msg-Id makes a row that did get stored a duplicate, not a copy)
                await self.store.mark_published([row["id"] for row in rows[:failed]])
                total += failed
                if self.metrics:
                    self.metrics.published.labels(self.metrics.service).inc(failed)
                if failed < len(acks):
                    raise acks[failed]  # type: ignore[misc]
        return total

    async def run(self, stop: asyncio.Event) -> None:
        """Flush on every kick, and every half second in case a kick was missed."""
        while not stop.is_set():
            try:
                await self.flush()
            except Exception as e:  # classified: transient publish failures are retried here
                info = classify_exception(e, dependency="bus")
                if not info.retryable:
                    raise
                if self.metrics:
                    self.metrics.errors.labels(self.metrics.service, info.category.value, info.reason_code).inc()
                log.warning("outbox publish failed; retrying", extra={"error": repr(e)[:300]})
                await asyncio.sleep(0.5)
                continue
            try:
                await asyncio.wait_for(self._kick.wait(), timeout=0.5)
            except TimeoutError:
                continue
            self._kick.clear()


class Processor(Generic[S]):
    """Holds a service's state and applies batches to it through a pure step."""

    def __init__(
        self,
        *,
        service: str,
        store: Store,
        relay: OutboxRelay,
        bus: Bus,
        clock: Clock,
        config: Any,
        config_sha256: str,
        state: S,
        state_type: type[S],
        metrics: Metrics | None = None,
        project: Project[S] | None = None,
        snapshot_name: str = "state",
        common: CommonConfig | None = None,
    ) -> None:
        self.service = service
        self.store = store
        self.relay = relay
        self.bus = bus
        self.clock = clock
        self.config = config
        self.config_sha256 = config_sha256
        self.state = state
        self.state_type = state_type
        self.metrics = metrics
        self.project = project
        self.snapshot_name = snapshot_name
        self.common = common or CommonConfig()
        # replay runs on event time only: an event's ts_init is its own ts_event, so two replays'
        # streams are byte-identical (DESIGN: events; the wall clock stays in headers)
        self.event_time_only = self.common.execution_mode == "replay"
        self.lock = asyncio.Lock()
        self._decoder = msgspec.json.Decoder(state_type)

    async def restore(self) -> None:
        """Load the last committed snapshot, if any."""
        data = await self.store.load_snapshot(self.snapshot_name)
        if data is not None:
            self.state = self._decoder.decode(data)

    def ctx(self) -> Ctx:
        """Build the context for one handler call."""
        return Ctx(
            now_ns=self.clock.now_ns(),
            service=self.service,
            config=self.config,
            config_sha256=self.config_sha256,
            common=self.common,
        )

    def stamp(self, events: Sequence[Event]) -> Sequence[Event]:
        """Return the events as they go out: in replay, each one's ts_init is its ts_event."""
        if not self.event_time_only:
            return events
        return [e if e.ts_init == e.ts_event else msgspec.structs.replace(e, ts_init=e.ts_event) for e in events]

    def rows_for(self, events: Sequence[Event]) -> list[tuple[str, str, bytes, dict[str, str]]]:
        """Encode events as outbox rows carrying the current trace context."""
        trace_headers = tracing.inject({})
        return [
            (e.event_id, self.bus.subjects.of(e), encode(e), {**trace_headers, sj.H_MSG_ID: e.event_id}) for e in events
        ]

    async def apply(self, consumer: str, batch: list[Inbound], step: Step[S]) -> None:
        """Apply a batch atomically; already-applied messages are skipped."""
        started = time.perf_counter()
        async with self.lock:
            async with self.store.unit() as uow:
                fresh = await uow.track(consumer, [i.stream_seq for i in batch])
                state = self.state
                rows: list[tuple[str, str, bytes, dict[str, str]]] = []
                for inbound in batch:
                    if inbound.stream_seq not in fresh:
                        if self.metrics:
                            self.metrics.redelivered.labels(self.service, consumer).inc()
                        continue
                    with tracing.span(f"{consumer} {inbound.subject}", parent_headers=inbound.headers):
                        new_state, events = step(state, inbound.payload, self.ctx())
                        events = self.stamp(events)
                        rows.extend(self.rows_for(events))
                    if self.project is not None:
                        await self.project(uow, state, new_state, inbound.payload, events)
                    state = new_state
                await uow.add_outbox(rows)
                await uow.save_snapshot(self.snapshot_name, encode(state))  # type: ignore[arg-type]
            if rows:
                crash_point(f"{self.service}.after_commit")
            self.state = state
        if self.metrics:
            self.metrics.batch_seconds.labels(self.service).observe(time.perf_counter() - started)
        if rows:
            self.relay.kick()

    async def commit(self, fn: Callable[[S], tuple[S, Sequence[Event]]]) -> Sequence[Event]:
        """Commit a state change and its events produced outside a consumed message (timers, I/O results)."""
        async with self.lock:
            state, events = fn(self.state)
            events = self.stamp(events)
            async with self.store.unit() as uow:
                await uow.add_outbox(self.rows_for(events))
                await uow.save_snapshot(self.snapshot_name, encode(state))  # type: ignore[arg-type]
            if events:
                crash_point(f"{self.service}.after_commit")
            self.state = state
        if events:
            self.relay.kick()
        return events
