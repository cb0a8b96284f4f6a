"""NATS edge of the local paper exchange: every closed bar and watermark, in stream order, and TCA's cost model."""

from __future__ import annotations

from libs.bus import ConsumerSpec
from libs.contracts import subjects as sj
from libs.contracts.codec import decode_event

BARS_CONSUMER = "exchange-md"  # bars and marketdata's watermark
COSTS_CONSUMER = "exchange-costs"


def decode(subject: str, data: bytes) -> object:
    """Decode a market-data event; the exchange acts on BarClosed and skips the rest."""
    return decode_event(data)


def bars_consumer(subjects: sj.Subjects) -> ConsumerSpec:
    """Return the durable consumer of every closed bar and marketdata's watermark after each timestamp."""
    return ConsumerSpec(
        durable=BARS_CONSUMER,
        family=sj.MD,
        filter_subject=subjects.family_wildcard(sj.MD),
        replaces="exchange-bars",
        decode=decode,
    )


def costs_consumer(subjects: sj.Subjects) -> ConsumerSpec:
    """Return the durable consumer of TCA's calibrations (KEEL_EXCHANGE_COST_MODEL_SOURCE=calibrated)."""
    return ConsumerSpec(
        durable=COSTS_CONSUMER,
        family=sj.TCA,
        filter_subject=subjects.event(sj.TCA, "cost_model_updated"),
        decode=decode,
    )
