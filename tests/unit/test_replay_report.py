"""The replay report of a two-session run, built from hand-made TCA frames; every expected number worked by hand.

D1 = 2024-03-04, D2 = 2024-03-05 (EST: New York = UTC-5). after = s(C - p) - f, before = s(C - d).

D1, nothing carried in; closes AAPL 101, MSFT 198
  o1 AAPL buy 10 @ 100:   f1 +6 @ 100 fee 0.6, f2 +4 @ 100 fee 0.4  after 5.4, 3.6   before 6, 4   AAPL 0 -> 10
  o2 AAPL sell 15 @ 102:  f3 -15 @ 101.8                            after 12         before 15     AAPL 10 -> -5: flip
  o3 MSFT buy 5 @ 200:    f4 +5 @ 200.4 fee 0.5                     after -12.5      before -10    MSFT 0 -> 5
  before 15, after 8.5, cost 6.5; curve 0 (carry 0), 5.4, 9, 21, 8.5
  filled notional 1000 + 1527 + 1002 = 3529; gross open 0, close 5 * 101 + 5 * 198 = 1495 -> turnover 3529 / 747.5

D2, carried in AAPL -5, MSFT +5; closes AAPL 99, MSFT 197: carry -5 * (99 - 101) + 5 * (197 - 198) = 5
  o4 AAPL buy 5 @ 100:    f5 +5 @ 100                               after -5         before -5     AAPL -5 -> 0
  o5 AAPL buy 3 @ 99.5:   f6 +3 @ 99.6                              after -1.8       before -1.5   AAPL 0 -> 3: flip (last -5)
  o6 MSFT sell 2 @ 197.5: f7 -2 @ 197.4 fee 0.2                     after 0.6        before 1      MSFT 5 -> 3
  o7 MSFT sell 10 rejected; o8 MSFT pending (not final)
  before 5 - 5.5 = -0.5, after 5 - 6.2 = -1.2, cost 0.7; curve 8.5, 13.5 (carry), 8.5, 6.7, 7.3
  filled notional 500 + 298.8 + 394.8 = 1193.6; gross open 5 * 99 + 5 * 197 = 1480, close 3 * 99 + 3 * 197 = 888

Run: before 14.5, after 7.3, cost 7.2; drawdown peak 21 (D1) to trough 6.7 (D2) = 14.3.
Final shortfalls [-10, 0, 10, 10, 20, 30, 40] (o8's 999 is not final).
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from services.tca import replay_report, report
from services.tca.report import Day
from tests.support.tca_frames import block, fill, make_day, ns, order

D1, D2 = "2024-03-04", "2024-03-05"


def day1() -> Day:
    return make_day(
        D1,
        orders=[
            order("o1", "AAPL", "buy", 10, "100", shortfall="10", filled_qty=10, fill_vwap="100", fees="1"),
            order("o2", "AAPL", "sell", 15, "102", shortfall="20", filled_qty=15, fill_vwap="101.8"),
            order("o3", "MSFT", "buy", 5, "200", shortfall="40", filled_qty=5, fill_vwap="200.4", fees="0.5"),
        ],
        fills=[
            fill("f1", "o1", "AAPL", "buy", 6, "100", "100", "0.6", ns(D1, 9, 31)),
            fill("f2", "o1", "AAPL", "buy", 4, "100", "100", "0.4", ns(D1, 9, 32)),
            fill("f3", "o2", "AAPL", "sell", 15, "102", "101.8", "0", ns(D1, 10, 15)),
            fill("f4", "o3", "MSFT", "buy", 5, "200", "200.4", "0.5", ns(D1, 11, 0)),
        ],
        blocks=[block(D1, "b1", "AAPL", "PRICE_COLLAR_BLOCK"), block(D1, "b2", "MSFT", "COST_GATE_BLOCK")],
        marks=[{"session": D1, "symbol": "AAPL", "close": "101"}, {"session": D1, "symbol": "MSFT", "close": "198"}],
    )


def day2() -> Day:
    return make_day(
        D2,
        orders=[
            order("o4", "AAPL", "buy", 5, "100", shortfall="0", filled_qty=5, fill_vwap="100"),
            order("o5", "AAPL", "buy", 3, "99.5", shortfall="10", filled_qty=3, fill_vwap="99.6"),
            order("o6", "MSFT", "sell", 2, "197.5", shortfall="-10", filled_qty=2, fill_vwap="197.4", fees="0.2"),
            order("o7", "MSFT", "sell", 10, "197", shortfall="30", status="rejected", reason="INSUFFICIENT_QTY"),
            order("o8", "MSFT", "buy", 1, "197", shortfall="999", status="accepted", final=False),
        ],
        fills=[
            fill("f5", "o4", "AAPL", "buy", 5, "100", "100", "0", ns(D2, 9, 40)),
            fill("f6", "o5", "AAPL", "buy", 3, "99.5", "99.6", "0", ns(D2, 10, 0)),
            fill("f7", "o6", "MSFT", "sell", 2, "197.5", "197.4", "0.2", ns(D2, 10, 30)),
        ],
        blocks=[block(D2, "b3", "AAPL", "PRICE_COLLAR_BLOCK"), block(D2, "b4", "AAPL", "MAX_POSITION_BLOCK")],
        marks=[
            {"session": D1, "symbol": "AAPL", "close": "101"},
            {"session": D2, "symbol": "AAPL", "close": "99"},
            {"session": D1, "symbol": "MSFT", "close": "198"},
            {"session": D2, "symbol": "MSFT", "close": "197"},
        ],
        carry=[{"symbol": "AAPL", "pos_open": -5}, {"symbol": "MSFT", "pos_open": 5}],
    )


def the_run() -> list[Day]:
    return [day1(), day2()]


def test_build_when_a_run_has_two_sessions_then_per_day_figures_equal_each_daily_report():
    rep = replay_report.build(the_run())

    assert rep["sessions"] == [D1, D2]
    for row, day in zip(rep["per_day"], the_run(), strict=True):
        t = report.build(day)["totals"]
        assert row["session"] == day.session
        for k in ("orders", "fills", "filled_notional", "blocks", "pnl_before_costs", "pnl_after_costs"):
            assert row[k] == t[k], (day.session, k)
        assert row["cost_of_execution"] == t["cost_of_execution"]
    d1, d2 = rep["per_day"]
    assert (d1["pnl_before_costs"], d1["pnl_after_costs"], d1["cost_of_execution"]) == (15.0, 8.5, 6.5)
    assert (d2["pnl_before_costs"], d2["pnl_after_costs"], d2["cost_of_execution"]) == (-0.5, -1.2, 0.7)
    assert (d1["orders"], d1["fills"], d1["filled_notional"], d2["orders"], d2["fills"]) == (3, 4, 3529.0, 5, 3)


def test_build_when_a_run_has_two_sessions_then_pnl_totals_are_the_sums_of_the_days():
    rep = replay_report.build(the_run())

    assert rep["pnl"] == {
        "before_costs": 14.5,
        "after_costs": 7.3,
        "cost_of_execution": 7.2,
        "profitable_before_costs_losing_after": False,
    }
    assert rep["cumulative_pnl"] == [
        {"session": D1, "before_costs": 15.0, "after_costs": 8.5},
        {"session": D2, "before_costs": 14.5, "after_costs": 7.3},
    ]


def test_build_when_a_run_has_seven_fills_over_two_sessions_then_trades_per_day_is_three_and_a_half():
    rep = replay_report.build(the_run())

    assert rep["trades_per_day"] == 3.5
    assert rep["counts"] == {"sessions": 2, "orders": 8, "fills": 7, "blocks": 4, "filled_notional": 4722.6}


def test_build_when_positions_reverse_then_flips_count_and_reductions_do_not():
    rep = replay_report.build(the_run())

    f = rep["flip_rate"]
    # AAPL: o2 (10 -> -5) and o5 (-5 -> 0 by o4, then 0 -> 3) flip; o1, o4 do not; MSFT: o3, o6 (5 -> 3) do not
    assert f["by_symbol"] == [
        {"symbol": "AAPL", "flips": 2, "orders_with_fills": 4, "rate": 0.5},
        {"symbol": "MSFT", "flips": 0, "orders_with_fills": 2, "rate": 0.0},
    ]
    assert (f["flips"], f["orders_with_fills"], f["rate"]) == (2, 6, round(2 / 6, 4))
    assert [d["flips"] for d in rep["per_day"]] == [1, 1]


def test_build_when_a_session_opens_with_a_carried_position_then_a_reversal_against_it_is_a_flip():
    day = make_day(
        D2,
        orders=[order("o1", "AAPL", "sell", 8, "100", shortfall="0", filled_qty=8, fill_vwap="100")],
        fills=[fill("f1", "o1", "AAPL", "sell", 8, "100", "100", "0", ns(D2, 9, 45))],
        marks=[{"session": D2, "symbol": "AAPL", "close": "100"}],
        carry=[{"symbol": "AAPL", "pos_open": 5}],
    )

    f = replay_report.build([day])["flip_rate"]

    assert (f["flips"], f["orders_with_fills"]) == (1, 1)


def test_build_when_blocks_span_sessions_then_blocks_by_reason_are_summed():
    rep = replay_report.build(the_run())

    assert rep["blocks_by_reason"] == {"COST_GATE_BLOCK": 1, "MAX_POSITION_BLOCK": 1, "PRICE_COLLAR_BLOCK": 2}
    assert [d["blocks"] for d in rep["per_day"]] == [2, 2]


def test_build_when_the_peak_is_on_day_one_and_the_trough_on_day_two_then_max_drawdown_spans_them():
    rep = replay_report.build(the_run())

    # chained curve 0, 0, 5.4, 9, 21, 8.5 | 13.5, 8.5, 6.7, 7.3: peak 21, trough 6.7
    assert rep["max_drawdown_usd"] == 14.3
    # day two alone falls only 13.5 -> 6.7
    assert replay_report.build([day2()])["max_drawdown_usd"] == 6.8


def test_build_when_positions_are_held_then_turnover_is_filled_notional_over_mean_gross_position():
    rep = replay_report.build(the_run())

    d1, d2 = rep["per_day"]
    assert (d1["gross_position_usd"], d1["turnover"]) == (747.5, round(3529 / 747.5, 4))
    assert (d2["gross_position_usd"], d2["turnover"]) == (1184.0, round(1193.6 / 1184, 4))
    assert rep["turnover_mean"] == round((round(3529 / 747.5, 4) + round(1193.6 / 1184, 4)) / 2, 4)
    assert rep["turnover_definition"] == replay_report.TURNOVER_DEFINITION


def test_build_when_a_session_opens_and_ends_flat_then_turnover_is_null():
    day = make_day(
        D1,
        orders=[
            order("o1", "AAPL", "buy", 10, "100", shortfall="0", filled_qty=10, fill_vwap="100"),
            order("o2", "AAPL", "sell", 10, "100", shortfall="0", filled_qty=10, fill_vwap="101"),
        ],
        fills=[
            fill("f1", "o1", "AAPL", "buy", 10, "100", "100", "0", ns(D1, 9, 45)),
            fill("f2", "o2", "AAPL", "sell", 10, "100", "101", "0", ns(D1, 10, 45)),
        ],
        marks=[{"session": D1, "symbol": "AAPL", "close": "101"}],
    )

    rep = replay_report.build([day])

    assert (rep["per_day"][0]["filled_notional"], rep["per_day"][0]["gross_position_usd"]) == (2010.0, 0.0)
    assert rep["per_day"][0]["turnover"] is None and rep["turnover_mean"] is None
    assert rep["flip_rate"]["flips"] == 0


def test_build_when_orders_are_final_or_pending_then_the_shortfall_distribution_takes_the_final_ones():
    sb = replay_report.build(the_run())["shortfall_bps"]

    # [-10, 0, 10, 10, 20, 30, 40]: p10 at rank 0.6, p50 at 3, p90 at 5.4, p99 at 5.94
    assert (sb["count"], sb["mean"], sb["min"], sb["max"]) == (7, round(100 / 7, 4), -10.0, 40.0)
    assert (sb["p10"], sb["p50"], sb["p90"], sb["p99"]) == (-4.0, 10.0, 34.0, 39.4)
    # ceil(sqrt 7) = 3 bins of 50 / 3 from -10
    assert sb["histogram"] == {"orders": 7, "edges": [-10.0, 6.6667, 23.3333, 40.0], "counts": [2, 3, 2]}


def test_build_when_the_run_is_empty_then_figures_are_zero_or_null():
    rep = replay_report.build([])

    assert (rep["sessions"], rep["per_day"], rep["trades_per_day"], rep["max_drawdown_usd"]) == ([], [], None, 0.0)
    assert rep["shortfall_bps"]["count"] == 0 and rep["shortfall_bps"]["p50"] is None
    assert rep["flip_rate"]["rate"] is None


def test_build_when_a_session_is_given_twice_then_value_error():
    with pytest.raises(ValueError, match="expected distinct sessions"):
        replay_report.build([day1(), day1()])


def test_render_json_when_built_twice_or_from_shuffled_days_then_the_bytes_are_identical():
    a = replay_report.render_json(replay_report.build(the_run()))
    b = replay_report.render_json(replay_report.build(list(reversed(the_run()))))

    assert a.encode() == b.encode()
    assert json.loads(a)["sessions"] == [D1, D2]


def test_write_when_called_then_both_files_exist_and_the_html_carries_the_headline(tmp_path):
    rep = replay_report.build(the_run())

    paths = replay_report.write(rep, tmp_path / "out")
    again = replay_report.write(replay_report.build(the_run()), tmp_path / "again")

    assert [p.name for p in paths] == ["replay-report.json", "replay-report.html"]
    assert json.loads(paths[0].read_text()) == json.loads(replay_report.render_json(rep))
    page = paths[1].read_text()
    assert f"Replay report, {D1} to {D2}" in page
    assert "PnL before costs $14.50, after costs $7.30, cost of execution $7.20" in page
    assert "Max drawdown (after costs): $14.30" in page
    assert "<svg" in page and not any(tag in page for tag in ("<script", "<link", "src=", "@import"))
    assert "<td>MAX_POSITION_BLOCK</td>" in page
    assert [p.read_bytes() for p in paths] == [p.read_bytes() for p in again]


class _FakeConn:
    """Records the sessions load_day asks for and the transactions opened."""

    def __init__(self) -> None:
        self.sessions: list[str] = []
        self.transactions: list[dict[str, Any]] = []
        self._open = False

    def is_in_transaction(self) -> bool:
        return self._open

    def transaction(self, **kw: Any) -> _FakeConn:
        self.transactions.append(kw)
        return self

    async def __aenter__(self) -> None:
        self._open = True

    async def __aexit__(self, *exc: object) -> None:
        self._open = False

    async def fetch(self, sql: str, session: str) -> list[Any]:
        if " FROM keel_tca.orders " in sql:
            self.sessions.append(session)
        return []


async def test_load_run_when_given_sessions_then_one_load_day_each_in_order_in_one_snapshot():
    conn = _FakeConn()

    days = await replay_report.load_run(conn, "keel_tca", [D1, D2])  # type: ignore[arg-type]

    assert [d.session for d in days] == [D1, D2]
    assert conn.sessions == [D1, D2]
    assert conn.transactions == [{"isolation": "repeatable_read", "readonly": True}]
