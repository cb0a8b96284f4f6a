"""Alembic environment: one run migrates every keel schema under one schema prefix."""

from __future__ import annotations

import os

from alembic import context
from sqlalchemy import create_engine, pool, text

from migrations.naming import meta_schema, sqlalchemy_url

x = context.get_x_argument(as_dictionary=True)
prefix = x.get("schema_prefix") or os.environ.get("KEEL_SCHEMA_PREFIX") or "keel"
url = x.get("url") or os.environ.get("KEEL_DATABASE_URL") or ""
if not url:
    raise SystemExit("KEEL_DATABASE_URL: expected a Postgres URL (or -x url=...), was empty")

engine = create_engine(sqlalchemy_url(url), poolclass=pool.NullPool)
with engine.connect() as connection:
    # the version table lives in the prefix's meta schema, so each prefix migrates on its own
    connection.execute(text(f"CREATE SCHEMA IF NOT EXISTS {meta_schema(prefix)}"))
    connection.commit()
    context.configure(
        connection=connection,
        version_table_schema=meta_schema(prefix),
        transaction_per_migration=True,
    )
    context.config.attributes["schema_prefix"] = prefix
    with context.begin_transaction():
        context.run_migrations()
