"""What the synthetic feed remembers between bars; resuming from it continues the same stream."""

from __future__ import annotations

from decimal import Decimal

import msgspec


class FeedState(msgspec.Struct, frozen=True, kw_only=True):
    """Each symbol's last close and the last bar timestamp emitted; replaced, never mutated."""

    last_close: dict[str, Decimal] = {}  # symbol -> close of its last bar (the next bar's open)
    last_ts: int = 0  # close time (ns UTC) of the last bar emitted; 0 = nothing emitted yet
    session: str = ""  # XNYS session of last_ts, YYYY-MM-DD
    emitted: int = 0  # bar timestamps emitted so far, counted against MdConfig.minutes
    # the run under way (handlers.start_run): its id, where it started and where it ends, so a
    # restart inside `keel up --minutes N` goes on to the same end instead of N more
    run_id: str = ""
    run_start: int = 0  # emitted when the run first started
    run_end: int = 0  # emitted at which the run is done; 0 = unbounded
    control_sent: int = 0  # commands of the control file published so far (a replay's)


INITIAL = FeedState()
