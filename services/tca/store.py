"""TCA tables (`<prefix>_tca`), written in the processor's transaction.

- records: one row per fill (TcaRecorded);
- orders: one row per client_order_id, its latest revision (TcaOrderRecorded);
- blocks: every order that never went - risk's EntryBlocked, execution's SubmitSkipped (which
  echoes the OMS's pre-trade denials and names its own hand-over checks);
- marks: the last close of every symbol in every session (the daily report's PnL marks).
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec

from libs.contracts.base import Event, is_leg_client_order_id
from libs.contracts.execution import SubmitSkipped
from libs.contracts.marketdata import BarClosed
from libs.contracts.risk import EntryBlocked
from libs.contracts.tca import CostModelUpdated, TcaOrderRecorded, TcaRecorded
from libs.db import UnitOfWork
from services.tca.handlers import dominant_sleeve, session_str
from services.tca.state import TcaState

# the columns of `orders`, in TcaOrderRecorded's field names
ORDER_COLUMNS = (
    "client_order_id",
    "intent_id",
    "revision",
    "final",
    "status",
    "session",
    "symbol",
    "side",
    "qty",
    "strategy",
    "sleeve",
    "trading_profile",
    "order_type",
    "order_class",
    "time_in_force",
    "provider",
    "benchmark",
    "arrival_price",
    "decision_price",
    "submit_price",
    "mid_at_arrival",
    "bid_at_arrival",
    "ask_at_arrival",
    "spread_bps_at_arrival",
    "spread_is_proxy",
    "decision_ts",
    "submit_ts",
    "first_fill_ts",
    "end_ts",
    "filled_qty",
    "fill_vwap",
    "fees",
    "fees_estimated",
    "partial_fill",
    "end_price",
    "shortfall_bps",
    "explicit_bps",
    "delay_bps",
    "execution_bps",
    "opportunity_bps",
    "shortfall_usd",
    "spread_paid_bps",
    "fill_latency_ms",
    "cancel_rate",
    "expected_cost_bps",
    "reason",
    "ts_event",
)
_ORDER_UPDATE = ", ".join(f"{c} = EXCLUDED.{c}" for c in ORDER_COLUMNS if c != "client_order_id")


async def project(uow: UnitOfWork, old: TcaState, new: TcaState, inbound: object, events: Sequence[Event]) -> None:
    """Write what one consumed event and its outputs add to the tables."""
    conn, s = uow.conn, uow.schema
    if isinstance(inbound, BarClosed):
        await conn.execute(
            f"""INSERT INTO {s}.marks (session, symbol, close, ts_event) VALUES ($1,$2,$3,$4)
                ON CONFLICT (session, symbol) DO UPDATE SET close = EXCLUDED.close, ts_event = EXCLUDED.ts_event
                WHERE {s}.marks.ts_event < EXCLUDED.ts_event""",
            inbound.session,
            inbound.symbol,
            inbound.close,
            inbound.ts_event,
        )
    elif isinstance(inbound, EntryBlocked) or (
        isinstance(inbound, SubmitSkipped) and not is_leg_client_order_id(inbound.client_order_id)
    ):
        # an order's exit legs are skipped with it: one block, the order's
        await _block(uow, old, inbound)
    for ev in events:
        if isinstance(ev, TcaRecorded):
            await conn.execute(
                f"""INSERT INTO {s}.records (execution_id, client_order_id, symbol, side, qty,
                    arrival_price, fill_price, shortfall_bps, strategy, ts_event, fee, session)
                    VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12) ON CONFLICT (execution_id) DO NOTHING""",
                ev.execution_id,
                ev.client_order_id,
                ev.symbol,
                ev.side,
                ev.qty,
                ev.arrival_price,
                ev.fill_price,
                ev.shortfall_bps,
                ev.strategy,
                ev.ts_event,
                ev.fee,
                ev.session,
            )
        elif isinstance(ev, TcaOrderRecorded):
            cols = ", ".join(ORDER_COLUMNS)
            marks = ", ".join(f"${i}" for i in range(1, len(ORDER_COLUMNS) + 1))
            await conn.execute(
                f"""INSERT INTO {s}.orders ({cols}) VALUES ({marks})
                    ON CONFLICT (client_order_id) DO UPDATE SET {_ORDER_UPDATE}
                    WHERE {s}.orders.revision < EXCLUDED.revision""",
                *(getattr(ev, c) for c in ORDER_COLUMNS),
            )
        elif isinstance(ev, CostModelUpdated):
            await conn.execute(
                f"""INSERT INTO {s}.cost_models (event_id, session, effective_session, calibrated_ts, samples,
                    out_of_bounds, model) VALUES ($1,$2,$3,$4,$5,$6,$7::jsonb) ON CONFLICT (event_id) DO NOTHING""",
                ev.event_id,
                ev.session,
                ev.effective_session,
                ev.calibrated_ts,
                ev.samples,
                list(ev.out_of_bounds),
                msgspec.json.encode(ev).decode(),
            )


async def _block(uow: UnitOfWork, old: TcaState, ev: EntryBlocked | SubmitSkipped) -> None:
    if isinstance(ev, EntryBlocked):
        row = (
            ev.event_id,
            ev.session or session_str(ev.bar_ts),
            ev.ts_event,
            "risk",
            ev.reason_code,
            ev.symbol,
            ev.side,
            ev.qty,
            "",
            ev.strategy,
            dominant_sleeve(ev.sleeves),
            ev.order_type,
        )
    else:
        order = old.orders.get(ev.client_order_id)
        row = (
            ev.event_id,
            order.session if order else session_str(ev.ts_event),
            ev.ts_event,
            ev.stage,
            ev.reason_code,
            ev.symbol,
            ev.side,
            ev.qty,
            ev.client_order_id,
            order.strategy if order else "",
            order.sleeve if order else "",
            order.order_type if order else "",
        )
    await uow.conn.execute(
        f"""INSERT INTO {uow.schema}.blocks (event_id, session, ts_event, stage, reason, symbol, side, qty,
            client_order_id, strategy, sleeve, order_type) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12)
            ON CONFLICT (event_id) DO NOTHING""",
        *row,
    )
