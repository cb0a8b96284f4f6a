"""Bar files: recorded 1-minute bars in CSV or Parquet, their strict reader and their writer.

Every row is checked before any bar is used; a bad row raises an error that names it (file,
1-based data row, symbol, timestamp) and is never dropped silently. `check` + `iter_groups`
stream a file in time order (a replay's memory stays bounded however long the file);
`load_bars` reads one whole (the exchange's data API, which answers any time range). Timestamps are bar CLOSE
times (keel's BarClosed.ts_event). The marketdata file feed and the local exchange's Market Data
API both read bars through `load_bars`.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Iterator, Mapping
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import TypedDict

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


def write_bars(path: str | Path, bars: Iterable[BarClosed]) -> None:
    """Write bars to CSV or Parquet (by suffix) so the file feed reads them back unchanged."""
    rows = list(bars)
    write_groups(path, [(b.ts_event, [BarRow(**{k: getattr(b, k) for k in BarRow.__annotations__})]) for b in rows])


def write_groups(path: str | Path, groups: Iterable[Group]) -> None:
    """Write checked rows (what `load_bars` returns, or a selection of it) to CSV or Parquet."""
    rows = [(ts, row) for ts, group in groups for row in group]
    frame = pl.DataFrame(
        {
            "timestamp": [iso(ts) for ts, _ in rows],
            "symbol": [r["symbol"] for _, r in rows],
            # prices as text keep their exact Decimal digits ("53.80", not 53.8)
            **{col: [str(r[col]) for _, r in rows] for col in PRICE_COLUMNS},  # type: ignore[literal-required]
            "volume": [r["volume"] for _, r in rows],
            "spread_bps": [str(r["spread_bps"]) for _, r in rows],
            "spread_is_proxy": [r["spread_is_proxy"] for _, r in rows],
        },
        schema={
            "timestamp": pl.String,
            "symbol": pl.String,
            **{col: pl.String for col in PRICE_COLUMNS},
            "volume": pl.Int64,
            "spread_bps": pl.String,
            "spread_is_proxy": pl.Boolean,
        },
    )
    path = Path(path)
    if _kind(path) == "csv":
        frame.write_csv(path)
    else:
        frame.write_parquet(path)


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
    "DEFAULT_PROXY_SPREAD_BPS",
    "PRICE_COLUMNS",
    "REQUIRED_COLUMNS",
    "BarRow",
    "Checked",
    "Group",
    "check",
    "iso",
    "iter_groups",
    "load_bars",
    "write_bars",
    "write_groups",
]
