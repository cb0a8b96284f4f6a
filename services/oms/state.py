"""OMS state: open intents, positions, the halt flag, and the lifecycle as a transition table.

STYLE 7: the lifecycle is data. Keys are (status, what happened); a pair not in the table is
an invalid transition, reported and not applied.
"""

from __future__ import annotations

from decimal import Decimal

import msgspec

CREATED = "CREATED"
SUBMITTING = "SUBMITTING"
SUBMITTED = "SUBMITTED"
# the submit's outcome was lost: the order may or may not be at the broker (execution resolves it
# by client_order_id and blocks its symbol meanwhile); never terminal, its quantity still works
UNKNOWN = "UNKNOWN"
ACKED = "ACKED"
PARTIALLY_FILLED = "PARTIALLY_FILLED"
FILLED = "FILLED"
CANCELED = "CANCELED"
REJECTED = "REJECTED"
EXPIRED = "EXPIRED"
FAILED = "FAILED"

# the one source of truth for terminal statuses
TERMINAL = frozenset({FILLED, CANCELED, REJECTED, EXPIRED, FAILED})
# not yet acknowledged by the broker: an intent that stays here is stuck (an ACKED one is working)
UNACKNOWLEDGED = frozenset({CREATED, SUBMITTING, SUBMITTED, UNKNOWN})

# what happened -> key in the table: pre-trade outcomes and execution report tags sans version
APPROVED = "approved"
DENIED = "denied"
SUBMITTED_EV = "exec.order_submitted"
ACCEPTED_EV = "exec.order_accepted"
PARTIAL_EV = "exec.order_partially_filled"
FILLED_EV = "exec.order_filled"
CANCELED_EV = "exec.order_canceled"
REJECTED_EV = "exec.order_rejected"
EXPIRED_EV = "exec.order_expired"
FAILED_EV = "exec.submit_failed"
SKIPPED_EV = "exec.submit_skipped"
UNKNOWN_EV = "exec.order_status_unknown"

TRANSITIONS: dict[tuple[str, str], str] = {
    (CREATED, APPROVED): SUBMITTING,
    (CREATED, DENIED): REJECTED,
    (SUBMITTING, SUBMITTED_EV): SUBMITTED,
    # execution may learn the broker's answer in the same step as the hand-off
    (SUBMITTING, ACCEPTED_EV): ACKED,
    (SUBMITTING, REJECTED_EV): REJECTED,
    (SUBMITTING, FAILED_EV): FAILED,
    # approved, then refused by execution's own checks at the hand-over (halt, breaker, ...)
    (SUBMITTING, SKIPPED_EV): REJECTED,
    (SUBMITTED, ACCEPTED_EV): ACKED,
    (SUBMITTED, REJECTED_EV): REJECTED,
    (SUBMITTED, FAILED_EV): FAILED,
    # a fill report can overtake the acknowledgement
    (SUBMITTED, PARTIAL_EV): PARTIALLY_FILLED,
    (SUBMITTED, FILLED_EV): FILLED,
    (SUBMITTED, CANCELED_EV): CANCELED,
    (SUBMITTED, EXPIRED_EV): EXPIRED,
    # timeout, lost response or 5xx on submit: held until a lookup by client_order_id answers
    (SUBMITTED, UNKNOWN_EV): UNKNOWN,
    # found at the broker by client_order_id: adopted as it stands there
    (UNKNOWN, ACCEPTED_EV): ACKED,
    # the lookup found it already (partly) filled, or its fill report overtook the acknowledgement
    (UNKNOWN, PARTIAL_EV): PARTIALLY_FILLED,
    (UNKNOWN, FILLED_EV): FILLED,
    # found at the broker already canceled or expired
    (UNKNOWN, CANCELED_EV): CANCELED,
    (UNKNOWN, EXPIRED_EV): EXPIRED,
    # the broker proved it never had it (404), so it was sent again and refused this time
    (UNKNOWN, REJECTED_EV): REJECTED,
    (ACKED, PARTIAL_EV): PARTIALLY_FILLED,
    (ACKED, FILLED_EV): FILLED,
    (ACKED, CANCELED_EV): CANCELED,
    (ACKED, EXPIRED_EV): EXPIRED,
    # brokers can reject after acknowledging (e.g. a risk check downstream of the ack)
    (ACKED, REJECTED_EV): REJECTED,
    (PARTIALLY_FILLED, PARTIAL_EV): PARTIALLY_FILLED,
    (PARTIALLY_FILLED, FILLED_EV): FILLED,
    (PARTIALLY_FILLED, CANCELED_EV): CANCELED,
    (PARTIALLY_FILLED, EXPIRED_EV): EXPIRED,
    # the venue ends a partly filled order (a downstream risk check, a halt): the fills stand
    (PARTIALLY_FILLED, REJECTED_EV): REJECTED,
    # canceled -> filled happens in real markets: the fill raced the cancel at the venue
    (CANCELED, PARTIAL_EV): CANCELED,
    (CANCELED, FILLED_EV): FILLED,
    (EXPIRED, FILLED_EV): FILLED,
}


class IntentState(msgspec.Struct, frozen=True, kw_only=True):
    """One intent as the OMS tracks it."""

    intent_id: str
    client_order_id: str
    symbol: str
    side: str
    qty: int
    arrival_price: Decimal
    status: str
    reason: str = ""
    filled_qty: int = 0
    avg_fill_price: Decimal = Decimal(0)
    broker_order_id: str = ""
    execution_ids: tuple[str, ...] = ()
    # an exit leg of a bracket, oto or oco (libs.contracts.base.exit_legs): a child intent of the
    # order that placed it, approved with it, with its own lifecycle at the broker
    parent_intent_id: str = ""
    leg_role: str = ""
    bar_ts: int = 0  # the decision bar (event time of the pre-trade checks about it)
    time_in_force: str = "day"
    stuck_alerted: bool = False  # STUCK_INTENT said (once per intent)

    @property
    def working_qty(self) -> int:
        """Return the signed quantity still expected to fill (0 for an exit leg: it is contingent)."""
        # an exit leg fills only if its trigger is reached, and only one leg of a pair can: counting
        # the legs as working would net the position out before anything happened
        if self.status in TERMINAL or self.leg_role:
            return 0
        remaining = self.qty - self.filled_qty
        return remaining if self.side == "buy" else -remaining


class Position(msgspec.Struct, frozen=True, kw_only=True):
    """A filled position."""

    qty: int = 0
    avg_price: Decimal = Decimal(0)
    realized_pnl: Decimal = Decimal(0)


class Account(msgspec.Struct, frozen=True, kw_only=True):
    """The broker account as the last broker snapshot showed it."""

    buying_power: Decimal
    cash: Decimal
    equity: Decimal
    bar_ts: int  # the bar the snapshot followed (0: taken before any bar)
    seq: int


class OmsState(msgspec.Struct, frozen=True, kw_only=True):
    """Intents not yet pruned (terminal ones leave at the next watermark), positions, halt."""

    intents: dict[str, IntentState] = {}
    by_cid: dict[str, str] = {}
    recent_cids: dict[str, int] = {}  # every client_order_id of the last day -> its bar_ts
    recent_fills: dict[str, int] = {}  # every execution_id of the last day -> its ts_event
    positions: dict[str, Position] = {}
    intents_seen: dict[str, int] = {}
    halted: bool = False
    halt_reason: str = ""
    halt_since_ns: int = 0
    halt_command_id: str = ""
    last_watermark: int = 0
    fills_done: int = 0  # execution's last FillsDone, forwarded once its reports moved the positions
    # pre-trade memory, all in event time (bar_ts): (symbol|side|qty|bar_ts) of the last day's
    # intents; the last minute's approvals (bar_ts, symbol); per symbol the decision bars of orders
    # canceled unfilled, and the bar until which a cancel loop blocks it
    recent_keys: dict[str, int] = {}
    recent_orders: tuple[tuple[int, str], ...] = ()
    cancels: dict[str, tuple[int, ...]] = {}
    blocked_until: dict[str, int] = {}
    recent_cancel_ts: tuple[int, ...] = ()  # event time of the last minute's cancels (all symbols)
    # reconciliation with the broker (BrokerSnapshot): the account; differences seen so far, each
    # with the count of snapshots in a row that showed it unchanged; broker orders found foreign
    account: Account | None = None
    position_gaps: dict[str, tuple[int, int, int]] = {}  # symbol -> (broker qty, keel qty, snapshots)
    fill_gaps: dict[str, tuple[int, int]] = {}  # client_order_id -> (broker filled qty, snapshots)
    # client_order_id -> snapshots in a row showing it open in the log, ended at the broker unseen
    unseen_ends: dict[str, int] = {}
    foreign: dict[str, int] = {}  # broker order id -> bar_ts first seen (alerted once)
    # RECON_MISMATCH: why keel only reduces positions now ('' = not reduce-only); a halt the OMS
    # decided and its edge has not yet published on keel.ctl.kill
    reduce_only: str = ""
    halt_pending: str = ""
    # this session's counts (intents, approved, denied:<reason>, ended:<status>): its summary at the close
    session_counts: dict[str, int] = {}
