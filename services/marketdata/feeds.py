"""File feed: recorded 1-minute bars from CSV or Parquet (read and written by libs/barfile).

Every row is checked before the first bar goes out; a bad row stops the feed with an error that
names it (file, 1-based data row, symbol, timestamp) and is never dropped silently.
"""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import msgspec

from libs.barfile import DEFAULT_PROXY_SPREAD_BPS, PRICE_COLUMNS, REQUIRED_COLUMNS, check, iter_groups, write_bars
from libs.contracts.codec import decode_command
from libs.contracts.control import ScheduledCommand
from libs.contracts.marketdata import BarClosed
from libs.contracts.ops import Watermark
from services.marketdata.handlers import Ctx, bar_closed, watermark

FILE_SOURCE = "file"


def file_feed(
    path: str | Path, ctx: Ctx, *, proxy_spread_bps: Decimal = DEFAULT_PROXY_SPREAD_BPS
) -> Iterator[tuple[list[BarClosed], Watermark]]:
    """Check every row of a bar file, then yield each timestamp's bars and watermark in order.

    The check reads the whole file first (a bad last row stops even the first bar), then the
    bars are read again as they go out: a file in time order is never held whole in memory.
    """
    checked = check(path, proxy_spread_bps)
    last = checked.timestamps - 1

    def emit() -> Iterator[tuple[list[BarClosed], Watermark]]:
        for i, (ts, rows) in enumerate(iter_groups(path, checked, proxy_spread_bps)):
            now = ctx.now_ns
            bars = [bar_closed(ts_ns=ts, now_ns=now, source=FILE_SOURCE, **row) for row in rows]
            yield bars, watermark(ts, now, final=i == last)

    return emit()


_scheduled = msgspec.json.Decoder(ScheduledCommand)


def load_control(path: str | Path) -> list[ScheduledCommand]:
    """Read and check a replay's control file: every line a command of a known verb whose body
    decodes, placed in bar order; a bad line stops the feed at start, naming it."""
    commands: list[ScheduledCommand] = []
    for n, line in enumerate(Path(path).read_bytes().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            cmd = _scheduled.decode(line)
            decode_command(cmd.verb, cmd.body.encode())
        except msgspec.DecodeError as e:
            raise ValueError(f"{path} line {n}: {e}") from e
        if commands and cmd.after < commands[-1].after:
            raise ValueError(
                f"{path} line {n}: expected commands in bar order, was {cmd.after} after {commands[-1].after}"
            )
        commands.append(cmd)
    return commands


__all__ = [
    "DEFAULT_PROXY_SPREAD_BPS",
    "FILE_SOURCE",
    "PRICE_COLUMNS",
    "REQUIRED_COLUMNS",
    "file_feed",
    "load_control",
    "write_bars",
]
