"""Bar files written a chunk at a time are the files written whole.

`keel export` and `keel replay` stream bars to their file (issue 7.5: memory bounded however long
the stream); the file must not change for it: a CSV is the same bytes as one polars `write_csv`
of every row, a Parquet file reads back to the same schema and values as one `write_parquet`.
The reference below is the whole-frame writer bar files had before they were streamed.
"""

from __future__ import annotations

import random
from decimal import Decimal
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
import pytest

from libs import barfile
from tests.unit.test_barfile_stream import groups

D = Decimal
SEED = 7_505


def whole(path: Path, groups: list[barfile.Group]) -> None:
    """Write every row in one frame, as `write_groups` did before it streamed."""
    rows = [(ts, row) for ts, group in groups for row in group]
    frame = pl.DataFrame(
        {
            "timestamp": [barfile.iso(ts) for ts, _ in rows],
            "symbol": [r["symbol"] for _, r in rows],
            **{col: [str(r[col]) for _, r in rows] for col in barfile.PRICE_COLUMNS},  # type: ignore[literal-required]
            "volume": [r["volume"] for _, r in rows],
            "spread_bps": [str(r["spread_bps"]) for _, r in rows],
            "spread_is_proxy": [r["spread_is_proxy"] for _, r in rows],
        },
        schema={
            "timestamp": pl.String,
            "symbol": pl.String,
            **{col: pl.String for col in barfile.PRICE_COLUMNS},
            "volume": pl.Int64,
            "spread_bps": pl.String,
            "spread_is_proxy": pl.Boolean,
        },
    )
    if path.suffix == ".csv":
        frame.write_csv(path)
    else:
        frame.write_parquet(path)


def varied(n_timestamps: int, seed: int = SEED) -> list[barfile.Group]:
    """Bars whose text needs care: trailing zeros, many digits, odd symbols, both spread kinds."""
    rng = random.Random(seed)
    out: list[barfile.Group] = []
    for ts, _rows in groups(n_timestamps):
        rows = []
        for symbol in ("AAPL", "BRK.B", "X,Y", 'Q"T'):  # the last two need quoting in a CSV
            close = D(rng.randint(1, 10**7)) / D(10 ** rng.randint(0, 6))
            rows.append(
                barfile.BarRow(
                    symbol=symbol,
                    open=close,
                    high=close + D("0.10"),
                    low=close / 2,
                    close=D(f"{close:.2f}") if rng.random() < 0.5 else close,
                    volume=rng.choice((0, 1, 2**40)),
                    spread_bps=D(rng.choice(("3", "3.50", "0", "12.125"))),
                    spread_is_proxy=rng.random() < 0.5,
                )
            )
        out.append((ts, rows))
    return out


@pytest.mark.parametrize("chunk_rows", [1, 7, barfile.CHUNK_ROWS])
def test_group_writer_when_csv_written_in_chunks_then_the_same_bytes_as_written_whole(tmp_path: Path, chunk_rows: int):
    sample = varied(300)  # 1,200 rows: many chunks of 1 and 7, one of the default
    chunked, reference = tmp_path / "chunked.csv", tmp_path / "whole.csv"

    with barfile.GroupWriter(chunked, chunk_rows=chunk_rows) as writer:
        for ts, rows in sample:
            writer.write(ts, rows)
    whole(reference, sample)

    assert writer.rows == 1_200
    assert chunked.read_bytes() == reference.read_bytes()


@pytest.mark.parametrize("chunk_rows", [7, barfile.CHUNK_ROWS])
def test_group_writer_when_parquet_written_in_chunks_then_the_same_schema_and_values_as_written_whole(
    tmp_path: Path, chunk_rows: int
):
    sample = varied(300)
    chunked, reference = tmp_path / "chunked.parquet", tmp_path / "whole.parquet"

    with barfile.GroupWriter(chunked, chunk_rows=chunk_rows) as writer:
        for ts, rows in sample:
            writer.write(ts, rows)
    whole(reference, sample)

    assert pq.read_schema(chunked).names == pq.read_schema(reference).names
    assert pq.read_schema(chunked).types == pq.read_schema(reference).types
    assert pl.read_parquet(chunked).equals(pl.read_parquet(reference))
    assert pq.ParquetFile(chunked).metadata.num_row_groups == -(-1_200 // chunk_rows)  # a row group a chunk
    # and the bar reader sees the same bars either way, streamed or whole
    assert list(barfile.iter_groups(chunked, barfile.check(chunked))) == barfile.load_bars(reference)


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_write_groups_when_no_rows_then_the_same_empty_file_as_written_whole(tmp_path: Path, suffix: str):
    chunked, reference = tmp_path / f"chunked{suffix}", tmp_path / f"whole{suffix}"

    barfile.write_groups(chunked, [])
    whole(reference, [])

    if suffix == ".csv":
        assert chunked.read_bytes() == reference.read_bytes()
    else:
        assert pq.read_schema(chunked).types == pq.read_schema(reference).types
        assert pl.read_parquet(chunked).equals(pl.read_parquet(reference))


def test_group_writer_when_the_writing_fails_then_no_half_file_and_the_old_one_kept(tmp_path: Path):
    path = tmp_path / "bars.parquet"
    barfile.write_groups(path, groups(3))
    before = path.read_bytes()

    with pytest.raises(RuntimeError, match="source died"), barfile.GroupWriter(path, chunk_rows=2) as writer:
        for ts, rows in groups(10):
            writer.write(ts, rows)
        raise RuntimeError("source died")

    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bars.parquet"]  # no part file left behind
