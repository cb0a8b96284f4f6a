"""Prometheus metrics shared by every service; one registry per process."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Metrics:
    """The counters every keel service exposes on /metrics."""

    def __init__(self, service: str) -> None:
        self.registry = CollectorRegistry()
        labels = ["service"]
        self.service = service
        self.consumed = Counter(
            "keel_messages_consumed_total", "Messages handled", labels + ["consumer"], registry=self.registry
        )
        self.published = Counter("keel_messages_published_total", "Events published", labels, registry=self.registry)
        self.dead_lettered = Counter(
            "keel_dead_letters_total",
            "Messages sent to the dead-letter stream",
            labels + ["consumer"],
            registry=self.registry,
        )
        self.redelivered = Counter(
            "keel_redeliveries_skipped_total",
            "Already-applied messages acked again",
            labels + ["consumer"],
            registry=self.registry,
        )
        self.errors = Counter(
            "keel_errors_total", "Classified errors", labels + ["category", "reason"], registry=self.registry
        )
        self.decisions = Counter(
            "keel_decisions_total",
            "Decisions by outcome and reason",
            labels + ["kind", "reason"],
            registry=self.registry,
        )
        self.batch_seconds = Histogram(
            "keel_batch_seconds", "Time to apply one consumed batch", labels, registry=self.registry
        )
        self.outbox_pending = Gauge(
            "keel_outbox_pending", "Outbox rows not yet published", labels, registry=self.registry
        )
        self.halted = Gauge("keel_halted", "1 while trading is halted", labels, registry=self.registry)
        self.breaker_open = Gauge(
            "keel_breaker_open",
            "1 while a dependency's circuit breaker is open (shared by every process)",
            labels + ["dependency"],
            registry=self.registry,
        )
        self.breaker_failures = Gauge(
            "keel_breaker_failures",
            "Failures of a dependency within its breaker's long window",
            labels + ["dependency"],
            registry=self.registry,
        )

    def decision(self, kind: str, reason: str) -> None:
        """Count one decision."""
        self.decisions.labels(self.service, kind, reason).inc()
