"""`keel export`: write a stored JetStream stream to Parquet, to archive it or replay it elsewhere.

The market-data stream becomes a bar file (libs/barfile: what `keel up --feed file` and the
local exchange's data API read), its bars in time order; any other family becomes one row per
stored message: stream sequence, subject, event type, ids, event time and the event's JSON as
it was published. Messages are read in stream order through a temporary consumer that acks
nothing and is deleted after (it also expires on its own if the export dies).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from datetime import date
from pathlib import Path
from typing import Any

import msgspec
import polars as pl
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from libs import barfile, sessions
from libs.bus import Bus
from libs.contracts import subjects as sj
from libs.contracts.marketdata import BarClosed

FETCH = 512
FETCH_TIMEOUT_SEC = 2.0
INACTIVE_SEC = 60.0  # the server deletes a forgotten export consumer after this
_bar_decoder = msgspec.json.Decoder(BarClosed)
_head_decoder = msgspec.json.Decoder(dict[str, Any])
MESSAGE_SCHEMA = {
    "stream_seq": pl.Int64,
    "subject": pl.String,
    "type": pl.String,
    "event_id": pl.String,
    "correlation_id": pl.String,
    "ts_event": pl.Int64,
    "data": pl.String,
}


def family_of(stream: str, prefix: str) -> str:
    """Return the family a --stream names: a family token (md, exec, ...) or a stream (KEEL_MD)."""
    token = stream.lower()
    head = f"{prefix.lower()}_"
    if token.startswith(head):
        token = token[len(head) :]
    if token not in sj.FAMILIES:
        raise ValueError(f"expected a stream of {', '.join(sj.FAMILIES)} (or its name, e.g. KEEL_MD), was {stream!r}")
    return token


def window(start: str, end: str) -> tuple[int, int]:
    """Return [first, last] event times in ns for sessions from `start` to `end` (YYYY-MM-DD, both
    inclusive; empty: unbounded): from the first session's open to just before the open of the
    first session after `end`."""
    first = last = 0
    if start:
        first = sessions.session_open_close(sessions.next_session(date.fromisoformat(start), inclusive=True))[0]
    if end:
        after = sessions.next_session(date.fromisoformat(end), inclusive=False)
        last = sessions.session_open_close(after)[0] - 1
    return first, last or 2**63 - 1


async def read_stream(bus: Bus, family: str) -> list[tuple[int, str, bytes]]:
    """Return every stored message of a family's stream as (stream sequence, subject, data), in order."""
    stream = bus.subjects.stream(family)
    try:
        info = await bus.js.stream_info(stream)
    except NotFoundError as e:
        raise ValueError(
            f"expected stream {stream} on the server, was none (nothing recorded under this prefix)"
        ) from e
    last = info.state.last_seq
    if info.state.messages == 0:
        return []
    name = f"keel-export-{os.getpid()}"
    await bus.js.add_consumer(
        stream,
        ConsumerConfig(
            durable_name=name,
            deliver_policy=DeliverPolicy.ALL,
            ack_policy=AckPolicy.NONE,
            filter_subject=bus.subjects.family_wildcard(family),
            inactive_threshold=INACTIVE_SEC,
        ),
    )
    out: list[tuple[int, str, bytes]] = []
    try:
        sub = await bus.js.pull_subscribe_bind(durable=name, stream=stream)
        seq = 0
        while seq < last:
            msgs = await sub.fetch(FETCH, timeout=FETCH_TIMEOUT_SEC)
            for m in msgs:
                seq = m.metadata.sequence.stream
                out.append((seq, m.subject, m.data))
            if not msgs:
                break
        await sub.unsubscribe()
    finally:
        await bus.js.delete_consumer(stream, name)
    return out


def bars_of(messages: Iterable[tuple[int, str, bytes]], first: int, last: int, symbols: set[str]) -> list[BarClosed]:
    """Return the stored bars within [first, last] (of `symbols` when given), in time then symbol order."""
    bars = []
    for _seq, subject, data in messages:
        if ".bar_closed." not in subject:
            continue  # watermarks
        bar = _bar_decoder.decode(data)
        if first <= bar.ts_event <= last and (not symbols or bar.symbol in symbols):
            bars.append(bar)
    return sorted(bars, key=lambda b: (b.ts_event, b.symbol))


def rows_of(messages: Iterable[tuple[int, str, bytes]], first: int, last: int) -> pl.DataFrame:
    """Return one row per stored message within [first, last] event time."""
    rows: dict[str, list[Any]] = {k: [] for k in MESSAGE_SCHEMA}
    for seq, subject, data in messages:
        head = _head_decoder.decode(data)
        ts = int(head.get("ts_event") or 0)
        if not first <= ts <= last:
            continue
        for key, value in (
            ("stream_seq", seq),
            ("subject", subject),
            ("type", str(head.get("type", ""))),
            ("event_id", str(head.get("event_id", ""))),
            ("correlation_id", str(head.get("correlation_id", ""))),
            ("ts_event", ts),
            ("data", data.decode()),
        ):
            rows[key].append(value)
    return pl.DataFrame(rows, schema=MESSAGE_SCHEMA)


async def export(
    nats_url: str, prefix: str, stream: str, out: Path, *, start: str = "", end: str = "", symbols: tuple[str, ...] = ()
) -> dict[str, Any]:
    """Write one stored stream to `out` (.parquet; a market-data stream may also go to .csv); return a summary."""
    family = family_of(stream, prefix)
    if family != sj.MD and symbols:
        raise ValueError("expected --symbols only with the market-data stream (md)")
    if out.suffix.lower() not in (".parquet", ".pq") and not (family == sj.MD and out.suffix.lower() == ".csv"):
        raise ValueError(f"expected a .parquet file (or .csv for md), was {out}")
    first, last = window(start, end)
    bus = await Bus.connect(nats_url, sj.Subjects(prefix), service="export")
    try:
        messages = await read_stream(bus, family)
    finally:
        await bus.close()
    out.parent.mkdir(parents=True, exist_ok=True)
    if family == sj.MD:
        bars = bars_of(messages, first, last, set(symbols))
        if not bars:
            raise ValueError(f"expected bars in {bus.subjects.stream(family)} for the window asked, was none")
        barfile.write_bars(out, bars)
        written = len(bars)
        span = (bars[0].ts_event, bars[-1].ts_event)
    else:
        frame = rows_of(messages, first, last)
        frame.write_parquet(out)
        written = frame.height
        span = (int(frame["ts_event"].min() or 0), int(frame["ts_event"].max() or 0)) if written else (0, 0)
    return {
        "path": str(out),
        "stream": bus.subjects.stream(family),
        "messages": len(messages),
        "rows": written,
        "first_ts": span[0],
        "last_ts": span[1],
    }
