"""Alpaca Market Data API v2 historical stock bars, served from the exchange's own bar source.

alpaca-py 0.44's `StockHistoricalDataClient(key, secret, url_override=<exchange url>)` calls only
`GET /v2/stocks/bars` (alpaca/data/historical/stock.py `get_stock_bars`) and follows
`next_page_token` (alpaca/common/rest.py `_get_marketdata`), so that is the route served here.

- Source (`KEEL_EXCHANGE_DATA_SOURCE`): `none` (every request answers 200 with no bars, as Alpaca
  does for a symbol without data), `synthetic` (libs/synth's seeded path, generated from the
  start date on first use and cached in memory, extended lazily as later bars are asked for; the
  same parameters as marketdata's KEEL_MD_* keys give the same bars) or `file` (a libs/barfile
  CSV/Parquet file, read and checked once at start).
- A bar's `t` is its START (RFC 3339 UTC with `Z`): keel's BarClosed.ts_event minus 60 s. `start`
  and `end` are inclusive and compare `t`. Prices are JSON numbers (the cents of the source, so
  `Decimal(repr(float))` gives them back exactly), `v` whole shares; `n` and `vw` are proxies
  (no trades exist here): `n = max(1, v // 100)`, `vw = (h + l + c) / 3` to 4 decimals.
- Order and paging as Alpaca: symbols in ascending order, each symbol's bars by `t` (`sort`
  asc, or desc), at most `min(limit, data_page_max)` bars per page across all symbols; the
  token names the next bar (symbol and `t`), so a page never repeats or skips a bar.
- Feeds `sip` and `iex` serve the same tape (fault rules can tell them apart by query, see
  faults.py); `adjustment`, `asof` and `currency=USD` are accepted and change nothing (the
  sources have no corporate actions).
- Bad data on demand (admin only): `POST /admin/bars` replaces raw fields of one bar in every
  later answer (`NaN`, infinities and negative numbers included); such bodies are written with
  the stdlib json module, which writes the NaN literal that alpaca-py's requests parses to nan.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import bisect
import json
import logging
import math
import threading
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import NamedTuple, Protocol
from zoneinfo import ZoneInfo

import msgspec
from fastapi import APIRouter, Request, Response

from libs import barfile, sessions, synth
from libs.sessions import MINUTE_NS
from services.exchange.api import CODE_INVALID, CODE_MALFORMED, ApiError, iso_utc, json_response
from services.exchange.config import ExchangeConfig
from services.exchange.faults import check_keys

log = logging.getLogger(__name__)

BARS_PATH = "/v2/stocks/bars"
ADMIN_BARS_PATH = "/admin/bars"
CODE_DATA_INVALID = 42210000  # what data.alpaca.markets answers for a bad value ("invalid timeframe")
TIMEFRAMES = frozenset({"1Min", "1T"})
FEEDS = ("iex", "sip")
ADJUSTMENTS = frozenset({"raw", "split", "dividend", "spin-off", "all"})
SORTS = ("asc", "desc")
QUERY_KEYS = frozenset(
    {"symbols", "timeframe", "start", "end", "limit", "page_token", "feed", "adjustment", "asof", "sort", "currency"}
)
DEFAULT_LIMIT = 1000  # Alpaca's default page size
OVERRIDE_FIELDS = ("o", "h", "l", "c", "v", "n", "vw")
VWAP_QUANTUM = Decimal("0.0001")
NEW_YORK = ZoneInfo("America/New_York")
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_NS = 1_000_000_000


class Bar(NamedTuple):
    """One served bar: start time ns UTC, prices, whole-share volume, trade count and VWAP."""

    t: int
    o: Decimal
    h: Decimal
    l: Decimal  # noqa: E741 - Alpaca's field name
    c: Decimal
    v: int
    n: int
    vw: Decimal


def make_bar(close_ns: int, o: Decimal, h: Decimal, lo: Decimal, c: Decimal, volume: int) -> Bar:
    """Build the served bar of a source bar closing at close_ns (trade count and VWAP are proxies)."""
    vwap = ((h + lo + c) / 3).quantize(VWAP_QUANTUM)
    return Bar(close_ns - MINUTE_NS, o, h, lo, c, volume, max(1, volume // 100), vwap)


# --- sources ---------------------------------------------------------------------------------


class BarSource(Protocol):
    """Where served bars come from."""

    def bars(self, symbol: str, first_t: int, last_t: int) -> Sequence[Bar]:
        """Return a symbol's bars with first_t <= t <= last_t in ascending t."""
        ...


class NoBars:
    """The `none` source: no symbol has bars."""

    def bars(self, symbol: str, first_t: int, last_t: int) -> Sequence[Bar]:
        """Return no bars."""
        return ()


class _Series:
    # one symbol's bars by ascending t, found by bisection on t
    def __init__(self) -> None:
        self.ts: list[int] = []
        self.bars: list[Bar] = []

    def append(self, bar: Bar) -> None:
        self.ts.append(bar.t)
        self.bars.append(bar)

    def between(self, first_t: int, last_t: int) -> list[Bar]:
        return self.bars[bisect.bisect_left(self.ts, first_t) : bisect.bisect_right(self.ts, last_t)]


def _horizon() -> int:
    # the last bar close the XNYS calendar of libs/sessions knows: the path cannot go past it
    last = sessions.sessions_between(sessions.LAST_DAY - timedelta(days=14), sessions.LAST_DAY)[-1]
    return sessions.session_open_close(last)[1]


class SyntheticBars:
    """The `synthetic` source: libs/synth's path from `start`, generated on demand and kept in memory.

    The path is a fold over previous closes, so serving minute t generates every bar before it
    once (about 30 us per bar and symbol, roughly 500 bytes each in memory); later requests reuse
    them and extend the path only as far as they ask. Requests run in worker threads (a long
    first extension must not stall the trading API), so the path grows under a lock.
    """

    def __init__(self, params: synth.Params, symbols: Sequence[str], start: date, *, minutes: int = 0) -> None:
        self.params = params
        self.symbols = tuple(symbols)
        self.minutes = minutes  # bar timestamps in the path; 0 = unbounded (as KEEL_MD_MINUTES)
        self._series = {s: _Series() for s in self.symbols}
        self._closes: dict[str, Decimal] = {}
        self._generated = 0
        self._next_close = synth.first_close(start)
        self._horizon = _horizon()
        self._lock = threading.Lock()

    @property
    def generated(self) -> int:
        """Return how many bar timestamps are in memory."""
        return self._generated

    def _extend(self, through_close: int) -> None:
        through_close = min(through_close, self._horizon)
        while self._next_close <= through_close and (not self.minutes or self._generated < self.minutes):
            ts = self._next_close
            self._closes, generated = synth.step(self.params, self.symbols, self._closes, ts)
            for g in generated:
                v = g.values
                self._series[g.symbol].append(make_bar(ts, v.open, v.high, v.low, v.close, v.volume))
            self._generated += 1
            self._next_close = synth.next_close(ts) if ts < self._horizon else self._horizon + 1

    def bars(self, symbol: str, first_t: int, last_t: int) -> Sequence[Bar]:
        """Return a symbol's bars with first_t <= t <= last_t, generating the path up to last_t."""
        series = self._series.get(symbol)
        if series is None or last_t < first_t:
            return ()
        with self._lock:
            self._extend(last_t + MINUTE_NS)
            return series.between(first_t, last_t)


class FileBars:
    """The `file` source: every bar of a libs/barfile file, checked and loaded at start."""

    def __init__(self, groups: Sequence[barfile.Group]) -> None:
        self._series: dict[str, _Series] = {}
        for ts, rows in groups:  # groups come in ascending time
            for row in rows:
                bar = make_bar(ts, row["open"], row["high"], row["low"], row["close"], row["volume"])
                self._series.setdefault(row["symbol"], _Series()).append(bar)

    def bars(self, symbol: str, first_t: int, last_t: int) -> Sequence[Bar]:
        """Return a symbol's bars with first_t <= t <= last_t."""
        series = self._series.get(symbol)
        return series.between(first_t, last_t) if series is not None else ()


def source_for(config: ExchangeConfig) -> BarSource:
    """Build the bar source the config names (a file source reads and checks its file now)."""
    if config.data_source == "synthetic":
        return SyntheticBars(config.synth_params(), config.data_symbols, config.data_start, minutes=config.data_minutes)
    if config.data_source == "file":
        return FileBars(barfile.load_bars(config.data_file_path))
    return NoBars()


# --- requests --------------------------------------------------------------------------------


class BarsQuery(msgspec.Struct, frozen=True, kw_only=True):
    """A checked GET /v2/stocks/bars request; `after` is the page token's (symbol, t)."""

    symbols: tuple[str, ...]
    start: int
    end: int
    limit: int
    feed: str
    sort: str
    after: tuple[str, int] | None = None


def _bad(message: str) -> ApiError:
    return ApiError(422, CODE_DATA_INVALID, message)


def parse_instant(name: str, text: str, *, end_of_day: bool = False) -> int:
    """Parse an RFC 3339 timestamp, or a YYYY-MM-DD New York day (its start, or its end), to ns UTC."""
    value = text.strip()
    try:
        if len(value) == 10:
            day = date.fromisoformat(value) + timedelta(days=1 if end_of_day else 0)
            moment = datetime.combine(day, datetime.min.time(), NEW_YORK)
        else:
            moment = datetime.fromisoformat(value)
    except (ValueError, OverflowError):
        moment = None
    if moment is None or moment.tzinfo is None:
        raise _bad(f"invalid {name}: expected an RFC 3339 timestamp with offset or YYYY-MM-DD, was {text!r}")
    ns = (moment - EPOCH) // timedelta(microseconds=1) * 1_000
    return ns - 1 if len(value) == 10 and end_of_day else ns


def encode_token(symbol: str, t: int) -> str:
    """Return the page token naming the next bar to serve."""
    return base64.urlsafe_b64encode(f"{symbol}|{t}".encode()).decode()


def decode_token(token: str) -> tuple[str, int]:
    """Return the (symbol, t) a page token names; raise ApiError 400 when it is not one of ours."""
    try:
        text = base64.urlsafe_b64decode(token.encode()).decode()
    except (binascii.Error, UnicodeError, ValueError):
        text = ""  # not base64 text: the error below names the token
    symbol, _, t = text.rpartition("|")
    if not symbol or not t.isdigit():
        raise ApiError(400, CODE_MALFORMED, f"invalid page_token: expected a token from a previous page, was {token!r}")
    return symbol, int(t)


def parse_query(params: Mapping[str, str], *, now_ns: int, page_max: int) -> BarsQuery:
    """Check GET /v2/stocks/bars parameters the way Alpaca does; raise ApiError when one is bad."""
    unexpected = sorted(set(params) - QUERY_KEYS)
    if unexpected:
        raise ApiError(400, CODE_MALFORMED, f"unexpected parameter(s): {', '.join(unexpected)}")
    symbols = tuple(sorted({s.strip().upper() for s in (params.get("symbols") or "").split(",") if s.strip()}))
    if not symbols:
        raise _bad("missing symbols: expected a comma-separated list, was empty")
    timeframe = params.get("timeframe") or ""
    if timeframe not in TIMEFRAMES:
        raise _bad(f"invalid timeframe: the local exchange serves 1Min bars only, was {timeframe!r}")
    feed = params.get("feed") or "sip"
    if feed not in FEEDS:
        raise _bad(f"invalid feed: expected one of {', '.join(FEEDS)}, was {feed!r}")
    sort = params.get("sort") or "asc"
    if sort not in SORTS:
        raise _bad(f"invalid sort: expected asc or desc, was {sort!r}")
    adjustment = params.get("adjustment") or "raw"
    if not {a.strip() for a in adjustment.split(",")} <= ADJUSTMENTS:
        raise _bad(f"invalid adjustment: expected {', '.join(sorted(ADJUSTMENTS))}, was {adjustment!r}")
    asof = params.get("asof") or "-"
    if asof != "-":
        try:
            date.fromisoformat(asof)
        except ValueError as e:
            raise _bad(f"invalid asof: expected YYYY-MM-DD or '-', was {asof!r}") from e
    currency = params.get("currency") or "USD"
    if currency != "USD":
        raise _bad(f"invalid currency: the local exchange quotes USD only, was {currency!r}")
    raw_limit = params.get("limit") or str(DEFAULT_LIMIT)
    if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= 10_000:
        raise _bad(f"invalid limit: expected an integer from 1 to 10000, was {raw_limit!r}")
    end = parse_instant("end", params["end"], end_of_day=True) if params.get("end") else now_ns
    if params.get("start"):
        start = parse_instant("start", params["start"])
    else:  # Alpaca: the beginning of the current day
        day = datetime.fromtimestamp(end // _NS, tz=NEW_YORK).date()
        start = parse_instant("start", day.isoformat())
    if end < start:
        raise _bad(f"invalid end: expected end >= start, was start={iso_utc(start)} end={iso_utc(end)}")
    token = params.get("page_token") or None
    return BarsQuery(
        symbols=symbols,
        start=start,
        end=end,
        limit=min(int(raw_limit), page_max),
        feed=feed,
        sort=sort,
        after=decode_token(token) if token else None,
    )


def page(query: BarsQuery, source: BarSource) -> tuple[dict[str, list[Bar]], str | None]:
    """Return one page of bars by symbol and the token of the next page (None: this was the last)."""
    out: dict[str, list[Bar]] = {}
    taken = 0
    desc = query.sort == "desc"
    for symbol in query.symbols:
        if query.after is not None and symbol < query.after[0]:
            continue
        bars = list(source.bars(symbol, query.start, query.end))
        if desc:
            bars.reverse()
        if query.after is not None and symbol == query.after[0]:
            mark = query.after[1]
            bars = [b for b in bars if (b.t <= mark if desc else b.t >= mark)]
        room = query.limit - taken
        if len(bars) > room:
            if room:
                out[symbol] = bars[:room]
            return out, encode_token(symbol, bars[room].t)
        if bars:
            out[symbol] = bars
            taken += len(bars)
    return out, None


# --- bad data (admin) ------------------------------------------------------------------------

RawValue = int | float


class BarOverride(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The body of POST /admin/bars: raw values for some fields of one bar, optionally on one feed."""

    symbol: str
    t: str  # the bar's start, RFC 3339 (Alpaca's `t`)
    fields: dict[str, int | float | str]  # a number, or "NaN" / "Infinity" / "-Infinity" / "-1.5"
    feed: str | None = None  # None: every feed

    def __post_init__(self) -> None:
        # msgspec reports these ValueErrors as a ValidationError naming the body (422)
        unknown = sorted(set(self.fields) - set(OVERRIDE_FIELDS))
        if unknown or not self.fields:
            raise ValueError(f"fields: expected some of {list(OVERRIDE_FIELDS)}, was {sorted(self.fields)}")
        if self.feed is not None and self.feed not in FEEDS:
            raise ValueError(f"feed: expected one of {list(FEEDS)} or null, was {self.feed!r}")
        raw_values(self.fields)


def raw_values(fields: Mapping[str, int | float | str]) -> dict[str, RawValue]:
    """Turn override values into the numbers to write; text must be a float literal such as 'NaN'."""
    out: dict[str, RawValue] = {}
    for name, value in fields.items():
        if isinstance(value, str):
            try:
                out[name] = float(value)
            except ValueError as e:
                raise ValueError(f"fields.{name}: expected a number, 'NaN' or '[-]Infinity', was {value!r}") from e
        else:
            out[name] = value
    return out


class OverrideKey(NamedTuple):
    """Which bar an override replaces fields of ('' feed: every feed)."""

    symbol: str
    t: int
    feed: str


class Overrides:
    """Bar fields replaced by the admin API, applied to every later answer until cleared."""

    def __init__(self) -> None:
        self.by_bar: dict[OverrideKey, dict[str, RawValue]] = {}

    def add(self, key: OverrideKey, values: Mapping[str, RawValue]) -> dict[str, RawValue]:
        """Merge values into a bar's override; return the bar's override now."""
        merged = {**self.by_bar.get(key, {}), **values}
        self.by_bar[key] = merged
        return merged

    def clear(self) -> int:
        """Drop every override; return how many bars had one."""
        cleared = len(self.by_bar)
        self.by_bar = {}
        return cleared

    def for_bar(self, symbol: str, t: int, feed: str) -> dict[str, RawValue]:
        """Return the fields to replace in one bar served on a feed (the feed's own win)."""
        if not self.by_bar:
            return {}
        return {**self.by_bar.get(OverrideKey(symbol, t, ""), {}), **self.by_bar.get(OverrideKey(symbol, t, feed), {})}

    def view(self) -> list[dict[str, object]]:
        """Render as the JSON list GET /admin/bars answers."""
        return [override_view(k, values) for k, values in self.by_bar.items()]


def override_view(key: OverrideKey, values: Mapping[str, RawValue]) -> dict[str, object]:
    """Render one bar's override as JSON (non-finite numbers as their text, 'nan' / 'inf')."""
    fields = {f: (v if math.isfinite(v) else str(v)) for f, v in values.items()}
    return {"symbol": key.symbol, "t": iso_utc(key.t), "feed": key.feed or None, "fields": fields}


def bar_json(bar: Bar, replaced: Mapping[str, RawValue]) -> dict[str, object]:
    """Render a bar as Alpaca's bar JSON (prices as numbers), with any replaced raw values."""
    body: dict[str, object] = {
        "t": iso_utc(bar.t),
        "o": float(bar.o),
        "h": float(bar.h),
        "l": float(bar.l),
        "c": float(bar.c),
        "v": bar.v,
        "n": bar.n,
        "vw": float(bar.vw),
    }
    body.update(replaced)
    return body


def render(bars: Mapping[str, Sequence[Bar]], next_token: str | None, feed: str, overrides: Overrides) -> bytes:
    """Encode a page as Alpaca's multi-symbol body; non-finite numbers become NaN / Infinity literals."""
    body = {
        "bars": {s: [bar_json(b, overrides.for_bar(s, b.t, feed)) for b in page_bars] for s, page_bars in bars.items()},
        "next_page_token": next_token,
    }
    # stdlib json: msgspec refuses to write NaN, which is exactly what a bad-data test needs
    return json.dumps(body, allow_nan=True, separators=(",", ":")).encode()


# --- HTTP edge -------------------------------------------------------------------------------


class MarketData:
    """The exchange's Market Data API: its bar source, bad-data overrides and page cap."""

    def __init__(self, source: BarSource, *, clock: Callable[[], int], page_max: int) -> None:
        self.source = source
        self.clock = clock  # operations only: the default `end` is "now", as at Alpaca
        self.page_max = page_max
        self.overrides = Overrides()

    def answer(self, params: Mapping[str, str]) -> bytes:
        """Answer one GET /v2/stocks/bars request with its JSON body."""
        query = parse_query(params, now_ns=self.clock(), page_max=self.page_max)
        bars, token = page(query, self.source)
        return render(bars, token, query.feed, self.overrides)


def router(data: MarketData) -> APIRouter:
    """Return the Market Data API v2 routes."""
    r = APIRouter()

    @r.get(BARS_PATH)
    async def get_bars(request: Request) -> Response:
        # a worker thread: a first request far past the synthetic start generates a long path
        body = await asyncio.to_thread(data.answer, dict(request.query_params))
        return Response(body, media_type="application/json")

    return r


_override_decoder = msgspec.json.Decoder(BarOverride)


def admin_router(data: MarketData, config: ExchangeConfig) -> APIRouter:
    """Return the /admin/bars routes (mount them only when admin is enabled)."""
    r = APIRouter()

    @r.post(ADMIN_BARS_PATH)
    async def add_override(request: Request) -> Response:
        check_keys(request, config)
        try:
            body = _override_decoder.decode(await request.body())
        except (msgspec.DecodeError, msgspec.ValidationError) as e:
            raise ApiError(422, CODE_INVALID, f"invalid bar override: {e}") from e
        t = parse_instant("t", body.t)
        symbol = body.symbol.strip().upper()
        if not await asyncio.to_thread(data.source.bars, symbol, t, t):
            raise ApiError(
                422,
                CODE_INVALID,
                f"invalid bar override: expected a bar of {symbol} starting at {iso_utc(t)} in the "
                f"{config.data_source} data source, was none",
            )
        key = OverrideKey(symbol, t, body.feed or "")
        view = override_view(key, data.overrides.add(key, raw_values(body.fields)))
        log.warning("bar override added", extra={"override": view})
        return json_response(view, 201)

    @r.get(ADMIN_BARS_PATH)
    async def list_overrides(request: Request) -> Response:
        check_keys(request, config)
        return json_response(data.overrides.view())

    @r.delete(ADMIN_BARS_PATH)
    async def clear_overrides(request: Request) -> Response:
        check_keys(request, config)
        cleared = data.overrides.clear()
        log.warning("bar overrides cleared", extra={"cleared": cleared})
        return json_response({"cleared": cleared})

    return r


__all__ = [
    "ADMIN_BARS_PATH",
    "BARS_PATH",
    "Bar",
    "BarOverride",
    "BarSource",
    "BarsQuery",
    "FileBars",
    "MarketData",
    "NoBars",
    "OverrideKey",
    "Overrides",
    "SyntheticBars",
    "admin_router",
    "bar_json",
    "decode_token",
    "encode_token",
    "make_bar",
    "override_view",
    "page",
    "parse_instant",
    "parse_query",
    "raw_values",
    "render",
    "router",
    "source_for",
]
