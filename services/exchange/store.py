"""The exchange's own schema (`<schema_prefix>_exchange`): orders, positions, marks, account.

Every mutation is saved in the same transaction as its tracking rows (STYLE 19) and before the
HTTP answer or the ack, so a restarted exchange knows every order it ever accepted. Tables come
from migrations/versions/0003_exchange.py (STYLE 22).
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal

import asyncpg
import msgspec

from libs.contracts.codec import encode
from libs.contracts.tca import CostModelUpdated
from libs.db import DatabaseUnavailable, Store, UnitOfWork
from services.exchange.handlers import evict_closed
from services.exchange.state import (
    HELD,
    OPEN_STATUSES,
    Account,
    ExchangeOrder,
    ExchangeState,
    Mark,
    OrderQuery,
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

    async def load(self, account_id: str, initial_cash: Decimal, retain_closed_ns: int) -> ExchangeState:
        """Load the state, or create the account with its initial cash on first start.

        Orders: every open one and the closed families changed within `retain_closed_ns` of the
        clock (`handlers.evict_closed`'s rule, applied now rather than at the next session's first
        bar; what memory lacks is read from the store either way).
        """
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
            cutoff = row["clock_ns"] - retain_closed_ns
            orders = _decode_orders(
                await conn.fetch(
                    f"SELECT data::text AS data FROM {s}.orders WHERE status = ANY($1::text[]) "
                    "OR updated_at_ns >= $2 ORDER BY seq",
                    sorted(OPEN_STATUSES),
                    cutoff,
                )
            )
            orders += await _families_of(conn, s, orders)
            total, top = await conn.fetchrow(f"SELECT count(*), coalesce(max(seq), 0) FROM {s}.orders")
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
        state = rebuild(
            account,
            row["clock_ns"],
            orders,
            positions,
            marks,
            calibration,
            next_seq=top + 1,
            complete=len(orders) == total,
        )
        # a family fetched whole for one recent member may hold older ones: the same rule as memory
        return state if state.complete else evict_closed(state, cutoff)

    async def family(self, *, order_id: str = "", client_order_id: str = "") -> list[ExchangeOrder]:
        """Return a stored order (by id or client id) with its family, entry first; [] when none."""
        key, value = ("id", order_id) if order_id else ("client_order_id", client_order_id)
        async with self.pool.acquire() as conn:
            found = _decode_orders(
                await conn.fetch(f"SELECT data::text AS data FROM {self.schema}.orders WHERE {key} = $1", value)
            )
            if not found:
                return []
            return sorted([*found, *await _families_of(conn, self.schema, found)], key=lambda o: o.seq)

    async def listed(self, q: OrderQuery) -> list[ExchangeOrder]:
        """Return the stored orders a closed / all listing (GET /v2/orders) picks, with the legs of
        those it picks when nested: the first `q.limit` in its order, as the listing sorts them."""
        where = ["TRUE"]
        args: list[object] = []

        def arg(value: object) -> str:
            args.append(value)
            return f"${len(args)}"

        if q.status == "closed":
            where.append(f"(status <> ALL({arg(sorted(OPEN_STATUSES))}::text[]) OR status = {arg(HELD)})")
        if q.nested:
            where.append("data->>'parent_id' IS NULL")
        if q.symbols:
            where.append(f"symbol = ANY({arg(sorted(q.symbols))}::text[])")
        if q.side is not None:
            where.append(f"side = {arg(q.side)}")
        if q.after is not None:
            where.append(f"submitted_at_ns > {arg(q.after)}")
        if q.until is not None:
            where.append(f"submitted_at_ns < {arg(q.until)}")
        order = "DESC" if q.direction == "desc" else "ASC"
        sql = (
            f"SELECT data::text AS data FROM {self.schema}.orders WHERE {' AND '.join(where)} "
            f"ORDER BY submitted_at_ns {order}, seq {order} LIMIT {arg(q.limit)}"
        )
        async with self.pool.acquire() as conn:
            picked = _decode_orders(await conn.fetch(sql, *args))
            legs = await _families_of(conn, self.schema, picked) if q.nested else []
        return [*picked, *legs]

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


def _decode_orders(rows: Sequence[asyncpg.Record]) -> list[ExchangeOrder]:
    return [_order_decoder.decode(r["data"].encode()) for r in rows]


async def _families_of(conn: asyncpg.Connection, schema: str, orders: Sequence[ExchangeOrder]) -> list[ExchangeOrder]:
    """Return the stored members of these orders' families (entries of legs, legs of entries)
    that are not among them, so a family is always loaded whole."""
    have = {o.id for o in orders}
    entries = sorted({o.parent_id for o in orders if o.parent_id and o.parent_id not in have})
    found = (
        _decode_orders(
            await conn.fetch(f"SELECT data::text AS data FROM {schema}.orders WHERE id = ANY($1::text[])", entries)
        )
        if entries
        else []
    )
    have |= {o.id for o in found}
    legs = sorted({leg for o in (*orders, *found) for leg in o.legs if leg not in have})
    if legs:
        found += _decode_orders(
            await conn.fetch(f"SELECT data::text AS data FROM {schema}.orders WHERE id = ANY($1::text[])", legs)
        )
    return found
