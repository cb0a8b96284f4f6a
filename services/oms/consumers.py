"""NATS edge of the OMS: intents, execution reports and operator commands."""

from __future__ import annotations

import msgspec

from libs.bus import Bus, ConsumerSpec, stored_ns
from libs.bus.consumer import Inbound, OnBatch
from libs.contracts import subjects as sj
from libs.contracts.base import derive_id
from libs.contracts.codec import decode_command
from libs.contracts.control import HaltState
from libs.contracts.execution import ExecutionEvent
from libs.contracts.ops import FillsDone, Watermark
from libs.contracts.risk import RiskEvent
from libs.errors.breakers import Breakers
from libs.errors.handle import publish_halt
from libs.runtime.processor import Processor
from services.oms import handlers
from services.oms.state import OmsState

_intent_decoder = msgspec.json.Decoder(RiskEvent | Watermark)
_report_decoder = msgspec.json.Decoder(ExecutionEvent | Watermark | FillsDone)


def decode_control(subject: str, data: bytes) -> object:
    """Decode an operator command by the verb at the end of its subject."""
    return decode_command(subject.rsplit(".", 1)[-1], data)


def _stamp(inbound: Inbound) -> Inbound:
    # operator JSON has no envelope: the command's identity is its place in the control stream,
    # its event time the moment the stream stored it. A replay's commands come stamped (event
    # time = the bar they follow, libs/cli/replay_control.py), so they are taken as they are
    cmd = inbound.payload
    if getattr(cmd, "event_id", ""):
        return inbound
    event_id = derive_id("ctl", inbound.subject, inbound.stream_seq)
    stamped = msgspec.structs.replace(  # type: ignore[type-var]
        cmd,
        event_id=event_id,
        correlation_id=event_id,
        causation_id=event_id,
        ts_event=stored_ns(inbound.msg),
    )
    return Inbound(inbound.subject, inbound.stream_seq, stamped, inbound.headers, inbound.msg)


async def sync_halt_flag(bus: Bus, state: OmsState) -> None:
    """Mirror the OMS's halt flag into the control bucket other services and the CLI read."""
    current = await bus.halt_state()
    wanted = HaltState(
        halted=state.halted,
        reason=state.halt_reason,
        since_ns=state.halt_since_ns,
        command_id=state.halt_command_id,
    )
    if current != wanted and (current is not None or state.halted or state.halt_command_id):
        await bus.put_halt_state(wanted)


def consumers(
    bus: Bus, processor: Processor, breakers: Breakers, *, fallback_allowed: bool = False
) -> list[tuple[ConsumerSpec, OnBatch]]:
    """Return the OMS's durable consumers."""
    subjects = bus.subjects
    intents = ConsumerSpec(
        durable="oms-intents",
        family=sj.RISK,
        filter_subject=subjects.family_wildcard(sj.RISK),
        decode=lambda _s, data: _intent_decoder.decode(data),
        # in lockstep a bar's intents are decided in one batch: no report of an earlier one (an
        # acceptance, a reject) reaches the checks of a later one of the same bar
        unit_end=subjects.watermark("risk") if processor.common.lockstep else "",
    )
    reports = ConsumerSpec(
        durable="oms-reports",
        family=sj.EXEC,
        filter_subject=subjects.family_wildcard(sj.EXEC),
        decode=lambda _s, data: _report_decoder.decode(data),
    )
    control = ConsumerSpec(
        durable="oms-control",
        family=sj.CTL,
        filter_subject=f"{subjects.prefix}.{sj.CTL}.>",
        decode=decode_control,
        batch=16,
    )

    async def on_intents(batch: list[Inbound]) -> None:
        # CIRCUIT_OPEN_<dep>: the breakers are read once per batch, at the edge, and handed to the
        # pure checks (execution reads them again at the hand-over)
        circuit = await breakers.order_block(fallback_allowed=fallback_allowed)
        await processor.apply(intents.durable, batch, lambda s, e, c: handlers.step(s, e, c, circuit))

    async def on_reports(batch: list[Inbound]) -> None:
        await processor.apply(reports.durable, batch, handlers.step)
        state = processor.state
        # a halt this batch made, not one the control consumer applied meanwhile (an operator's
        # kill or execution's AUTH_HALT must not be said twice)
        if state.halted and state.halt_command_id in {getattr(i.payload, "event_id", None) for i in batch}:
            # reconciliation halted trading (RECON_MISMATCH): said on keel.ctl.kill as an operator
            # would, so every service stops (and cancels, with cancel-all on kill)
            await sync_halt_flag(bus, processor.state)
            await publish_halt(bus, processor.service, processor.state.halt_reason, processor.state.halt_command_id)

    async def on_control(batch: list[Inbound]) -> None:
        await processor.apply(control.durable, [_stamp(i) for i in batch], handlers.step)
        await sync_halt_flag(bus, processor.state)

    return [(intents, on_intents), (reports, on_reports), (control, on_control)]
