"""Encode and decode every wire type; decoders are built once (msgspec performance guide)."""

from __future__ import annotations

import msgspec

from libs.contracts.base import Event
from libs.contracts.control import CancelAllOrders, Command, HaltState, HaltTrading, ResumeTrading
from libs.contracts.execution import ExecutionEvent
from libs.contracts.marketdata import BarClosed
from libs.contracts.oms import OmsEvent
from libs.contracts.ops import OpsEvent
from libs.contracts.risk import RiskEvent
from libs.contracts.signal import TargetProposed
from libs.contracts.subjects import CTL_CANCEL_ALL, CTL_KILL, CTL_RESUME
from libs.contracts.tca import TcaEvent

AnyEvent = BarClosed | TargetProposed | RiskEvent | OmsEvent | ExecutionEvent | TcaEvent | OpsEvent

_encoder = msgspec.json.Encoder(decimal_format="string")
_any_decoder = msgspec.json.Decoder(AnyEvent)

# commands are decoded by subject, so bare operator JSON without a tag is accepted
_COMMAND_BY_VERB: dict[str, type[msgspec.Struct]] = {
    CTL_KILL: HaltTrading,
    CTL_RESUME: ResumeTrading,
    CTL_CANCEL_ALL: CancelAllOrders,
}
_command_decoders = {verb: msgspec.json.Decoder(typ) for verb, typ in _COMMAND_BY_VERB.items()}
_halt_decoder = msgspec.json.Decoder(HaltState)


def encode(obj: msgspec.Struct) -> bytes:
    """Encode an event, command or state record as JSON."""
    return _encoder.encode(obj)


def decode_event(data: bytes) -> Event:
    """Decode any event by its tag; raise msgspec.ValidationError/DecodeError when bad."""
    return _any_decoder.decode(data)


def decode_command(verb: str, data: bytes) -> Command:
    """Decode a control command by its verb; an empty body is an empty object."""
    decoder = _command_decoders.get(verb)
    if decoder is None:
        raise msgspec.ValidationError(f"expected control verb in {sorted(_command_decoders)}, was {verb!r}")
    return decoder.decode(data or b"{}")


def decode_halt_state(data: bytes) -> HaltState:
    """Decode the halt record from the control bucket."""
    return _halt_decoder.decode(data)


def all_event_types() -> tuple[type[Event], ...]:
    """Return every concrete event class on the wire."""
    import typing

    return tuple(typing.get_args(AnyEvent))
