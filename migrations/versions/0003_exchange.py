"""Local paper exchange: orders, positions, marks and the account with its event clock.

Revision ID: 0003
Revises: 0002
"""

from alembic import context, op

from migrations.naming import service_schema

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def _s() -> str:
    return service_schema(context.config.attributes["schema_prefix"], "exchange")


def upgrade() -> None:
    s = _s()
    # one row per paper account; clock_ns is the exchange's event clock (last bar seen)
    op.execute(
        f"""CREATE TABLE {s}.account (
            account_id text PRIMARY KEY,
            cash numeric NOT NULL,
            clock_ns bigint NOT NULL DEFAULT 0,
            session text NOT NULL DEFAULT '',
            last_equity numeric NOT NULL,
            updated_at timestamptz NOT NULL DEFAULT now())"""
    )
    # data holds the whole order (services/exchange/state.py ExchangeOrder as JSON); the other
    # columns are for queries and for the unique client_order_id Alpaca promises
    op.execute(
        f"""CREATE TABLE {s}.orders (
            id text PRIMARY KEY,
            client_order_id text NOT NULL UNIQUE,
            seq bigint NOT NULL UNIQUE,
            symbol text NOT NULL,
            side text NOT NULL,
            status text NOT NULL,
            submitted_at_ns bigint NOT NULL,
            updated_at_ns bigint NOT NULL,
            data jsonb NOT NULL)"""
    )
    op.execute(f"CREATE INDEX orders_by_status ON {s}.orders (status, symbol)")
    op.execute(
        f"""CREATE TABLE {s}.positions (
            symbol text PRIMARY KEY,
            qty bigint NOT NULL CHECK (qty <> 0),
            avg_entry_price numeric NOT NULL,
            opened_session text NOT NULL DEFAULT '')"""
    )
    op.execute(
        f"""CREATE TABLE {s}.marks (
            symbol text PRIMARY KEY,
            price numeric NOT NULL,
            ts_ns bigint NOT NULL,
            session text NOT NULL,
            lastday_price numeric)"""
    )


def downgrade() -> None:
    s = _s()
    op.execute(f"DROP TABLE IF EXISTS {s}.marks")
    op.execute(f"DROP TABLE IF EXISTS {s}.positions")
    op.execute(f"DROP TABLE IF EXISTS {s}.orders")
    op.execute(f"DROP TABLE IF EXISTS {s}.account")
