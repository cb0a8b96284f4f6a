"""Service schemas with tracking, outbox and snapshot tables; run manifests.

Revision ID: 0001
Revises:
"""

from alembic import context, op

from migrations.naming import SERVICES, meta_schema, service_schema

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def _prefix() -> str:
    return context.config.attributes["schema_prefix"]


def upgrade() -> None:
    p = _prefix()
    for service in SERVICES:
        s = service_schema(p, service)
        op.execute(f"CREATE SCHEMA IF NOT EXISTS {s}")
        # STYLE 19: one row per applied message, committed with the state it produced
        op.execute(
            f"""CREATE TABLE {s}.tracking (
                consumer text NOT NULL,
                stream_seq bigint NOT NULL,
                applied_at timestamptz NOT NULL DEFAULT now(),
                PRIMARY KEY (consumer, stream_seq))"""
        )
        op.execute(
            f"""CREATE TABLE {s}.outbox (
                id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                event_id text NOT NULL UNIQUE,
                subject text NOT NULL,
                data bytea NOT NULL,
                headers jsonb NOT NULL DEFAULT '{{}}',
                created_at timestamptz NOT NULL DEFAULT now(),
                published_at timestamptz)"""
        )
        op.execute(f"CREATE INDEX outbox_unpublished ON {s}.outbox (id) WHERE published_at IS NULL")
        op.execute(
            f"""CREATE TABLE {s}.snapshot (
                name text PRIMARY KEY,
                data bytea NOT NULL,
                updated_at timestamptz NOT NULL DEFAULT now())"""
        )
    m = meta_schema(p)
    op.execute(
        f"""CREATE TABLE {m}.run_manifests (
            run_id text PRIMARY KEY,
            started_at timestamptz NOT NULL,
            execution_mode text NOT NULL,
            trading_profile text NOT NULL,
            config_sha256 text NOT NULL,
            git_commit text NOT NULL,
            manifest jsonb NOT NULL)"""
    )


def downgrade() -> None:
    p = _prefix()
    op.execute(f"DROP TABLE IF EXISTS {meta_schema(p)}.run_manifests")
    for service in SERVICES:
        op.execute(f"DROP SCHEMA IF EXISTS {service_schema(p, service)} CASCADE")
