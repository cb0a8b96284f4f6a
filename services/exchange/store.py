"""The exchange's own schema (`<schema_prefix>_exchange`): orders, positions, marks, account.

Every mutation is saved in the same transaction as its tracking rows (STYLE 19) and before the
HTTP answer or the ack, so a restarted exchange knows every order it ever accepted. Tables come
from migrations/versions/0003_exchange.py (STYLE 22).
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal

import msgspec

from libs.contracts.codec import encode
from libs.contracts.tca import CostModelUpdated
from libs.db import DatabaseUnavailable, Store, UnitOfWork
from services.exchange.state import (
    Account,
    ExchangeOrder,
    ExchangeState,
    Mark,
    Position,
    initial_state,
    rebuild,
)

_TABLES = ("account", "orders", "positions", "marks", "calibration")
_order_encoder = msgspec.json.Encoder(decimal_format="string")
_order_decoder = msgspec.json.Decoder(ExchangeOrder)
_calibration_decoder = msgspec.json.Decoder(CostModelUpdated)


class ExchangeStore(Store):
    """Load and save the exchange's state."""

    async def check_migrated(self) -> None:
        """Raise DatabaseUnavailable when the base or the exchange tables are missing."""
        await super().check_migrated()
        found = await self.pool.fetchval(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = $1 AND table_name = ANY($2::text[])",
            self.schema,
            list(_TABLES),
        )
        if found != len(_TABLES):
            raise DatabaseUnavailable(
                f"schema {self.schema} lacks the exchange tables (expected revision 0006 or later; "
                "run `alembic upgrade head`)"
            )

    async def load(self, account_id: str, initial_cash: Decimal) -> ExchangeState:
        """Load the state, or create the account with its initial cash on first start."""
        s = self.schema
        async with self.unit() as uow:
            conn = uow.conn
            rows = await conn.fetch(f"SELECT * FROM {s}.account")
            if not rows:
                state = initial_state(account_id, initial_cash)
                await self._save_account(uow, state)
                return state
            if len(rows) != 1 or rows[0]["account_id"] != account_id:
                held = sorted(r["account_id"] for r in rows)
                raise DatabaseUnavailable(f"expected schema {s} to hold account {account_id!r}, was {held}")
            row = rows[0]
            account = Account(
                account_id=row["account_id"],
                cash=row["cash"],
                session=row["session"],
                last_equity=row["last_equity"],
            )
            orders = [
                _order_decoder.decode(r["data"].encode())
                for r in await conn.fetch(f"SELECT data::text AS data FROM {s}.orders ORDER BY seq")
            ]
            positions = [
                Position(
                    symbol=r["symbol"],
                    qty=r["qty"],
                    avg_entry_price=r["avg_entry_price"],
                    opened_session=r["opened_session"],
                )
                for r in await conn.fetch(f"SELECT * FROM {s}.positions ORDER BY symbol")
            ]
            marks = [
                Mark(
                    symbol=r["symbol"],
                    price=r["price"],
                    ts=r["ts_ns"],
                    session=r["session"],
                    lastday_price=r["lastday_price"],
                )
                for r in await conn.fetch(f"SELECT * FROM {s}.marks ORDER BY symbol")
            ]
            cal = await conn.fetchval(f"SELECT model::text FROM {s}.calibration WHERE id = 1")
            calibration = _calibration_decoder.decode(cal.encode()) if cal is not None else None
        return rebuild(account, row["clock_ns"], orders, positions, marks, calibration)

    async def save(
        self,
        uow: UnitOfWork,
        before: ExchangeState,
        after: ExchangeState,
        orders: Sequence[ExchangeOrder],
    ) -> None:
        """Write what changed from `before` to `after`; `orders` are the changed orders."""
        await self._save_orders(uow, orders)
        await self._save_positions(uow, before, after)
        await self._save_marks(uow, before, after)
        await self._save_account(uow, after)
        if after.calibration is not None and after.calibration is not before.calibration:
            await uow.conn.execute(
                f"INSERT INTO {self.schema}.calibration (id, model) VALUES (1, $1::jsonb) "
                "ON CONFLICT (id) DO UPDATE SET model = excluded.model, updated_at = now()",
                encode(after.calibration).decode(),
            )

    async def _save_orders(self, uow: UnitOfWork, orders: Sequence[ExchangeOrder]) -> None:
        if not orders:
            return
        await uow.conn.executemany(
            f"INSERT INTO {self.schema}.orders (id, client_order_id, seq, symbol, side, status, "
            "submitted_at_ns, updated_at_ns, data) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9::jsonb) "
            "ON CONFLICT (id) DO UPDATE SET status = excluded.status, "
            "updated_at_ns = excluded.updated_at_ns, data = excluded.data",
            [
                (
                    o.id,
                    o.client_order_id,
                    o.seq,
                    o.symbol,
                    o.side,
                    o.status,
                    o.submitted_at,
                    o.updated_at,
                    _order_encoder.encode(o).decode(),
                )
                for o in orders
            ],
        )

    async def _save_positions(self, uow: UnitOfWork, before: ExchangeState, after: ExchangeState) -> None:
        if before.positions is after.positions:
            return
        gone = [sym for sym in before.positions if sym not in after.positions]
        upserts = [p for sym, p in after.positions.items() if before.positions.get(sym) is not p]
        if gone:
            await uow.conn.execute(f"DELETE FROM {self.schema}.positions WHERE symbol = ANY($1::text[])", gone)
        if upserts:
            await uow.conn.executemany(
                f"INSERT INTO {self.schema}.positions (symbol, qty, avg_entry_price, opened_session) "
                "VALUES ($1, $2, $3, $4) ON CONFLICT (symbol) DO UPDATE SET qty = excluded.qty, "
                "avg_entry_price = excluded.avg_entry_price, opened_session = excluded.opened_session",
                [(p.symbol, p.qty, p.avg_entry_price, p.opened_session) for p in upserts],
            )

    async def _save_marks(self, uow: UnitOfWork, before: ExchangeState, after: ExchangeState) -> None:
        if before.marks is after.marks:
            return
        upserts = [m for sym, m in after.marks.items() if before.marks.get(sym) is not m]
        if upserts:
            await uow.conn.executemany(
                f"INSERT INTO {self.schema}.marks (symbol, price, ts_ns, session, lastday_price) "
                "VALUES ($1, $2, $3, $4, $5) ON CONFLICT (symbol) DO UPDATE SET "
                "price = excluded.price, ts_ns = excluded.ts_ns, session = excluded.session, "
                "lastday_price = excluded.lastday_price",
                [(m.symbol, m.price, m.ts, m.session, m.lastday_price) for m in upserts],
            )

    async def _save_account(self, uow: UnitOfWork, state: ExchangeState) -> None:
        a = state.account
        await uow.conn.execute(
            f"INSERT INTO {self.schema}.account (account_id, cash, clock_ns, session, last_equity, "
            "updated_at) VALUES ($1, $2, $3, $4, $5, now()) ON CONFLICT (account_id) DO UPDATE SET "
            "cash = excluded.cash, clock_ns = excluded.clock_ns, session = excluded.session, "
            "last_equity = excluded.last_equity, updated_at = now()",
            a.account_id,
            a.cash,
            state.clock,
            a.session,
            a.last_equity,
        )
