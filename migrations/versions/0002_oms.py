"""OMS: append-only intent log ordered by commit, intents and positions projections.

Revision ID: 0002
Revises: 0001
"""

from alembic import context, op

from migrations.naming import service_schema

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def _s() -> str:
    return service_schema(context.config.attributes["schema_prefix"], "oms")


def upgrade() -> None:
    s = _s()
    # STYLE 21: the log is append-only and ordered by a global sequence. Writers take
    # `LOCK TABLE intent_events IN EXCLUSIVE MODE` before appending, so sequence order equals
    # commit order (the approach of pyeventsourcing's Postgres recorder).
    op.execute(
        f"""CREATE TABLE {s}.intent_events (
            seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            event_id text NOT NULL UNIQUE,
            intent_id text NOT NULL,
            client_order_id text NOT NULL,
            event_type text NOT NULL,
            ts_event bigint NOT NULL,
            payload jsonb NOT NULL,
            recorded_at timestamptz NOT NULL DEFAULT now())"""
    )
    op.execute(f"CREATE INDEX intent_events_by_intent ON {s}.intent_events (intent_id, seq)")
    op.execute(
        f"""CREATE FUNCTION {s}.refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
              RAISE EXCEPTION 'intent_events is append-only: % refused', TG_OP
                USING ERRCODE = 'insufficient_privilege';
            END $$"""
    )
    op.execute(
        f"""CREATE TRIGGER intent_events_no_update_delete BEFORE UPDATE OR DELETE
            ON {s}.intent_events FOR EACH ROW EXECUTE FUNCTION {s}.refuse_change()"""
    )
    op.execute(
        f"""CREATE TRIGGER intent_events_no_truncate BEFORE TRUNCATE
            ON {s}.intent_events FOR EACH STATEMENT EXECUTE FUNCTION {s}.refuse_change()"""
    )
    op.execute(
        f"""CREATE TABLE {s}.intents (
            intent_id text PRIMARY KEY,
            client_order_id text NOT NULL UNIQUE,
            symbol text NOT NULL,
            side text NOT NULL,
            qty integer NOT NULL CHECK (qty > 0),
            order_type text NOT NULL,
            limit_price numeric,
            time_in_force text NOT NULL,
            arrival_price numeric NOT NULL,
            bar_ts bigint NOT NULL,
            strategy text NOT NULL,
            status text NOT NULL,
            reason text NOT NULL DEFAULT '',
            filled_qty integer NOT NULL DEFAULT 0,
            avg_fill_price numeric,
            broker_order_id text NOT NULL DEFAULT '',
            last_seq bigint NOT NULL,
            updated_at timestamptz NOT NULL DEFAULT now())"""
    )
    op.execute(f"CREATE INDEX intents_by_status ON {s}.intents (status)")
    op.execute(
        f"""CREATE TABLE {s}.positions (
            symbol text PRIMARY KEY,
            qty integer NOT NULL,
            avg_price numeric NOT NULL,
            realized_pnl numeric NOT NULL DEFAULT 0,
            updated_at timestamptz NOT NULL DEFAULT now())"""
    )


def downgrade() -> None:
    s = _s()
    op.execute(f"DROP TABLE IF EXISTS {s}.positions")
    op.execute(f"DROP TABLE IF EXISTS {s}.intents")
    op.execute(f"DROP TABLE IF EXISTS {s}.intent_events")
    op.execute(f"DROP FUNCTION IF EXISTS {s}.refuse_change()")
