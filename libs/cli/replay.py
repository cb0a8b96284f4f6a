"""`keel replay`: re-publish stored bars into the same services that trade paper, in lockstep.

A replay is a `keel up` of its own: a new subject prefix and database schema prefix
(`replay_<run>`), its own state directory under <var>/replays/<run>, every process in
EXECUTION_MODE=replay (an event's ts_init is its ts_event) and KEEL_LOCKSTEP on, the local
exchange's fill simulator seeded with --seed, and the bars fed from a file. The source is a
bar file (CSV or Parquet, what `keel export` writes) or a stored market-data stream (`KEEL_MD`,
`<PREFIX>_MD`), which is exported first. Once the pipeline has settled, the decision, intent and
fill streams are dumped canonically (JSON as published, ordered by event time then event id)
and hashed: two replays of the same bars with the same seed print the same `digest`.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import msgspec

from libs import barfile
from libs.bus import Bus
from libs.cli import export, up
from libs.contracts import subjects as sj
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
    """Copy the bars of a file within the window (and symbols) to `out`; return how many."""
    first, last = export.window(start, end)
    wanted = set(symbols)
    groups = [
        (ts, [r for r in rows if not wanted or r["symbol"] in wanted])
        for ts, rows in barfile.load_bars(path)
        if first <= ts <= last
    ]
    groups = [(ts, rows) for ts, rows in groups if rows]
    if not groups:
        raise ValueError(f"expected bars in {path} for the window and symbols asked, was none")
    barfile.write_groups(out, groups)
    return sum(len(rows) for _ts, rows in groups)


def canonical(messages: list[tuple[int, str, bytes]]) -> dict[str, list[bytes]]:
    """Return each digest stream's events as published, ordered by event time then event id."""
    picked: dict[str, list[tuple[int, str, bytes]]] = {name: [] for name in STREAMS}
    kinds = {kind: name for name, kinds in STREAMS.items() for kind in kinds}
    seen: set[str] = set()
    for _seq, _subject, data in messages:
        head = _head.decode(data)
        name = kinds.get(head.type.rsplit(".", 1)[0])
        if name is not None and head.event_id not in seen:  # one event once (a republish past dedup)
            seen.add(head.event_id)
            picked[name].append((head.ts_event, head.event_id, data))
    return {name: [data for *_key, data in sorted(rows)] for name, rows in picked.items()}


def digests(streams: dict[str, list[bytes]]) -> dict[str, str]:
    """Return sha256 of each canonical stream and `digest` over all three, in a fixed order."""
    out = {name: hashlib.sha256(b"\n".join(rows)).hexdigest() for name, rows in streams.items()}
    out["digest"] = hashlib.sha256("".join(out[name] for name in STREAMS).encode()).hexdigest()
    return out


async def collect(bus: Bus) -> dict[str, list[bytes]]:
    """Read the replay's decision, intent and fill streams back from JetStream."""
    messages: list[tuple[int, str, bytes]] = []
    for family in FAMILIES:
        messages += await export.read_stream(bus, family)
    return canonical(messages)


async def tca_records(bus: Bus) -> list[bytes]:
    """Every order's TCA record revisions as TCA published them, in event time then id order."""
    rows = []
    for _seq, _subject, data in await export.read_stream(bus, sj.TCA):
        head = _head.decode(data)
        if head.type.rsplit(".", 1)[0] in TCA_RECORDS:
            rows.append((head.ts_event, head.event_id, data))
    return [data for *_key, data in sorted(rows)]


async def _report(database_url: str, schema_prefix: str, sessions: list[str], out: Path) -> list[Path]:
    from services.tca import replay_report  # the CLI reaches the service's module like `keel report`

    conn = await asyncpg.connect(database_url)
    try:
        days = await replay_report.load_run(conn, schema_name(schema_prefix, "tca"), sessions)
    finally:
        await conn.close()
    rep = replay_report.build(days)
    return await asyncio.to_thread(replay_report.write, rep, out)


def finisher(opts: ReplayOptions, out: Path, source: str):  # type: ignore[no-untyped-def]
    """Return keel up's `finish`: dump and hash the streams, dump the TCA records, write the report,
    extend the summary."""

    async def finish(cluster: up.Cluster, bus: Bus, summary: dict[str, Any]) -> dict[str, Any]:
        streams = await collect(bus)
        for name, rows in streams.items():
            (out / f"{name}.jsonl").write_bytes(b"".join(r + b"\n" for r in rows))
        hashes = digests(streams)
        (out / "tca.jsonl").write_bytes(b"".join(r + b"\n" for r in await tca_records(bus)))
        written = await _report(cluster.database_url, cluster.schema_prefix, summary["sessions"], out)
        return {
            **summary,
            "replay": True,
            "source": source,
            "seed": opts.seed,
            "prefix": cluster.prefix,
            "schema_prefix": cluster.schema_prefix,
            "decisions": len(streams["decisions"]),
            "order_reports": len(streams["fills"]),
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


async def _source_bars(opts: ReplayOptions, nats: tuple[str, str] | None, bars: Path) -> tuple[str, int]:
    path = Path(opts.source)
    if is_bar_file(opts.source):
        if not path.is_file():
            raise ValueError(f"expected a bar file at {path}, was none")
        return str(path.resolve()), await asyncio.to_thread(
            bars_from_file, path, bars, opts.start, opts.end, opts.symbols
        )
    if nats is None:
        raise ValueError(f"expected a bar file (.csv / .parquet) or a stored stream name, was {opts.source!r}")
    url, default_prefix = nats
    prefix, _, family = opts.source.rpartition("_")
    stream = opts.source if prefix else family
    summary = await export.export(
        url, prefix.lower() or default_prefix, stream, bars, start=opts.start, end=opts.end, symbols=opts.symbols
    )
    return summary["stream"], summary["rows"]


async def prepare(opts: ReplayOptions, nats: tuple[str, str] | None) -> tuple[up.UpOptions, Path]:
    """Resolve the source into the run's bar file and return keel up's options for the run."""
    run = run_id()
    var = opts.var / "replays" / run
    var.mkdir(parents=True, exist_ok=True)
    out = (opts.out or var / "out").resolve()
    out.mkdir(parents=True, exist_ok=True)
    bars = var / "bars.parquet"
    source, count = await _source_bars(opts, nats, bars)
    checked = await asyncio.to_thread(barfile.check, bars)
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
        },
        total=checked.timestamps,
        fresh=True,
    )
    upo.finish = finisher(opts, out, source)
    (out / "source.json").write_text(
        msgspec.json.encode(
            {"source": source, "bars": count, "bar_timestamps": checked.timestamps, "seed": opts.seed}
        ).decode()
    )
    return upo, out
