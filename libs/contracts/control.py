"""Control commands: operators halt, resume and cancel with plain JSON.

An operator types `nats pub keel.ctl.kill '{"reason":"manual"}'`, so a command on the wire may be
bare JSON with no type tag and no envelope: the subject says which command it is, and the
envelope fields default to empty until the control consumer stamps them.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

Reason = Annotated[str, msgspec.Meta(min_length=1, max_length=500)]


class _Command(msgspec.Struct, frozen=True, kw_only=True):
    event_id: str = ""
    correlation_id: str = ""
    causation_id: str = ""
    ts_event: int = 0
    ts_init: int = 0
    operator: str = ""


class HaltTrading(_Command, kw_only=True, tag="ctl.halt_trading.v1"):
    """Stop every new order until resumed."""

    reason: Reason
    cancel_all: bool = False


class ResumeTrading(_Command, kw_only=True, tag="ctl.resume_trading.v1"):
    """Lift a halt; the reason is recorded."""

    reason: Reason


class CancelAllOrders(_Command, kw_only=True, tag="ctl.cancel_all_orders.v1"):
    """Cancel every open order at the broker."""

    reason: str = "operator"


Command = HaltTrading | ResumeTrading | CancelAllOrders


class ScheduledCommand(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A stored operator command placed in a replay (one line of its control file): marketdata
    publishes `body` on `keel.ctl.<verb>` once every bar up to `after` (a bar close, ns; 0 =
    before the first bar) is done, and releases the next bar only when every control consumer
    has acknowledged it. `body` is the command's JSON with its envelope stamped (event_id,
    ts_event = `after`), so two replays publish the same bytes."""

    after: int
    verb: str
    body: str


class HaltState(msgspec.Struct, frozen=True, kw_only=True):
    """The halt flag as stored in the control key-value bucket."""

    halted: bool
    reason: str
    since_ns: int
    command_id: str = ""
