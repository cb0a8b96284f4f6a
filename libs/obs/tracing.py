"""W3C trace context carried in NATS headers through every hop (OpenTelemetry SDK).

A consumer opens a span whose parent is the traceparent of the message it handles; events
it emits carry that span's context, so one trace runs from BarClosed to OrderFilled. The
trace context lives in headers only, never in event payloads, so replays stay byte-identical.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

_propagator = TraceContextTextMapPropagator()


def setup_tracing(service: str) -> None:
    """Install an SDK tracer provider naming this service (spans are exported nowhere yet)."""
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        trace.set_tracer_provider(TracerProvider(resource=Resource.create({"service.name": service})))


def tracer() -> trace.Tracer:
    """Return keel's tracer."""
    return trace.get_tracer("keel")


def extract(headers: Mapping[str, str] | None) -> Context:
    """Return the trace context carried by message headers."""
    return _propagator.extract(dict(headers or {}))


def inject(headers: dict[str, str], context: Context | None = None) -> dict[str, str]:
    """Write the current (or given) trace context into headers and return them."""
    _propagator.inject(headers, context=context)
    return headers


@contextlib.contextmanager
def span(
    name: str, *, parent_headers: Mapping[str, str] | None = None, kind: trace.SpanKind = trace.SpanKind.CONSUMER
) -> Iterator[trace.Span]:
    """Open a span that continues the trace found in parent_headers."""
    with tracer().start_as_current_span(name, context=extract(parent_headers), kind=kind) as s:
        yield s


def trace_id(headers: Mapping[str, str] | None) -> str:
    """Return the 32-hex trace id of a traceparent header, or ''."""
    tp = (headers or {}).get("traceparent", "")
    parts = tp.split("-")
    return parts[1] if len(parts) == 4 else ""
