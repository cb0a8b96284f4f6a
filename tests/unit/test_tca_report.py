"""The daily execution report, built from hand-made TCA frames; every expected number worked by hand.

One session, 2024-03-05 (EST: New York = UTC-5):

orders (qty @ decision price, notional)               shortfall  expl exec  opp  spread  status
  o1 AAPL buy 100 @ 100  = 10000  mom/balanced/market/alpaca   11     1   10    0    4  filled 100 @ 100.10
  o2 AAPL sell 50 @ 102  =  5100  mr/balanced/limit/alpaca     20     0    4   16    6  canceled, 20 @ 101.9
  o3 MSFT buy 10 @ 400   =  4000  mom/aggressive/limit/alpaca  30     0    0   30    -  rejected
  o4 MSFT buy 10 @ 400   =  4000  mom/balanced/market/sim      -5     0   -5    0    2  filled 10 @ 399.8

fills: f1 AAPL +60 @ 100.05 fee 0.6 09:31, f2 AAPL +40 @ 100.175 fee 0.4 09:33,
       f3 AAPL -20 @ 101.9 fee 0 09:41, f4 MSFT +10 @ 399.8 fee 0.05 10:02
marks: AAPL 101 today, 99 on 03-04; MSFT none today (last fill 399.8), 395 on 03-01; TSLA 200 on 03-04
carried in: AAPL +30, MSFT -5, TSLA +7

PnL, after = s(C - p) - f, before = s(C - d):
  f1 56.4 / 60, f2 32.6 / 40, f3 18 / 20  -> AAPL fills 107 / 120, carry 30 * (101 - 99) = 60
  f4 -0.05 / -2                          -> MSFT fills -0.05 / -2, carry -5 * (399.8 - 395) = -24
  TSLA: no close today, no fill: carries 0
  total before 120 + 60 - 2 - 24 = 154, after 107 + 60 - 0.05 - 24 = 142.95, cost 11.05
"""

from __future__ import annotations

import csv
import io
import json
from typing import Any

import pytest

from services.tca import report
from services.tca.report import Day
from tests.support.tca_frames import block, fill, make_day, ns, order

SESSION = "2024-03-05"


def the_day() -> Day:
    common = {"trading_profile": "balanced", "provider": "alpaca"}
    return make_day(
        SESSION,
        orders=[
            order(
                "o1",
                "AAPL",
                "buy",
                100,
                "100",
                sleeve="mom",
                order_type="market",
                status="filled",
                filled_qty=100,
                fill_vwap="100.10",
                fees="1",
                shortfall_bps="11",
                explicit_bps="1",
                execution_bps="10",
                shortfall_usd="11",
                spread_paid_bps="4",
                **common,
            ),
            order(
                "o2",
                "AAPL",
                "sell",
                50,
                "102",
                sleeve="mr",
                order_type="limit",
                status="canceled",
                filled_qty=20,
                fill_vwap="101.9",
                partial_fill=True,
                shortfall_bps="20",
                execution_bps="4",
                opportunity_bps="16",
                shortfall_usd="10.2",
                spread_paid_bps="6",
                **common,
            ),
            order(
                "o3",
                "MSFT",
                "buy",
                10,
                "400",
                sleeve="mom",
                order_type="limit",
                status="rejected",
                trading_profile="aggressive",
                provider="alpaca",
                shortfall_bps="30",
                opportunity_bps="30",
                shortfall_usd="12",
                reason="INSUFFICIENT_BUYING_POWER",
            ),
            order(
                "o4",
                "MSFT",
                "buy",
                10,
                "400",
                sleeve="mom",
                order_type="market",
                status="filled",
                filled_qty=10,
                fill_vwap="399.8",
                trading_profile="balanced",
                provider="sim",
                shortfall_bps="-5",
                execution_bps="-5",
                shortfall_usd="-2",
                spread_paid_bps="2",
            ),
        ],
        fills=[
            fill("f1", "o1", "AAPL", "buy", 60, "100", "100.05", "0.6", ns(SESSION, 9, 31)),
            fill("f2", "o1", "AAPL", "buy", 40, "100", "100.175", "0.4", ns(SESSION, 9, 33)),
            fill("f3", "o2", "AAPL", "sell", 20, "102", "101.9", "0", ns(SESSION, 9, 41)),
            fill("f4", "o4", "MSFT", "buy", 10, "400", "399.8", "0.05", ns(SESSION, 10, 2)),
        ],
        blocks=[
            block(SESSION, "b1", "AAPL", "PRICE_COLLAR_BLOCK", sleeve="mom", order_type="market"),
            block(SESSION, "b2", "AAPL", "PRICE_COLLAR_BLOCK", sleeve="mr", order_type="limit"),
            block(SESSION, "b3", "NVDA", "COST_GATE_BLOCK", sleeve="mom", order_type="market"),
        ],
        marks=[
            {"session": "2024-03-04", "symbol": "AAPL", "close": "99"},
            {"session": SESSION, "symbol": "AAPL", "close": "101"},
            {"session": "2024-03-01", "symbol": "MSFT", "close": "395"},
            {"session": "2024-03-04", "symbol": "TSLA", "close": "200"},
        ],
        carry=[
            {"symbol": "AAPL", "pos_open": 30},
            {"symbol": "MSFT", "pos_open": -5},
            {"symbol": "TSLA", "pos_open": 7},
        ],
    )


def rows(r: dict[str, Any], group: str) -> dict[str, dict[str, Any]]:
    return {row["value"]: row for row in r["groups"][group]}


def test_build_when_a_day_has_fills_and_a_carried_position_then_pnl_before_and_after_costs_match_the_hand_sums():
    r = report.build(the_day())

    assert (r["pnl"]["before_costs"], r["pnl"]["after_costs"], r["pnl"]["cost_of_execution"]) == (154.0, 142.95, 11.05)
    assert r["pnl"]["carry"] == 36.0
    by = {s["symbol"]: s for s in r["pnl"]["by_symbol"]}
    assert (by["AAPL"]["fills_before_costs"], by["AAPL"]["fills_after_costs"], by["AAPL"]["carry"]) == (120, 107, 60)
    assert (by["AAPL"]["before_costs"], by["AAPL"]["after_costs"], by["AAPL"]["close_source"]) == (180, 167, "mark")
    assert (by["MSFT"]["close"], by["MSFT"]["close_source"], by["MSFT"]["carry"]) == (399.8, "last_fill", -24.0)
    assert (by["MSFT"]["before_costs"], by["MSFT"]["after_costs"], by["MSFT"]["cost_of_execution"]) == (
        -26,
        -24.05,
        -1.95,
    )
    assert (by["TSLA"]["carry"], by["TSLA"]["close_source"]) == (0.0, "previous_close")
    assert r["pnl"]["marked_at_last_fill"] == ["MSFT"]
    assert r["pnl"]["carried_unmarked"] == ["TSLA"]
    symbols = rows(r, "symbol")
    assert (symbols["AAPL"]["pnl_before_costs"], symbols["AAPL"]["pnl_after_costs"]) == (180.0, 167.0)


def test_build_when_grouped_by_sleeve_then_the_carry_is_its_own_row_and_every_group_adds_up_to_all():
    r = report.build(the_day())

    sleeves = rows(r, "sleeve")
    assert (sleeves["mom"]["pnl_before_costs"], sleeves["mom"]["pnl_after_costs"]) == (98.0, 88.95)
    assert (sleeves["mr"]["pnl_before_costs"], sleeves["mr"]["pnl_after_costs"]) == (20.0, 18.0)
    assert (sleeves[report.CARRIED]["pnl_before_costs"], sleeves[report.CARRIED]["orders"]) == (36.0, 0)
    for dim in report.DIMENSIONS:
        group = r["groups"][dim]
        assert sum(x["pnl_before_costs"] for x in group) == pytest.approx(154.0), dim
        assert sum(x["pnl_after_costs"] for x in group) == pytest.approx(142.95), dim
        assert sum(x["orders"] for x in group) == 4, dim
        assert sum(x["blocks"] for x in group) == 3, dim


def test_build_when_orders_have_shortfalls_then_percentiles_and_weighted_means_are_the_hand_values():
    t = report.build(the_day())["totals"]

    # shortfall over all orders [-5, 11, 20, 30]: p50 between ranks 1 and 2, p90 at 2.7, p99 at 2.97
    assert (t["shortfall_bps_p50"], t["shortfall_bps_p90"], t["shortfall_bps_p99"]) == (15.5, 27.0, 29.7)
    # (11*10000 + 20*5100 + 30*4000 - 5*4000) / 23100
    assert t["shortfall_bps_wmean"] == round(312000 / 23100, 4)
    # spread paid over the filled orders [2, 4, 6]
    assert (t["spread_paid_bps_p50"], t["spread_paid_bps_p90"]) == (4.0, 5.6)
    assert (t["orders"], t["filled_orders"], t["filled_qty"], t["ordered_notional"]) == (4, 3, 130, 23100.0)
    assert t["filled_notional"] == 10010 + 2038 + 3998
    assert (t["explicit_usd"], t["delay_usd"], t["execution_usd"], t["opportunity_usd"]) == (1.0, 0.0, 10.04, 20.16)
    assert (t["execution_bps"], t["opportunity_bps"]) == (round(10.04 / 23100 * 1e4, 4), round(20.16 / 23100 * 1e4, 4))
    assert t["shortfall_usd"] == 31.2
    assert (t["rejects"], t["cancels"], t["expired"], t["partial_fills"], t["fills"]) == (1, 1, 0, 1, 4)
    assert (t["missed_opportunity_usd_cancels"], t["missed_opportunity_usd_rejects"]) == (8.16, 12.0)


def test_build_when_blocks_exist_then_they_count_by_reason_in_their_symbol_sleeve_and_order_type_only():
    r = report.build(the_day())

    assert r["totals"]["blocks_by_reason"] == {"COST_GATE_BLOCK": 1, "PRICE_COLLAR_BLOCK": 2}
    symbols = rows(r, "symbol")
    assert symbols["AAPL"]["blocks_by_reason"] == {"PRICE_COLLAR_BLOCK": 2}
    assert (symbols["NVDA"]["blocks_by_reason"], symbols["NVDA"]["orders"]) == ({"COST_GATE_BLOCK": 1}, 0)
    assert rows(r, "sleeve")["mr"]["blocks_by_reason"] == {"PRICE_COLLAR_BLOCK": 1}
    assert rows(r, "order_type")["market"]["blocks"] == 2
    assert rows(r, "provider")[""]["blocks"] == 3
    assert rows(r, "trading_profile")[""]["blocks"] == 3
    assert rows(r, "provider")["alpaca"]["blocks"] == 0


def test_build_when_a_day_has_fills_then_the_headline_and_chart_data_answer_the_questions():
    r = report.build(the_day())

    h = r["headline"]
    assert h["profitable_before_costs_losing_after"] is False
    assert h["top_shortfall_symbols"] == [
        {"symbol": "AAPL", "shortfall_usd": 21.2},
        {"symbol": "MSFT", "shortfall_usd": 10.0},
    ]
    assert h["top_shortfall_sleeves"] == [
        {"sleeve": "mom", "shortfall_usd": 21.0},
        {"sleeve": "mr", "shortfall_usd": 10.2},
    ]
    assert h["missed_opportunity"] == {"cancels": 1, "cancels_usd": 8.16, "rejects": 1, "rejects_usd": 12.0}
    c = r["charts"]
    # filled orders' shortfalls [-5, 11, 20]: ceil(sqrt 3) = 2 bins of 12.5 from -5
    assert c["shortfall_distribution"] == {"orders": 3, "edges": [-5.0, 7.5, 20.0], "counts": [1, 2]}
    assert c["fills_through_day"] == [
        {"bucket": "09:30", "fills": 2, "shares": 100},
        {"bucket": "09:40", "fills": 1, "shares": 20},
        {"bucket": "10:00", "fills": 1, "shares": 10},
    ]
    assert c["cost_by_symbol"] == [{"symbol": "AAPL", "shortfall_usd": 21.2}, {"symbol": "MSFT", "shortfall_usd": 10.0}]
    cum = report.cumulative_pnl(the_day())
    assert cum["cum_after_costs"].round(4).to_list() == [56.4, 89.0, 107.0, 106.95]
    assert cum["cum_before_costs"].round(4).to_list() == [60.0, 100.0, 120.0, 118.0]


def test_build_when_fills_win_before_costs_and_lose_after_then_the_headline_says_so():
    day = make_day(
        SESSION,
        orders=[
            order(
                "o1",
                "AAPL",
                "buy",
                10,
                "100",
                status="filled",
                filled_qty=10,
                fill_vwap="100.5",
                sleeve="s",
                trading_profile="p",
                order_type="market",
                provider="x",
            )
        ],
        fills=[fill("f1", "o1", "AAPL", "buy", 10, "100", "100.5", "1", ns(SESSION, 9, 45))],
        marks=[{"session": SESSION, "symbol": "AAPL", "close": "100.2"}],
    )

    h = report.build(day)["headline"]

    # before 10 * 0.2 = 2, after 10 * (100.2 - 100.5) - 1 = -4
    assert (h["pnl_before_costs"], h["pnl_after_costs"], h["cost_of_execution"]) == (2.0, -4.0, 6.0)
    assert h["profitable_before_costs_losing_after"] is True


def test_build_when_the_day_is_empty_then_the_report_is_valid_and_the_charts_say_no_fills(tmp_path):
    day = make_day(SESSION)

    r = report.build(day)
    paths = report.write(r, day, tmp_path)

    assert r["totals"]["orders"] == 0 and r["totals"]["pnl_before_costs"] == 0.0
    assert r["totals"]["shortfall_bps_p50"] is None
    assert all(r["groups"][d] == [] for d in report.DIMENSIONS)
    assert [p.name for p in paths] == [
        f"execution-report-{SESSION}.json",
        f"execution-report-{SESSION}.csv",
        f"execution-report-{SESSION}.html",
        f"tca-orders-{SESSION}.jsonl",
    ]
    assert json.loads(paths[0].read_text())["session"] == SESSION
    page = paths[2].read_text()
    for cid in report.CHART_IDS:
        fig = page.split(f'id="chart-{cid}"', 1)[1].split("</figure>", 1)[0]
        assert "<svg" in fig and "no fills" in fig, cid
    assert paths[3].read_text() == ""


def test_write_when_rendered_twice_then_every_file_is_byte_identical(tmp_path):
    a = report.write(report.build(the_day()), the_day(), tmp_path / "a")
    b = report.write(report.build(the_day()), the_day(), tmp_path / "b")

    for pa, pb in zip(a, b, strict=True):
        assert pa.read_bytes() == pb.read_bytes(), pa.name


def test_render_csv_when_blocks_exist_then_each_reason_is_a_column_and_each_group_row_a_line():
    r = report.build(the_day())

    lines = list(csv.DictReader(io.StringIO(report.render_csv(r))))

    assert len(lines) == 1 + sum(len(r["groups"][d]) for d in report.DIMENSIONS)
    assert (lines[0]["group"], lines[0]["value"], lines[0]["blocks_PRICE_COLLAR_BLOCK"]) == ("all", "all", "2")
    nvda = next(x for x in lines if x["group"] == "symbol" and x["value"] == "NVDA")
    assert (nvda["blocks_COST_GATE_BLOCK"], nvda["blocks_PRICE_COLLAR_BLOCK"], nvda["shortfall_bps_p50"]) == (
        "1",
        "0",
        "",
    )
    assert lines[0]["pnl_after_costs"] == "142.95"


def test_render_jsonl_when_orders_exist_then_one_object_per_order_with_exact_numerics():
    out = report.render_jsonl(the_day()).splitlines()

    records = [json.loads(x) for x in out]
    assert [x["client_order_id"] for x in records] == ["o1", "o2", "o3", "o4"]
    assert records[0]["fill_vwap"] == "100.10" and records[2]["fill_vwap"] is None
    assert list(records[0]) == list(report.ORDER_SCHEMA)


@pytest.mark.parametrize("text", ["2024-13-01", "20240305", "2024-3-5", "yesterday", "2024-02-30", "2024-03-05x"])
def test_parse_session_when_the_text_is_not_a_date_then_value_error(text: str):
    with pytest.raises(ValueError, match="YYYY-MM-DD"):
        report.parse_session(text)
