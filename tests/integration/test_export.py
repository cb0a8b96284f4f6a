"""`keel export`: a stored stream to Parquet, on real NATS JetStream.

The market-data stream becomes a bar file the file feed reads back to the same bars (what a
replay elsewhere starts from); another family becomes one row per stored message, in stream
order, the event's JSON as it was published.
"""

from __future__ import annotations

import asyncio
import json
from decimal import Decimal
from pathlib import Path

import msgspec
import polars as pl
import pytest

from libs import barfile
from libs.bus import Bus
from libs.cli.main import main
from libs.contracts.codec import encode
from libs.contracts.marketdata import BarClosed
from libs.contracts.subjects import Subjects
from tests.factories import Events, minute
from tests.support.servers import Namespace

D = Decimal


def quoted(bar: BarClosed, spread: str) -> BarClosed:
    return msgspec.structs.replace(bar, spread_bps=D(spread), spread_is_proxy=False)


async def run_export(
    monkeypatch: pytest.MonkeyPatch, nats_url: str, prefix: str, capsys, *args: str
) -> tuple[int, str]:  # type: ignore[no-untyped-def]
    """Run `keel export` as the CLI runs it (its own event loop, here in a thread)."""
    monkeypatch.setenv("KEEL_NATS_URL", nats_url)
    monkeypatch.setenv("KEEL_PREFIX", prefix)
    code = await asyncio.to_thread(main, ["export", *args])
    out = capsys.readouterr()
    return code, out.out if code == 0 else out.err


async def publish_minutes(bus: Bus, f: Events, minutes: tuple[int, ...], *, quote_aapl: bool = False) -> list:
    """Publish MSFT's and AAPL's bars and marketdata's watermark for each minute, in the order
    given (AAPL's with a quoted spread when asked); return the bars."""
    published = []
    for n in minutes:
        for symbol, close in (("MSFT", "400.10"), ("AAPL", "180.05")):
            bar = f.bar(symbol, n, close)
            if quote_aapl and symbol == "AAPL":
                bar = quoted(bar, "3.5")
            await bus.publish(bar)
            published.append(bar)
        await bus.publish(f.watermark("marketdata", minute(n)))
    return published


async def test_export_when_md_stream_then_a_bar_file_the_feed_reads_back_to_the_same_bars(
    namespace: Namespace, nats_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
):
    f = Events(seed=901)
    bus = await Bus.connect(nats_url, Subjects(namespace.prefix), service="marketdata")
    await bus.provision()
    try:
        published = await publish_minutes(bus, f, (1, 2, 3), quote_aapl=True)
    finally:
        await bus.close()
    out = tmp_path / "bars.parquet"

    code, printed = await run_export(
        monkeypatch, nats_url, namespace.prefix, capsys, "--stream", "md", "--out", str(out)
    )

    assert code == 0, printed
    summary = json.loads(printed)
    assert (summary["messages"], summary["rows"]) == (9, 6)  # 6 bars and 3 watermarks stored, 6 bars written
    assert (summary["first_ts"], summary["last_ts"]) == (minute(1), minute(3))
    groups = barfile.load_bars(out)
    assert [ts for ts, _ in groups] == [minute(1), minute(2), minute(3)]
    back = {(ts, r["symbol"]): r for ts, rows in groups for r in rows}
    for bar in published:
        row = back[(bar.ts_event, bar.symbol)]
        assert (row["open"], row["high"], row["low"], row["close"], row["volume"]) == (
            bar.open,
            bar.high,
            bar.low,
            bar.close,
            bar.volume,
        )
        assert (row["spread_bps"], row["spread_is_proxy"]) == (bar.spread_bps, bar.spread_is_proxy)

    # a window and a symbol subset
    part = tmp_path / "aapl.csv"
    code, printed = await run_export(
        monkeypatch, nats_url, namespace.prefix, capsys, "--stream", "md", "--symbols", "AAPL", "--out", str(part)
    )
    assert code == 0, printed
    assert [[r["symbol"] for r in rows] for _, rows in barfile.load_bars(part)] == [["AAPL"]] * 3


async def test_export_when_md_stream_out_of_time_order_then_the_sorted_file_and_no_consumer_left(
    namespace: Namespace, nats_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
):
    # the feed publishes in time order and export streams it; bars published otherwise (by hand)
    # send it back to reading the stream whole and sorting, which must give the same file
    f = Events(seed=903)
    bus = await Bus.connect(nats_url, Subjects(namespace.prefix), service="marketdata")
    await bus.provision()
    try:
        published = await publish_minutes(bus, f, (1, 3, 2))
        out, expected = tmp_path / "bars.csv", tmp_path / "expected.csv"
        barfile.write_bars(expected, sorted(published, key=lambda b: (b.ts_event, b.symbol)))

        code, printed = await run_export(
            monkeypatch, nats_url, namespace.prefix, capsys, "--stream", "md", "--out", str(out)
        )

        assert code == 0, printed
        summary = json.loads(printed)
        assert (summary["messages"], summary["rows"]) == (9, 6)
        assert (summary["first_ts"], summary["last_ts"]) == (minute(1), minute(3))
        assert out.read_bytes() == expected.read_bytes()
        assert sorted(p.name for p in tmp_path.iterdir()) == ["bars.csv", "expected.csv"]  # no part file
        assert await bus.js.consumers_info(bus.subjects.stream("md")) == []  # both passes' consumers deleted
    finally:
        await bus.close()


async def test_export_when_other_family_then_one_row_per_stored_message_in_stream_order(
    namespace: Namespace, nats_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
):
    f = Events(seed=902)
    intent = f.intent("AAPL", "buy", 10, "50", n=1)
    reports = [f.submitted(intent), f.fill(intent, last_qty=10, last_px="50.02", cum_qty=10)]
    bus = await Bus.connect(nats_url, Subjects(namespace.prefix), service="execution")
    await bus.provision()
    try:
        for ev in reports:
            await bus.publish(ev)
    finally:
        await bus.close()
    out = tmp_path / "exec.parquet"

    code, printed = await run_export(
        monkeypatch,
        nats_url,
        namespace.prefix,
        capsys,
        "--stream",
        f"{namespace.prefix.upper()}_EXEC",
        "--out",
        str(out),
    )

    assert code == 0, printed
    frame = pl.read_parquet(out)
    assert frame["type"].to_list() == ["exec.order_submitted.v1", "exec.order_filled.v1"]
    assert frame["event_id"].to_list() == [e.event_id for e in reports]
    assert frame["stream_seq"].to_list() == sorted(frame["stream_seq"].to_list())
    assert [d.encode() for d in frame["data"].to_list()] == [encode(e) for e in reports]


async def test_export_when_bad_stream_or_suffix_then_exit_2_naming_it(
    namespace: Namespace, nats_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
):
    code, err = await run_export(
        monkeypatch, nats_url, namespace.prefix, capsys, "--stream", "quotes", "--out", "x.parquet"
    )
    assert code == 2 and "expected a stream of md" in err

    code, err = await run_export(
        monkeypatch, nats_url, namespace.prefix, capsys, "--stream", "exec", "--out", str(tmp_path / "x.csv")
    )
    assert code == 2 and "expected a .parquet file" in err

    # nothing provisioned under this test's prefix yet
    code, err = await run_export(
        monkeypatch, nats_url, namespace.prefix, capsys, "--stream", "md", "--out", str(tmp_path / "x.parquet")
    )
    assert code == 2 and "nothing recorded under this prefix" in err
