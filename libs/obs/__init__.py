"""Observability: structured JSON logs, OpenTelemetry trace propagation, Prometheus metrics."""
