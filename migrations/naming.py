"""Schema names shared by migrations and services."""

from __future__ import annotations

import re

SERVICES = ("marketdata", "signal", "risk", "oms", "execution", "tca", "alerts", "exchange")
_IDENT = re.compile(r"^[a-z_][a-z0-9_]{0,40}$")


def check_prefix(prefix: str) -> str:
    """Return the prefix when it is a safe SQL identifier, else raise ValueError."""
    if not _IDENT.match(prefix):
        raise ValueError(f"expected a lower-case identifier as schema prefix, was {prefix!r}")
    return prefix


def meta_schema(prefix: str) -> str:
    """Return the schema holding alembic's version table and run manifests."""
    return f"{check_prefix(prefix)}_meta"


def service_schema(prefix: str, service: str) -> str:
    """Return one service's schema."""
    return f"{check_prefix(prefix)}_{service}"


def sqlalchemy_url(url: str) -> str:
    """Turn a libpq URL into one SQLAlchemy drives with psycopg 3."""
    for scheme in ("postgresql://", "postgres://"):
        if url.startswith(scheme):
            return "postgresql+psycopg://" + url[len(scheme) :]
    return url
