"""TCA records and the alert log.

Revision ID: 0004
Revises: 0003
"""

from alembic import context, op

from migrations.naming import service_schema

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def _s(service: str) -> str:
    return service_schema(context.config.attributes["schema_prefix"], service)


def upgrade() -> None:
    t = _s("tca")
    op.execute(
        f"""CREATE TABLE {t}.records (
            execution_id text PRIMARY KEY,
            client_order_id text NOT NULL,
            symbol text NOT NULL,
            side text NOT NULL,
            qty integer NOT NULL,
            arrival_price numeric NOT NULL,
            fill_price numeric NOT NULL,
            shortfall_bps numeric NOT NULL,
            strategy text NOT NULL,
            ts_event bigint NOT NULL,
            recorded_at timestamptz NOT NULL DEFAULT now())"""
    )
    op.execute(f"CREATE INDEX records_by_order ON {t}.records (client_order_id)")
    a = _s("alerts")
    op.execute(
        f"""CREATE TABLE {a}.alerts (
            event_id text PRIMARY KEY,
            code text NOT NULL,
            severity text NOT NULL,
            source text NOT NULL,
            message text NOT NULL,
            details jsonb NOT NULL,
            ts_event bigint NOT NULL,
            recorded_at timestamptz NOT NULL DEFAULT now())"""
    )


def downgrade() -> None:
    op.execute(f"DROP TABLE IF EXISTS {_s('alerts')}.alerts")
    op.execute(f"DROP TABLE IF EXISTS {_s('tca')}.records")
