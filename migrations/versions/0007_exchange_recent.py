"""The exchange keeps recent orders in memory and reads older closed ones from its table: index
what those reads ask (a restart's recent orders, closed listings in submit order).

Revision ID: 0007
Revises: 0006
"""

from alembic import context, op

from migrations.naming import service_schema

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def _x() -> str:
    return service_schema(context.config.attributes["schema_prefix"], "exchange")


def upgrade() -> None:
    x = _x()
    op.execute(f"CREATE INDEX orders_by_update ON {x}.orders (updated_at_ns)")
    op.execute(f"CREATE INDEX orders_by_submit ON {x}.orders (submitted_at_ns, seq)")


def downgrade() -> None:
    x = _x()
    op.execute(f"DROP INDEX IF EXISTS {x}.orders_by_submit")
    op.execute(f"DROP INDEX IF EXISTS {x}.orders_by_update")
