"""Bar files streamed: checked whole in one pass, then read back a batch at a time.

A replay of a long file must not hold it in memory (issue 7.5): `check` + `iter_groups` give the
same groups as `load_bars` for a file in time order while their peak allocation does not grow
with the file; a file out of time order is still accepted (loaded whole and sorted).
"""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from pathlib import Path

import pytest

from libs import barfile, sessions
from tests.support.memory import peak_allocation

D = Decimal
SYMBOLS = ("AAPL", "MSFT", "SPY", "QQQ")


def groups(n_timestamps: int) -> list[barfile.Group]:
    sessions.load()
    day = sessions.next_session(date(2026, 3, 2), inclusive=True)
    ts = sessions.session_open_close(day)[0]
    out: list[barfile.Group] = []
    for _ in range(n_timestamps):
        ts += sessions.MINUTE_NS
        if sessions.session_of(ts) is None:  # past the close: the next session's first minute
            day = sessions.next_session(day, inclusive=False)
            ts = sessions.session_open_close(day)[0] + sessions.MINUTE_NS
        rows = [
            barfile.BarRow(symbol=s, open=D("100.00"), high=D("100.50"), low=D("99.50"), close=D("100.10"),
                           volume=1000, spread_bps=D("3"), spread_is_proxy=False)
            for s in SYMBOLS
        ]  # fmt: skip
        out.append((ts, rows))
    return out


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_iter_groups_when_file_in_time_order_then_same_groups_as_load_bars(tmp_path: Path, suffix: str):
    path = tmp_path / f"bars{suffix}"
    barfile.write_groups(path, groups(500))

    checked = barfile.check(path)

    assert (checked.rows, checked.timestamps, checked.symbols, checked.ordered) == (
        2000,
        500,
        tuple(sorted(SYMBOLS)),
        True,
    )
    assert list(barfile.iter_groups(path, checked)) == barfile.load_bars(path)


def test_check_when_a_symbol_repeats_at_one_time_then_error_names_both_rows(tmp_path: Path):
    ts, rows = groups(1)[0]
    path = tmp_path / "dup.csv"
    barfile.write_groups(path, [(ts, [*rows, rows[1]])])

    with pytest.raises(ValueError, match=r"row 5 \(MSFT @ .*\): expected one bar per symbol and time, row 2 too"):
        barfile.check(path)


def test_check_when_rows_out_of_time_order_then_accepted_and_grouped_ascending(tmp_path: Path):
    g = groups(3)
    path = tmp_path / "shuffled.parquet"
    barfile.write_groups(path, [g[2], g[0], g[1]])

    checked = barfile.check(path)

    assert (checked.ordered, checked.timestamps) == (False, 3)
    assert [ts for ts, _ in barfile.iter_groups(path, checked)] == [g[0][0], g[1][0], g[2][0]]


def test_iter_groups_when_the_file_grows_threefold_then_its_peak_allocation_does_not(tmp_path: Path):
    small, large = tmp_path / "small.parquet", tmp_path / "large.parquet"
    barfile.write_groups(small, groups(2_200))  # 8,800 rows: over two batches (4,096 each)
    barfile.write_groups(large, groups(6_600))
    checked_small, checked_large = barfile.check(small), barfile.check(large)

    def stream(path: Path, checked: barfile.Checked) -> None:
        for _ts, _rows in barfile.iter_groups(path, checked):
            pass

    streamed = (
        peak_allocation(lambda: stream(small, checked_small)),
        peak_allocation(lambda: stream(large, checked_large)),
    )
    loaded = peak_allocation(lambda: barfile.load_bars(small)), peak_allocation(lambda: barfile.load_bars(large))

    assert streamed[1] < 1.2 * streamed[0]  # bounded by a batch, not the file
    assert loaded[1] > 2 * loaded[0]  # what reading it whole costs: the contrast that makes the check mean something
