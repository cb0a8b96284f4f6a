"""Bar files: recorded 1-minute bars in CSV or Parquet, their strict reader and their writer.

Every row is checked before any bar is used; a bad row raises an error that names it (file,
1-based data row, symbol, timestamp) and is never dropped silently. `check` + `iter_groups`
stream a file in time order (a replay's memory stays bounded however long the file);
`load_bars` reads one whole (the exchange's data API, which answers any time range).
`GroupWriter` writes one a chunk at a time, so writing needs no whole file in memory either.
Timestamps are bar CLOSE times (keel's BarClosed.ts_event). The marketdata file feed and
`keel replay` stream (`check`, `iter_groups`); the local exchange's Market Data API reads
through `load_bars`.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import BinaryIO, Self, TypedDict

import msgspec
import polars as pl
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from libs import sessions
from libs.contracts.marketdata import BarClosed

REQUIRED_COLUMNS = ("timestamp", "symbol", "open", "high", "low", "close", "volume")
PRICE_COLUMNS = ("open", "high", "low", "close")
DEFAULT_PROXY_SPREAD_BPS = Decimal(4)
_NS = 1_000_000_000


class BarRow(TypedDict):
    """One checked row of a bar file, as BarClosed fields."""

    symbol: str
    open: Decimal
    high: Decimal
    low: Decimal
    close: Decimal
    volume: int
    spread_bps: Decimal
    spread_is_proxy: bool


Group = tuple[int, list[BarRow]]  # (bar close ns UTC, that timestamp's rows)


def bar_row(bar: BarClosed) -> BarRow:
    """Return a bar's row as a bar file stores it."""
    return BarRow(**{k: getattr(bar, k) for k in BarRow.__annotations__})


def write_bars(path: str | Path, bars: Iterable[BarClosed]) -> None:
    """Write bars to CSV or Parquet (by suffix) so the file feed reads them back unchanged."""
    with GroupWriter(path) as out:
        for bar in bars:
            out.write(bar.ts_event, [bar_row(bar)])


def write_groups(path: str | Path, groups: Iterable[Group]) -> None:
    """Write checked rows (what `load_bars` or `iter_groups` give, or a selection of it) to CSV or Parquet."""
    with GroupWriter(path) as out:
        for ts, rows in groups:
            out.write(ts, rows)


CHUNK_ROWS = 16_384  # rows a writer holds before it writes them (one Parquet row group each)
BAR_SCHEMA: dict[str, pl.DataType] = {
    "timestamp": pl.String(),
    "symbol": pl.String(),
    # prices as text keep their exact Decimal digits ("53.80", not 53.8)
    **{col: pl.String() for col in PRICE_COLUMNS},
    "volume": pl.Int64(),
    "spread_bps": pl.String(),
    "spread_is_proxy": pl.Boolean(),
}


class FrameWriter:
    """Write rows of one schema to CSV or Parquet (by suffix) a chunk at a time, so memory holds a chunk.

    The file is what one polars `write_csv` of every row gives, byte for byte (a header, then each
    chunk's rows), or a Parquet file that reads back to the same frame as `write_parquet` (one row
    group per chunk). Rows go to a hidden sibling, made with its folder at the first write, that
    replaces `path` only on a clean exit: a failed write leaves no half file, and whatever `path`
    held before.
    """

    def __init__(self, path: str | Path, schema: Mapping[str, pl.DataType], chunk_rows: int = CHUNK_ROWS) -> None:
        self.path = Path(path)
        self.rows = 0
        self._kind = _kind(self.path)
        self._schema = dict(schema)
        self._chunk_rows = chunk_rows
        self._columns: list[list[object]] = [[] for _ in self._schema]
        self._part = self.path.with_name(f".{self.path.name}.{os.getpid()}.part")
        self._file: BinaryIO | None = None
        self._parquet: pq.ParquetWriter | None = None
        self._started = False

    def __enter__(self) -> Self:
        return self

    def append(self, row: Sequence[object]) -> None:
        """Add one row (values in schema order); a full chunk is written out."""
        for column, value in zip(self._columns, row, strict=True):
            column.append(value)
        self.rows += 1
        if len(self._columns[0]) >= self._chunk_rows:
            self._flush()

    def _flush(self) -> None:
        if self._file is None:  # opened at the first write: a read that fails first leaves nothing behind
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self._part.open("wb")
        frame = pl.DataFrame(dict(zip(self._schema, self._columns, strict=True)), schema=self._schema)
        self._columns = [[] for _ in self._schema]
        if self._kind == "csv":
            frame.write_csv(self._file, include_header=not self._started)
        else:
            table = frame.to_arrow()
            if self._parquet is None:
                # polars' default codec, so a chunked file is no larger than a whole one
                self._parquet = pq.ParquetWriter(self._file, table.schema, compression="zstd")
            if frame.height:  # no empty row group: a file of no rows is a schema and a footer, as polars writes it
                self._parquet.write_table(table)
        self._started = True

    def _close(self, *, complete: bool) -> None:
        try:
            if complete and (self._columns[0] or not self._started):
                self._flush()
        finally:
            try:
                if self._parquet is not None:
                    self._parquet.close()
            finally:
                if self._file is not None:
                    self._file.close()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        if exc_type is not None:
            self._close(complete=False)
            self._part.unlink(missing_ok=True)
            return
        try:
            self._close(complete=True)
        except BaseException:
            self._part.unlink(missing_ok=True)
            raise
        os.replace(self._part, self.path)


class GroupWriter(FrameWriter):
    """Write (close ts, rows) groups to a bar file in the order given, a chunk at a time."""

    def __init__(self, path: str | Path, chunk_rows: int = CHUNK_ROWS) -> None:
        super().__init__(path, BAR_SCHEMA, chunk_rows)

    def write(self, ts: int, rows: Iterable[BarRow]) -> None:
        """Add one timestamp's rows."""
        stamp = iso(ts)
        for r in rows:
            self.append(
                (
                    stamp,
                    r["symbol"],
                    *(str(r[col]) for col in PRICE_COLUMNS),  # type: ignore[literal-required]
                    r["volume"],
                    str(r["spread_bps"]),
                    r["spread_is_proxy"],
                )
            )


def _kind(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return "csv"
    if suffix in (".parquet", ".pq"):
        return "parquet"
    raise ValueError(f"expected a .csv or .parquet bar file, was {path}")


def _read(path: Path) -> pl.DataFrame:
    if _kind(path) == "csv":
        # every column as text: no float rounding of prices, our own checks on every value
        return pl.read_csv(path, infer_schema=False)
    frame = pl.read_parquet(path)
    if "timestamp" in frame.columns and isinstance(frame.schema["timestamp"], pl.Datetime):
        # a naive datetime column is UTC by polars' convention; epoch() converts aware ones
        frame = frame.with_columns(pl.col("timestamp").dt.epoch("ns"))
    return frame


def load_bars(path: str | Path, proxy_spread_bps: Decimal = DEFAULT_PROXY_SPREAD_BPS) -> list[Group]:
    """Read and check every row of a bar file; return (close ts, rows) groups in time order."""
    path = Path(path)
    frame = _read(path)
    missing = [col for col in REQUIRED_COLUMNS if col not in frame.columns]
    if missing:
        raise ValueError(f"{path}: expected columns {list(REQUIRED_COLUMNS)}, missing {missing}")
    if frame.height == 0:
        raise ValueError(f"{path}: expected at least one bar, was an empty file")
    has_spread = "spread_bps" in frame.columns
    has_proxy_flag = "spread_is_proxy" in frame.columns

    by_ts: dict[int, list[BarRow]] = {}
    seen: dict[tuple[int, str], int] = {}
    for n, raw in enumerate(frame.iter_rows(named=True), start=1):
        where = f"{path} row {n} ({raw.get('symbol')} @ {raw.get('timestamp')})"
        try:
            ts, row = _parse_row(raw, has_spread, has_proxy_flag, proxy_spread_bps)
        except (ValueError, ArithmeticError) as e:
            raise ValueError(f"{where}: {e}") from e
        key = (ts, row["symbol"])
        if key in seen:
            raise ValueError(f"{where}: expected one bar per symbol and time, row {seen[key]} too")
        seen[key] = n
        by_ts.setdefault(ts, []).append(row)
    return sorted(by_ts.items())


BATCH_ROWS = 4_096  # rows turned into Python values at a time when a file is streamed


class Checked(msgspec.Struct, frozen=True, kw_only=True):
    """What a streamed check of a bar file found: every row valid, and its shape."""

    rows: int
    timestamps: int  # distinct bar closes
    symbols: tuple[str, ...]
    ordered: bool  # rows in time order (then a replay streams the file, memory bounded)


def _stream(path: Path) -> Iterator[list[dict[str, object]]]:
    """Yield the file's rows in batches, never the whole file (pyarrow's streaming readers)."""
    if _kind(path) == "csv":
        with path.open(newline="") as f:
            header = next(csv.reader(f), [])
        # every column as text: no float rounding of prices, our own checks on every value
        convert = pacsv.ConvertOptions(column_types=dict.fromkeys(header, pa.string()), strings_can_be_null=False)
        batches: Iterable[pa.RecordBatch] = pacsv.open_csv(path, convert_options=convert)
    else:
        batches = pq.ParquetFile(path).iter_batches(batch_size=BATCH_ROWS)
    for batch in batches:
        for start in range(0, batch.num_rows, BATCH_ROWS):
            yield batch.slice(start, BATCH_ROWS).to_pylist()


def _columns(path: Path) -> list[str]:
    if _kind(path) == "csv":
        with path.open(newline="") as f:
            return next(csv.reader(f), [])
    return list(pq.ParquetFile(path).schema_arrow.names)


def _rows(path: Path, proxy_spread_bps: Decimal) -> Iterator[tuple[int, int, BarRow]]:
    """Yield (row number, close ts, checked row) for every row, streaming; a bad row raises naming it."""
    columns = _columns(path)
    missing = [col for col in REQUIRED_COLUMNS if col not in columns]
    if missing:
        raise ValueError(f"{path}: expected columns {list(REQUIRED_COLUMNS)}, missing {missing}")
    has_spread, has_proxy_flag = "spread_bps" in columns, "spread_is_proxy" in columns
    n = 0
    for batch in _stream(path):
        for raw in batch:
            n += 1
            try:
                ts, row = _parse_row(raw, has_spread, has_proxy_flag, proxy_spread_bps)
            except (ValueError, ArithmeticError) as e:
                raise ValueError(f"{path} row {n} ({raw.get('symbol')} @ {raw.get('timestamp')}): {e}") from e
            yield n, ts, row


def check(path: str | Path, proxy_spread_bps: Decimal = DEFAULT_PROXY_SPREAD_BPS) -> Checked:
    """Check every row of a bar file in one streaming pass (memory bounded by a batch)."""
    path = Path(path)
    rows = timestamps = 0
    symbols: set[str] = set()
    ordered, last_ts, at_ts = True, -1, {}  # at_ts: the current timestamp's symbols -> row
    for n, ts, row in _rows(path, proxy_spread_bps):
        rows += 1
        symbols.add(row["symbol"])
        if ts != last_ts:
            ordered = ordered and ts > last_ts
            timestamps += 1
            last_ts, at_ts = ts, {}
        if ordered and row["symbol"] in at_ts:
            raise ValueError(
                f"{path} row {n} ({row['symbol']} @ {iso(ts)}): expected one bar per symbol and time, "
                f"row {at_ts[row['symbol']]} too"
            )
        at_ts[row["symbol"]] = n
    if not rows:
        raise ValueError(f"{path}: expected at least one bar, was an empty file")
    if not ordered:
        timestamps = len(load_bars(path, proxy_spread_bps))  # counts and checks duplicates the whole way
    return Checked(rows=rows, timestamps=timestamps, symbols=tuple(sorted(symbols)), ordered=ordered)


def iter_groups(
    path: str | Path, checked: Checked, proxy_spread_bps: Decimal = DEFAULT_PROXY_SPREAD_BPS
) -> Iterator[Group]:
    """Yield a checked file's (close ts, rows) groups in time order.

    A file in time order (what `keel export` and `write_bars` write) is streamed, so a replay's
    memory does not grow with it; any other is loaded whole and sorted (`load_bars`).
    """
    if not checked.ordered:
        yield from load_bars(path, proxy_spread_bps)
        return
    group: list[BarRow] = []
    last_ts = -1
    for _n, ts, row in _rows(Path(path), proxy_spread_bps):
        if ts != last_ts and group:
            yield last_ts, group
            group = []
        last_ts = ts
        group.append(row)
    if group:
        yield last_ts, group


def _parse_row(
    raw: Mapping[str, object], has_spread: bool, has_proxy_flag: bool, proxy_spread_bps: Decimal
) -> tuple[int, BarRow]:
    ts = _timestamp(raw["timestamp"])
    if sessions.session_of(ts) is None:
        raise ValueError("expected a bar close inside an XNYS regular session, was outside")
    if not sessions.is_bar_close(ts):
        raise ValueError("expected a 1-minute bar close of its session, was off the grid")
    symbol = raw["symbol"]
    if not isinstance(symbol, str) or not symbol.strip():
        raise ValueError(f"expected a symbol, was {symbol!r}")
    o, h, lo, c = (_decimal(raw[col], col) for col in PRICE_COLUMNS)
    for col, value in zip(PRICE_COLUMNS, (o, h, lo, c), strict=True):
        if value <= 0:
            raise ValueError(f"expected {col} > 0, was {value}")
    if h < lo:
        raise ValueError(f"expected high >= low, was high={h} low={lo}")
    if not lo <= min(o, c) <= max(o, c) <= h:
        raise ValueError(f"expected low <= open, close <= high, was o={o} h={h} l={lo} c={c}")
    volume = _decimal(raw["volume"], "volume")
    if volume < 0 or volume != volume.to_integral_value():
        raise ValueError(f"expected volume as whole shares >= 0, was {volume}")
    spread = _decimal(raw["spread_bps"], "spread_bps") if has_spread else proxy_spread_bps
    if spread < 0:
        raise ValueError(f"expected spread_bps >= 0, was {spread}")
    is_proxy = _flag(raw["spread_is_proxy"]) if has_proxy_flag else not has_spread
    row = BarRow(
        symbol=symbol.strip(),
        open=o,
        high=h,
        low=lo,
        close=c,
        volume=int(volume),
        spread_bps=spread,
        spread_is_proxy=is_proxy,
    )
    return ts, row


def _decimal(value: object, column: str) -> Decimal:
    if value is None or value == "":
        raise ValueError(f"expected a {column} value, was missing")
    if isinstance(value, bool):
        raise ValueError(f"expected a number for {column}, was {value!r}")
    try:
        # a float's repr is the shortest text that reads back as it, so 187.23 stays 187.23
        number = Decimal(repr(value) if isinstance(value, float) else str(value).strip())
    except InvalidOperation as e:
        raise ValueError(f"expected a number for {column}, was {value!r}") from e
    if not number.is_finite():
        raise ValueError(f"expected a finite {column}, was {value!r}")
    return number


def _timestamp(value: object) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, datetime):
        # a Parquet timestamp column: a naive one is UTC (Arrow's and polars' convention)
        return _ns(value if value.tzinfo else value.replace(tzinfo=UTC))
    if isinstance(value, str) and value.strip():
        text = value.strip()
        if text.isdigit():
            return int(text)
        try:
            parsed = datetime.fromisoformat(text)
        except ValueError as e:
            raise ValueError(f"expected an ISO-8601 timestamp or int ns, was {text!r}") from e
        if parsed.tzinfo is None:
            # a naive time might be New York time: refuse rather than guess
            raise ValueError(f"expected a timestamp with a UTC offset, was {text!r}")
        return _ns(parsed)
    raise ValueError(f"expected a timestamp, was {value!r}")


def _flag(value: object) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1"):
        return True
    if text in ("false", "0"):
        return False
    raise ValueError(f"expected spread_is_proxy true or false, was {value!r}")


def _ns(moment: datetime) -> int:
    delta = moment - datetime(1970, 1, 1, tzinfo=UTC)  # aware datetimes subtract across zones
    return (delta.days * 86_400 + delta.seconds) * _NS + delta.microseconds * 1_000


def iso(ts_ns: int) -> str:
    """Format ns UTC as ISO-8601 with a Z, as bar files store timestamps."""
    if ts_ns % 1_000:
        raise ValueError(f"expected a timestamp in whole microseconds, was {ts_ns}")
    moment = datetime.fromtimestamp(ts_ns // _NS, UTC).replace(microsecond=ts_ns % _NS // 1_000)
    return moment.isoformat().replace("+00:00", "Z")


__all__ = [
    "BAR_SCHEMA",
    "CHUNK_ROWS",
    "DEFAULT_PROXY_SPREAD_BPS",
    "PRICE_COLUMNS",
    "REQUIRED_COLUMNS",
    "BarRow",
    "Checked",
    "FrameWriter",
    "Group",
    "GroupWriter",
    "bar_row",
    "check",
    "iso",
    "iter_groups",
    "load_bars",
    "write_bars",
    "write_groups",
]
