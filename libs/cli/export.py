"""`keel export`: write a stored JetStream stream to Parquet, to archive it or replay it elsewhere.

The market-data stream becomes a bar file (libs/barfile: what `keel up --feed file` and the
local exchange's data API read), its bars in time order; any other family becomes one row per
stored message: stream sequence, subject, event type, ids, event time and the event's JSON as
it was published. Messages are read in stream order through a temporary consumer that acks
nothing and is deleted after (it also expires on its own if the export dies), a fetch at a time,
and written a chunk at a time: memory does not grow with the stream. The feed publishes a
timestamp's bars, then its watermark, so a market-data stream is in time order and is written a
timestamp at a time; one that is not (a bar older than one written) is read again, held whole
and sorted, as every export did before: a right file first, bounded memory second.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterable, Iterator
from contextlib import aclosing
from datetime import date
from pathlib import Path
from typing import Any

import msgspec
import nats.errors
import polars as pl
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from libs import barfile, sessions
from libs.bus import Bus
from libs.contracts import subjects as sj
from libs.contracts.marketdata import BarClosed

FETCH = 512
FETCH_TIMEOUT_SEC = 2.0
FETCH_ATTEMPTS = 5  # empty fetches in a row, with messages still pending, before a read gives up
INACTIVE_SEC = 60.0  # the server deletes a forgotten export consumer after this
_bar_decoder = msgspec.json.Decoder(BarClosed)
_head_decoder = msgspec.json.Decoder(dict[str, Any])
MESSAGE_SCHEMA: dict[str, pl.DataType] = {
    "stream_seq": pl.Int64(),
    "subject": pl.String(),
    "type": pl.String(),
    "event_id": pl.String(),
    "correlation_id": pl.String(),
    "ts_event": pl.Int64(),
    "data": pl.String(),
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


Message = tuple[int, str, bytes]  # (stream sequence, subject, data)


async def iter_msgs(bus: Bus, family: str, filter_subject: str = "") -> AsyncIterator[list[Msg]]:
    """Yield a family's stored messages (on `filter_subject`, default all of them) in stream order,
    as NATS delivers them (headers, stored time), a fetch at a time (never the whole stream).

    Close it when done early (`contextlib.aclosing`): the temporary consumer is deleted then.
    """
    stream = bus.subjects.stream(family)
    try:
        info = await bus.js.stream_info(stream)
    except NotFoundError as e:
        raise ValueError(
            f"expected stream {stream} on the server, was none (nothing recorded under this prefix)"
        ) from e
    if info.state.messages == 0:
        return
    name = f"keel-export-{os.getpid()}-{family}"
    await bus.js.add_consumer(
        stream,
        ConsumerConfig(
            durable_name=name,
            deliver_policy=DeliverPolicy.ALL,
            ack_policy=AckPolicy.NONE,
            filter_subject=filter_subject or bus.subjects.family_wildcard(family),
            inactive_threshold=INACTIVE_SEC,
        ),
    )
    try:
        sub = await bus.js.pull_subscribe_bind(durable=name, stream=stream)
        try:
            quiet = 0
            while True:
                try:
                    msgs = await sub.fetch(FETCH, timeout=FETCH_TIMEOUT_SEC)
                except nats.errors.TimeoutError:
                    # the end only when the server says nothing is left; a slow server is asked
                    # again, and a stream it cannot finish reading is an error, never a short file
                    if (await sub.consumer_info()).num_pending == 0:
                        break
                    quiet += 1
                    if quiet >= FETCH_ATTEMPTS:
                        raise ConnectionError(
                            f"reading {stream}: no messages for {quiet} fetches of {FETCH_TIMEOUT_SEC}s "
                            "while some are still pending"
                        ) from None
                    continue
                quiet = 0
                yield msgs
                if msgs[-1].metadata.num_pending == 0:
                    break  # the last one stored when the consumer was made, or since
        finally:
            await sub.unsubscribe()  # closed early too (a reader that stopped), not only at the end
    finally:
        await bus.js.delete_consumer(stream, name)


async def iter_stream(bus: Bus, family: str) -> AsyncIterator[list[Message]]:
    """Yield a family's stored messages as (stream sequence, subject, data), a fetch at a time.

    Close it when done early (`contextlib.aclosing`), as `iter_msgs`.
    """
    async with aclosing(iter_msgs(bus, family)) as batches:
        async for msgs in batches:
            yield [(m.metadata.sequence.stream, m.subject, m.data) for m in msgs]


def bars_in(messages: Iterable[Message], first: int, last: int, symbols: set[str]) -> Iterator[BarClosed]:
    """Yield the stored bars within [first, last] (of `symbols` when given), in stream order."""
    for _seq, subject, data in messages:
        if ".bar_closed." not in subject:
            continue  # watermarks
        bar = _bar_decoder.decode(data)
        if first <= bar.ts_event <= last and (not symbols or bar.symbol in symbols):
            yield bar


MessageRow = tuple[int, str, str, str, str, int, str]  # MESSAGE_SCHEMA's columns


def rows_of(messages: Iterable[Message], first: int, last: int) -> Iterator[MessageRow]:
    """Yield one row (MESSAGE_SCHEMA's columns) per stored message within [first, last] event time."""
    for seq, subject, data in messages:
        head = _head_decoder.decode(data)
        ts = int(head.get("ts_event") or 0)
        if first <= ts <= last:
            yield (
                seq,
                subject,
                str(head.get("type", "")),
                str(head.get("event_id", "")),
                str(head.get("correlation_id", "")),
                ts,
                data.decode(),
            )


class _OutOfTimeOrder(Exception):
    """A bar older than one already written: the stream is not in time order."""


async def _stream_bars(bus: Bus, out: Path, first: int, last: int, symbols: set[str]) -> tuple[int, int, int, int]:
    # the feed publishes a timestamp's bars, then its watermark: a stream in time order is written
    # one timestamp at a time (its rows by symbol), holding one timestamp's bars, never the stream
    messages, first_ts = 0, 0
    group: list[BarClosed] = []
    with barfile.GroupWriter(out) as writer:
        async with aclosing(iter_stream(bus, sj.MD)) as batches:
            async for batch in batches:
                messages += len(batch)
                for bar in bars_in(batch, first, last, symbols):
                    if group and bar.ts_event != group[0].ts_event:
                        if bar.ts_event < group[0].ts_event:
                            raise _OutOfTimeOrder
                        first_ts = first_ts or group[0].ts_event
                        _write_group(writer, group)
                        group = []
                    group.append(bar)
        if not group:
            raise ValueError(f"expected bars in {bus.subjects.stream(sj.MD)} for the window asked, was none")
        first_ts = first_ts or group[0].ts_event
        _write_group(writer, group)
    return messages, writer.rows, first_ts, group[0].ts_event


def _write_group(writer: barfile.GroupWriter, bars: list[BarClosed]) -> None:
    writer.write(bars[0].ts_event, [barfile.bar_row(b) for b in sorted(bars, key=lambda b: b.symbol)])


async def _sorted_bars(bus: Bus, out: Path, first: int, last: int, symbols: set[str]) -> tuple[int, int, int, int]:
    # a stream out of time order (bars published by hand, say): every bar in the window is held
    # and sorted, as all exports did before they streamed
    messages, bars = 0, list[BarClosed]()
    async with aclosing(iter_stream(bus, sj.MD)) as batches:
        async for batch in batches:
            messages += len(batch)
            bars += bars_in(batch, first, last, symbols)
    if not bars:
        raise ValueError(f"expected bars in {bus.subjects.stream(sj.MD)} for the window asked, was none")
    bars.sort(key=lambda b: (b.ts_event, b.symbol))
    barfile.write_bars(out, bars)
    return messages, len(bars), bars[0].ts_event, bars[-1].ts_event


async def _message_rows(bus: Bus, family: str, out: Path, first: int, last: int) -> tuple[int, int, int, int]:
    messages, low, high = 0, 2**63, 0
    with barfile.FrameWriter(out, MESSAGE_SCHEMA) as writer:
        async with aclosing(iter_stream(bus, family)) as batches:
            async for batch in batches:
                messages += len(batch)
                for row in rows_of(batch, first, last):
                    writer.append(row)
                    low, high = min(low, row[5]), max(high, row[5])
    return messages, writer.rows, *((low, high) if writer.rows else (0, 0))


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
        if family == sj.MD:
            try:
                messages, written, *span = await _stream_bars(bus, out, first, last, set(symbols))
            except _OutOfTimeOrder:
                # correctness before memory: read it again whole (nothing was kept of the first pass)
                messages, written, *span = await _sorted_bars(bus, out, first, last, set(symbols))
        else:
            messages, written, *span = await _message_rows(bus, family, out, first, last)
    finally:
        await bus.close()
    return {
        "path": str(out),
        "stream": bus.subjects.stream(family),
        "messages": messages,
        "rows": written,
        "first_ts": span[0],
        "last_ts": span[1],
    }
