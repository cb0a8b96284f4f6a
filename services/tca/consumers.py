"""NATS edge of TCA: intents and risk's blocks, execution reports, and bars (prices over time)."""

from __future__ import annotations

import msgspec

from libs.bus import ConsumerSpec
from libs.bus.consumer import Inbound, OnBatch
from libs.contracts import subjects as sj
from libs.contracts.execution import ExecutionEvent
from libs.contracts.marketdata import BarClosed
from libs.contracts.ops import FillsDone, Watermark
from libs.contracts.risk import RiskEvent
from libs.runtime.processor import Processor
from services.tca import handlers

_intent_decoder = msgspec.json.Decoder(RiskEvent | Watermark)
_report_decoder = msgspec.json.Decoder(ExecutionEvent | Watermark | FillsDone)
_bar_decoder = msgspec.json.Decoder(BarClosed | Watermark)


def consumers(subjects: sj.Subjects, processor: Processor) -> list[tuple[ConsumerSpec, OnBatch]]:
    """Return TCA's durable consumers."""
    intents = ConsumerSpec(
        durable="tca-intents",
        family=sj.RISK,
        filter_subject=subjects.family_wildcard(sj.RISK),
        decode=lambda _s, data: _intent_decoder.decode(data),
    )
    fills = ConsumerSpec(
        durable="tca-fills",
        family=sj.EXEC,
        filter_subject=subjects.family_wildcard(sj.EXEC),
        decode=lambda _s, data: _report_decoder.decode(data),
    )
    bars = ConsumerSpec(
        durable="tca-bars",
        family=sj.MD,
        filter_subject=subjects.family_wildcard(sj.MD),
        decode=lambda _s, data: _bar_decoder.decode(data),
    )

    def apply(spec: ConsumerSpec) -> OnBatch:
        async def on_batch(batch: list[Inbound]) -> None:
            await processor.apply(spec.durable, batch, handlers.step)

        return on_batch

    return [(intents, apply(intents)), (fills, apply(fills)), (bars, apply(bars))]
