"""NATS edge of execution: approved decisions become broker orders; operator cancel-all."""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict

import msgspec

from libs.bus import Bus, ConsumerSpec
from libs.bus.consumer import Inbound, OnBatch
from libs.contracts import subjects as sj
from libs.contracts.control import CancelAllOrders, HaltTrading
from libs.contracts.oms import OmsEvent, PretradeDecision
from libs.contracts.ops import Watermark
from libs.obs import tracing
from libs.runtime.processor import Processor
from services.execution import handlers
from services.execution.broker import AlpacaBroker
from services.oms.consumers import decode_control

log = logging.getLogger(__name__)
_decision_decoder = msgspec.json.Decoder(OmsEvent | Watermark)


def consumers(
    bus: Bus, processor: Processor, broker: AlpacaBroker, inflight: set[str]
) -> list[tuple[ConsumerSpec, OnBatch]]:
    """Return execution's durable consumers; `inflight` holds orders whose submit is under way."""
    subjects = bus.subjects
    decisions = ConsumerSpec(
        durable="execution-decisions",
        family=sj.OMS,
        filter_subject=subjects.family_wildcard(sj.OMS),
        decode=lambda _s, data: _decision_decoder.decode(data),
        batch=64,
    )
    control = ConsumerSpec(
        durable="execution-control",
        family=sj.CTL,
        filter_subject=f"{subjects.prefix}.{sj.CTL}.>",
        decode=decode_control,
        batch=16,
    )

    async def submit_one(inbound: Inbound, d: PretradeDecision) -> None:
        cid = d.client_order_id
        if await processor.store.is_tracked(decisions.durable, inbound.stream_seq):
            return  # applied before a crash; the ack was lost
        with tracing.span("execution submit", parent_headers=inbound.headers):
            ctx = processor.ctx()
            # an order handed over before a crash is resolved, never refused: the halt flag
            # only stops orders that have not yet left for the broker
            if not await processor.store.has_outbox_event(handlers.submitted_event_id(cid)):
                if not await broker.wait_for_clock(d.bar_ts):
                    log.warning(
                        "broker clock behind the decision bar; submitting anyway",
                        extra={"client_order_id": cid, "bar_ts": d.bar_ts},
                    )
                halt = await bus.halt_state()
                if halt is not None and halt.halted:
                    refused = [handlers.blocked(d, "KILL_SWITCH_BLOCK", f"halted: {halt.reason}", ctx)]
                    await processor.apply(decisions.durable, [inbound], lambda s, _e, _c: (s, refused))
                    return
                traceparent = tracing.inject({}).get(sj.H_TRACEPARENT, "")
                await processor.commit(lambda s: handlers.hand_over(s, d, broker.name, traceparent, ctx))
            order = processor.state.orders.get(cid)
            if order is None:
                outcome: handlers.Outcome = handlers.Unknown(message="finished before this redelivery")
            else:
                inflight.add(cid)
                try:
                    outcome = await broker.submit(order)
                finally:
                    inflight.discard(cid)
        await processor.apply(decisions.durable, [inbound], lambda s, _e, c: handlers.on_outcome(s, cid, outcome, c))

    async def submit_all(approved: list[tuple[Inbound, PretradeDecision]]) -> None:
        # orders for different symbols go out concurrently (their HTTP round trips overlap);
        # orders for one symbol keep their stream order
        by_symbol: dict[str, list[tuple[Inbound, PretradeDecision]]] = defaultdict(list)
        for inbound, d in approved:
            by_symbol[d.symbol].append((inbound, d))

        async def in_order(items: list[tuple[Inbound, PretradeDecision]]) -> None:
            for inbound, d in items:
                await submit_one(inbound, d)

        await asyncio.gather(*(in_order(items) for items in by_symbol.values()))

    async def on_decisions(batch: list[Inbound]) -> None:
        # approved decisions are submitted; a watermark waits for every submit before it (so the
        # feed's lockstep knows the orders of its bar are at the broker); the rest (position
        # reports, denials) only need their tracking rows
        approved: list[tuple[Inbound, PretradeDecision]] = []
        passive: list[Inbound] = []
        for inbound in batch:
            ev = inbound.payload
            if isinstance(ev, PretradeDecision) and ev.approved:
                approved.append((inbound, ev))
            elif isinstance(ev, Watermark):
                await submit_all(approved)
                approved = []
                await processor.apply(decisions.durable, [*passive, inbound], handlers.step)
                passive = []
            else:
                passive.append(inbound)
        await submit_all(approved)
        if passive:
            await processor.apply(decisions.durable, passive, handlers.step)

    async def on_control(batch: list[Inbound]) -> None:
        for inbound in batch:
            if await processor.store.is_tracked(control.durable, inbound.stream_seq):
                continue  # done before a crash: cancelling again would hit orders placed since
            cmd = inbound.payload
            if isinstance(cmd, CancelAllOrders) or (isinstance(cmd, HaltTrading) and cmd.cancel_all):
                n = await broker.cancel_all()
                log.warning("CANCEL_ALL_TRIGGERED", extra={"canceled": n, "subject": inbound.subject})
                if processor.metrics:
                    processor.metrics.decision("cancel_all", "CANCEL_ALL_TRIGGERED")
            await processor.apply(control.durable, [inbound], lambda s, _e, _c: (s, []))

    return [(decisions, on_decisions), (control, on_control)]
