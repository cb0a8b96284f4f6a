"""OMS: exit legs as child intents, and the order family on every intent row.

Revision ID: 0005
Revises: 0004
"""

from alembic import context, op

from migrations.naming import service_schema

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def _s() -> str:
    return service_schema(context.config.attributes["schema_prefix"], "oms")


def upgrade() -> None:
    s = _s()
    # an exit leg of a bracket, oto or oco is an intent of its own, a child of the order that
    # placed it (parent_intent_id, leg_role); '' on every other intent
    op.execute(
        f"""ALTER TABLE {s}.intents
            ADD COLUMN order_class text NOT NULL DEFAULT 'simple',
            ADD COLUMN stop_price numeric,
            ADD COLUMN parent_intent_id text NOT NULL DEFAULT '',
            ADD COLUMN leg_role text NOT NULL DEFAULT ''"""
    )
    op.execute(f"CREATE INDEX intents_by_parent ON {s}.intents (parent_intent_id) WHERE parent_intent_id <> ''")


def downgrade() -> None:
    s = _s()
    op.execute(f"DROP INDEX IF EXISTS {s}.intents_by_parent")
    op.execute(
        f"""ALTER TABLE {s}.intents DROP COLUMN IF EXISTS leg_role, DROP COLUMN IF EXISTS parent_intent_id,
            DROP COLUMN IF EXISTS stop_price, DROP COLUMN IF EXISTS order_class"""
    )
