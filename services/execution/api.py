"""Read-only views of execution, and its own gauges on /metrics."""

from __future__ import annotations

from fastapi import APIRouter
from prometheus_client import Counter, Gauge

from libs.obs.metrics import Metrics
from libs.runtime.processor import Processor
from libs.runtime.runner import state_router
from services.execution import state as st
from services.execution.broker import StreamWatch


class ExecMetrics:
    """Execution's gauges: the trade_updates stream's health and the poller's cadence."""

    def __init__(self, metrics: Metrics) -> None:
        labels = ["service"]
        reg = metrics.registry
        self.service = metrics.service
        self.connected = Gauge(
            "keel_exec_stream_connected", "1 while the trade_updates stream is connected", labels, registry=reg
        )
        self.stale = Gauge(
            "keel_exec_stream_stale", "1 while the trade_updates stream is stale (STREAM_STALE)", labels, registry=reg
        )
        self.frame_age = Gauge(
            "keel_exec_stream_last_frame_age_seconds", "Seconds since the last stream frame", labels, registry=reg
        )
        self.frames = Counter(
            "keel_exec_stream_frames_total", "Stream frames by stream name", labels + ["stream"], registry=reg
        )
        self.poll_interval = Gauge(
            "keel_exec_poll_interval_seconds", "The REST poller's current interval", labels, registry=reg
        )
        self.unknown = Gauge("keel_exec_orders_unknown", "Orders whose status is unknown", labels, registry=reg)

    def observe(self, watch: StreamWatch, state: st.ExecState, interval: float) -> None:
        """Set the gauges from the watch and the state."""
        self.connected.labels(self.service).set(1 if watch.connected else 0)
        self.stale.labels(self.service).set(1 if watch.reason else 0)
        self.frame_age.labels(self.service).set(watch.last_frame_age())
        self.poll_interval.labels(self.service).set(interval)
        unknown = sum(1 for o in state.orders.values() if o.broker_status == st.UNKNOWN)
        self.unknown.labels(self.service).set(unknown)


def router(processor: Processor, watch: StreamWatch, stream_name: str) -> APIRouter:  # type: ignore[type-arg]
    """Return GET /state (orders held at the broker) and GET /stream (the stream's health)."""
    r = state_router(processor)

    @r.get("/stream")
    async def stream() -> dict[str, object]:
        return {
            "url": stream_name,
            "enabled": watch.enabled,
            "connected": watch.connected,
            "stale": bool(watch.reason),
            "reason": watch.reason,
            "trusted": watch.trusted,
            "last_frame_age_sec": round(watch.last_frame_age(), 3),
        }

    return r
