"""Run one service process: config, logging, bus, store, API, heartbeats, consumers, relay.

Each service's `__main__` calls `main(name, build, section, section_prefix)`; `build(deps)`
returns the service's consumers, background tasks and read-only views (STYLE 2). A missing
dependency stops the process at start with one line naming it (the runtime contract).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import uvicorn
from fastapi import APIRouter, FastAPI, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from libs.bus import Bus, ConsumerSpec, run_consumer
from libs.bus.consumer import OnBatch
from libs.config import ConfigError, Loaded, Section, load
from libs.contracts.base import derive_id
from libs.contracts.codec import encode
from libs.contracts.ops import AlertRaised, Heartbeat
from libs.contracts.subjects import H_MSG_ID, Subjects
from libs.db import Store, connect_pool, schema_name
from libs.errors import DependencyUnavailable, classify_exception
from libs.errors.breakers import NS, Breakers, BreakerState, policy_of
from libs.errors.handle import ErrorHandler
from libs.obs.logs import setup_logging
from libs.obs.metrics import Metrics
from libs.obs.tracing import setup_tracing
from libs.runtime import crashpoints
from libs.runtime.clock import Clock, LiveClock
from libs.runtime.processor import OutboxRelay, Processor

log = logging.getLogger(__name__)

Task = Callable[[asyncio.Event], Awaitable[None]]


@dataclass
class Deps:
    """Real adapters a service is built from; tests build the same with their own values."""

    name: str
    loaded: Loaded
    bus: Bus
    store: Store
    relay: OutboxRelay
    metrics: Metrics
    clock: Clock
    api_url: str = ""

    @property
    def section(self):  # type: ignore[no-untyped-def]
        """Return this service's own config section."""
        return self.loaded.section

    @property
    def common(self):  # type: ignore[no-untyped-def]
        """Return the common config."""
        return self.loaded.common

    async def breakers(self) -> Breakers:
        """Return the deployment's dependency breakers: the shared bucket, on this process's clock."""
        return Breakers(await self.bus.breakers_kv(), policy_of(self.common), self.clock.now_ns)

    async def errors(self) -> ErrorHandler:
        """Return this process's error handler (libs/errors/handle.py): classify, count, act."""

        async def alert(event: AlertRaised) -> None:
            await self.bus.publish(event)  # Msg-Id = event_id: the same alert is stored once

        return ErrorHandler(
            service=self.name,
            bus=self.bus,
            breakers=await self.breakers(),
            alert=alert,
            now_ns=self.clock.now_ns,
            metrics=self.metrics,
        )


@dataclass
class Service:
    """What build() returns: consumers, background tasks and read-only API views."""

    consumers: Sequence[tuple[ConsumerSpec, OnBatch]] = ()
    tasks: Sequence[Task] = ()
    router: APIRouter | None = None
    on_stop: Sequence[Callable[[], Awaitable[None]]] = field(default_factory=list)
    # app-wide hook run by create_api after the router: exception handlers, middleware
    configure: Callable[[FastAPI], None] | None = None


Build = Callable[[Deps], Awaitable[Service]]


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port free right now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def create_api(deps: Deps, service: Service) -> FastAPI:
    """Build the service's FastAPI app: /healthz, /readyz, /metrics and its own views."""
    app = FastAPI(title=f"keel {deps.name}", docs_url=None, redoc_url=None)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok", "service": deps.name}

    @app.get("/readyz")
    async def readyz() -> Response:
        checks: dict[str, str] = {}
        try:
            await deps.bus.js.account_info()
            checks["nats"] = "ok"
        except Exception as e:  # classified: readiness reports, it never raises
            checks["nats"] = classify_exception(e, dependency="bus").reason_code
        try:
            await deps.store.ping()
            checks["postgres"] = "ok"
        except Exception as e:  # classified: readiness reports, it never raises
            checks["postgres"] = classify_exception(e, dependency="db").reason_code
        ok = all(v == "ok" for v in checks.values())
        return JSONResponse({"ready": ok, "service": deps.name, "checks": checks}, status_code=200 if ok else 503)

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(deps.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    if service.router is not None:
        app.include_router(service.router)
    if service.configure is not None:
        service.configure(app)
    return app


async def heartbeats(deps: Deps, stop: asyncio.Event) -> None:
    """Publish a Heartbeat every interval on core NATS (the HB stream keeps them briefly)."""
    instance = deps.common.instance or f"{socket.gethostname()}-{deps.name}"
    seq = 0
    while not stop.is_set():
        seq += 1
        now = deps.clock.now_ns()
        hb = Heartbeat(
            event_id=derive_id("ops.heartbeat.v1", instance, now, seq),
            correlation_id=instance,
            causation_id=instance,
            ts_event=now,
            ts_init=now,
            service=deps.name,
            instance=instance,
            seq=seq,
            api_url=deps.api_url,
        )
        await deps.bus.nc.publish(deps.bus.subjects.of(hb), encode(hb), headers={H_MSG_ID: hb.event_id})
        try:
            await asyncio.wait_for(stop.wait(), timeout=deps.common.heartbeat_sec)
        except TimeoutError:
            continue


async def breaker_gauges(deps: Deps, stop: asyncio.Event) -> None:
    """Show every dependency breaker of the deployment on this process's /metrics."""
    breakers = await deps.breakers()

    def show(state: BreakerState) -> None:
        now = deps.clock.now_ns()
        window = breakers.policy.long_window_sec * NS
        deps.metrics.breaker_open.labels(deps.name, state.dependency).set(1 if state.is_open(now) else 0)
        recent = sum(1 for t in state.failures if now - t < window)
        deps.metrics.breaker_failures.labels(deps.name, state.dependency).set(recent)

    await breakers.watch(show, stop, tick=deps.common.heartbeat_sec)


async def connect(name: str, loaded: Loaded, clock: Clock | None = None) -> Deps:
    """Connect the real adapters or raise DependencyUnavailable naming the missing one."""
    common = loaded.common
    if not common.nats_url:
        raise DependencyUnavailable("KEEL_NATS_URL: expected a NATS URL, was empty")
    if not common.database_url:
        raise DependencyUnavailable("KEEL_DATABASE_URL: expected a Postgres URL, was empty")
    bus = await Bus.connect(common.nats_url, Subjects(common.prefix), service=name)
    await bus.ensure_provisioned()
    pool = await connect_pool(common.database_url)
    store = Store(pool, schema_name(common.schema_prefix, name))
    await store.check_migrated()
    metrics = Metrics(name)
    return Deps(
        name=name,
        loaded=loaded,
        bus=bus,
        store=store,
        relay=OutboxRelay(bus, store, metrics),
        metrics=metrics,
        clock=clock or LiveClock(),
    )


async def serve(name: str, build: Build, loaded: Loaded) -> None:
    """Run a service until SIGTERM/SIGINT; a crashed task ends the process (its supervisor restarts it)."""
    deps = await connect(name, loaded)
    port = deps.common.api_port or free_port(deps.common.api_host)
    deps.api_url = f"http://{deps.common.api_host}:{port}"
    service = await build(deps)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    server = uvicorn.Server(
        uvicorn.Config(
            create_api(deps, service),
            host=deps.common.api_host,
            port=port,
            log_level="warning",
            lifespan="off",
        )
    )
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]  # we own signals

    async def api(_: asyncio.Event) -> None:
        await server.serve()

    runners: list[Task] = [api, lambda s: heartbeats(deps, s), lambda s: breaker_gauges(deps, s), deps.relay.run]
    errors = await deps.errors()
    for spec, on_batch in service.consumers:
        runners.append(
            lambda s, spec=spec, on_batch=on_batch: run_consumer(
                deps.bus, spec, on_batch, stop=s, metrics=deps.metrics, errors=errors
            )
        )
    runners.extend(service.tasks)
    tasks = [asyncio.create_task(r(stop)) for r in runners]
    log.info("service started", extra={"api_url": deps.api_url, "consumers": [c.durable for c, _ in service.consumers]})
    stopper = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait([*tasks, stopper], return_when=asyncio.FIRST_COMPLETED)
    crashed = [t for t in done if t is not stopper and t.exception() is not None]
    stop.set()
    server.should_exit = True
    for t in tasks:
        if not t.done():
            t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for hook in service.on_stop:
        await hook()
    await deps.relay.flush()
    await deps.bus.close()
    await deps.store.pool.close()
    if crashed:
        exc = crashed[0].exception()
        log.error("task crashed; exiting", exc_info=exc)
        raise SystemExit(1)
    log.info("service stopped")


def main(name: str, build: Build, section: type[Section] | None = None, section_prefix: str = "") -> None:
    """Entry point of a service process."""
    try:
        loaded = load(section, section_prefix=section_prefix)
    except ConfigError as e:
        print(f"keel {name}: configuration error: {e}", file=sys.stderr)
        raise SystemExit(2) from e
    setup_logging(name, loaded.common.log_level)
    setup_tracing(name)
    try:
        crashpoints.arm(loaded.common.crash_at)
    except ValueError as e:
        print(f"keel {name}: configuration error: KEEL_CRASH_AT: {e}", file=sys.stderr)
        raise SystemExit(2) from e
    log.info("effective config", extra={"config": loaded.redacted, "config_sha256": loaded.sha256})
    try:
        asyncio.run(serve(name, build, loaded))
    except DependencyUnavailable as e:
        print(f"keel {name}: cannot start: {e}", file=sys.stderr)
        raise SystemExit(2) from e


async def processor_for(deps: Deps, initial_state: object, *, project=None) -> Processor:  # type: ignore[no-untyped-def]
    """Build a service's processor over its store and restore the last snapshot."""
    processor = Processor(
        service=deps.name,
        store=deps.store,
        relay=deps.relay,
        bus=deps.bus,
        clock=deps.clock,
        config=deps.section,
        config_sha256=deps.loaded.sha256,
        state=initial_state,
        state_type=type(initial_state),
        metrics=deps.metrics,
        project=project,
        common=deps.loaded.common,
    )
    await processor.restore()
    return processor


def state_router(processor: Processor) -> APIRouter:  # type: ignore[type-arg]
    """Expose a processor's current state read-only at GET /state."""
    router = APIRouter()

    @router.get("/state")
    async def state() -> Response:
        return Response(encode(processor.state), media_type="application/json")  # type: ignore[arg-type]

    return router
