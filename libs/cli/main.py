"""`keel`: up, status, kill, resume, cancel-all, migrate, provision, report, export, replay."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from libs.config import ConfigError, load
from libs.errors import DependencyUnavailable


def _up_file(var: Path) -> dict[str, Any]:
    path = var / "up.json"
    if path.exists():
        return json.loads(path.read_text())
    url = os.environ.get("KEEL_NATS_URL", "")
    if not url:
        raise SystemExit(f"keel: nothing is running under {var} (no {path}) and KEEL_NATS_URL is not set")
    return {"nats_url": url, "prefix": os.environ.get("KEEL_PREFIX", "keel"), "services": {}}


@contextlib.contextmanager
def _report_database(var: Path) -> Iterator[tuple[str, str]]:
    """Yield the database URL and schema prefix: KEEL_DATABASE_URL, else the running `keel up`'s,
    else the embedded Postgres a finished `keel up` left under <var>/pg (started for the report)."""
    common = load(None).common
    if common.database_url:
        yield common.database_url, common.schema_prefix
        return
    path = var / "up.json"
    if not path.exists():
        if not (var / "pg").is_dir():
            raise ConfigError(
                f"KEEL_DATABASE_URL: expected a database URL, a running `keel up` ({path}) or the embedded "
                f"Postgres of an earlier one ({var / 'pg'}), was none"
            )
        from libs.runtime.embedded import start_postgres

        pg = start_postgres(var / "pg", cleanup_mode="stop")
        try:
            yield pg.url, common.schema_prefix
        finally:
            pg.stop()
        return
    up = json.loads(path.read_text())
    if not up.get("database_url"):
        raise ConfigError(
            f"KEEL_DATABASE_URL: expected it set, was empty, and {path} records only a redacted database URL "
            f"({up.get('database_url_redacted', '?')}: it holds a password); set KEEL_DATABASE_URL to reach it"
        )
    yield up["database_url"], up.get("schema_prefix", "keel")


async def _write_report(report: Any, database_url: str, schema_prefix: str, session: str, out: Path) -> list[Path]:
    import asyncpg

    from libs.db.store import schema_name

    try:
        conn = await asyncpg.connect(database_url)
    except (OSError, asyncpg.PostgresError) as e:
        raise DependencyUnavailable(f"expected Postgres at the report's database URL, was unreachable: {e}") from e
    schema = schema_name(schema_prefix, "tca")
    try:
        day = await report.load_day(conn, schema, session)
    except (asyncpg.UndefinedTableError, asyncpg.InvalidSchemaNameError) as e:
        raise DependencyUnavailable(f"expected the TCA tables in schema {schema}, was not migrated: {e}") from e
    finally:
        await conn.close()
    return await asyncio.to_thread(lambda: report.write(report.build(day), day, out))


def _report(args: argparse.Namespace) -> int:
    # the CLI is an entry point like libs/runtime/entry: it reaches the service's module by name
    report = importlib.import_module("services.tca.report")
    try:
        session = report.parse_session(args.date)
    except ValueError as e:
        print(f"keel report: --date: {e}", file=sys.stderr)
        return 2
    out = args.out if args.out is not None else args.var / "reports"
    with _report_database(args.var) as (database_url, schema_prefix):
        written = asyncio.run(_write_report(report, database_url, schema_prefix, session, out))
    for path in written:
        print(path)
    return 0


@contextlib.contextmanager
def _export_nats(var: Path) -> Iterator[tuple[str, str]]:
    """Yield the NATS URL and prefix: KEEL_NATS_URL, else the running `keel up`'s, else the
    embedded NATS a finished `keel up` left under <var>/nats (started for the export)."""
    common = load(None).common
    if common.nats_url:
        yield common.nats_url, common.prefix
        return
    path = var / "up.json"
    if path.exists():
        up = json.loads(path.read_text())
        yield up["nats_url"], up.get("prefix", "keel")
        return
    if not (var / "nats").is_dir():
        raise ConfigError(
            f"KEEL_NATS_URL: expected a NATS URL, a running `keel up` ({path}) or the embedded NATS of an "
            f"earlier one ({var / 'nats'}), was none"
        )
    from libs.runtime.embedded import start_nats

    server = start_nats(var / "nats")
    try:
        yield server.url, common.prefix
    finally:
        server.stop()


def _export(args: argparse.Namespace) -> int:
    from libs.cli.export import export

    symbols = tuple(s.strip() for s in args.symbols.split(",") if s.strip())
    try:
        with _export_nats(args.var) as (nats_url, prefix):
            summary = asyncio.run(
                export(nats_url, prefix, args.stream, args.out, start=args.start, end=args.end, symbols=symbols)
            )
    except ValueError as e:
        print(f"keel export: {e}", file=sys.stderr)
        return 2
    print(json.dumps(summary))
    return 0


def _replay(args: argparse.Namespace) -> int:
    from libs.cli import replay, up

    opts = replay.ReplayOptions(
        var=args.var.resolve(),
        source=args.source,
        seed=args.seed,
        start=args.start,
        end=args.end,
        symbols=tuple(s.strip() for s in args.symbols.split(",") if s.strip()),
        out=args.out,
        quiet=args.quiet,
        prefix=args.prefix,
    )
    try:
        if replay.is_bar_file(args.source):
            run, _out = asyncio.run(replay.prepare(opts, None))
        else:
            with _export_nats(args.var) as nats:
                run, _out = asyncio.run(replay.prepare(opts, nats))
    except ValueError as e:
        print(f"keel replay: {e}", file=sys.stderr)
        return 2
    return asyncio.run(up.run(run))


def _control(args: argparse.Namespace, verb: str, body: dict[str, Any], wait_halt: bool | None) -> int:
    from libs.cli import control

    up = _up_file(args.var)
    result = asyncio.run(control.send(up["nats_url"], up.get("prefix", "keel"), verb, body, wait_halt=wait_halt))
    print(json.dumps(result))
    return 0 if result.get("applied", True) else 1


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run one verb."""
    parser = argparse.ArgumentParser(prog="keel", description="keel: event-sourced trading for US equities")
    parser.add_argument(
        "--var", type=Path, default=Path(os.environ.get("KEEL_VAR", "var")), help="state directory (default ./var)"
    )
    sub = parser.add_subparsers(dest="verb", required=True)

    up = sub.add_parser("up", help="run the whole system for paper trading on this machine")
    up.add_argument(
        "--feed",
        choices=["synthetic", "file", "alpaca"],
        default="synthetic",
        help="alpaca: bars through alpaca-py from the local exchange's market data API (the live data path)",
    )
    up.add_argument("--file", default="", help="CSV or Parquet bars for --feed file")
    up.add_argument("--symbols", default="", help="comma-separated, e.g. AAPL,MSFT,SPY")
    up.add_argument("--minutes", type=int, default=0, help="bar timestamps to emit this run (0 = unbounded)")
    up.add_argument("--speed", default="1", help="'max' (as fast as the lockstep allows) or a multiple of real time")
    up.add_argument("--start-date", default="", help="first session of the synthetic feed, YYYY-MM-DD")
    up.add_argument("--seed", type=int, default=None)
    up.add_argument(
        "--exit-when-done", action="store_true", help="stop and print a JSON summary when the feed is done and settled"
    )
    up.add_argument("--quiet", action="store_true", help="no progress line")
    up.add_argument("--prefix", default="", help="subject and schema prefix (default keel)")

    st = sub.add_parser(
        "status", help="health of every service, exchange URL and keys, halt state, open breakers, counts"
    )
    st.add_argument("--json", action="store_true")
    kill = sub.add_parser("kill", help="halt new orders everywhere")
    kill.add_argument("--reason", required=True)
    kill.add_argument("--cancel-all", action="store_true", help="also cancel every open order")
    resume = sub.add_parser("resume", help="lift a halt (the reason is recorded)")
    resume.add_argument("--reason", required=True)
    ca = sub.add_parser("cancel-all", help="cancel every open order at the broker")
    ca.add_argument("--reason", default="operator")
    sub.add_parser("migrate", help="alembic upgrade head for KEEL_DATABASE_URL / KEEL_SCHEMA_PREFIX")
    sub.add_parser(
        "provision", help="create or update the JetStream streams and buckets (KEEL_NATS_URL as the operator)"
    )
    rep = sub.add_parser(
        "report",
        help="write one session's execution report (JSON, CSV, HTML) and per-order TCA records (JSONL)",
        description="Database: KEEL_DATABASE_URL and KEEL_SCHEMA_PREFIX, else the running `keel up`'s.",
    )
    rep.add_argument("--date", required=True, help="the session, YYYY-MM-DD")
    rep.add_argument("--out", type=Path, default=None, help="directory to write to (default <var>/reports)")

    exp = sub.add_parser(
        "export",
        help="write a stored stream to Parquet (md: a bar file `keel up --feed file` replays)",
        description="NATS: KEEL_NATS_URL and KEEL_PREFIX, else the running `keel up`'s, else the embedded "
        "NATS a finished `keel up` left in <var>/nats.",
    )
    exp.add_argument(
        "--stream", default="md", help="family (md, signal, risk, oms, exec, tca, ops, ctl) or stream name"
    )
    exp.add_argument("--out", type=Path, required=True, help="file to write: .parquet (md also .csv)")
    exp.add_argument("--start", default="", help="first session, YYYY-MM-DD (default: the first stored)")
    exp.add_argument("--end", default="", help="last session, YYYY-MM-DD (default: the last stored)")
    exp.add_argument("--symbols", default="", help="md only: comma-separated symbols (default: all)")

    rp = sub.add_parser(
        "replay",
        help="re-publish stored bars through every service in lockstep; print a JSON summary with the digest",
        description="Runs under its own prefix and schemas (replay_<run>), state in <var>/replays/<run>; servers "
        "from KEEL_NATS_URL / KEEL_DATABASE_URL, else embedded ones of its own. A stream --source is read from "
        "KEEL_NATS_URL, else the running `keel up`'s NATS, else the embedded one a finished `keel up` left.",
    )
    rp.add_argument(
        "--source", required=True, help="bar file (.csv / .parquet) or stored stream (KEEL_MD, <PREFIX>_MD)"
    )
    rp.add_argument("--seed", type=int, required=True, help="the local exchange's fill simulator seed")
    rp.add_argument("--start", default="", help="first session, YYYY-MM-DD (default: the source's first)")
    rp.add_argument("--end", default="", help="last session, YYYY-MM-DD (default: the source's last)")
    rp.add_argument("--symbols", default="", help="comma-separated symbols (default: all in the source)")
    rp.add_argument("--out", type=Path, default=None, help="outputs directory (default <var>/replays/<run>/out)")
    rp.add_argument("--quiet", action="store_true", help="no progress bar")
    rp.add_argument("--prefix", default="", help="the run's subject and schema prefix (default replay_<run>)")

    args = parser.parse_args(argv)
    try:
        if args.verb == "up":
            from libs.cli.up import UpOptions, run

            opts = UpOptions(
                var=args.var.resolve(),
                feed=args.feed,
                file=args.file,
                symbols=args.symbols,
                minutes=args.minutes,
                speed=args.speed,
                start_date=args.start_date,
                seed=args.seed,
                exit_when_done=args.exit_when_done,
                quiet=args.quiet,
                prefix=args.prefix,
            )
            return asyncio.run(run(opts))
        if args.verb == "status":
            from libs.cli import control

            out = asyncio.run(control.status(_up_file(args.var)))
            print(json.dumps(out, indent=None if args.json else 2))
            return 0
        if args.verb == "kill":
            return _control(args, "kill", {"reason": args.reason, "cancel_all": args.cancel_all}, True)
        if args.verb == "resume":
            return _control(args, "resume", {"reason": args.reason}, False)
        if args.verb == "cancel-all":
            return _control(args, "cancel_all", {"reason": args.reason}, None)
        if args.verb == "provision":
            from libs.cli import control

            common = load(None).common
            if not common.nats_url:
                raise ConfigError("KEEL_NATS_URL: expected the NATS URL (as the operator), was empty")
            print(json.dumps(asyncio.run(control.provision(common.nats_url, common.prefix))))
            return 0
        if args.verb == "report":
            return _report(args)
        if args.verb == "export":
            return _export(args)
        if args.verb == "replay":
            return _replay(args)
        if args.verb == "migrate":
            from libs.runtime.migrate import migrate

            loaded = load(None)
            migrate(loaded.common.database_url, loaded.common.schema_prefix)
            print(json.dumps({"migrated": loaded.common.schema_prefix}))
            return 0
    except (ConfigError, DependencyUnavailable, RuntimeError) as e:
        print(f"keel {args.verb}: {e}", file=sys.stderr)
        return 2
    return 2


if __name__ == "__main__":
    sys.exit(main())
