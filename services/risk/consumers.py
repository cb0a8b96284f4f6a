"""NATS edge of the risk service: sleeve targets, the OMS's position reports, TCA's cost model."""

from __future__ import annotations

import msgspec

from libs.bus import ConsumerSpec
from libs.bus.consumer import OnBatch
from libs.contracts import subjects as sj
from libs.contracts.oms import PositionChanged
from libs.contracts.ops import Watermark
from libs.contracts.signal import TargetProposed
from libs.contracts.tca import CostModelUpdated
from libs.runtime.processor import Processor
from services.risk import handlers

_signal_decoder = msgspec.json.Decoder(TargetProposed | Watermark)
_position_decoder = msgspec.json.Decoder(PositionChanged)
_cost_decoder = msgspec.json.Decoder(CostModelUpdated)


def consumers(subjects: sj.Subjects, processor: Processor) -> list[tuple[ConsumerSpec, OnBatch]]:
    """Return the risk service's durable consumers."""
    targets = ConsumerSpec(
        durable="risk-targets",
        family=sj.SIGNAL,
        filter_subject=subjects.family_wildcard(sj.SIGNAL),
        decode=lambda _subject, data: _signal_decoder.decode(data),
    )
    positions = ConsumerSpec(
        durable="risk-positions",
        family=sj.OMS,
        filter_subject=subjects.event(sj.OMS, "position_changed"),
        decode=lambda _subject, data: _position_decoder.decode(data),
    )

    costs = ConsumerSpec(
        durable="risk-costs",
        family=sj.TCA,
        filter_subject=subjects.event(sj.TCA, "cost_model_updated"),
        decode=lambda _subject, data: _cost_decoder.decode(data),
    )

    def apply(spec: ConsumerSpec) -> OnBatch:
        async def on_batch(batch):  # type: ignore[no-untyped-def]
            await processor.apply(spec.durable, batch, handlers.step)

        return on_batch

    return [(targets, apply(targets)), (positions, apply(positions)), (costs, apply(costs))]
