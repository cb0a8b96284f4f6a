"""The OMS's tables: the append-only intent log and its projections (intents, positions).

Written only inside the processor's transaction, so log, projections, tracking rows, outbox
and snapshot commit together or not at all.
"""

from __future__ import annotations

from collections.abc import Sequence

from libs.contracts.base import Event, exit_legs, intent_id_for, leg_client_order_id, tag_of
from libs.contracts.codec import encode
from libs.contracts.execution import (
    OrderAccepted,
    OrderCanceled,
    OrderExpired,
    OrderFilled,
    OrderPartiallyFilled,
    OrderRejected,
    OrderStatusUnknown,
    OrderSubmitted,
    SubmitFailed,
    SubmitSkipped,
)
from libs.contracts.oms import PretradeDecision
from libs.contracts.risk import OrderIntent
from libs.db import UnitOfWork
from services.oms.state import OmsState

_REPORTS = (
    OrderSubmitted,
    OrderAccepted,
    OrderPartiallyFilled,
    OrderFilled,
    OrderCanceled,
    OrderRejected,
    OrderExpired,
    OrderStatusUnknown,
    SubmitFailed,
    SubmitSkipped,
)


def _log_rows(old: OmsState, inbound: object, events: Sequence[Event]) -> list[Event]:
    rows: list[Event] = []
    if isinstance(inbound, OrderIntent) and inbound.intent_id not in old.intents or isinstance(inbound, _REPORTS):
        rows.append(inbound)
    rows.extend(e for e in events if isinstance(e, PretradeDecision))
    return rows


_INSERT_INTENT = """INSERT INTO {s}.intents (intent_id, client_order_id, symbol, side, qty, order_type, order_class,
    limit_price, stop_price, time_in_force, arrival_price, bar_ts, strategy, status, reason, parent_intent_id,
    leg_role, last_seq) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14,$15,$16,$17,$18)
    ON CONFLICT (intent_id) DO NOTHING"""


async def _insert_intents(uow: UnitOfWork, ev: OrderIntent, new: OmsState, last_seq: int) -> None:
    """Insert a new intent's row and, when it was approved, the rows of its exit legs."""
    sql = _INSERT_INTENT.format(s=uow.schema)
    rows = [(new.intents[ev.intent_id], ev.order_type, ev.order_class, ev.limit_price, ev.stop_price)]
    for leg in exit_legs(ev):
        child = new.intents.get(intent_id_for(leg_client_order_id(ev.client_order_id, leg.role)))
        if child is not None:  # legs exist only for an approved order
            rows.append((child, leg.order_type, "simple", leg.limit_price, leg.stop_price))
    for intent, order_type, order_class, limit_price, stop_price in rows:
        await uow.conn.execute(
            sql,
            intent.intent_id,
            intent.client_order_id,
            intent.symbol,
            intent.side,
            intent.qty,
            order_type,
            order_class,
            limit_price,
            stop_price,
            ev.time_in_force,
            intent.arrival_price,
            ev.bar_ts,
            ev.strategy,
            intent.status,
            intent.reason,
            intent.parent_intent_id,
            intent.leg_role,
            last_seq,
        )


async def project(uow: UnitOfWork, old: OmsState, new: OmsState, inbound: object, events: Sequence[Event]) -> None:
    """Append to the intent log and bring the projections up to date."""
    s = uow.schema
    rows = _log_rows(old, inbound, events)
    last_seq = 0
    if rows:
        # STYLE 21: serialise appenders so the identity sequence follows commit order
        await uow.conn.execute(f"LOCK TABLE {s}.intent_events IN EXCLUSIVE MODE")
        for ev in rows:
            seq = await uow.conn.fetchval(
                f"INSERT INTO {s}.intent_events (event_id, intent_id, client_order_id, event_type, ts_event, payload) "
                "VALUES ($1, $2, $3, $4, $5, $6::jsonb) ON CONFLICT (event_id) DO NOTHING RETURNING seq",
                ev.event_id,
                ev.intent_id,  # type: ignore[attr-defined]
                ev.client_order_id,  # type: ignore[attr-defined]
                tag_of(type(ev)),
                ev.ts_event,
                encode(ev).decode(),
            )
            last_seq = seq or last_seq
    if isinstance(inbound, OrderIntent) and inbound.intent_id not in old.intents and inbound.intent_id in new.intents:
        await _insert_intents(uow, inbound, new, last_seq)
    elif isinstance(inbound, _REPORTS):
        intent = new.intents.get(inbound.intent_id)
        if intent is not None and intent != old.intents.get(inbound.intent_id):
            await uow.conn.execute(
                f"""UPDATE {s}.intents SET status=$2, reason=$3, filled_qty=$4, avg_fill_price=$5,
                    broker_order_id=$6, last_seq=$7, updated_at=now() WHERE intent_id=$1""",
                intent.intent_id,
                intent.status,
                intent.reason,
                intent.filled_qty,
                intent.avg_fill_price if intent.filled_qty else None,
                intent.broker_order_id,
                last_seq,
            )
    for symbol, pos in new.positions.items():
        if old.positions.get(symbol) is not pos:
            await uow.conn.execute(
                f"""INSERT INTO {s}.positions (symbol, qty, avg_price, realized_pnl) VALUES ($1,$2,$3,$4)
                    ON CONFLICT (symbol) DO UPDATE SET qty=excluded.qty, avg_price=excluded.avg_price,
                    realized_pnl=excluded.realized_pnl, updated_at=now()""",
                symbol,
                pos.qty,
                pos.avg_price,
                pos.realized_pnl,
            )
