"""Marketdata's Alpaca feed under failure: a failing provider opens its breaker and blocks orders,
the fallback keeps bars flowing when allowed, an impossible bar halts trading.

Real processes: the local exchange serving Alpaca's market data API (synthetic source) and its
trading API, marketdata reading bars through alpaca-py's StockHistoricalDataClient, the OMS and
execution; real NATS and Postgres. Faults are injected on GET /v2/stocks/bars of one feed.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime

import httpx
import nats
import pytest

from libs.bus import Bus
from libs.contracts.codec import encode
from libs.contracts.subjects import Subjects
from libs.errors.breakers import BreakerPolicy, Breakers
from tests.factories import SESSION, Events, minute
from tests.support.exchange import AUTH_HEADERS, KEY, SECRET, add_fault, clear_faults
from tests.support.pipeline import Seen, current, settle, start_pipeline
from tests.support.processes import Cluster
from tests.support.servers import Namespace

pytestmark = pytest.mark.timeout(150)

SYMBOLS = ("AAPL", "MSFT")
SETTLE_SEC = 20.0
OPEN_SEC = 2.0
SUBMITTED, SKIPPED = "exec.order_submitted.v1", "exec.submit_skipped.v1"
DATA_ENV = {
    "KEEL_EXCHANGE_DATA_SOURCE": "synthetic",
    "KEEL_EXCHANGE_DATA_SYMBOLS": ",".join(SYMBOLS),
    "KEEL_EXCHANGE_DATA_START_DATE": SESSION,
    "KEEL_BREAKER_SHORT_OPEN_SEC": str(OPEN_SEC),
}


class Bars:
    """The BarClosed events marketdata published, and the kill commands and alerts seen."""

    def __init__(self) -> None:
        self.bars: list[dict] = []
        self.kills: list[dict] = []

    async def on_bar(self, msg) -> None:  # type: ignore[no-untyped-def]
        self.bars.append(json.loads(msg.data))

    async def on_kill(self, msg) -> None:  # type: ignore[no-untyped-def]
        self.kills.append(json.loads(msg.data))

    def closes(self) -> list[int]:
        return sorted({b["ts_event"] for b in self.bars})


async def start(cluster: Cluster, namespace: Namespace, nc: nats.NATS, **md: str) -> tuple[Seen, Bars]:
    seen = await start_pipeline(cluster, namespace, nc, **DATA_ENV)
    return seen, await start_marketdata(cluster, namespace, nc, **md)


async def start_marketdata(cluster: Cluster, namespace: Namespace, nc: nats.NATS, **md: str) -> Bars:
    """Start marketdata on the running exchange's data API; return what it publishes."""
    bars = Bars()
    await nc.subscribe(f"{namespace.prefix}.md.bar_closed.>", cb=bars.on_bar)
    await nc.subscribe(f"{namespace.prefix}.ctl.kill", cb=bars.on_kill)
    cluster.env.update(
        {
            "KEEL_MD_FEED": "alpaca",
            "KEEL_MD_DATA_URL": cluster["exchange"].url,
            "KEEL_MD_API_KEY_ID": KEY,
            "KEEL_MD_API_SECRET_KEY": SECRET,
            "KEEL_MD_SYMBOLS": ",".join(SYMBOLS),
            "KEEL_MD_START_DATE": SESSION,
            "KEEL_MD_SPEED": "60",  # one bar a second: faults land between bars
            "KEEL_MD_WAIT_FOR": "",  # no risk in this cluster to release the lockstep
            "KEEL_MD_DATA_ATTEMPTS": "1",
            "KEEL_MD_DATA_RETRY_SEC": "0.2",
            **md,
        }
    )
    await cluster.start("marketdata")
    return bars


async def submit_at(bus: Bus, f: Events, symbol: str, n: int):  # type: ignore[no-untyped-def]
    intent = f.intent(symbol, "buy", 5, "100", n=n)
    await bus.publish(intent)
    await bus.publish(f.watermark("risk", minute(n)))
    return intent


async def test_data_feed_when_primary_fails_then_its_breaker_opens_blocks_orders_and_bars_resume_after(
    cluster: Cluster, namespace: Namespace, nats_url: str, nc: nats.NATS
):
    seen, bars = await start(cluster, namespace, nc, KEEL_MD_DATA_FEED="sip")
    exchange = cluster["exchange"]
    bus = await Bus.connect(nats_url, Subjects(namespace.prefix), service="risk")
    breakers = Breakers(await bus.breakers_kv(), BreakerPolicy(), time.time_ns)
    f = Events(seed=501)
    try:
        await settle(lambda: current(bars.closes()), lambda c: len(c) >= 2, SETTLE_SEC)
        await add_fault(
            exchange, kind="status", status=500, method="GET", path="/v2/stocks/bars", query={"feed": "sip"}, count=0
        )
        opened = await settle(lambda: breakers.state("data_primary"), lambda b: b.is_open(time.time_ns()), SETTLE_SEC)
        during = len(bars.closes())
        # an order decided on the last bar that came: blocked while the provider is down
        blocked = await submit_at(bus, f, "AAPL", during)
        refused = await settle(lambda: current(seen.about(blocked.client_order_id, SKIPPED)), bool, SETTLE_SEC)
        still = len(bars.closes())
        await clear_faults(exchange)
        resumed = await settle(lambda: current(bars.closes()), lambda c: len(c) >= still + 2, SETTLE_SEC)
        await settle(lambda: breakers.state("data_primary"), lambda b: not b.is_open(time.time_ns()), SETTLE_SEC)
        after = await submit_at(bus, f, "MSFT", len(resumed))
        went = await settle(lambda: current(seen.about(after.client_order_id, SUBMITTED)), bool, SETTLE_SEC)
    finally:
        await bus.close()

    assert opened.is_open(opened.open_until_ns - 1) and opened.reason == "NET_RETRY"
    (skip,) = refused
    assert (skip["reason_code"], skip["details"]["dependency"]) == ("CIRCUIT_OPEN_data_primary", "data_primary")
    assert still == during  # no bar was invented while no provider answered
    assert len(resumed) >= still + 2 and resumed == sorted(set(resumed))  # the missed minutes came after
    assert len(went) == 1
    circuit = [a for a in seen.alerts if a["code"] == "CIRCUIT_OPEN" and a["source"] == "marketdata"]
    assert circuit and circuit[0]["details"]["dependency"] == "data_primary"
    assert {b["source"] for b in bars.bars} == {"alpaca-sip"}


async def test_data_feed_when_primary_fails_and_fallback_allowed_then_bars_flow_from_iex_and_orders_go(
    cluster: Cluster, namespace: Namespace, nats_url: str, nc: nats.NATS
):
    cluster.env["KEEL_DATA_FALLBACK_ALLOWED"] = "true"
    seen, bars = await start(cluster, namespace, nc, KEEL_MD_DATA_FEED="sip", KEEL_MD_FALLBACK_FEED="iex")
    exchange = cluster["exchange"]
    bus = await Bus.connect(nats_url, Subjects(namespace.prefix), service="risk")
    breakers = Breakers(await bus.breakers_kv(), BreakerPolicy(), time.time_ns)
    f = Events(seed=502)
    try:
        await settle(lambda: current(bars.closes()), lambda c: len(c) >= 2, SETTLE_SEC)
        await add_fault(
            exchange, kind="status", status=503, method="GET", path="/v2/stocks/bars", query={"feed": "sip"}, count=0
        )
        await settle(lambda: breakers.state("data_primary"), lambda b: b.is_open(time.time_ns()), SETTLE_SEC)
        await settle(
            lambda: current([b for b in bars.bars if b["source"] == "alpaca-iex"]), lambda x: len(x) >= 4, SETTLE_SEC
        )
        n = len(bars.closes())
        intent = await submit_at(bus, f, "AAPL", n)
        went = await settle(lambda: current(seen.about(intent.client_order_id)), bool, SETTLE_SEC)
    finally:
        await bus.close()

    sources = [b["source"] for b in sorted(bars.bars, key=lambda b: b["ts_event"])]
    assert sources[0] == "alpaca-sip" and sources[-1] == "alpaca-iex"
    assert len(bars.closes()) == len(bars.bars) // len(SYMBOLS)  # every minute once, both symbols
    assert [r["type"] for r in went if r["type"] in (SUBMITTED, SKIPPED, "exec.submit_failed.v1")] == [SUBMITTED]


async def test_data_feed_when_a_bar_has_a_nan_close_then_trading_halts_with_invariant_violation(
    cluster: Cluster, namespace: Namespace, nats_url: str, nc: nats.NATS
):
    bad = minute(3) - 60_000_000_000  # Alpaca labels a bar by its start
    bad_start = datetime.fromtimestamp(bad / 1e9, UTC).isoformat().replace("+00:00", "Z")
    seen = await start_pipeline(cluster, namespace, nc, **DATA_ENV)
    async with httpx.AsyncClient(base_url=cluster["exchange"].url, headers=AUTH_HEADERS, timeout=5.0) as http:
        r = await http.post("/admin/bars", json={"symbol": "AAPL", "t": bad_start, "fields": {"c": "NaN"}})
    assert r.status_code == 201, r.text
    bars = await start_marketdata(cluster, namespace, nc, KEEL_MD_SPEED="max", KEEL_MD_MINUTES="5")
    bus = await Bus.connect(nats_url, Subjects(namespace.prefix), service="risk")
    f = Events(seed=503)
    try:
        await settle(lambda: current(bars.closes()), lambda c: len(c) >= 5, SETTLE_SEC)
        await settle(lambda: current(bars.kills), bool, SETTLE_SEC)
        halt = await settle(bus.halt_state, lambda h: h is not None and h.halted, SETTLE_SEC)
        intent = await submit_at(bus, f, "MSFT", 5)
        refused = await settle(lambda: current(seen.about(intent.client_order_id)), bool, SETTLE_SEC)
    finally:
        await bus.close()

    (kill,) = bars.kills
    assert kill["reason"].startswith("INVARIANT_HALT (INVARIANT_VIOLATION)") and "AAPL" in kill["reason"]
    assert halt is not None and halt.halted
    alerts = [a for a in seen.alerts if a["source"] == "marketdata" and a["code"] == "INVARIANT_VIOLATION"]
    assert [(a["severity"], a["details"]["symbol"]) for a in alerts] == [("critical", "AAPL")]
    # the impossible bar never went out; its minute's other bar and the later minutes did
    published = {(b["symbol"], b["ts_event"]) for b in bars.bars}
    assert ("AAPL", minute(3)) not in published and ("MSFT", minute(3)) in published
    assert ("AAPL", minute(4)) in published
    assert [(r["type"], r["reason_code"]) for r in refused] == [(SKIPPED, "KILL_SWITCH_BLOCK")]


async def test_bus_when_an_intent_carries_a_nan_price_then_dead_lettered_and_trading_halts(
    cluster: Cluster, namespace: Namespace, nats_url: str, nc: nats.NATS
):
    # not from a provider this time: an event on the bus (a bad producer, a hand-edited replay)
    seen = await start_pipeline(cluster, namespace, nc)
    kills: list[dict] = []
    issuers: list[str] = []

    async def on_kill(msg) -> None:  # type: ignore[no-untyped-def]
        kills.append(json.loads(msg.data))
        issuers.append((msg.headers or {}).get("Keel-Issuer", ""))

    await nc.subscribe(f"{namespace.prefix}.ctl.kill", cb=on_kill)
    bus = await Bus.connect(nats_url, Subjects(namespace.prefix), service="risk")
    f = Events(seed=504)
    intent = f.intent("AAPL", "buy", 5, "100", n=1)
    body = json.loads(encode(intent))
    body["arrival_price"] = "NaN"
    try:
        await nc.jetstream().publish(bus.subjects.of(intent), json.dumps(body).encode())
        halt = await settle(bus.halt_state, lambda h: h is not None and h.halted, SETTLE_SEC)
    finally:
        await bus.close()

    (kill,) = kills
    assert kill["reason"].startswith("INVARIANT_HALT (INVARIANT_VIOLATION)") and "arrival_price" in kill["reason"]
    assert issuers == ["oms"]  # said by a service on its own: a replay says it again, never re-publishes it
    assert halt is not None and halt.halted and halt.reason == kill["reason"]
    alerts = [a for a in seen.alerts if a["source"] == "oms" and a["code"] == "INVARIANT_VIOLATION"]
    assert [a["severity"] for a in alerts] == ["critical"]
    # the intent itself is kept, dead-lettered with the contract's reason
    assert (await nc.jetstream().stream_info(f"{namespace.prefix.upper()}_DLQ")).state.messages == 1
