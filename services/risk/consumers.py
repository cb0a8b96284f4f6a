"""NATS edge of the risk service: sleeve targets, the OMS's stream (positions, FillsDone), TCA's.

With KEEL_LOCKSTEP the targets of a bar wait here (never in the pure handlers) until the OMS's
FillsDone has reached that bar and TCA's watermark the previous one: every fill the exchange
made up to the bar has moved risk's positions and every cost model made before it is adopted,
so the same bar gives the same intents whatever the processes' timing (DESIGN: lockstep).
"""

from __future__ import annotations

import asyncio
import itertools
import logging

import msgspec

from libs.bus import ConsumerSpec, Inbound
from libs.bus.consumer import OnBatch
from libs.contracts import subjects as sj
from libs.contracts.codec import decode_event
from libs.contracts.ops import Watermark
from libs.contracts.signal import TargetProposed
from libs.runtime.processor import Processor
from services.risk import handlers
from services.risk.state import RiskState

log = logging.getLogger(__name__)

_signal_decoder = msgspec.json.Decoder(TargetProposed | Watermark)
LOCKSTEP_WARN_SEC = 30.0  # how often a bar still held is said


class Lockstep:
    """Tells when risk may decide a bar: its fill lane and TCA have reached it."""

    def __init__(self, processor: Processor[RiskState], *, enabled: bool) -> None:
        self.processor = processor
        self.enabled = enabled
        self.changed = asyncio.Event()

    def ready(self, bar_ts: int) -> bool:
        """True when the fills up to bar_ts and the cost models before it are in risk's state."""
        return not self.enabled or handlers.lockstep_ready(self.processor.state, bar_ts)

    async def wait(self, bar_ts: int) -> None:
        """Wait until `ready(bar_ts)`; say so every LOCKSTEP_WARN_SEC (a stalled exchange or TCA)."""
        while not self.ready(bar_ts):
            self.changed.clear()
            try:
                await asyncio.wait_for(self.changed.wait(), timeout=LOCKSTEP_WARN_SEC)
            except TimeoutError:
                s = self.processor.state
                log.warning(
                    "lockstep: bar held for the fill lane or TCA",
                    extra={"bar_ts": bar_ts, "fills_done": s.fills_done, "tca_watermark": s.tca_watermark,
                           "last_watermark": s.last_watermark},
                )  # fmt: skip
                alert = handlers.lockstep_stalled(s, bar_ts)
                await self.processor.commit(lambda state, alert=alert: (state, [alert]))  # its id is the bar's: once


def _bar_of(inbound: Inbound) -> int:
    ev = inbound.payload
    return ev.bar_ts if isinstance(ev, TargetProposed | Watermark) else 0


def consumers(
    subjects: sj.Subjects, processor: Processor[RiskState], *, lockstep: bool = False
) -> list[tuple[ConsumerSpec, OnBatch]]:
    """Return the risk service's durable consumers."""
    gate = Lockstep(processor, enabled=lockstep)
    targets = ConsumerSpec(
        durable="risk-targets",
        family=sj.SIGNAL,
        filter_subject=subjects.family_wildcard(sj.SIGNAL),
        decode=lambda _subject, data: _signal_decoder.decode(data),
        # in lockstep a bar's targets are netted in one batch: no position report of its first
        # intents can come between them
        unit_end=subjects.watermark("signal") if lockstep else "",
    )
    # the OMS's and TCA's whole streams: position reports and FillsDone, cost models and TCA's
    # watermark, each in its stream's order (the rest is skipped by the handlers)
    oms = ConsumerSpec(
        durable="risk-oms",
        family=sj.OMS,
        filter_subject=subjects.family_wildcard(sj.OMS),
        decode=lambda _subject, data: decode_event(data),
        replaces="risk-positions",  # position reports only, before the fill lane
    )
    tca = ConsumerSpec(
        durable="risk-tca",
        family=sj.TCA,
        filter_subject=subjects.family_wildcard(sj.TCA),
        decode=lambda _subject, data: decode_event(data),
        replaces="risk-costs",  # cost models only, before TCA's watermark
    )

    async def on_targets(batch: list[Inbound]) -> None:
        for bar_ts, group in itertools.groupby(batch, key=_bar_of):
            await gate.wait(bar_ts)
            await processor.apply(targets.durable, list(group), handlers.step)

    def inputs(spec: ConsumerSpec) -> OnBatch:
        async def on_batch(batch: list[Inbound]) -> None:
            await processor.apply(spec.durable, batch, handlers.step)
            gate.changed.set()

        return on_batch

    return [(targets, on_targets), (oms, inputs(oms)), (tca, inputs(tca))]
