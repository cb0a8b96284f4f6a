"""Run keel's alembic migrations for one schema prefix (what `keel migrate` and `keel up` call)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import CommandLine, Config

REPO_ROOT = Path(__file__).resolve().parents[2]


def alembic_config(database_url: str, schema_prefix: str, *argv: str) -> Config:
    """Return the Config that `alembic -x url=.. -x schema_prefix=.. <argv>` would build."""
    x_args = ["-x", f"url={database_url}", "-x", f"schema_prefix={schema_prefix}"]
    # alembic's own parser fills every attribute a command reads (x, quiet, raiseerr, ...);
    # env.py reads the -x pairs through context.get_x_argument(as_dictionary=True)
    cmd_opts = CommandLine(prog="alembic").parser.parse_args([*x_args, *argv])
    config = Config(str(REPO_ROOT / "alembic.ini"), cmd_opts=cmd_opts)
    # alembic.ini's prepend_sys_path "." is relative to the cwd; pin it to the repo root
    config.set_main_option("path_separator", "os")
    config.set_main_option("prepend_sys_path", str(REPO_ROOT).replace("%", "%%"))
    return config


def migrate(database_url: str, schema_prefix: str, revision: str = "head") -> None:
    """Run `alembic upgrade <revision>` (blocking: use asyncio.to_thread from async code)."""
    command.upgrade(alembic_config(database_url, schema_prefix, "upgrade", revision), revision)


def downgrade(database_url: str, schema_prefix: str, revision: str = "base") -> None:
    """Run `alembic downgrade <revision>` (blocking)."""
    command.downgrade(alembic_config(database_url, schema_prefix, "downgrade", revision), revision)
