"""TCA per-order records, blocks, session marks and cost-model calibrations; the exchange's
calibrated cost model.

Revision ID: 0006
Revises: 0005
"""

from alembic import context, op

from migrations.naming import service_schema

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def _t() -> str:
    return service_schema(context.config.attributes["schema_prefix"], "tca")


def upgrade() -> None:
    t = _t()
    op.execute(f"ALTER TABLE {t}.records ADD COLUMN fee numeric NOT NULL DEFAULT 0")
    op.execute(f"ALTER TABLE {t}.records ADD COLUMN session text NOT NULL DEFAULT ''")
    op.execute(f"CREATE INDEX records_by_session ON {t}.records (session, ts_event)")
    # one row per client_order_id: its latest revision (TcaOrderRecorded)
    op.execute(
        f"""CREATE TABLE {t}.orders (
            client_order_id text PRIMARY KEY,
            intent_id text NOT NULL,
            revision integer NOT NULL,
            final boolean NOT NULL,
            status text NOT NULL,
            session text NOT NULL,
            symbol text NOT NULL,
            side text NOT NULL,
            qty integer NOT NULL,
            strategy text NOT NULL,
            sleeve text NOT NULL,
            trading_profile text NOT NULL,
            order_type text NOT NULL,
            order_class text NOT NULL,
            time_in_force text NOT NULL,
            provider text NOT NULL,
            benchmark text NOT NULL,
            arrival_price numeric NOT NULL,
            decision_price numeric NOT NULL,
            submit_price numeric,
            mid_at_arrival numeric,
            bid_at_arrival numeric,
            ask_at_arrival numeric,
            spread_bps_at_arrival numeric NOT NULL,
            spread_is_proxy boolean NOT NULL,
            decision_ts bigint NOT NULL,
            submit_ts bigint NOT NULL,
            first_fill_ts bigint NOT NULL,
            end_ts bigint NOT NULL,
            filled_qty integer NOT NULL,
            fill_vwap numeric,
            fees numeric NOT NULL,
            fees_estimated boolean NOT NULL,
            partial_fill boolean NOT NULL,
            end_price numeric,
            shortfall_bps numeric NOT NULL,
            explicit_bps numeric NOT NULL,
            delay_bps numeric NOT NULL,
            execution_bps numeric NOT NULL,
            opportunity_bps numeric NOT NULL,
            shortfall_usd numeric NOT NULL,
            spread_paid_bps numeric,
            fill_latency_ms bigint,
            cancel_rate numeric NOT NULL,
            expected_cost_bps numeric,
            reason text NOT NULL,
            ts_event bigint NOT NULL,
            updated_at timestamptz NOT NULL DEFAULT now())"""
    )
    op.execute(f"CREATE INDEX orders_by_session ON {t}.orders (session, symbol)")
    # orders that never went: risk's cost gate, the OMS's pre-trade checks, execution's hand-over
    op.execute(
        f"""CREATE TABLE {t}.blocks (
            event_id text PRIMARY KEY,
            session text NOT NULL,
            ts_event bigint NOT NULL,
            stage text NOT NULL,
            reason text NOT NULL,
            symbol text NOT NULL,
            side text NOT NULL,
            qty integer NOT NULL,
            client_order_id text NOT NULL DEFAULT '',
            strategy text NOT NULL DEFAULT '',
            sleeve text NOT NULL DEFAULT '',
            order_type text NOT NULL DEFAULT '')"""
    )
    op.execute(f"CREATE INDEX blocks_by_session ON {t}.blocks (session)")
    # the last close of every symbol in every session (marks positions for the daily PnL)
    op.execute(
        f"""CREATE TABLE {t}.marks (
            session text NOT NULL,
            symbol text NOT NULL,
            close numeric NOT NULL,
            ts_event bigint NOT NULL,
            PRIMARY KEY (session, symbol))"""
    )
    op.execute(
        f"""CREATE TABLE {t}.cost_models (
            event_id text PRIMARY KEY,
            session text NOT NULL,
            effective_session text NOT NULL,
            calibrated_ts bigint NOT NULL,
            samples integer NOT NULL,
            out_of_bounds text[] NOT NULL,
            model jsonb NOT NULL,
            recorded_at timestamptz NOT NULL DEFAULT now())"""
    )

    # the cost model the local exchange's fill simulator prices with (KEEL_EXCHANGE_COST_MODEL_SOURCE=calibrated)
    x = service_schema(context.config.attributes["schema_prefix"], "exchange")
    op.execute(
        f"""CREATE TABLE {x}.calibration (
            id integer PRIMARY KEY CHECK (id = 1),
            model jsonb NOT NULL,
            updated_at timestamptz NOT NULL DEFAULT now())"""
    )


def downgrade() -> None:
    x = service_schema(context.config.attributes["schema_prefix"], "exchange")
    op.execute(f"DROP TABLE IF EXISTS {x}.calibration")
    t = _t()
    for table in ("cost_models", "marks", "blocks", "orders"):
        op.execute(f"DROP TABLE IF EXISTS {t}.{table}")
    op.execute(f"DROP INDEX IF EXISTS {t}.records_by_session")
    op.execute(f"ALTER TABLE {t}.records DROP COLUMN IF EXISTS session")
    op.execute(f"ALTER TABLE {t}.records DROP COLUMN IF EXISTS fee")
