"""The exchange's Market Data API through alpaca-py's real StockHistoricalDataClient.

The exchange runs as `python -m services.exchange` (tests/support/exchange.py); the client points
at it with `url_override`, exactly as it would at data.alpaca.markets. Expected bars come from
the marketdata service's own synthetic feed with the same parameters, so these tests also pin
that both services serve one path. Prices are compared as `Decimal(repr(float))`, which gives
back the source's cents exactly.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from alpaca.common.enums import Sort
from alpaca.data.enums import DataFeed
from alpaca.data.historical import StockHistoricalDataClient
from alpaca.data.models import Bar, BarSet
from alpaca.data.requests import StockBarsRequest
from alpaca.data.timeframe import TimeFrame, TimeFrameUnit

from libs import sessions
from libs.contracts.marketdata import BarClosed
from services.marketdata.config import MdConfig
from services.marketdata.feeds import write_bars
from services.marketdata.handlers import bars_for, next_timestamp
from services.marketdata.state import INITIAL
from tests.support.exchange import (
    AUTH_HEADERS,
    KEY,
    SECRET,
    ExchangeProcess,
    add_fault,
    call,
    clear_faults,
    exchange_env,
    expect_api_error,
    running_exchange,
)
from tests.support.servers import Namespace

pytestmark = pytest.mark.timeout(120)

SYMBOLS = ("AAPL", "MSFT")
START = "2024-03-05"  # a Tuesday session
SEED = 11
MD = MdConfig(symbols=SYMBOLS, start_date=START, seed=SEED, annual_vol=0.4)
DATA_ENV = {
    "KEEL_EXCHANGE_DATA_SOURCE": "synthetic",
    "KEEL_EXCHANGE_DATA_SYMBOLS": ",".join(SYMBOLS),
    "KEEL_EXCHANGE_DATA_START_DATE": START,
    "KEEL_EXCHANGE_DATA_SEED": str(SEED),
    "KEEL_EXCHANGE_DATA_ANNUAL_VOL": "0.4",
}
DAY1_OPEN, DAY1_CLOSE = sessions.session_open_close(sessions.next_session(MD.start, inclusive=True))
DAY2_OPEN, _ = sessions.session_open_close(sessions.next_session(MD.start, inclusive=False))
MINUTE = timedelta(minutes=1)


class _Now:
    now_ns = 0


def feed_bars(cfg: MdConfig, through_close_ns: int) -> Iterator[BarClosed]:
    """Yield marketdata's synthetic BarClosed events in order, up to a bar close."""
    state = INITIAL
    while (ts := next_timestamp(state, cfg)) is not None and ts <= through_close_ns:
        state, bars, _ = bars_for(state, ts, cfg, _Now())
        yield from bars


def utc(ns: int) -> datetime:
    return datetime.fromtimestamp(ns / 1e9, tz=UTC)


def as_tuple(bar: Bar) -> tuple[Any, ...]:
    """An alpaca-py Bar as (symbol, start, o, h, l, c, v) with exact Decimal prices."""
    prices = (Decimal(repr(p)) for p in (bar.open, bar.high, bar.low, bar.close))
    return (bar.symbol, bar.timestamp, *prices, int(bar.volume))


def expected(bar: BarClosed) -> tuple[Any, ...]:
    """A BarClosed as alpaca-py would show it: the start is the close minus one minute."""
    return (bar.symbol, utc(bar.ts_event) - MINUTE, bar.open, bar.high, bar.low, bar.close, bar.volume)


def flat(barset: BarSet) -> list[tuple[Any, ...]]:
    return [as_tuple(b) for symbol in sorted(barset.data) for b in barset.data[symbol]]


def client(exchange: ExchangeProcess) -> StockHistoricalDataClient:
    return StockHistoricalDataClient(KEY, SECRET, url_override=exchange.url)


def request(start_ns: int, end_ns: int, feed: DataFeed = DataFeed.SIP, **kw: Any) -> StockBarsRequest:
    """Bars whose START lies in [start, end] (Alpaca's end is inclusive)."""
    return StockBarsRequest(
        symbol_or_symbols=list(SYMBOLS),
        timeframe=TimeFrame.Minute,
        start=utc(start_ns),
        end=utc(end_ns),
        feed=feed,
        **kw,
    )


async def admin(exchange: ExchangeProcess, method: str, path: str, **kw: Any) -> httpx.Response:
    async with httpx.AsyncClient(base_url=exchange.url, headers=AUTH_HEADERS, timeout=5.0) as http:
        return await http.request(method, path, **kw)


@pytest.fixture
async def env(namespace: Namespace, nats_url: str, database_url: str) -> dict[str, str]:
    return await exchange_env(namespace, nats_url, database_url, admin=True, **DATA_ENV)


async def test_get_stock_bars_when_synthetic_source_then_bars_equal_marketdata_feed(
    env: dict[str, str], tmp_path: Path
) -> None:
    # the last 10 minutes of day 1, the overnight gap and the first 10 minutes of day 2: the
    # exchange must have generated day 1 from its open to carry the same closes forward
    first_start = DAY1_CLOSE - 10 * sessions.MINUTE_NS
    last_start = DAY2_OPEN + 9 * sessions.MINUTE_NS
    want = [
        expected(b)
        for b in sorted(feed_bars(MD, last_start + sessions.MINUTE_NS), key=lambda b: (b.symbol, b.ts_event))
        if b.ts_event - sessions.MINUTE_NS >= first_start
    ]
    assert len(want) == 2 * 20

    async with running_exchange(env, tmp_path / "exchange.log") as exchange:
        got = await call(client(exchange).get_stock_bars, request(first_start, last_start))
        iex = await call(client(exchange).get_stock_bars, request(first_start, last_start, DataFeed.IEX))

    assert flat(got) == want
    assert flat(iex) == want  # one tape behind both feeds
    bar = got.data["AAPL"][0]
    assert bar.timestamp.tzinfo is not None and bar.trade_count >= 1
    assert bar.low <= bar.vwap <= bar.high


async def test_get_stock_bars_when_file_source_then_bars_equal_the_file(
    namespace: Namespace, nats_url: str, database_url: str, tmp_path: Path
) -> None:
    recorded = list(feed_bars(MD, DAY1_OPEN + 5 * sessions.MINUTE_NS))
    path = tmp_path / "bars.csv"
    write_bars(path, recorded)
    env = await exchange_env(
        namespace, nats_url, database_url, KEEL_EXCHANGE_DATA_SOURCE="file", KEEL_EXCHANGE_DATA_FILE_PATH=str(path)
    )

    async with running_exchange(env, tmp_path / "exchange.log") as exchange:
        got = await call(client(exchange).get_stock_bars, request(DAY1_OPEN, DAY1_CLOSE))
        # admin routes exist only with KEEL_EXCHANGE_ADMIN_ENABLED=true
        refused = await admin(exchange, "POST", "/admin/bars", json={"symbol": "AAPL", "t": START, "fields": {}})

    assert flat(got) == [expected(b) for b in sorted(recorded, key=lambda b: (b.symbol, b.ts_event))]
    assert refused.status_code == 404


async def test_get_stock_bars_when_pages_are_small_then_client_follows_tokens_to_every_bar(
    namespace: Namespace, nats_url: str, database_url: str, tmp_path: Path
) -> None:
    env = await exchange_env(namespace, nats_url, database_url, KEEL_EXCHANGE_DATA_PAGE_MAX="7", **DATA_ENV)
    last_start = DAY1_OPEN + 9 * sessions.MINUTE_NS
    want = [
        expected(b)
        for b in sorted(feed_bars(MD, last_start + sessions.MINUTE_NS), key=lambda b: (b.symbol, b.ts_event))
    ]

    async with running_exchange(env, tmp_path / "exchange.log") as exchange:
        data = client(exchange)
        paged = await call(data.get_stock_bars, request(DAY1_OPEN, last_start))  # 20 bars: pages of 7, 7, 6
        capped = await call(data.get_stock_bars, request(DAY1_OPEN, last_start, limit=9))
        newest_first = await call(data.get_stock_bars, request(DAY1_OPEN, last_start, sort=Sort.DESC))
        raw = await admin(
            exchange,
            "GET",
            "/v2/stocks/bars",
            # a date-only end is the whole New York day, inclusive
            params={
                "symbols": "MSFT,AAPL",
                "timeframe": "1Min",
                "start": "2024-03-05T14:30:00Z",
                "end": START,
                "limit": "3",
            },
        )

    assert flat(paged) == want
    assert flat(capped) == want[:9]  # the client's limit caps the total across pages and symbols
    desc = [as_tuple(b) for s in sorted(newest_first.data) for b in newest_first.data[s]]
    assert desc == [*reversed(want[:10]), *reversed(want[10:])]
    body = raw.json()
    assert raw.status_code == 200 and list(body["bars"]) == ["AAPL"] and len(body["bars"]["AAPL"]) == 3
    assert body["bars"]["AAPL"][0]["t"] == "2024-03-05T14:30:00Z" and body["next_page_token"]


async def test_get_stock_bars_when_sip_fails_then_api_error_while_iex_answers(
    env: dict[str, str], tmp_path: Path
) -> None:
    window = (DAY1_OPEN, DAY1_OPEN + 4 * sessions.MINUTE_NS)
    async with running_exchange(env, tmp_path / "exchange.log") as exchange:
        data = client(exchange)
        await add_fault(
            exchange, kind="status", status=500, method="GET", path="/v2/stocks/bars", query={"feed": "sip"}, count=0
        )
        failed = await call(expect_api_error, lambda: data.get_stock_bars(request(*window)))
        fallback = await call(data.get_stock_bars, request(*window, feed=DataFeed.IEX))
        assert await clear_faults(exchange) == 1

        # 429 on sip until cleared: alpaca-py retries 429 three times (3 s apart), then gives up
        await add_fault(exchange, kind="status", status=429, path="/v2/stocks/*", query={"feed": "sip"}, count=0)
        limited = await call(expect_api_error, lambda: data.get_stock_bars(request(*window)))
        still = await call(data.get_stock_bars, request(*window, feed=DataFeed.IEX))
        await clear_faults(exchange)
        recovered = await call(data.get_stock_bars, request(*window))

    assert failed.status_code == 500 and failed.code == 50010000
    assert limited.status_code == 429
    assert len(fallback.data["AAPL"]) == 5 and flat(still) == flat(fallback) == flat(recovered)


async def test_get_stock_bars_when_bar_overridden_then_client_sees_nan_and_negative_values(
    env: dict[str, str], tmp_path: Path
) -> None:
    window = (DAY1_OPEN, DAY1_OPEN + 4 * sessions.MINUTE_NS)
    bad_t = utc(DAY1_OPEN + 2 * sessions.MINUTE_NS)
    async with running_exchange(env, tmp_path / "exchange.log") as exchange:
        data = client(exchange)
        clean = await call(data.get_stock_bars, request(*window))
        added = await admin(
            exchange, "POST", "/admin/bars", json={"symbol": "AAPL", "t": bad_t.isoformat(), "fields": {"c": "NaN"}}
        )
        await admin(
            exchange,
            "POST",
            "/admin/bars",
            json={"symbol": "MSFT", "t": bad_t.isoformat(), "fields": {"l": -3.5}, "feed": "sip"},
        )
        missing = await admin(
            exchange, "POST", "/admin/bars", json={"symbol": "TSLA", "t": bad_t.isoformat(), "fields": {"c": 1}}
        )
        listed = await admin(exchange, "GET", "/admin/bars")
        bad = await call(data.get_stock_bars, request(*window))
        iex = await call(data.get_stock_bars, request(*window, feed=DataFeed.IEX))
        cleared = await admin(exchange, "DELETE", "/admin/bars")
        after = await call(data.get_stock_bars, request(*window))

    assert added.status_code == 201 and added.json()["fields"] == {"c": "nan"}
    assert missing.status_code == 422 and "TSLA" in missing.json()["message"]
    assert len(listed.json()) == 2 and cleared.json() == {"cleared": 2}
    assert math.isnan(bad.data["AAPL"][2].close) and math.isnan(iex.data["AAPL"][2].close)
    assert bad.data["MSFT"][2].low == -3.5 and iex.data["MSFT"][2].low == clean.data["MSFT"][2].low
    untouched = [b for b in flat(bad) if b[1] != bad_t]
    assert untouched == [b for b in flat(clean) if b[1] != bad_t]
    assert flat(after) == flat(clean)


async def test_get_stock_bars_when_request_is_bad_or_source_empty_then_alpaca_answers(
    namespace: Namespace, nats_url: str, database_url: str, tmp_path: Path
) -> None:
    env = await exchange_env(namespace, nats_url, database_url)  # data_source none (the default)
    async with running_exchange(env, tmp_path / "exchange.log") as exchange:
        data = client(exchange)
        empty = await call(data.get_stock_bars, request(DAY1_OPEN, DAY1_CLOSE))
        five = StockBarsRequest(
            symbol_or_symbols="AAPL", timeframe=TimeFrame(5, TimeFrameUnit.Minute), start=utc(DAY1_OPEN)
        )
        bad_timeframe = await call(expect_api_error, lambda: data.get_stock_bars(five))
        bad_feed = await call(
            expect_api_error, lambda: data.get_stock_bars(request(DAY1_OPEN, DAY1_CLOSE, DataFeed.OTC))
        )
        backwards = await call(expect_api_error, lambda: data.get_stock_bars(request(DAY1_CLOSE, DAY1_OPEN)))
        intruder = StockHistoricalDataClient(KEY, "wrong", url_override=exchange.url)
        unauthorized = await call(expect_api_error, lambda: intruder.get_stock_bars(request(DAY1_OPEN, DAY1_CLOSE)))

    assert empty.data == {}
    assert bad_timeframe.status_code == 422 and bad_timeframe.code == 42210000
    assert "invalid timeframe" in bad_timeframe.message and "5Min" in bad_timeframe.message
    assert bad_feed.status_code == 422 and "otc" in bad_feed.message
    assert backwards.status_code == 422 and "end >= start" in backwards.message
    assert unauthorized.status_code == 401
