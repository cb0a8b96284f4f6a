"""`keel replay`: re-publish stored bars into the same services that trade paper, in lockstep.

A replay is a `keel up` of its own: a new subject prefix and database schema prefix
(`replay_<run>`), its own state directory under <var>/replays/<run>, every process in
EXECUTION_MODE=replay (an event's ts_init is its ts_event) and KEEL_LOCKSTEP on, the local
exchange's fill simulator seeded with --seed, and the bars fed from a file. The source is a
bar file (CSV or Parquet, what `keel export` writes) or a stored market-data stream (`KEEL_MD`,
`<PREFIX>_MD`), which is exported first; the operator commands stored beside it (kill, resume,
cancel-all) are re-published between the same two bars (libs/cli/replay_control.py). Once the
pipeline has settled, the decision, intent and fill streams are dumped canonically (JSON as
published, ordered by event time then event id) and hashed: two replays of the same bars with
the same seed print the same `digest`.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import secrets
import sqlite3
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from contextlib import ExitStack, aclosing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import asyncpg
import msgspec

from libs import barfile
from libs.bus import Bus
from libs.cli import export, replay_control, up
from libs.contracts import subjects as sj
from libs.contracts.control import ScheduledCommand
from libs.db.store import schema_name

# the streams the digest covers, by event type (the tag's family.name): every decision record,
# every intent, and every report of what became of an order at the broker
DECISIONS = (
    "signal.target_proposed",
    "risk.entry_blocked",
    "oms.pretrade_decision",
    "exec.submit_skipped",
    "exec.submit_failed",
)
INTENTS = ("risk.order_intent",)
FILLS = (
    "exec.order_submitted",
    "exec.order_accepted",
    "exec.order_partially_filled",
    "exec.order_filled",
    "exec.order_canceled",
    "exec.order_rejected",
    "exec.order_expired",
)
STREAMS = {"decisions": DECISIONS, "intents": INTENTS, "fills": FILLS}
FAMILIES = (sj.SIGNAL, sj.RISK, sj.OMS, sj.EXEC)
TCA_RECORDS = ("tca.order_recorded",)  # written beside the digest's streams, not part of it
TCA = "tca"  # their dump's name
_KINDS = {kind: name for name, kinds in STREAMS.items() for kind in kinds}


class _Head(msgspec.Struct):
    type: str
    event_id: str
    ts_event: int


_head = msgspec.json.Decoder(_Head)


@dataclass
class ReplayOptions:
    """What `keel replay` was asked to do."""

    var: Path
    source: str
    seed: int
    start: str = ""
    end: str = ""
    symbols: tuple[str, ...] = ()
    out: Path | None = None
    quiet: bool = False
    prefix: str = ""  # subject and schema prefix of the run (default replay_<run>)


def run_id() -> str:
    """Name a replay run (operational only: it names a prefix and a folder, never a decision)."""
    return dt.datetime.now(dt.UTC).strftime("%Y%m%dt%H%M%S") + secrets.token_hex(2)


def bars_from_file(path: Path, out: Path, start: str, end: str, symbols: tuple[str, ...]) -> int:
    """Copy the bars of a file within the window (and symbols) to `out`, streaming; return how many."""
    first, last = export.window(start, end)
    wanted = set(symbols)
    checked = barfile.check(path)
    with barfile.GroupWriter(out) as writer:
        for ts, rows in barfile.iter_groups(path, checked):  # in time order
            if ts > last:
                break
            kept = [r for r in rows if not wanted or r["symbol"] in wanted]
            if kept and ts >= first:
                writer.write(ts, kept)
        if not writer.rows:
            raise ValueError(f"expected bars in {path} for the window and symbols asked, was none")
    return writer.rows


class Canon:
    """The digest's streams and the TCA records in canonical order, sorted in a scratch sqlite file.

    A long replay's streams need not fit in memory: events go to disk as they are read and come
    back one at a time, by event time then event id. A scratch sort, not a store (so no alembic):
    the file lives and dies with one `keel replay`. ":memory:" keeps it in memory (a few events).
    """

    def __init__(self, path: str | Path = ":memory:") -> None:
        self._db = sqlite3.connect(path)
        self._db.executescript(
            """
            PRAGMA journal_mode = OFF;
            PRAGMA synchronous = OFF;
            -- one event once, across every stream: the first stored wins (a republish past dedup repeats it)
            CREATE TABLE event (event_id TEXT PRIMARY KEY, stream TEXT NOT NULL, ts_event INTEGER NOT NULL,
                                data BLOB NOT NULL);
            CREATE INDEX event_order ON event (stream, ts_event, event_id);
            -- every revision as stored, repeats too (what the dump always held)
            CREATE TABLE tca (ts_event INTEGER NOT NULL, event_id TEXT NOT NULL, data BLOB NOT NULL);
            CREATE INDEX tca_order ON tca (ts_event, event_id);
            """
        )

    def __enter__(self) -> Canon:
        return self

    def __exit__(self, *exc: object) -> None:
        self._db.close()

    def add(self, messages: Iterable[export.Message]) -> None:
        """Keep the digest streams' events of a batch, an event id only the first time it is seen."""
        rows = []
        for _seq, _subject, data in messages:
            head = _head.decode(data)
            name = _KINDS.get(head.type.rsplit(".", 1)[0])
            if name is not None:
                rows.append((head.event_id, name, head.ts_event, data))
        self._db.executemany("INSERT OR IGNORE INTO event VALUES (?, ?, ?, ?)", rows)
        self._db.commit()

    def add_tca(self, messages: Iterable[export.Message]) -> None:
        """Keep the TCA records of a batch."""
        rows = []
        for _seq, _subject, data in messages:
            head = _head.decode(data)
            if head.type.rsplit(".", 1)[0] in TCA_RECORDS:
                rows.append((head.ts_event, head.event_id, data))
        self._db.executemany("INSERT INTO tca VALUES (?, ?, ?)", rows)
        self._db.commit()

    def rows(self, name: str) -> Iterator[bytes]:
        """Yield one stream's events as published (`TCA`: the TCA records), by event time then event id."""
        if name == TCA:
            # a repeated record ties on (time, id): its bytes break the tie, as sorting the tuples did
            cursor = self._db.execute("SELECT data FROM tca ORDER BY ts_event, event_id, data")
        else:
            cursor = self._db.execute("SELECT data FROM event WHERE stream = ? ORDER BY ts_event, event_id", (name,))
        for (data,) in cursor:
            yield data


def canonical(messages: Iterable[export.Message]) -> dict[str, list[bytes]]:
    """Return each digest stream's events as published, by event time then event id (held in memory)."""
    with Canon() as canon:
        canon.add(messages)
        return {name: list(canon.rows(name)) for name in STREAMS}


def digests(streams: Mapping[str, Iterable[bytes]]) -> dict[str, str]:
    """Return sha256 of each canonical stream and `digest` over all three, in a fixed order.

    A stream's hash is of its events joined by newlines (none after the last), taken a row at a
    time, so a stream is never held whole.
    """
    out = {}
    for name, rows in streams.items():
        sha = hashlib.sha256()
        for n, row in enumerate(rows):
            if n:
                sha.update(b"\n")
            sha.update(row)
        out[name] = sha.hexdigest()
    out["digest"] = hashlib.sha256("".join(out[name] for name in STREAMS).encode()).hexdigest()
    return out


def dump(canon: Canon, out: Path) -> tuple[dict[str, str], dict[str, int]]:
    """Write each digest stream and the TCA records to <name>.jsonl, an event a line, hashing the
    streams as they are written; return the digests and how many events each file holds."""
    counts = dict.fromkeys((*STREAMS, TCA), 0)

    def written(name: str, f: BinaryIO) -> Iterator[bytes]:
        for row in canon.rows(name):
            f.write(row)
            f.write(b"\n")
            counts[name] += 1
            yield row

    with ExitStack() as files:
        opened = {name: files.enter_context((out / f"{name}.jsonl").open("wb")) for name in counts}
        hashes = digests({name: written(name, opened[name]) for name in STREAMS})
        for _row in written(TCA, opened[TCA]):
            pass
    return hashes, counts


async def collect(bus: Bus, canon: Canon) -> None:
    """Read the replay's decision, intent, fill and TCA streams back from JetStream into `canon`, a fetch at a time."""
    for family in (*FAMILIES, sj.TCA):
        async with aclosing(export.iter_stream(bus, family)) as batches:
            async for batch in batches:
                if family == sj.TCA:
                    canon.add_tca(batch)
                else:
                    canon.add(batch)


async def _report(database_url: str, schema_prefix: str, sessions: list[str], out: Path) -> list[Path]:
    from services.tca import replay_report  # the CLI reaches the service's module like `keel report`

    conn = await asyncpg.connect(database_url)
    try:
        days = await replay_report.load_run(conn, schema_name(schema_prefix, "tca"), sessions)
    finally:
        await conn.close()
    rep = replay_report.build(days)
    return await asyncio.to_thread(replay_report.write, rep, out)


def finisher(opts: ReplayOptions, out: Path, source: str, scratch: Path, commands: int = 0):  # type: ignore[no-untyped-def]
    """Return keel up's `finish`: dump and hash the streams, dump the TCA records, write the report,
    extend the summary. The streams are sorted in a file under `scratch` (the run's folder), not in memory."""

    async def finish(cluster: up.Cluster, bus: Bus, summary: dict[str, Any]) -> dict[str, Any]:
        with (
            tempfile.TemporaryDirectory(prefix="canonical-", dir=scratch) as tmp,
            Canon(Path(tmp) / "events.sqlite") as canon,
        ):
            await collect(bus, canon)
            hashes, counts = dump(canon, out)
        written = await _report(cluster.database_url, cluster.schema_prefix, summary["sessions"], out)
        return {
            **summary,
            "replay": True,
            "source": source,
            "seed": opts.seed,
            "control_commands": commands,
            "prefix": cluster.prefix,
            "schema_prefix": cluster.schema_prefix,
            "decisions": counts["decisions"],
            "order_reports": counts["fills"],
            "out": str(out),
            "report": [str(p) for p in written],
            "digests": {k: v for k, v in hashes.items() if k != "digest"},
            "digest": hashes["digest"],
        }

    return finish


BAR_FILE_SUFFIXES = (".csv", ".parquet", ".pq")


def is_bar_file(source: str) -> bool:
    """Tell a bar file from a stream name (KEEL_MD, <PREFIX>_MD); refuse what is neither."""
    if Path(source).suffix.lower() in BAR_FILE_SUFFIXES:
        return True
    if "/" in source or "." in source:
        raise ValueError(f"expected a bar file (.csv / .parquet) or a stored stream name, was {source!r}")
    return False


async def _source_bars(
    opts: ReplayOptions, nats: tuple[str, str] | None, bars: Path
) -> tuple[str, int, list[ScheduledCommand]]:
    """Write the run's bar file from the source; return the source's name, the bars written and,
    from a stored stream, the operator commands recorded beside it (placed between bars)."""
    path = Path(opts.source)
    if is_bar_file(opts.source):
        if not path.is_file():
            raise ValueError(f"expected a bar file at {path}, was none")
        count = await asyncio.to_thread(bars_from_file, path, bars, opts.start, opts.end, opts.symbols)
        return str(path.resolve()), count, []
    if nats is None:
        raise ValueError(f"expected a bar file (.csv / .parquet) or a stored stream name, was {opts.source!r}")
    url, default_prefix = nats
    prefix, _, family = opts.source.rpartition("_")
    stream = opts.source if prefix else family
    recorded = prefix.lower() or default_prefix
    summary = await export.export(url, recorded, stream, bars, start=opts.start, end=opts.end, symbols=opts.symbols)
    bus = await Bus.connect(url, sj.Subjects(recorded), service="export")
    try:
        commands = await replay_control.recorded_commands(bus)
    finally:
        await bus.close()
    return summary["stream"], summary["rows"], commands


async def prepare(opts: ReplayOptions, nats: tuple[str, str] | None) -> tuple[up.UpOptions, Path]:
    """Resolve the source into the run's bar file and return keel up's options for the run."""
    run = run_id()
    var = opts.var / "replays" / run
    var.mkdir(parents=True, exist_ok=True)
    out = (opts.out or var / "out").resolve()
    out.mkdir(parents=True, exist_ok=True)
    bars = var / "bars.parquet"
    source, count, commands = await _source_bars(opts, nats, bars)
    checked = await asyncio.to_thread(barfile.check, bars)
    control = out / "control.jsonl"  # what was replayed between the bars, to read and to diff
    replay_control.write(control, commands)
    symbols = checked.symbols
    upo = up.UpOptions(
        var=var,
        feed="file",
        file=str(bars),
        symbols=",".join(symbols),
        speed="max",
        exit_when_done=True,
        quiet=opts.quiet,
        prefix=opts.prefix or f"replay_{run}",
        extra_env={
            "KEEL_EXECUTION_MODE": "replay",
            "KEEL_LOCKSTEP": "1",
            "KEEL_EXCHANGE_SIM_SEED": str(opts.seed),
            **({"KEEL_MD_CONTROL_PATH": str(control)} if commands else {}),
        },
        total=checked.timestamps,
        fresh=True,
    )
    upo.finish = finisher(opts, out, source, var, len(commands))
    (out / "source.json").write_text(
        msgspec.json.encode(
            {
                "source": source,
                "bars": count,
                "bar_timestamps": checked.timestamps,
                "control_commands": len(commands),
                "seed": opts.seed,
            }
        ).decode()
    )
    return upo, out
