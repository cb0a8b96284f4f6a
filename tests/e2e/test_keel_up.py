"""The whole system, started the way a user starts it, checked from its ledgers.

Five symbols over a full synthetic XNYS session through `keel up --exit-when-done`; then
the same with one service SIGKILLed mid-run and restarted by the supervisor.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections import defaultdict
from datetime import date
from decimal import Decimal
from pathlib import Path

import asyncpg
import nats
import psutil
import pytest

from libs import fillsim, sessions
from libs.contracts import subjects as sj
from libs.contracts.base import leg_client_order_id
from libs.contracts.subjects import Subjects
from libs.obs.tracing import trace_id
from libs.runtime.migrate import REPO_ROOT
from services.marketdata.config import MdConfig
from services.marketdata.handlers import bars_for, next_timestamp
from services.marketdata.state import INITIAL

pytestmark = pytest.mark.e2e

SYMBOLS = "AAPL,MSFT,SPY,QQQ,IWM"
TERMINAL = ("FILLED", "CANCELED", "REJECTED", "EXPIRED", "FAILED")


async def ledger(database_url: str, prefix: str) -> dict[str, object]:
    """Read what every service recorded, from its own schema."""
    conn = await asyncpg.connect(database_url)
    try:
        oms, ex, tca = f"{prefix}_oms", f"{prefix}_exchange", f"{prefix}_tca"
        intents = await conn.fetch(
            f"SELECT intent_id, client_order_id, symbol, side, qty, status, filled_qty, reason, bar_ts FROM {oms}.intents"
        )
        events = await conn.fetch(
            f"SELECT seq, event_id, client_order_id, event_type, payload FROM {oms}.intent_events ORDER BY seq"
        )
        oms_positions = {r["symbol"]: r["qty"] for r in await conn.fetch(f"SELECT symbol, qty FROM {oms}.positions")}
        ex_rows = await conn.fetch(f"SELECT client_order_id, symbol, side, status, data FROM {ex}.orders")
        ex_positions = {r["symbol"]: r["qty"] for r in await conn.fetch(f"SELECT symbol, qty FROM {ex}.positions")}
        tca_rows = await conn.fetch(f"SELECT execution_id, client_order_id, shortfall_bps FROM {tca}.records")
    finally:
        await conn.close()
    # an exit leg is named by the exchange; keel knows it as its parent's client_order_id + role
    by_id = {json.loads(r["data"])["id"]: r["client_order_id"] for r in ex_rows}
    ex_orders = []
    for r in ex_rows:
        data = json.loads(r["data"])
        cid = (
            leg_client_order_id(by_id[data["parent_id"]], data["leg_role"])
            if data["leg_role"]
            else r["client_order_id"]
        )
        ex_orders.append({**dict(r), "client_order_id": cid})
    return {
        "intents": intents,
        "events": events,
        "oms_positions": oms_positions,
        "ex_orders": ex_orders,
        "ex_positions": ex_positions,
        "tca": tca_rows,
    }


def check_invariants(led: dict[str, object]) -> dict[str, int]:
    """Assert the ledgers agree; return counts for the caller's own assertions."""
    intents = led["intents"]
    events = led["events"]
    approved = [i for i in intents if i["reason"] == "APPROVED"]
    fills = [
        json.loads(e["payload"])
        for e in events
        if e["event_type"] in ("exec.order_filled.v1", "exec.order_partially_filled.v1")
    ]

    # every approved intent reached the exchange exactly once, under its own client_order_id
    ex_cids = [o["client_order_id"] for o in led["ex_orders"]]
    assert len(ex_cids) == len(set(ex_cids))
    assert sorted(ex_cids) == sorted(i["client_order_id"] for i in approved)

    # every fill is in the log exactly once
    exec_ids = [f["execution_id"] for f in fills]
    assert len(exec_ids) == len(set(exec_ids))

    # positions equal the sum of fills, in the OMS and at the exchange
    summed: dict[str, int] = defaultdict(int)
    for f in fills:
        summed[f["symbol"]] += f["last_qty"] if f["side"] == "buy" else -f["last_qty"]
    nonzero = {s: q for s, q in summed.items() if q}
    assert {s: q for s, q in led["oms_positions"].items() if q} == nonzero
    assert led["ex_positions"] == nonzero

    # filled quantity per intent matches its fills; a FILLED intent is filled in full
    by_cid: dict[str, int] = defaultdict(int)
    for f in fills:
        by_cid[f["client_order_id"]] += f["last_qty"]
    for i in intents:
        assert i["filled_qty"] == by_cid.get(i["client_order_id"], 0)
        if i["status"] == "FILLED":
            assert i["filled_qty"] == i["qty"]

    # an order decided on bar t fills against a later bar, never the one it was decided on
    decided_at = {i["client_order_id"]: i["bar_ts"] for i in intents}
    for o in led["ex_orders"]:
        filled_at = json.loads(o["data"]).get("filled_at")
        if filled_at is not None:
            assert filled_at > decided_at[o["client_order_id"]]

    # one TCA record per fill
    assert sorted(r["execution_id"] for r in led["tca"]) == sorted(exec_ids)
    return {"approved": len(approved), "fills": len(fills)}


async def fill_traces(nats_url: str, prefix: str) -> tuple[int, int]:
    """Return (fills checked, fills whose trace id equals their bar's) from stored headers."""
    subjects = Subjects(prefix)
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        bar_trace: dict[tuple[str, str], str] = {}
        info = await js.stream_info(subjects.stream(sj.MD))
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            msg = await js.get_msg(subjects.stream(sj.MD), seq)
            body = json.loads(msg.data)
            if body["type"] == "md.bar_closed.v1":
                bar_trace[(body["symbol"], body["correlation_id"])] = trace_id(msg.headers)
        checked = matched = 0
        info = await js.stream_info(subjects.stream(sj.EXEC))
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            msg = await js.get_msg(subjects.stream(sj.EXEC), seq)
            body = json.loads(msg.data)
            if body["type"] == "exec.order_filled.v1":
                checked += 1
                want = bar_trace.get((body["symbol"], body["correlation_id"]))
                matched += bool(want) and trace_id(msg.headers) == want
        return checked, matched
    finally:
        await nc.close()


async def intent_log_day(database_url: str, prefix: str, session: str) -> dict[str, dict[str, Decimal]]:
    """Compute a session's execution figures per symbol straight from the OMS's intent log.

    Orders: approved intents (not exit legs) that execution did not skip; fills: the log's fill
    events; fees: the fee schedule TCA estimates with (SEC Section 31 and FINRA TAF on sales;
    execution reports none); each fill marked to the symbol's last price at the exchange.
    """
    conn = await asyncpg.connect(database_url)
    try:
        oms, ex = f"{prefix}_oms", f"{prefix}_exchange"
        intents = await conn.fetch(
            f"SELECT client_order_id, symbol, status, reason, arrival_price, bar_ts FROM {oms}.intents "
            "WHERE leg_role = ''"
        )
        events = await conn.fetch(f"SELECT client_order_id, event_type, payload FROM {oms}.intent_events ORDER BY seq")
        closes = {r["symbol"]: r["price"] for r in await conn.fetch(f"SELECT symbol, price FROM {ex}.marks")}
    finally:
        await conn.close()
    skipped = {e["client_order_id"] for e in events if e["event_type"] == "exec.submit_skipped.v1"}
    mine = {
        i["client_order_id"]: i
        for i in intents
        if i["reason"] == "APPROVED"
        and i["client_order_id"] not in skipped
        and sessions.session_of(i["bar_ts"]) == date.fromisoformat(session)
    }
    out: dict[str, dict[str, Decimal]] = defaultdict(lambda: defaultdict(Decimal))
    for i in mine.values():
        row = out[i["symbol"]]
        row["orders"] += 1
        row["cancels"] += i["status"] == "CANCELED"
        row["rejects"] += i["status"] in ("REJECTED", "FAILED")
    for e in events:
        if e["event_type"] not in ("exec.order_filled.v1", "exec.order_partially_filled.v1"):
            continue
        f = json.loads(e["payload"])
        intent = mine.get(f["client_order_id"])
        if intent is None:
            continue
        qty, px, d = f["last_qty"], Decimal(f["last_px"]), intent["arrival_price"]
        s = 1 if f["side"] == "buy" else -1
        fee = fillsim.fee(f["side"], qty, px, fillsim.CostModel())
        close = closes[f["symbol"]]
        row = out[f["symbol"]]
        row["fills"] += 1
        row["filled_qty"] += qty
        row["filled_notional"] += qty * px
        row["pnl_before_costs"] += s * qty * (close - d)
        row["pnl_after_costs"] += s * qty * (close - px) - fee
        row["cost_of_execution"] += s * qty * (px - d) + fee
    return out


async def check_report_against_intent_log(run, database_url: str, prefix: str, session: str) -> dict:  # type: ignore[no-untyped-def]
    """Run `keel report` as a user would and check its figures equal the intent log's."""
    out_dir = run.var / "reports-check"
    env = {**os.environ, "KEEL_DATABASE_URL": database_url, "KEEL_SCHEMA_PREFIX": prefix}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "libs.cli.main", "--var", str(run.var), "report", "--date", session,
        "--out", str(out_dir), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=REPO_ROOT, env=env,
    )  # fmt: skip
    stdout, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    paths = stdout.decode().split()
    assert {p.rsplit(".", 1)[1] for p in paths} == {"json", "csv", "html", "jsonl"}
    report = json.loads(Path(next(p for p in paths if p.endswith(".json"))).read_text())
    direct = await intent_log_day(database_url, prefix, session)
    rows = {r["value"]: r for r in report["groups"]["symbol"]}
    assert set(rows) == set(direct)
    for symbol, want in direct.items():
        got = rows[symbol]
        for key in ("orders", "fills", "filled_qty", "cancels", "rejects"):
            assert got[key] == int(want[key]), (symbol, key, got[key], want[key])
        for key in ("filled_notional", "pnl_before_costs", "pnl_after_costs", "cost_of_execution"):
            assert abs(Decimal(str(got[key])) - want[key]) < Decimal("0.01"), (symbol, key, got[key], want[key])
    total = report["totals"]
    assert total["fills"] == sum(int(w["fills"]) for w in direct.values())
    assert abs(Decimal(str(total["pnl_after_costs"])) - sum(w["pnl_after_costs"] for w in direct.values())) < Decimal(
        "0.05"
    )
    return report


async def keel_status(run) -> dict:  # type: ignore[no-untyped-def]
    """Run `keel status --json` against a running keel up, as a user would."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "libs.cli.main",
        "--var",
        str(run.var),
        "status",
        "--json",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=REPO_ROOT,
    )
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    return json.loads(out)


async def test_keel_up_when_five_symbols_trade_a_session_then_ledgers_agree(keel_up, namespace, nats_url, database_url):
    run = await keel_up(
        "--symbols", SYMBOLS, "--minutes", "390", "--speed", "max", "--exit-when-done", "--start-date", "2026-03-02"
    )
    summary = await run.summary(timeout=400)

    assert summary["settled"] is True and summary["bar_timestamps"] == 390
    assert summary["bars"] == 390 * 5
    assert summary["sessions"] == ["2026-03-02"]
    assert summary["intents"] > 0 and summary["fills"] > 0
    assert summary["rejects"] == 0 and summary["dead_letters"] == 0 and summary["restarts"] == {}

    led = await ledger(database_url, namespace.schema_prefix)
    counts = check_invariants(led)
    assert counts["approved"] == summary["orders"]
    assert counts["fills"] == summary["fills"] + summary["partial_fills"]
    assert len(led["intents"]) == summary["intents"]
    # orders decided on the session's last bar have no next bar to fill against
    open_intents = [i for i in led["intents"] if i["status"] not in TERMINAL]
    assert all(
        o["status"] in ("new", "accepted")
        for o in led["ex_orders"]
        if o["status"] not in ("filled", "canceled", "expired")
    )
    assert len(open_intents) <= len(SYMBOLS.split(","))

    # the run manifest, in Postgres and in ./var/runs, names mode, config hash, commit, contract
    conn = await asyncpg.connect(database_url)
    try:
        row = await conn.fetchrow(
            f"SELECT * FROM {namespace.schema_prefix}_meta.run_manifests WHERE run_id = $1", summary["run_id"]
        )
    finally:
        await conn.close()
    on_disk = json.loads((run.var / "runs" / f"{summary['run_id']}.json").read_text())
    assert row is not None and json.loads(row["manifest"]) == on_disk
    assert (row["execution_mode"], row["config_sha256"]) == ("paper", summary["config_sha256"])
    assert on_disk["git_commit"] and on_disk["runtime_contract"]["stubs_enabled"] is False
    secret = json.loads((run.var / "exchange-keys.json").read_text())["api_secret_key"]
    assert secret not in json.dumps(on_disk) and secret not in row["manifest"]

    checked, matched = await fill_traces(nats_url, namespace.prefix)
    assert checked == summary["fills"] and matched == checked  # one trace from BarClosed to OrderFilled

    # TCA: every order that ended has its final record, the session was calibrated, and the
    # daily report's figures equal a direct computation from the OMS's intent log
    conn = await asyncpg.connect(database_url)
    try:
        tca = f"{namespace.schema_prefix}_tca"
        finals = {
            r["client_order_id"] for r in await conn.fetch(f"SELECT client_order_id FROM {tca}.orders WHERE final")
        }
        models = await conn.fetch(f"SELECT effective_session FROM {tca}.cost_models")
    finally:
        await conn.close()
    ended = {i["client_order_id"] for i in led["intents"] if i["status"] in TERMINAL and i["reason"] == "APPROVED"}
    assert ended and ended <= finals
    assert [r["effective_session"] for r in models] == ["2026-03-02"]
    report = await check_report_against_intent_log(run, database_url, namespace.schema_prefix, "2026-03-02")
    assert report["counts"]["fills"] == summary["fills"] + summary["partial_fills"]


async def test_keel_up_when_bracket_policy_trades_then_exit_legs_fill_and_ledgers_agree(
    keel_up, namespace, database_url, monkeypatch
):
    # every entry a bracket with exits 20 bps either side: tight enough that legs fill in a run
    monkeypatch.setenv("KEEL_RISK_ORDER_CLASS", "bracket")
    monkeypatch.setenv("KEEL_RISK_TAKE_PROFIT_BPS", "20")
    monkeypatch.setenv("KEEL_RISK_STOP_LOSS_BPS", "20")
    run = await keel_up(
        "--symbols", "AAPL,MSFT,SPY", "--minutes", "200", "--speed", "max", "--exit-when-done",
        "--start-date", "2026-01-05",
    )  # fmt: skip
    summary = await run.summary(timeout=300)

    # no order refused: closes go simple, and the legs holding their shares are canceled first
    assert summary["settled"] is True and summary["rejects"] == 0 and summary["dead_letters"] == 0
    led = await ledger(database_url, namespace.schema_prefix)
    counts = check_invariants(led)  # legs included: every one at the venue once, every fill once
    assert counts["fills"] == summary["fills"] + summary["partial_fills"]
    conn = await asyncpg.connect(database_url)
    try:
        legs = await conn.fetch(
            f"SELECT leg_role, status, count(*) AS n FROM {namespace.schema_prefix}_oms.intents "
            "WHERE leg_role <> '' GROUP BY 1, 2"
        )
    finally:
        await conn.close()
    by = {(r["leg_role"], r["status"]): r["n"] for r in legs}
    # take-profits and stop-losses both filled, each with its sibling canceled (or still working)
    assert by.get(("take_profit", "FILLED"), 0) > 0 and by.get(("stop_loss", "FILLED"), 0) > 0
    assert set(by) <= {(role, s) for role in ("take_profit", "stop_loss") for s in ("FILLED", "CANCELED", "ACKED")}


VICTIMS = ("oms", "execution", "marketdata")


def _service_processes(run, service: str) -> list[psutil.Process]:  # type: ignore[no-untyped-def]
    """The live child processes of `keel up` running a service (a killed one not yet reaped is skipped)."""
    found = []
    for child in psutil.Process(run.proc.pid).children():
        try:
            if child.status() != psutil.STATUS_ZOMBIE and f"services.{service}" in " ".join(child.cmdline()):
                found.append(child)
        except (psutil.ZombieProcess, psutil.NoSuchProcess, psutil.AccessDenied):
            continue  # gone or being reaped
    return found


async def _intents_reach(conn: asyncpg.Connection, schema_prefix: str, n: int) -> None:
    for _ in range(900):
        await asyncio.sleep(0.1)
        try:
            got = await conn.fetchval(f"SELECT count(*) FROM {schema_prefix}_oms.intent_events")
        except asyncpg.UndefinedTableError:
            continue
        if got and got >= n:
            return
    pytest.fail(f"fewer than {n} intent events after 90 s")


async def test_keel_up_when_services_are_sigkilled_mid_run_one_after_another_then_nothing_lost_or_duplicated(
    keel_up, namespace, database_url
):
    # one run, three victims in turn (each once it has done real work since the last kill): the
    # OMS mid-decision, execution mid-submit, marketdata mid-feed
    run = await keel_up(
        "--symbols", SYMBOLS, "--minutes", "300", "--speed", "max", "--exit-when-done", "--start-date", "2026-03-03"
    )
    conn = await asyncpg.connect(database_url)
    try:
        await _intents_reach(conn, namespace.schema_prefix, 12)
        status = await keel_status(run)
        assert sorted(status["services"]) == sorted(
            ["exchange", "alerts", "tca", "oms", "execution", "risk", "signal", "marketdata"]
        )
        assert all(v["healthz"] and v["readyz"] for v in status["services"].values())
        assert status["exchange"]["base_url"] and status["exchange"]["api_key_id"]
        assert status["halt"]["halted"] is False and status["counts"]["intents"] > 0
        for n, victim in enumerate(VICTIMS, start=1):
            await _intents_reach(conn, namespace.schema_prefix, 12 * n)
            [target] = _service_processes(run, victim)
            target.kill()
            for _ in range(300):  # back (a new process) before the next victim: one restart each
                await asyncio.sleep(0.1)
                if [p.pid for p in _service_processes(run, victim)] not in ([], [target.pid]):
                    break
            else:
                pytest.fail(f"{victim} not restarted within 30 s")
    finally:
        await conn.close()

    summary = await run.summary(timeout=500)
    assert summary["restarts"] == dict.fromkeys(VICTIMS, 1)
    assert summary["bar_timestamps"] == 300 and summary["bars"] == 1500
    assert summary["rejects"] == 0 and summary["dead_letters"] == 0
    led = await ledger(database_url, namespace.schema_prefix)
    counts = check_invariants(led)
    assert counts["approved"] == summary["orders"] and counts["fills"] > 0


async def test_keel_up_when_killed_mid_run_then_every_later_intent_is_blocked_and_none_reaches_the_exchange(
    keel_up, namespace, database_url
):
    run = await keel_up(
        "--symbols", SYMBOLS, "--minutes", "200", "--speed", "max", "--exit-when-done", "--start-date", "2026-03-04"
    )
    conn = await asyncpg.connect(database_url)
    try:
        for _ in range(600):
            await asyncio.sleep(0.1)
            try:
                n = await conn.fetchval(f"SELECT count(*) FROM {namespace.schema_prefix}_oms.intents")
            except asyncpg.UndefinedTableError:
                continue
            if n and n >= 4:
                break
        else:
            pytest.fail("no intents after 60 s")
    finally:
        await conn.close()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "libs.cli.main", "--var", str(run.var), "kill", "--reason", "e2e",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=REPO_ROOT,
    )  # fmt: skip
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    assert json.loads(out)["applied"] is True

    summary = await run.summary(timeout=400)
    assert summary["halts"] == 1 and summary["halted_at_end"] is True
    led = await ledger(database_url, namespace.schema_prefix)
    check_invariants(led)
    decisions = [json.loads(e["payload"]) for e in led["events"] if e["event_type"] == "oms.pretrade_decision.v1"]
    reasons = [d["reason"] for d in decisions]
    first_block = reasons.index("KILL_SWITCH_BLOCK")
    assert set(reasons[first_block:]) == {"KILL_SWITCH_BLOCK"}  # nothing approved after the kill
    # an order the OMS approved just before the kill is stopped by execution's own halt check
    refused = [
        json.loads(e["payload"])
        for e in led["events"]
        if e["event_type"] == "exec.submit_skipped.v1"
        and json.loads(e["payload"])["stage"] == "execution"
        and json.loads(e["payload"])["reason_code"] == "KILL_SWITCH_BLOCK"
    ]
    approved = sum(r == "APPROVED" for r in reasons)
    assert approved - len(refused) == summary["orders"] == len(led["ex_orders"])


async def test_keel_up_when_bars_come_through_alpacas_data_api_then_the_generators_bars_and_one_summary_per_bar(
    keel_up, namespace, database_url
):
    # the live data path offline: the local exchange serves the synthetic tape through Alpaca's
    # market data API, marketdata reads it with alpaca-py's StockHistoricalDataClient
    minutes, symbols = 120, ("AAPL", "MSFT", "SPY")
    run = await keel_up(
        "--feed", "alpaca", "--symbols", ",".join(symbols), "--minutes", str(minutes), "--speed", "max",
        "--exit-when-done", "--start-date", "2026-01-05",
    )  # fmt: skip
    summary = await run.summary(timeout=300)

    assert summary["settled"] is True and summary["bar_timestamps"] == minutes
    assert summary["bars"] == minutes * len(symbols) and summary["dead_letters"] == 0
    led = await ledger(database_url, namespace.schema_prefix)
    check_invariants(led)
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(
            f"SELECT subject, data FROM {namespace.schema_prefix}_marketdata.outbox WHERE subject LIKE '%.bar_closed.%'"
        )
        summaries = await conn.fetch(
            f"SELECT data FROM {namespace.schema_prefix}_execution.outbox WHERE subject LIKE '%.ops.cycle_summary.%'"
        )
    finally:
        await conn.close()
    got = {(b["symbol"], b["ts_event"]): b for b in (json.loads(r["data"]) for r in rows)}
    cfg = MdConfig(symbols=symbols, start_date="2026-01-05", minutes=minutes)
    state, want = INITIAL, []
    while (ts := next_timestamp(state, cfg)) is not None:
        state, bars, _ = bars_for(state, ts, cfg, _Clock())
        want.extend(bars)
    assert len(got) == len(want) == minutes * len(symbols)
    for bar in want:  # the generator's bar, to the cent, as it came through the data API
        b = got[(bar.symbol, bar.ts_event)]
        assert (b["source"], b["event_id"]) == ("alpaca-iex", bar.event_id)
        assert [Decimal(b[k]) for k in ("open", "high", "low", "close")] == [bar.open, bar.high, bar.low, bar.close]
        assert b["volume"] == bar.volume
    # every bar timestamp ended in one cycle summary; together they count every order sent
    cycles = [json.loads(r["data"]) for r in summaries]
    assert sorted(c["bar_ts"] for c in cycles) == sorted({bar.ts_event for bar in want})
    assert sum(c["submitted"] for c in cycles) == summary["orders"]


class _Clock:
    now_ns = 0
