"""Marketdata pure core: seeded synthetic bars, feed state and the file feed."""

from __future__ import annotations

import itertools
import statistics
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path

import msgspec
import polars as pl
import pytest

from libs import sessions
from libs.config import ConfigError, load
from libs.contracts.base import derive_id
from libs.contracts.codec import encode
from libs.contracts.marketdata import BarClosed
from libs.contracts.ops import Watermark
from libs.errors import BadData, DependencyUnavailable, InvariantViolation
from libs.sessions import MINUTE_NS
from services.marketdata.config import MdConfig
from services.marketdata.feeds import file_feed, write_bars
from services.marketdata.handlers import bars_for, next_timestamp, provider_bar, start_price, start_run
from services.marketdata.providers import AlpacaBars
from services.marketdata.state import INITIAL, FeedState

NOW_NS = 1_700_000_000_000_000_000


@dataclass(frozen=True)
class FixedClock:
    now_ns: int = NOW_NS


CTX = FixedClock()
Step = tuple[list[BarClosed], Watermark]


def run(cfg: MdConfig, state: FeedState = INITIAL) -> tuple[FeedState, list[Step]]:
    steps: list[Step] = []
    while (ts := next_timestamp(state, cfg)) is not None:
        state, bars, mark = bars_for(state, ts, cfg, CTX)
        steps.append((bars, mark))
    return state, steps


def all_bars(steps: list[Step]) -> list[BarClosed]:
    return [bar for bars, _ in steps for bar in bars]


def wire(steps: list[Step]) -> bytes:
    return b"\n".join(encode(ev) for bars, mark in steps for ev in [*bars, mark])


def ns(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()) * 1_000_000_000


# --- synthetic generator ---------------------------------------------------------------------


def test_generate_when_same_seed_then_identical_bytes_and_when_other_seed_then_different():
    cfg = MdConfig(minutes=400, seed=11)

    first = wire(run(cfg)[1])
    second = wire(run(cfg)[1])
    other = wire(run(msgspec.structs.replace(cfg, seed=12))[1])

    assert first == second
    assert first != other


def test_generate_when_crossing_thanksgiving_then_no_holiday_bars_and_early_close_respected():
    cfg = MdConfig(symbols=("SPY",), start_date="2026-11-25", minutes=390 + 210 + 5)

    _, steps = run(cfg)
    stamps = [mark.bar_ts for _, mark in steps]
    by_session: dict[str, int] = {}
    for bar in all_bars(steps):
        by_session[bar.session] = by_session.get(bar.session, 0) + 1

    assert by_session == {"2026-11-25": 390, "2026-11-27": 210, "2026-11-30": 5}
    assert all(sessions.is_bar_close(ts) for ts in stamps)
    assert stamps[389] == ns("2026-11-25T21:00:00")
    assert stamps[390] == ns("2026-11-27T14:31:00")
    assert stamps[599] == ns("2026-11-27T18:00:00")
    assert stamps[600] == ns("2026-11-30T14:31:00")


def test_generate_when_start_date_is_weekend_then_first_bar_is_next_session_open_plus_minute():
    _, steps = run(MdConfig(start_date="2026-01-10", minutes=1))

    assert steps[0][1].bar_ts == ns("2026-01-12T14:31:00")


def test_generate_when_many_sessions_then_volume_and_spread_are_u_shaped():
    _, steps = run(MdConfig(symbols=("AAPL", "MSFT"), minutes=390 * 5))
    edge: list[BarClosed] = []
    midday: list[BarClosed] = []
    for bar in all_bars(steps):
        open_ns, _ = sessions.session_open_close(date.fromisoformat(bar.session))
        minute = (bar.bar_start - open_ns) // MINUTE_NS
        if minute < 30 or minute >= 360:
            edge.append(bar)
        elif 165 <= minute < 225:
            midday.append(bar)

    assert statistics.mean(b.volume for b in edge) > 2 * statistics.mean(b.volume for b in midday)
    assert statistics.mean(b.spread_bps for b in edge) > statistics.mean(b.spread_bps for b in midday)


def test_generate_when_many_bars_then_ohlc_consistent_cents_and_positive_volume():
    cfg = MdConfig(symbols=("AAPL", "PENNY"), initial_price=0.05, annual_vol=3.0, minutes=780)

    bars = all_bars(run(cfg)[1])

    assert len(bars) == 2 * 780
    for bar in bars:
        assert bar.low <= min(bar.open, bar.close) <= max(bar.open, bar.close) <= bar.high
        assert bar.low >= Decimal("0.01")
        for price in (bar.open, bar.high, bar.low, bar.close):
            assert price == price.quantize(Decimal("0.01"))
        assert bar.volume >= 1
        assert bar.spread_bps >= 0
        assert bar.spread_is_proxy is True
        assert bar.source == "synthetic"


def test_generate_when_inside_a_session_then_each_open_is_the_previous_close():
    bars = all_bars(run(MdConfig(symbols=("MSFT",), minutes=390))[1])

    assert all(b.open == a.close for a, b in itertools.pairwise(bars))
    assert bars[0].open == start_price("MSFT", 100.0)


def test_start_price_when_symbols_differ_then_distinct_and_within_half_to_twice_initial():
    prices = {s: start_price(s, 100.0) for s in ("AAPL", "MSFT", "SPY", "QQQ")}

    assert len(set(prices.values())) == 4
    assert all(Decimal(50) <= p <= Decimal(200) for p in prices.values())
    assert start_price("AAPL", 100.0) == prices["AAPL"]


def test_bars_for_when_called_then_envelope_is_derived_from_bar_time_and_clock_is_injected():
    cfg = MdConfig(symbols=("AAPL", "SPY"))
    ts = ns("2026-01-05T14:31:00")

    state, bars, mark = bars_for(INITIAL, ts, cfg, CTX)

    cycle = derive_id("bar", ts)
    assert [b.symbol for b in bars] == ["AAPL", "SPY"]
    assert bars[0].event_id == derive_id("md.bar_closed.v1", "AAPL", ts)
    assert {b.correlation_id for b in bars} == {b.causation_id for b in bars} == {cycle}
    assert {(b.ts_event, b.ts_init, b.bar_start, b.session) for b in bars} == {
        (ts, NOW_NS, ts - MINUTE_NS, "2026-01-05")
    }
    assert (mark.source, mark.bar_ts, mark.correlation_id, mark.final) == (
        "marketdata",
        ts,
        cycle,
        False,
    )
    assert state == FeedState(
        last_close={"AAPL": bars[0].close, "SPY": bars[1].close},
        last_ts=ts,
        session="2026-01-05",
        emitted=1,
    )


def test_bars_for_when_timestamp_not_after_state_or_outside_session_then_value_error():
    ts = ns("2026-01-05T14:31:00")
    state, _, _ = bars_for(INITIAL, ts, MdConfig(), CTX)

    with pytest.raises(ValueError, match="after"):
        bars_for(state, ts, MdConfig(), CTX)
    with pytest.raises(ValueError, match="inside an XNYS session"):
        bars_for(INITIAL, ns("2026-11-26T15:00:00"), MdConfig(), CTX)
    with pytest.raises(ValueError, match="inside an XNYS session"):
        bars_for(INITIAL, ts + 1, MdConfig(), CTX)


def test_resume_when_100_then_50_from_stored_state_then_equals_one_run_of_150():
    cfg = MdConfig(minutes=150, seed=3)
    _, whole = run(cfg)

    state, head = run(msgspec.structs.replace(cfg, minutes=100))
    stored = msgspec.json.decode(msgspec.json.encode(state), type=FeedState)
    end, tail = run(cfg, stored)

    # the 100-minute run ended there, so its last watermark alone says final
    assert head[-1][1].final and not whole[99][1].final
    head[-1] = (head[-1][0], msgspec.structs.replace(head[-1][1], final=False))
    assert wire(head + tail) == wire(whole)
    assert end.emitted == 150
    assert next_timestamp(end, cfg) is None


def test_run_when_minutes_reached_then_only_last_watermark_is_final():
    _, steps = run(MdConfig(minutes=3))

    assert [mark.final for _, mark in steps] == [False, False, True]


# --- file feed -------------------------------------------------------------------------------

HEADER = "timestamp,symbol,open,high,low,close,volume\n"


def write_text(tmp_path: Path, body: str, header: str = HEADER) -> Path:
    path = tmp_path / "bars.csv"
    path.write_text(header + body)
    return path


@pytest.mark.parametrize("suffix", ["csv", "parquet"])
def test_file_feed_when_synthetic_bars_round_trip_then_same_events_except_source(tmp_path, suffix):
    _, steps = run(MdConfig(minutes=395, start_date="2026-11-27"))
    path = tmp_path / f"bars.{suffix}"

    write_bars(path, all_bars(steps))
    back = list(file_feed(path, CTX))

    relabelled = [([msgspec.structs.replace(b, source="synthetic") for b in bars], mark) for bars, mark in back]
    assert {b.source for b in all_bars(back)} == {"file"}
    assert wire(relabelled) == wire(steps)


def test_file_feed_when_rows_unordered_and_mixed_timestamp_forms_then_grouped_ascending(
    tmp_path,
):
    path = write_text(
        tmp_path,
        "2026-01-05T09:32:00-05:00,AAPL,10.00,10.50,9.90,10.20,100\n"
        f"{ns('2026-01-05T14:31:00')},AAPL,10.00,10.10,9.95,10.00,50\n"
        "2026-01-05T14:32:00Z,MSFT,20,21,19,20.5,0\n",
    )

    groups = list(file_feed(path, CTX))

    assert [mark.bar_ts for _, mark in groups] == [
        ns("2026-01-05T14:31:00"),
        ns("2026-01-05T14:32:00"),
    ]
    assert [[b.symbol for b in bars] for bars, _ in groups] == [["AAPL"], ["AAPL", "MSFT"]]
    assert [mark.final for _, mark in groups] == [False, True]
    first = groups[0][0][0]
    assert (first.spread_is_proxy, first.spread_bps, first.volume) == (True, Decimal(4), 50)


def test_file_feed_when_file_has_spread_column_then_spread_is_measured(tmp_path):
    path = write_text(
        tmp_path,
        "2026-01-05T14:31:00Z,AAPL,10,10.5,9.9,10.2,100,3.5\n",
        header=HEADER.strip() + ",spread_bps\n",
    )

    [(bars, _)] = list(file_feed(path, CTX))

    assert (bars[0].spread_bps, bars[0].spread_is_proxy) == (Decimal("3.5"), False)


def test_file_feed_when_parquet_has_datetime_column_then_read_as_utc(tmp_path):
    path = tmp_path / "bars.parquet"
    pl.DataFrame(
        {
            "timestamp": [datetime(2026, 3, 9, 13, 31, tzinfo=UTC)],
            "symbol": ["SPY"],
            "open": [500.0],
            "high": [501.25],
            "low": [499.5],
            "close": [500.75],
            "volume": [1000],
        }
    ).write_parquet(path)

    [(bars, mark)] = list(file_feed(path, CTX))

    assert mark.bar_ts == ns("2026-03-09T13:31:00")
    assert (bars[0].high, bars[0].close) == (Decimal("501.25"), Decimal("500.75"))


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        ("2026-01-05T14:31:00Z,AAPL,NaN,10.5,9.9,10.2,100", "finite open"),
        ("2026-01-05T14:31:00Z,AAPL,10,10.5,9.9,-10.2,100", "close > 0"),
        ("2026-01-05T14:31:00Z,AAPL,10,9.8,9.9,9.85,100", "high >= low"),
        ("2026-01-05T14:31:00Z,AAPL,10,10.5,9.9,10.6,100", "low <= open, close <= high"),
        ("2026-01-05T14:31:00Z,AAPL,10,10.5,9.9,,100", "close value, was missing"),
        ("2026-01-05T14:31:00Z,AAPL,10,10.5,9.9,10.2,-1", "volume"),
        ("2026-11-26T15:00:00Z,AAPL,10,10.5,9.9,10.2,100", "XNYS regular session"),
        ("2026-01-05T22:00:00Z,AAPL,10,10.5,9.9,10.2,100", "XNYS regular session"),
        ("2026-01-05T14:31:30Z,AAPL,10,10.5,9.9,10.2,100", "1-minute bar close"),
        ("2026-01-05T14:31:00,AAPL,10,10.5,9.9,10.2,100", "UTC offset"),
        ("2026-01-05T14:32:00Z,MSFT,10,10.5,9.9,10.2,100", "row 1 too"),
    ],
)
def test_file_feed_when_bad_row_then_value_error_names_the_row(tmp_path, row, expected):
    good = "2026-01-05T14:32:00Z,MSFT,10,10.5,9.9,10.2,100\n"
    path = write_text(tmp_path, good + good.replace("MSFT", "SPY") + row + "\n")

    with pytest.raises(ValueError, match="expected") as caught:
        file_feed(path, CTX)

    message = str(caught.value)
    assert f"{path} row 3 (" in message
    assert expected in message


def test_file_feed_when_column_missing_then_value_error_names_it(tmp_path):
    header = "timestamp,symbol,open,high,low,close\n"
    path = write_text(tmp_path, "2026-01-05T14:31:00Z,AAPL,10,10.5,9.9,10.2\n", header=header)

    with pytest.raises(ValueError, match=r"missing \['volume'\]"):
        file_feed(path, CTX)


# --- config ----------------------------------------------------------------------------------


def test_load_config_when_env_sets_md_keys_then_typed_values():
    loaded = load(
        MdConfig,
        section_prefix=MdConfig.env_prefix,
        env={"KEEL_MD_SYMBOLS": "AAPL,QQQ", "KEEL_MD_SPEED": "2.5", "KEEL_MD_MINUTES": "10"},
    )

    cfg = loaded.section
    assert isinstance(cfg, MdConfig)
    assert (cfg.symbols, cfg.speed_multiplier, cfg.minutes) == (("AAPL", "QQQ"), 2.5, 10)
    assert MdConfig().speed_multiplier is None
    assert MdConfig().start == date(2026, 1, 5)


@pytest.mark.parametrize(
    ("env", "key"),
    [
        ({"KEEL_MD_SPEED": "fast"}, "KEEL_MD_SPEED"),
        ({"KEEL_MD_SPEED": "0"}, "KEEL_MD_SPEED"),
        ({"KEEL_MD_START_DATE": "2026-13-01"}, "KEEL_MD_START_DATE"),
        ({"KEEL_MD_FEED": "file"}, "KEEL_MD_FILE_PATH"),
        ({"KEEL_MD_MINUTES": "-1"}, "KEEL_MD_MINUTES"),
        ({"KEEL_MD_SYMBOLS": "AAPL,AAPL"}, "KEEL_MD_SYMBOLS"),
        ({"KEEL_MD_FEED": "alpaca"}, "KEEL_MD_API_KEY_ID"),
        (
            {
                "KEEL_MD_FEED": "alpaca",
                "KEEL_MD_API_KEY_ID": "k",
                "KEEL_MD_API_SECRET_KEY": "s",
                "KEEL_MD_FALLBACK_FEED": "iex",
            },
            "KEEL_MD_FALLBACK_FEED",
        ),  # fmt: skip
    ],
)
def test_load_config_when_bad_md_value_then_config_error_names_the_key(env, key):
    with pytest.raises(ConfigError, match=key):
        load(MdConfig, section_prefix=MdConfig.env_prefix, env=env)


# --- bars from a data provider (feed "alpaca") ----------------------------------------------

D = Decimal
PROVIDER_TS = sessions.session_open_close(date(2024, 3, 5))[0] + MINUTE_NS
GOOD = {"open": 187.23, "high": 187.5, "low": 187.01, "close": 187.4, "volume": 1200.0}


def provider(**changes: float) -> BarClosed:
    return provider_bar(
        "AAPL", PROVIDER_TS, 7, values={**GOOD, **changes}, spread_bps=Decimal("4"), source="alpaca-sip"
    )


def test_provider_bar_when_valid_then_exact_decimals_proxy_spread_and_the_feed_as_source():
    bar = provider()

    assert (bar.open, bar.high, bar.low, bar.close) == (D("187.23"), D("187.5"), D("187.01"), D("187.4"))
    assert (bar.volume, bar.spread_bps, bar.spread_is_proxy, bar.source) == (1200, D("4"), True, "alpaca-sip")
    assert (bar.ts_event, bar.bar_start, bar.ts_init) == (PROVIDER_TS, PROVIDER_TS - MINUTE_NS, 7)
    assert bar.event_id == derive_id("md.bar_closed.v1", "AAPL", PROVIDER_TS)  # the same id whatever the feed


@pytest.mark.parametrize(
    ("field", "value"),
    [("close", float("nan")), ("open", float("inf")), ("low", -1.0), ("high", 0.0), ("close", float("-inf"))],
)
def test_provider_bar_when_a_price_is_impossible_then_invariant_violation_naming_it(field: str, value: float):
    with pytest.raises(InvariantViolation, match=f"expected a finite {field} > 0, was {value!r}"):
        provider(**{field: value})


@pytest.mark.parametrize(
    ("changes", "says"),
    [
        ({"high": 187.0}, "expected low <= open, close <= high"),
        ({"low": 187.3}, "expected low <= open, close <= high"),
        ({"volume": 10.5}, "expected volume as whole shares >= 0"),
        ({"volume": -1.0}, "expected volume as whole shares >= 0"),
        ({"volume": float("nan")}, "expected volume as whole shares >= 0"),
    ],
)
def test_provider_bar_when_values_contradict_then_bad_data_for_the_symbol(changes: dict[str, float], says: str):
    with pytest.raises(BadData, match=says):
        provider(**changes)


def test_alpaca_feed_when_fallback_allowed_but_no_fallback_feed_then_refused_at_start() -> None:
    # execution would let orders through while data_primary is open, counting on a fallback
    cfg = MdConfig(feed="alpaca", api_key_id="k", api_secret_key="s", data_url="http://127.0.0.1:9")

    with pytest.raises(DependencyUnavailable, match="KEEL_MD_FALLBACK_FEED is empty"):
        AlpacaBars(cfg, fallback_allowed=True, breakers=None, errors=None)  # type: ignore[arg-type]
    assert [p.feed for p in AlpacaBars(cfg, fallback_allowed=False, breakers=None, errors=None).providers] == ["iex"]  # type: ignore[arg-type]


# --- the run's bound across restarts -----------------------------------------------------------


def test_start_run_when_restarted_inside_the_same_run_then_it_ends_where_the_run_ends():
    # keel up --minutes 100 (run r1); marketdata dies after 40 bar timestamps and is started again
    cfg = MdConfig(minutes=100, run_id="r1")
    first = start_run(INITIAL, cfg)
    after_40, _ = run(msgspec.structs.replace(cfg, minutes=40), first)

    again = start_run(after_40, cfg)
    end, steps = run(msgspec.structs.replace(cfg, minutes=again.run_end), again)

    assert (first.run_start, first.run_end) == (0, 100)
    assert (again.run_start, again.run_end) == (0, 100)  # not 40 + 100
    assert (len(steps), end.emitted) == (60, 100)


def test_start_run_when_a_new_run_or_no_run_id_then_minutes_count_from_what_was_emitted():
    stored = msgspec.structs.replace(start_run(INITIAL, MdConfig(minutes=100, run_id="r1")), emitted=70)

    new_run = start_run(stored, MdConfig(minutes=30, run_id="r2"))
    standalone = start_run(stored, MdConfig(minutes=30))
    unbounded = start_run(stored, MdConfig(run_id="r3"))

    assert (new_run.run_id, new_run.run_start, new_run.run_end) == ("r2", 70, 100)
    assert (standalone.run_id, standalone.run_start, standalone.run_end) == ("", 70, 100)
    assert (unbounded.run_start, unbounded.run_end) == (70, 0)
