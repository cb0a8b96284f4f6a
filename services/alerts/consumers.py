"""NATS edge of alerts: rejects, dead letters, every published alert, and heartbeats."""

from __future__ import annotations

import logging

import msgspec

from libs.bus import Bus, ConsumerSpec
from libs.bus.consumer import Inbound, OnBatch
from libs.contracts import subjects as sj
from libs.contracts.execution import ExecutionEvent
from libs.contracts.ops import AlertRaised, FillsDone, Watermark
from libs.runtime.processor import Processor
from services.alerts import handlers, store
from services.alerts.state import DeadLetter

log = logging.getLogger(__name__)
_report_decoder = msgspec.json.Decoder(ExecutionEvent | Watermark | FillsDone)
_alert_decoder = msgspec.json.Decoder(AlertRaised)
_LEVEL = {"info": logging.INFO, "warning": logging.WARNING, "critical": logging.CRITICAL}


def _dead_letter(inbound: Inbound) -> Inbound:
    h = inbound.headers
    dl = DeadLetter(
        dlq_seq=inbound.stream_seq,
        consumer=h.get(sj.H_DLQ_CONSUMER, "?"),
        subject=h.get(sj.H_DLQ_SUBJECT, "?"),
        stream_seq=h.get(sj.H_DLQ_STREAM_SEQ, "?"),
        error=h.get(sj.H_DLQ_ERROR, "?"),
    )
    return Inbound(inbound.subject, inbound.stream_seq, dl, h, inbound.msg)


def consumers(bus: Bus, processor: Processor) -> list[tuple[ConsumerSpec, OnBatch]]:
    """Return the alerts service's durable consumers."""
    subjects = bus.subjects
    rejects = ConsumerSpec(
        durable="alerts-rejects",
        family=sj.EXEC,
        filter_subject=subjects.family_wildcard(sj.EXEC),
        decode=lambda _s, data: _report_decoder.decode(data),
    )
    dead = ConsumerSpec(
        durable="alerts-dlq",
        family=sj.DLQ,
        filter_subject=subjects.family_wildcard(sj.DLQ),
        # the payload is whatever could not be decoded; what matters is in the headers
        decode=lambda _s, data: data,
    )
    raised = ConsumerSpec(
        durable="alerts-log",
        family=sj.OPS,
        filter_subject=subjects.event(sj.OPS, "alert_raised"),
        decode=lambda _s, data: _alert_decoder.decode(data),
    )

    async def on_rejects(batch: list[Inbound]) -> None:
        await processor.apply(rejects.durable, batch, handlers.step)

    async def on_dead(batch: list[Inbound]) -> None:
        await processor.apply(dead.durable, [_dead_letter(i) for i in batch], handlers.step)

    async def on_raised(batch: list[Inbound]) -> None:
        async with processor.store.unit() as uow:
            fresh = await uow.track(raised.durable, [i.stream_seq for i in batch])
            for inbound in batch:
                if inbound.stream_seq in fresh:
                    await store.save(uow, inbound.payload)  # type: ignore[arg-type]
        for inbound in batch:
            if inbound.stream_seq in fresh:
                a: AlertRaised = inbound.payload  # type: ignore[assignment]
                log.log(
                    _LEVEL.get(a.severity, logging.WARNING),
                    "ALERT_%s",
                    a.code,
                    extra={
                        "alert": a.code,
                        "severity": a.severity,
                        "source": a.source,
                        "alert_message": a.message,
                        "details": a.details,
                        "event_id": a.event_id,
                    },
                )

    return [(rejects, on_rejects), (dead, on_dead), (raised, on_raised)]
