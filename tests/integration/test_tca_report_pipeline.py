"""The daily execution report against real Postgres: `keel report`, the tca service's API, and a browser.

Rows go into a migrated `<prefix>_tca` schema; `keel report` runs as the operator runs it (a
subprocess of the CLI); the HTML opens in Debian's Chromium (headless, through playwright, no
browser download) and every chart must have drawn what the JSON says it holds.

The session is tests/unit/test_tca_report.py's without TSLA: AAPL and MSFT, four orders, four
fills, three blocks; carried in: AAPL +30 (closed 99 on 03-04), MSFT -5 (closed 395 on 03-01). Rows
that must not count: a fill with no session (written before records had one), a later session's
fill and close, and an older MSFT close. PnL before costs 154, after 142.95 (worked by hand there).
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from playwright.async_api import Page, async_playwright

from migrations.naming import service_schema
from tests.support.processes import OUTSIDE_KEYS, REPO_ROOT, Cluster
from tests.support.servers import Namespace, migrate
from tests.support.tca_frames import ORDER_DEFAULTS, ns, order

SESSION = "2024-03-05"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
NUMERIC = frozenset(
    [
        "arrival_price",
        "decision_price",
        "spread_bps_at_arrival",
        "fill_vwap",
        "fees",
        "shortfall_bps",
        "explicit_bps",
        "delay_bps",
        "execution_bps",
        "opportunity_bps",
        "shortfall_usd",
        "spread_paid_bps",
        "cancel_rate",
    ]
)
CHART_IDS = ("shortfall-distribution", "cost-by-symbol", "fills-through-day", "cumulative-pnl")


def _order(cid: str, symbol: str, side: str, qty: int, decision: str, **kw: Any) -> dict[str, Any]:
    """A full orders row of SESSION: ORDER_DEFAULTS but for what the service would have written here."""
    written = {
        "intent_id": f"i-{cid}",
        "revision": 3,
        "session": SESSION,
        "strategy": "trend",
        "provider": "alpaca",
        "spread_bps_at_arrival": "3",
        "decision_ts": ns(SESSION, 9, 30),
        "submit_ts": ns(SESSION, 9, 30),
        "ts_event": ns(SESSION, 15, 59),
    }
    return ORDER_DEFAULTS | written | order(cid, symbol, side, qty, decision, **kw)


ORDERS = [
    _order("o1", "AAPL", "buy", 100, "100", filled_qty=100, fill_vwap="100.10", fees="1", shortfall_bps="11",
           explicit_bps="1", execution_bps="10", shortfall_usd="11", spread_paid_bps="4", fill_latency_ms=1200),
    _order("o2", "AAPL", "sell", 50, "102", sleeve="mr", order_type="limit", status="canceled", filled_qty=20,
           fill_vwap="101.9", partial_fill=True, shortfall_bps="20", execution_bps="4", opportunity_bps="16",
           shortfall_usd="10.2", spread_paid_bps="6"),
    _order("o3", "MSFT", "buy", 10, "400", order_type="limit", status="rejected", trading_profile="aggressive",
           shortfall_bps="30", opportunity_bps="30", shortfall_usd="12", reason="INSUFFICIENT_BUYING_POWER"),
    _order("o4", "MSFT", "buy", 10, "400", provider="sim", filled_qty=10, fill_vwap="399.8", shortfall_bps="-5",
           execution_bps="-5", shortfall_usd="-2", spread_paid_bps="2"),
]  # fmt: skip
# execution_id, client_order_id, symbol, side, qty, decision price, fill price, fee, session, ts_event
RECORDS = [
    ("f1", "o1", "AAPL", "buy", 60, "100", "100.05", "0.6", SESSION, ns(SESSION, 9, 31)),
    ("f2", "o1", "AAPL", "buy", 40, "100", "100.175", "0.4", SESSION, ns(SESSION, 9, 33)),
    ("f3", "o2", "AAPL", "sell", 20, "102", "101.9", "0", SESSION, ns(SESSION, 9, 41)),
    ("f4", "o4", "MSFT", "buy", 10, "400", "399.8", "0.05", SESSION, ns(SESSION, 10, 2)),
    ("p1", "old1", "AAPL", "buy", 30, "98", "98", "0", "2024-03-04", ns("2024-03-04", 10, 0)),
    ("p2", "old2", "MSFT", "sell", 5, "396", "396", "0", "2024-03-01", ns("2024-03-01", 10, 0)),
    ("legacy", "old3", "AAPL", "buy", 1000, "90", "90", "0", "", ns("2024-03-01", 10, 0)),
    ("later", "new1", "AAPL", "buy", 500, "150", "150", "0", "2024-03-06", ns("2024-03-06", 10, 0)),
]
BLOCKS = [
    ("b1", "AAPL", "mom", "market", "PRICE_COLLAR_BLOCK"),
    ("b2", "AAPL", "mr", "limit", "PRICE_COLLAR_BLOCK"),
    ("b3", "NVDA", "mom", "market", "COST_GATE_BLOCK"),
]
MARKS = [
    ("2024-03-04", "AAPL", "99"),
    (SESSION, "AAPL", "101"),
    ("2024-03-06", "AAPL", "150"),
    ("2024-02-29", "MSFT", "390"),
    ("2024-03-01", "MSFT", "395"),
]


async def seed(database_url: str, schema: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        for o in ORDERS:
            cols = list(o)
            # numerics go in as text and Postgres casts them: exactly what was written comes back
            await conn.execute(
                f"INSERT INTO {schema}.orders ({', '.join(cols)}) VALUES "
                f"({', '.join(f'${i}' for i in range(1, len(cols) + 1))})",
                *(_pg(c, o[c]) for c in cols),
            )
        await conn.executemany(
            f"""INSERT INTO {schema}.records (execution_id, client_order_id, symbol, side, qty, arrival_price,
                fill_price, fee, session, ts_event, shortfall_bps, strategy)
                VALUES ($1, $2, $3, $4, $5, $6::numeric, $7::numeric, $8::numeric, $9, $10, 0, 'trend')""",
            RECORDS,
        )
        await conn.executemany(
            f"""INSERT INTO {schema}.blocks (event_id, session, ts_event, stage, reason, symbol, side, qty,
                sleeve, order_type)
                VALUES ($1, '{SESSION}', {ns(SESSION, 10, 0)}, 'risk', $5, $2, 'buy', 10, $3, $4)""",
            BLOCKS,
        )
        await conn.executemany(
            f"INSERT INTO {schema}.marks (session, symbol, close, ts_event) VALUES ($1, $2, $3::numeric, 0)", MARKS
        )
    finally:
        await conn.close()


def _pg(column: str, v: Any) -> Any:
    return Decimal(v) if column in NUMERIC and v is not None else v


@pytest.fixture
async def seeded(namespace: Namespace, database_url: str) -> str:
    """Migrate this test's schemas and write the session's rows; return the tca schema."""
    await asyncio.to_thread(migrate, database_url, namespace.schema_prefix)
    schema = service_schema(namespace.schema_prefix, "tca")
    await seed(database_url, schema)
    return schema


def keel(args: list[str], **env_extra: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEEL_") and k not in OUTSIDE_KEYS}
    env.update(env_extra)
    return subprocess.run(
        [sys.executable, "-m", "libs.cli.main", *args],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


async def run_keel(args: list[str], **env_extra: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(keel, args, **env_extra)


def chromium_path() -> str:
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} is missing: the browser test needs Debian's Chromium; install it with "
            "`apt-get install -y chromium` (as root; .ci/run does this on CI machines)"
        )
    return str(CHROMIUM)


async def assert_charts_drawn(page: Page, report: dict[str, Any]) -> None:
    """Every chart: an <svg> with an area, and as many drawn bars or lines as the JSON holds."""
    for cid in CHART_IDS:
        box = await page.locator(f"figure.chart#chart-{cid} svg").bounding_box()
        assert box is not None and box["width"] > 100 and box["height"] > 100, (cid, box)

    async def drawn(selector: str) -> int:
        boxes = [await el.bounding_box() for el in await page.locator(selector).all()]
        assert all(b is not None and (b["width"] > 0 or b["height"] > 0) for b in boxes), (selector, boxes)
        return len(boxes)

    hist = report["charts"]["shortfall_distribution"]
    bins = sum(1 for n in hist["counts"] if n)
    assert bins >= 2
    assert await drawn("#chart-shortfall-distribution [id^='shortfall-bin-'] path") == bins
    cost = report["charts"]["cost_by_symbol"]
    assert await drawn("#chart-cost-by-symbol [id^='cost-bar-'] path") == len(cost) == 2
    buckets = report["charts"]["fills_through_day"]
    assert await drawn("#chart-fills-through-day [id^='fills-bucket-'] path") == len(buckets) == 3
    for line in ("cumulative-before", "cumulative-after"):
        box = await page.locator(f"#chart-cumulative-pnl #{line} path").bounding_box()
        assert box is not None and box["width"] > 50, (line, box)
    assert await page.locator("#chart-cumulative-pnl [id^='cumulative-'] path").count() == 2
    assert await page.locator("#chart-cumulative-pnl text", has_text="after costs").count() >= 1


async def test_keel_report_when_a_session_has_orders_fills_and_blocks_then_it_writes_and_prints_four_files(
    seeded: str, namespace: Namespace, database_url: str, tmp_path: Path
):
    out = tmp_path / "out"

    proc = await run_keel(
        ["--var", str(tmp_path / "var"), "report", "--date", SESSION, "--out", str(out)],
        KEEL_DATABASE_URL=database_url,
        KEEL_SCHEMA_PREFIX=namespace.schema_prefix,
    )

    assert proc.returncode == 0, proc.stderr
    paths = [Path(p) for p in proc.stdout.split()]
    assert [p.name for p in paths] == [
        f"execution-report-{SESSION}.json",
        f"execution-report-{SESSION}.csv",
        f"execution-report-{SESSION}.html",
        f"tca-orders-{SESSION}.jsonl",
    ]
    assert all(p.parent == out and p.stat().st_size > 0 for p in paths)
    report = json.loads(paths[0].read_text())
    assert report["counts"] == {"orders": 4, "fills": 4, "blocks": 3}
    # the legacy fill, the later session and the older close changed nothing: carry 60 - 24
    assert (report["pnl"]["before_costs"], report["pnl"]["after_costs"], report["pnl"]["carry"]) == (
        154.0,
        142.95,
        36.0,
    )
    assert report["pnl"]["marked_at_last_fill"] == ["MSFT"]
    by = {s["symbol"]: s for s in report["pnl"]["by_symbol"]}
    assert (by["AAPL"]["pos_open"], by["AAPL"]["prev_close"], by["MSFT"]["prev_close"]) == (30, 99.0, 395.0)
    assert report["totals"]["blocks_by_reason"] == {"COST_GATE_BLOCK": 1, "PRICE_COLLAR_BLOCK": 2}
    assert (report["totals"]["shortfall_bps_p50"], report["totals"]["spread_paid_bps_p90"]) == (15.5, 5.6)
    lines = list(csv.DictReader(io.StringIO(paths[1].read_text())))
    assert lines[0]["value"] == "all" and lines[0]["blocks_PRICE_COLLAR_BLOCK"] == "2"
    assert {x["group"] for x in lines} == {"all", "symbol", "sleeve", "trading_profile", "order_type", "provider"}
    records = [json.loads(x) for x in paths[3].read_text().splitlines()]
    assert [r["client_order_id"] for r in records] == ["o1", "o2", "o3", "o4"]
    assert (records[0]["fill_vwap"], records[0]["fill_latency_ms"], records[2]["fill_vwap"]) == ("100.10", 1200, None)


async def test_keel_report_when_the_date_is_not_a_date_then_exit_2_saying_so(tmp_path: Path):
    proc = await run_keel(["--var", str(tmp_path), "report", "--date", "2024-02-30"])

    assert proc.returncode == 2
    assert "YYYY-MM-DD" in proc.stderr and "2024-02-30" in proc.stderr
    assert proc.stdout == ""


async def test_keel_report_when_no_database_url_then_it_reads_the_running_keel_up_or_exits_2(
    seeded: str, namespace: Namespace, database_url: str, tmp_path: Path
):
    var = tmp_path / "var"
    var.mkdir()
    up = {"schema_prefix": namespace.schema_prefix, "database_url_redacted": "postgresql://***@db/keel"}
    (var / "up.json").write_text(json.dumps(up))

    refused = await run_keel(["--var", str(var), "report", "--date", SESSION])
    (var / "up.json").write_text(json.dumps(up | {"database_url": database_url}))
    accepted = await run_keel(["--var", str(var), "report", "--date", SESSION])

    assert refused.returncode == 2 and "set KEEL_DATABASE_URL" in refused.stderr, refused.stderr
    assert accepted.returncode == 0, accepted.stderr
    paths = [Path(p) for p in accepted.stdout.split()]
    assert len(paths) == 4 and all(p.parent == var / "reports" and p.exists() for p in paths)


async def test_keel_report_when_the_schema_is_not_migrated_then_exit_2_naming_it(database_url: str, tmp_path: Path):
    proc = await run_keel(
        ["--var", str(tmp_path), "report", "--date", SESSION],
        KEEL_DATABASE_URL=database_url,
        KEEL_SCHEMA_PREFIX="tnosuchprefix",
    )

    assert proc.returncode == 2
    assert "tnosuchprefix_tca" in proc.stderr


async def test_report_page_when_opened_in_chromium_then_every_chart_rendered_without_network(
    seeded: str, namespace: Namespace, database_url: str, tmp_path: Path
):
    proc = await run_keel(
        ["--var", str(tmp_path), "report", "--date", SESSION, "--out", str(tmp_path)],
        KEEL_DATABASE_URL=database_url,
        KEEL_SCHEMA_PREFIX=namespace.schema_prefix,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / f"execution-report-{SESSION}.json").read_text())
    page_file = tmp_path / f"execution-report-{SESSION}.html"
    requested: list[str] = []

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page()
            page.on("request", lambda r: requested.append(r.url))
            await page.goto(page_file.as_uri())
            await assert_charts_drawn(page, report)
            headline = await page.locator("#headline").inner_text()
        finally:
            await browser.close()

    assert requested == [page_file.as_uri()]  # self-contained: nothing else fetched
    assert "Profitable before costs but losing after: no" in headline
    assert "AAPL $21.20" in headline and "mom $21.00" in headline


async def test_tca_api_when_a_report_is_asked_for_then_html_json_and_csv_match_keel_report_and_bad_dates_are_400(
    cluster: Cluster, namespace: Namespace, database_url: str, tmp_path: Path
):
    await seed(database_url, service_schema(namespace.schema_prefix, "tca"))
    await cluster.start("tca")
    base = cluster["tca"].url
    proc = await run_keel(
        ["--var", str(tmp_path), "report", "--date", SESSION, "--out", str(tmp_path)],
        KEEL_DATABASE_URL=database_url,
        KEEL_SCHEMA_PREFIX=namespace.schema_prefix,
    )
    assert proc.returncode == 0, proc.stderr

    async with httpx.AsyncClient(timeout=60) as client:
        as_json = await client.get(f"{base}/report/{SESSION}.json")
        as_csv = await client.get(f"{base}/report/{SESSION}.csv")
        bad = [await client.get(f"{base}/report/{d}{ext}") for d in ("2024-13-01", "20240305") for ext in ("", ".json")]

    assert as_json.status_code == 200 and as_json.headers["content-type"].startswith("application/json")
    assert as_json.text == (tmp_path / f"execution-report-{SESSION}.json").read_text()
    assert as_csv.status_code == 200 and as_csv.headers["content-type"].startswith("text/csv")
    assert as_csv.text == (tmp_path / f"execution-report-{SESSION}.csv").read_text()
    assert [r.status_code for r in bad] == [400, 400, 400, 400]
    assert "YYYY-MM-DD" in bad[0].json()["detail"]
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page()
            response = await page.goto(f"{base}/report/{SESSION}")
            assert response is not None and response.status == 200
            await assert_charts_drawn(page, json.loads(as_json.text))
            html_from_api = await response.text()
        finally:
            await browser.close()
    assert html_from_api == (tmp_path / f"execution-report-{SESSION}.html").read_text()
