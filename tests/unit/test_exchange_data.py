"""The exchange's Market Data API pieces without HTTP: query checks, paging, bad-data rendering, fault query match."""

from __future__ import annotations

import json
import math
from datetime import date
from decimal import Decimal

import msgspec
import pytest

from libs import sessions, synth
from services.exchange import bars
from services.exchange.api import ApiError
from services.exchange.faults import FaultPlan, FaultRule
from services.marketdata.config import MdConfig
from services.marketdata.handlers import bars_for, next_timestamp
from services.marketdata.state import INITIAL

SYMBOLS = ("AAPL", "MSFT", "SPY")
START = date(2024, 3, 5)
OPEN_NS, CLOSE_NS = sessions.session_open_close(START)
MIN = sessions.MINUTE_NS
PARAMS = synth.SynthParams(seed=5, annual_vol=0.3)


class _Now:
    now_ns = 0


def source() -> bars.SyntheticBars:
    return bars.SyntheticBars(PARAMS, SYMBOLS, START)


def query(**params: str) -> bars.BarsQuery:
    base = {"symbols": "AAPL,MSFT", "timeframe": "1Min", "start": "2024-03-05T14:30:00Z", "end": "2024-03-05T14:39:00Z"}
    return bars.parse_query({**base, **params}, now_ns=CLOSE_NS, page_max=10_000)


def all_pages(q: bars.BarsQuery, src: bars.BarSource) -> tuple[list[tuple[str, int]], int]:
    seen: list[tuple[str, int]] = []
    pages = 0
    while True:
        got, token = bars.page(q, src)
        pages += 1
        seen += [(s, b.t) for s in got for b in got[s]]
        if token is None:
            return seen, pages
        q = msgspec.structs.replace(q, after=bars.decode_token(token))


def test_synthetic_source_when_asked_out_of_order_then_bars_equal_marketdata_feed() -> None:
    cfg = MdConfig(symbols=SYMBOLS, start_date=START.isoformat(), seed=5, annual_vol=0.3)
    state, feed = INITIAL, []
    for _ in range(400):  # a whole session and the first minutes of the next
        state, closed, _ = bars_for(state, next_timestamp(state, cfg), cfg, _Now())
        feed += closed
    last_t = feed[-1].ts_event - MIN  # bars are asked for by START time
    src = source()
    late = src.bars("MSFT", last_t - 5 * MIN, last_t)  # first ask: the end
    served = {s: list(src.bars(s, OPEN_NS, last_t)) for s in SYMBOLS}

    for b in feed:
        bar = served[b.symbol].pop(0)
        assert (bar.t, bar.o, bar.h, bar.l, bar.c, bar.v) == (
            b.ts_event - MIN,
            b.open,
            b.high,
            b.low,
            b.close,
            b.volume,
        )
    assert late == src.bars("MSFT", last_t - 5 * MIN, last_t)
    assert src.generated == 400 and not any(served.values())


def test_synthetic_source_when_minutes_bounded_then_path_stops_there() -> None:
    src = bars.SyntheticBars(PARAMS, SYMBOLS, START, minutes=3)

    got = src.bars("AAPL", OPEN_NS, CLOSE_NS)

    assert [b.t for b in got] == [OPEN_NS, OPEN_NS + MIN, OPEN_NS + 2 * MIN] and src.generated == 3


def test_parse_query_when_defaults_then_asc_sip_limit_capped_and_symbols_sorted() -> None:
    q = bars.parse_query(
        {"symbols": "msft, AAPL,MSFT", "timeframe": "1Min", "start": "2024-03-05", "end": "2024-03-05"},
        now_ns=0,
        page_max=500,
    )

    assert q.symbols == ("AAPL", "MSFT") and q.sort == "asc" and q.feed == "sip" and q.limit == 500
    # date-only bounds are New York days, the end inclusive of the whole day
    assert q.start <= OPEN_NS and CLOSE_NS < q.end < OPEN_NS + 86_400 * 10**9


@pytest.mark.parametrize(
    ("params", "status", "text"),
    [
        ({"timeframe": "5Min"}, 422, "invalid timeframe"),
        ({"timeframe": ""}, 422, "invalid timeframe"),
        ({"feed": "otc"}, 422, "invalid feed"),
        ({"sort": "up"}, 422, "invalid sort"),
        ({"limit": "0"}, 422, "invalid limit"),
        ({"limit": "10001"}, 422, "invalid limit"),
        ({"start": "yesterday"}, 422, "invalid start"),
        ({"end": "2024-03-05T14:00:00"}, 422, "invalid end"),  # no offset: refused, not guessed
        ({"end": "2024-03-05T14:00:00Z"}, 422, "end >= start"),
        ({"symbols": " , "}, 422, "missing symbols"),
        ({"currency": "EUR"}, 422, "invalid currency"),
        ({"page_token": "not-a-token"}, 400, "invalid page_token"),
        ({"colour": "red"}, 400, "unexpected parameter(s): colour"),
    ],
)
def test_parse_query_when_parameter_bad_then_alpaca_error(params: dict[str, str], status: int, text: str) -> None:
    with pytest.raises(ApiError) as caught:
        query(**params)

    assert caught.value.status == status and text in caught.value.message


def test_page_when_limit_smaller_than_result_then_tokens_walk_every_bar_once() -> None:
    src = source()
    whole, _ = all_pages(query(symbols="SPY,MSFT,AAPL"), src)

    paged, pages = all_pages(query(symbols="SPY,MSFT,AAPL", limit="7"), src)
    exact, exact_pages = all_pages(query(symbols="SPY,MSFT,AAPL", limit="10"), src)

    assert len(whole) == 30 and [s for s, _ in whole[::10]] == ["AAPL", "MSFT", "SPY"]
    assert paged == whole and pages == 5
    assert exact == whole and exact_pages == 3  # a full last page has no token


def test_page_when_sort_desc_then_each_symbol_newest_first_across_pages() -> None:
    src = source()
    asc, _ = all_pages(query(), src)

    desc, _ = all_pages(query(sort="desc", limit="4"), src)

    assert desc == [*reversed(asc[:10]), *reversed(asc[10:])]


def test_page_when_source_has_no_symbol_then_symbol_omitted() -> None:
    got, token = bars.page(query(symbols="TSLA,AAPL"), source())

    assert list(got) == ["AAPL"] and token is None
    assert bars.page(query(), bars.NoBars()) == ({}, None)


def test_render_when_bar_overridden_then_raw_values_reach_json_per_feed() -> None:
    src = source()
    page_bars, _ = bars.page(query(), src)
    target = page_bars["AAPL"][1]
    overrides = bars.Overrides()
    overrides.add(bars.OverrideKey("AAPL", target.t, ""), bars.raw_values({"c": "NaN", "v": -1}))
    overrides.add(bars.OverrideKey("AAPL", target.t, "sip"), {"o": -2.5})

    sip = json.loads(bars.render(page_bars, None, "sip", overrides))["bars"]["AAPL"]
    iex_text = bars.render(page_bars, None, "iex", overrides)
    iex = json.loads(iex_text)["bars"]["AAPL"]

    assert b'"c":NaN' in iex_text and math.isnan(iex[1]["c"]) and iex[1]["v"] == -1 and iex[1]["o"] == float(target.o)
    assert sip[1]["o"] == -2.5 and math.isnan(sip[1]["c"])
    assert sip[0] == iex[0] == bars.bar_json(page_bars["AAPL"][0], {})
    assert Decimal(repr(sip[0]["h"])) == page_bars["AAPL"][0].h and sip[0]["t"] == "2024-03-05T14:30:00Z"


@pytest.mark.parametrize(
    ("body", "text"),
    [
        ({"symbol": "AAPL", "t": "2024-03-05T14:30:00Z", "fields": {"x": 1}}, "fields"),
        ({"symbol": "AAPL", "t": "2024-03-05T14:30:00Z", "fields": {}}, "fields"),
        ({"symbol": "AAPL", "t": "2024-03-05T14:30:00Z", "fields": {"c": "cheap"}}, "fields.c"),
        ({"symbol": "AAPL", "t": "2024-03-05T14:30:00Z", "fields": {"c": 1}, "feed": "otc"}, "feed"),
    ],
)
def test_bar_override_when_body_bad_then_validation_error_names_it(body: dict[str, object], text: str) -> None:
    with pytest.raises(msgspec.ValidationError, match=text):
        msgspec.json.decode(json.dumps(body), type=bars.BarOverride)


def test_fault_rule_when_query_listed_then_fires_only_on_equal_parameters() -> None:
    rule = FaultRule(kind="status", status=500, path="/v2/stocks/bars", query={"feed": "sip"}, count=0)
    plan, _ = FaultPlan().add(rule)

    assert rule.matches("GET", "/v2/stocks/bars", {"feed": "sip", "symbols": "AAPL"})
    assert not rule.matches("GET", "/v2/stocks/bars", {"feed": "iex"})
    assert not rule.matches("GET", "/v2/stocks/bars", {})
    assert plan.take_http("GET", "/v2/stocks/bars", {"feed": "iex"})[1] is None
    assert plan.take_http("GET", "/v2/stocks/bars", {"feed": "sip"})[1] is not None
    with pytest.raises(msgspec.ValidationError, match="query"):
        msgspec.convert({"kind": "ws_drop", "query": {"feed": "sip"}}, FaultRule)
