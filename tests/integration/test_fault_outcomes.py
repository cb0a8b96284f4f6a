"""Every injected broker fault ends in the expected OMS outcome, with no duplicate order at the venue.

One cluster of real processes: the local exchange (`python -m services.exchange`, admin API on for
fault injection), the OMS and execution pointed at the exchange (alpaca-py's real TradingClient and
TradingStream); real NATS and Postgres. The test publishes OrderIntents as risk would, so each one
passes the OMS's pre-trade checks and lifecycle, and bars as marketdata would: the exchange's clock
is the last bar it saw, and an order fills on the first bar of its symbol after it was accepted.

The cases run one after another on that cluster, each on its own symbol and minute (a symbol held
by an order of unknown status stays blocked until the order resolves), each with one single-shot
fault rule on POST /v2/orders added just before its intent. Verdicts come from the OMS's /intents
and /positions views, execution's reports on NATS, and the venue's GET /v2/orders and /metrics.
Every case runs before anything is asserted, so one failure shows the outcome of all of them.
"""

from __future__ import annotations

import functools
import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import count
from typing import Any

import httpx
import nats
import pytest
from prometheus_client.parser import text_string_to_metric_families

from libs.bus import Bus
from libs.contracts.risk import OrderIntent
from libs.contracts.subjects import CTL_RESUME, Subjects
from services.oms import state as oms
from tests.factories import Events
from tests.support import pipeline
from tests.support.exchange import AUTH_HEADERS, add_fault, clear_faults, list_faults
from tests.support.pipeline import Seen, finished, settled, start_pipeline, status_of
from tests.support.processes import Cluster, ServiceProcess
from tests.support.servers import Namespace

pytestmark = pytest.mark.timeout(120)


# execution gives up on a broker call after this; the `delay` case stays below it, `timeout` above
HTTP_TIMEOUT_SEC = 2.0
SLOW_SEC = 1.0
HUNG_SEC = 3.0
# each step takes well under a second, except the first lookup after an UNKNOWN: it waits for the
# poller's next round, up to KEEL_EXEC_STREAM_POLL_INTERVAL_SEC (5 s) away while the stream is healthy
SETTLE_SEC = 12.0
QTY = 10  # far below the exchange's participation cap (10 % of a 1,000-share bar): one fill
PRICE = "50"
POST_ORDERS = {"method": "POST", "path": "/v2/orders", "count": 1}
LOOKUP = "/v2/orders:by_client_order_id"
DUPLICATE = "DUPLICATE_CLIENT_ORDER_ID"  # the venue's refusal of a second POST of one client_order_id

SUBMITTED = "exec.order_submitted.v1"
UNKNOWN = "exec.order_status_unknown.v1"
ACCEPTED = "exec.order_accepted.v1"
FILLED = "exec.order_filled.v1"
REJECTED = "exec.order_rejected.v1"
SUBMIT_SKIPPED = "exec.submit_skipped.v1"

# unknown, then found at the broker (adopted) or proved absent (404) and sent once more: the
# reports read the same; the venue's counters tell which (see `venue` in the table)
RESOLVED_AND_FILLED = (SUBMITTED, UNKNOWN, ACCEPTED, FILLED)


@dataclass(frozen=True)
class Case:
    """One fault on the submit of one intent, and the outcome it must have."""

    name: str
    symbol: str
    fault: dict[str, Any]
    status: str  # the OMS intent's final status
    reports: tuple[str, ...]  # execution's reports about the order, in order
    because: str  # found in the UNKNOWN report's reason, or the rejection's code

    def expected(self) -> dict[str, object]:
        filled = self.status == oms.FILLED
        return {
            "oms": self.status,
            "reports": self.reports,
            "because": self.because,
            "position": QTY if filled else 0,
            "orders_at_venue": 1 if filled else 0,
            # the POSTs the venue processed: the order accepted once, and never a second POST of
            # an order it already held (refused 422 40010001): the first POST of a not-processed
            # case never counts, so its one acceptance is the re-send after the lookup's 404
            "venue": {"accepted": 1 if filled else 0, "duplicate_refused": 0},
            "fault_fired": True,
            # the broker refusing the keys (401/403) halts trading everywhere (AUTH_HALT)
            "halted": "AUTH_HALT" if self.fault.get("status") in (401, 403) else "",
        }


RESUBMITTED = {"status": oms.FILLED, "reports": RESOLVED_AND_FILLED}
BROKER_REFUSED = {"status": oms.REJECTED, "reports": (SUBMITTED, REJECTED)}

CASES = (
    # the request was not processed: UNKNOWN, lookup 404, sent once more, fills on the next bar
    Case("status_429", "AAPL", {"kind": "status", "status": 429}, because="429", **RESUBMITTED),
    Case("status_500", "MSFT", {"kind": "status", "status": 500}, because="500", **RESUBMITTED),
    Case("status_503", "NVDA", {"kind": "status", "status": 503, "retry_after_sec": 1}, because="503", **RESUBMITTED),
    Case("status_504", "AMZN", {"kind": "status", "status": 504}, because="504", **RESUBMITTED),
    # hangs past execution's HTTP timeout, then 504 without processing: a client-side timeout
    Case("timeout", "GOOG", {"kind": "timeout", "delay_sec": HUNG_SEC}, because="Timeout", **RESUBMITTED),
    # processed, the answer lost (504): the lookup adopts the order the venue holds, never re-sent
    Case(
        "lose_response",
        "META",
        {"kind": "lose_response"},
        status=oms.FILLED,
        reports=RESOLVED_AND_FILLED,
        because="504",
    ),
    # slow, but within the HTTP timeout: an ordinary acceptance
    Case(
        "delay",
        "TSLA",
        {"kind": "delay", "delay_sec": SLOW_SEC},
        status=oms.FILLED,
        reports=(SUBMITTED, ACCEPTED, FILLED),
        because="",
    ),
    # the broker refused the request (not retryable, services/execution/broker.py): OrderRejected
    # with Alpaca's error code; nothing reached the venue
    Case("status_401", "NFLX", {"kind": "status", "status": 401}, because="40110000", **BROKER_REFUSED),
    Case("status_403", "INTC", {"kind": "status", "status": 403}, because="40310000", **BROKER_REFUSED),
)
BLOCKED_SYMBOL = "AMD"


# poll until done or SETTLE_SEC; the last result either way (tests.support.pipeline.settle)
settle = functools.partial(pipeline.settle, timeout=SETTLE_SEC)


@dataclass
class Run:
    """The cluster, the test's publisher and what it has seen so far."""

    cluster: Cluster
    bus: Bus
    seen: Seen
    f: Events = field(default_factory=lambda: Events(seed=61))
    minutes: count[int] = field(default_factory=lambda: count(2, 2))  # per case: its minute and the next

    @property
    def exchange(self) -> ServiceProcess:
        return self.cluster["exchange"]

    async def intents(self) -> dict[str, dict]:
        """Return the OMS's intents by client_order_id (GET /intents)."""
        rows = await self.cluster["oms"].get_json("/intents?limit=1000")
        return {r["client_order_id"]: r for r in rows}  # type: ignore[union-attr]

    async def intent(self, cid: str) -> dict | None:
        return (await self.intents()).get(cid)

    async def until(self, cid: str, done: Callable[[dict | None], bool]) -> dict | None:
        """Wait for the OMS's intent to satisfy done; return it as it then stands."""
        return await settle(lambda: self.intent(cid), done)

    async def position(self, symbol: str) -> int:
        rows = await self.cluster["oms"].get_json("/positions")
        return next((r["qty"] for r in rows if r["symbol"] == symbol), 0)  # type: ignore[union-attr]

    async def venue_orders(self, symbol: str | None = None) -> list[dict]:
        """GET /v2/orders?status=all at the exchange (of one symbol)."""
        params = {"status": "all", "limit": "500", **({"symbols": symbol} if symbol else {})}
        async with httpx.AsyncClient(timeout=5, headers=AUTH_HEADERS) as client:
            r = await client.get(f"{self.exchange.url}/v2/orders", params=params)
            r.raise_for_status()
            return r.json()

    async def venue_decisions(self) -> Counter[str]:
        """The exchange's POST /v2/orders outcomes so far (keel_decisions_total, kind order)."""
        async with httpx.AsyncClient(timeout=2.0) as client:
            text = (await client.get(f"{self.exchange.url}/metrics")).text
        found: Counter[str] = Counter()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "keel_decisions_total" and sample.labels.get("kind") == "order":
                    found[sample.labels["reason"]] = int(sample.value)
        return found

    def new_intent(self, symbol: str, minute: int, qty: int = QTY) -> OrderIntent:
        return self.f.intent(symbol, "buy", qty, PRICE, n=minute)

    async def resume_if_halted(self) -> str:
        """Return the reason code of a halt execution raised (resumed here, as an operator would), or ''."""
        halt = await settle(self.bus.halt_state, lambda h: h is not None and h.halted, timeout=1.0)
        if halt is None or not halt.halted:
            return ""
        body = json.dumps({"reason": "test: keys checked"}).encode()
        await self.bus.js.publish(self.bus.subjects.ctl(CTL_RESUME), body)
        await settle(self.bus.halt_state, lambda h: h is not None and not h.halted)
        return halt.reason.split(":", 1)[0]

    async def fill_when_acked(self, intent: OrderIntent, minute: int) -> dict | None:
        """Wait for the broker's verdict; once acknowledged, send the bar it fills on; return the end."""
        row = await self.until(intent.client_order_id, settled)
        if status_of(row) == oms.ACKED:
            await self.bus.publish(self.f.bar(intent.symbol, minute + 1, PRICE))
            row = await self.until(intent.client_order_id, finished)
        return row


async def run_case(run: Run, case: Case) -> tuple[str, dict[str, object]]:
    """Inject the case's fault, send its intent through the OMS, follow it to its end.

    Return the order's client_order_id and its outcome (the reports are read at the end).
    """
    minute = next(run.minutes)
    await run.bus.publish(run.f.bar(case.symbol, minute, PRICE))  # the clock the order is decided on
    intent = run.new_intent(case.symbol, minute)
    cid = intent.client_order_id
    before = await run.venue_decisions()
    rule = await add_fault(run.exchange, **POST_ORDERS, **case.fault)

    await run.bus.publish(intent)
    row = await run.fill_when_acked(intent, minute)

    still_armed = any(r["id"] == rule["id"] for r in await list_faults(run.exchange))
    await clear_faults(run.exchange)  # an unfired rule must not hit the next case
    after = await run.venue_decisions()
    halted = await run.resume_if_halted()
    return cid, {
        "oms": status_of(row),
        "position": await run.position(case.symbol),
        "orders_at_venue": [o["client_order_id"] for o in await run.venue_orders(case.symbol)].count(cid),
        "venue": {
            "accepted": after["accepted"] - before["accepted"],
            "duplicate_refused": after[DUPLICATE] - before[DUPLICATE],
        },
        "fault_fired": not still_armed,
        "halted": halted,
    }


def why(seen: Seen, cid: str, part: str) -> str:
    """Return `part` when the UNKNOWN report's reason (or the rejection's code) holds it, else that text."""
    unknown, rejected = seen.about(cid, UNKNOWN), seen.about(cid, REJECTED)
    text = unknown[0]["reason"] if unknown else rejected[0]["code"] if rejected else ""
    return part if part in text else text


async def run_blocked_symbol(run: Run) -> dict[str, object]:
    """Hold one order UNKNOWN (answer lost, lookups failing); send a second for its symbol; clear."""
    minute = next(run.minutes)
    symbol = BLOCKED_SYMBOL
    await run.bus.publish(run.f.bar(symbol, minute, PRICE))
    first = run.new_intent(symbol, minute)
    second = run.new_intent(symbol, minute, qty=QTY // 2)  # same bar, another order
    await add_fault(run.exchange, kind="lose_response", **POST_ORDERS)
    lookups = await add_fault(run.exchange, kind="status", status=503, method="GET", path=LOOKUP, count=0)

    await run.bus.publish(first)
    held = await run.until(first.client_order_id, lambda r: status_of(r) == oms.UNKNOWN)
    await run.bus.publish(second)
    refused = await run.until(second.client_order_id, finished)

    async def lookups_fired() -> int:
        return next((r["fired"] for r in await list_faults(run.exchange) if r["id"] == lookups["id"]), 0)

    # several polls ask the broker and get no answer: the order stays unknown meanwhile
    failed_lookups = await settle(lookups_fired, lambda n: n >= 3)
    still = await run.intent(first.client_order_id)

    await clear_faults(run.exchange)
    ended = await run.fill_when_acked(first, minute)

    at_venue = [o["client_order_id"] for o in await run.venue_orders(symbol)]
    failed = run.seen.about(second.client_order_id, SUBMIT_SKIPPED)
    return {
        "cids": (first.client_order_id, second.client_order_id),
        "first while lookups fail": (status_of(held), status_of(still), failed_lookups >= 3),
        "second at the OMS": (status_of(refused), (refused or {}).get("reason")),
        "second refused by execution": [(r["reason_code"], r["stage"]) for r in failed],
        "refusal names the unknown order": bool(failed) and first.client_order_id in failed[0]["message"],
        "first after the fault cleared": status_of(ended),
        "orders at venue": (at_venue.count(first.client_order_id), at_venue.count(second.client_order_id)),
        "position": await run.position(symbol),
    }


async def test_submit_when_each_broker_fault_injected_then_oms_outcome_as_expected_and_no_duplicate_at_venue(
    cluster: Cluster, namespace: Namespace, nats_url: str, nc: nats.NATS
):
    # Arrange: the exchange (admin on), then the OMS and execution on it
    seen = await start_pipeline(
        cluster,
        namespace,
        nc,
        KEEL_EXEC_HTTP_TIMEOUT_SEC=str(HTTP_TIMEOUT_SEC),
        KEEL_EXEC_POLL_INTERVAL_SEC="0.2",
        # each case is one fault on its own order: the broker_submit breaker, which would open
        # after three of them in a minute, is proven in test_breakers_pipeline.py
        KEEL_BREAKER_SHORT_FAILURES="1000",
        KEEL_BREAKER_LONG_FAILURES="1000",
    )
    stream = await settle(lambda: cluster["execution"].get_json("/stream"), lambda v: v["connected"])  # type: ignore[index]
    assert stream["connected"], f"execution's trade_updates stream did not connect: {stream}"  # type: ignore[index]
    # publishes intents as risk would and bars as marketdata would
    bus = await Bus.connect(nats_url, Subjects(namespace.prefix), service="risk")
    run = Run(cluster, bus, seen)

    # Act: every case in turn, then the blocked symbol
    try:
        cids, outcomes = {}, {}
        for case in CASES:
            cids[case.name], outcomes[case.name] = await run_case(run, case)
        blocked = await run_blocked_symbol(run)
        every_order = [o["client_order_id"] for o in await run.venue_orders()]
        venue = await run.venue_decisions()
        held_by_execution = (await cluster["execution"].get_json("/state"))["orders"]  # type: ignore[index]
    finally:
        await bus.close()

    # Assert: each case's outcome, all at once (the reports are read last: every one is in by now)
    for case in CASES:
        cid = cids[case.name]
        outcomes[case.name].update(reports=seen.kinds(cid), because=why(seen, cid, case.because))
    wrong = [
        f"{case.name} {key}: expected {want!r}, was {outcomes[case.name][key]!r}"
        for case in CASES
        for key, want in case.expected().items()
        if outcomes[case.name][key] != want
    ]
    assert wrong == [], "\n".join(wrong)

    first, second = blocked.pop("cids")
    blocked["reports"] = (seen.kinds(first), seen.kinds(second))
    assert blocked == {
        "first while lookups fail": (oms.UNKNOWN, oms.UNKNOWN, True),
        "second at the OMS": (oms.REJECTED, "UNKNOWN_ORDER_BLOCK"),
        "second refused by execution": [("UNKNOWN_ORDER_BLOCK", "execution")],
        "refusal names the unknown order": True,
        "first after the fault cleared": oms.FILLED,
        "orders at venue": (1, 0),
        "position": QTY,
        "reports": (RESOLVED_AND_FILLED, (SUBMIT_SKIPPED,)),
    }

    # zero duplicates across the whole run: every client_order_id at most once at the venue, the
    # venue holds exactly the orders that filled, and it never refused a re-sent one
    assert {cid: n for cid, n in Counter(every_order).items() if n > 1} == {}
    placed = {cids[c.name] for c in CASES if c.status == oms.FILLED} | {first}
    assert set(every_order) == placed
    assert (venue["accepted"], venue[DUPLICATE]) == (len(placed), 0)
    # nothing left unresolved at execution, and the OMS applied every report as a valid transition
    assert held_by_execution == {}
    oms_alerts = [a for a in seen.alerts if a["source"] == "oms"]
    assert [a["code"] for a in oms_alerts if a["code"] not in ("TRADING_HALTED", "TRADING_RESUMED")] == []
    # two halts, each by a refusal of the keys (401, 403), each resumed by the test as an operator
    assert [a["code"] for a in oms_alerts] == ["TRADING_HALTED", "TRADING_RESUMED"] * 2
