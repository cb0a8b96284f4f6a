"""A replay's operator commands: the recorded control stream, placed between the bars they fell between.

An operator's kill, resume or cancel-all was stored in the control stream at some wall-clock
moment; marketdata's watermarks were stored in the market-data stream the same way. A command is
placed after the last bar timestamp whose watermark was stored before it, and marketdata
re-publishes it there (services/marketdata/app.py `_say_commands`), so in the replay it takes
effect between the same two bars as in the recording, and in every replay alike.

Commands a service said on its own (an automatic halt: they carry the `Keel-Issuer` header)
are left out: the replay's services say them again when the same thing happens. A command whose
body does not decode is left out too (the recording dead-lettered it: it had no effect).
Each command is stamped: event id from its verb and place in the recorded stream, event time =
the bar it follows.
"""

from __future__ import annotations

import bisect
from contextlib import aclosing
from pathlib import Path

import msgspec

from libs.bus import Bus, stored_ns
from libs.cli import export
from libs.contracts import subjects as sj
from libs.contracts.base import derive_id
from libs.contracts.codec import decode_command, encode
from libs.contracts.control import ScheduledCommand
from libs.contracts.ops import Watermark

_watermark = msgspec.json.Decoder(Watermark)


class Recorded(msgspec.Struct, frozen=True, kw_only=True):
    """One message of the recorded control stream."""

    stream_seq: int
    stored_ns: int
    verb: str
    data: bytes
    issuer: str = ""  # the service that said it on its own; "" = an operator


def place(watermarks: list[tuple[int, int]], recorded: list[Recorded]) -> list[ScheduledCommand]:
    """Place each operator command after the last bar whose watermark (stored_ns, bar_ts) was
    stored before it (0: before the first bar); stamp its envelope."""
    stored = [ns for ns, _ in watermarks]
    placed: list[ScheduledCommand] = []
    for rec in recorded:
        if rec.issuer:
            continue
        try:
            cmd = decode_command(rec.verb, rec.data)
        except msgspec.DecodeError:
            continue
        i = bisect.bisect_right(stored, rec.stored_ns)
        after = max((bar_ts for _, bar_ts in watermarks[:i]), default=0)
        event_id = derive_id("ctl.replayed", rec.verb, rec.stream_seq)
        stamped = msgspec.structs.replace(  # type: ignore[type-var]
            cmd, event_id=event_id, correlation_id=event_id, causation_id=event_id, ts_event=after, ts_init=after
        )
        placed.append(ScheduledCommand(after=after, verb=rec.verb, body=encode(stamped).decode()))
    return sorted(placed, key=lambda c: c.after)  # stable: same-bar commands keep their order


async def _read(bus: Bus, family: str, filter_subject: str) -> list[tuple[int, int, str, bytes, dict[str, str]]]:
    """Every stored message of a family's stream on filter_subject: (seq, stored ns, subject,
    data, headers); none when the stream was never made (nothing was said there)."""
    out = []
    try:
        async with aclosing(export.iter_msgs(bus, family, filter_subject)) as batches:
            async for msgs in batches:
                for m in msgs:
                    out.append((m.metadata.sequence.stream, stored_ns(m), m.subject, m.data, dict(m.headers or {})))
    except ValueError:
        return []  # no such stream
    return out


async def recorded_commands(bus: Bus) -> list[ScheduledCommand]:
    """Read the recorded control stream and marketdata's watermarks; return the placed commands."""
    watermarks = [
        (stored, _watermark.decode(data).bar_ts)
        for _seq, stored, _subject, data, _h in await _read(bus, sj.MD, bus.subjects.watermark("marketdata"))
    ]
    recorded = [
        Recorded(
            stream_seq=seq, stored_ns=stored, verb=subject.rsplit(".", 1)[-1], data=data, issuer=h.get(sj.H_ISSUER, "")
        )
        for seq, stored, subject, data, h in await _read(bus, sj.CTL, f"{bus.subjects.prefix}.{sj.CTL}.>")
    ]
    return place(watermarks, recorded)


def write(path: Path, commands: list[ScheduledCommand]) -> None:
    """Write a control file (one JSON line per command) for marketdata's KEEL_MD_CONTROL_PATH."""
    path.write_bytes(b"".join(msgspec.json.encode(c) + b"\n" for c in commands))
