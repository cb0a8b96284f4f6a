"""TCA records table (`<prefix>_tca.records`), written in the processor's transaction."""

from __future__ import annotations

from collections.abc import Sequence

from libs.contracts.base import Event
from libs.contracts.tca import TcaRecorded
from libs.db import UnitOfWork
from services.tca.state import TcaState


async def project(uow: UnitOfWork, old: TcaState, new: TcaState, inbound: object, events: Sequence[Event]) -> None:
    """Insert one row per TcaRecorded."""
    for ev in events:
        if isinstance(ev, TcaRecorded):
            await uow.conn.execute(
                f"""INSERT INTO {uow.schema}.records (execution_id, client_order_id, symbol, side, qty,
                    arrival_price, fill_price, shortfall_bps, strategy, ts_event)
                    VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10) ON CONFLICT (execution_id) DO NOTHING""",
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
            )
