"""Postgres edge: pool, schema names, unit of work with tracking rows, outbox and snapshots."""

from libs.db.store import DatabaseUnavailable, Store, UnitOfWork, connect_pool, schema_name

__all__ = ["DatabaseUnavailable", "Store", "UnitOfWork", "connect_pool", "schema_name"]
