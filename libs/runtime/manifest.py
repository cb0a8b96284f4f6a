"""The run manifest (seed 000 §F): what ran, in which mode, with which config, from which commit."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import asyncpg

from libs.config import config_hash, load
from libs.runtime.migrate import REPO_ROOT

# keys whose truthiness is a feature switch worth listing on its own
FLAG_SUFFIXES = ("_ENABLED", "CANCEL_ALL_ON_KILL", "BLOCK_TRADING_IF_TCA_STALE")


def git_commit() -> str:
    """Return the checked-out commit, or 'unknown' outside a git checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 else "unknown"


def build(*, run_id: str, options: Mapping[str, Any], env: Mapping[str, str]) -> dict[str, Any]:
    """Build the manifest from the effective common config and every KEEL_* key of the run."""
    loaded = load(None, env=env)
    keel_keys = {k: v for k, v in sorted(env.items()) if k.startswith("KEEL_")}
    redacted = {
        k: ("***" if any(m in k for m in ("SECRET", "PASSWORD", "TOKEN", "KEY_ID")) else v)
        for k, v in keel_keys.items()
    }
    redacted.update(loaded.redacted)
    flags = {k: v for k, v in redacted.items() if k.endswith(FLAG_SUFFIXES)}
    config_sha = config_hash(redacted)
    return {
        "run_id": run_id,
        "started_at": dt.datetime.now(dt.UTC).isoformat(),
        "execution_mode": loaded.common.execution_mode,
        "trading_profile": loaded.common.trading_profile,
        "config_sha256": config_sha,
        "config": redacted,
        "enabled_flags": flags,
        "git_commit": git_commit(),
        "options": {k: str(v) for k, v in options.items()},
        # seed 000 §A: nothing in services/ or libs/ stubs a dependency; missing ones stop the start
        "runtime_contract": {"stubs_enabled": False, "fail_fast_on_missing_dependency": True},
    }


def write_file(directory: Path, doc: Mapping[str, Any]) -> Path:
    """Write the manifest as ./var/runs/<run_id>.json."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{doc['run_id']}.json"
    path.write_text(json.dumps(doc, indent=2, sort_keys=True))
    return path


async def write_db(conn: asyncpg.Connection, schema_prefix: str, doc: Mapping[str, Any]) -> None:
    """Insert the manifest into <prefix>_meta.run_manifests."""
    await conn.execute(
        f"""INSERT INTO {schema_prefix}_meta.run_manifests
            (run_id, started_at, execution_mode, trading_profile, config_sha256, git_commit, manifest)
            VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb)""",
        doc["run_id"],
        dt.datetime.fromisoformat(doc["started_at"]),
        doc["execution_mode"],
        doc["trading_profile"],
        doc["config_sha256"],
        doc["git_commit"],
        json.dumps(doc),
    )
