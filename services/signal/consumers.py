"""NATS edge of the signal service: bars and the feed's watermark, in stream order."""

from __future__ import annotations

import msgspec

from libs.bus import ConsumerSpec
from libs.bus.consumer import OnBatch
from libs.contracts import subjects as sj
from libs.contracts.marketdata import BarClosed
from libs.contracts.ops import Watermark
from libs.runtime.processor import Processor
from services.signal import handlers

_decoder = msgspec.json.Decoder(BarClosed | Watermark)


def decode(subject: str, data: bytes) -> object:
    """Decode a market-data message; anything else fails validation (dead letter)."""
    return _decoder.decode(data)


def consumers(subjects: sj.Subjects, processor: Processor) -> list[tuple[ConsumerSpec, OnBatch]]:
    """Return the signal service's durable consumers."""
    spec = ConsumerSpec(
        durable="signal-bars", family=sj.MD, filter_subject=subjects.family_wildcard(sj.MD), decode=decode
    )

    async def on_batch(batch):  # type: ignore[no-untyped-def]
        await processor.apply(spec.durable, batch, handlers.step)

    return [(spec, on_batch)]
