"""What pipeline tests share: a cluster of exchange + OMS + execution, every execution report and
alert seen on NATS, and a settle loop."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import nats

from services.oms import state as oms
from tests.support.exchange import KEY, SECRET
from tests.support.processes import Cluster
from tests.support.servers import Namespace

T = TypeVar("T")


class Seen:
    """Every execution report and every alert on the namespace, as JSON, in arrival order.

    Subscribe `on_report` to `<prefix>.exec.>` and `on_alert` to `<prefix>.ops.alert_raised.>`.
    """

    def __init__(self) -> None:
        self.reports: list[dict] = []
        self.alerts: list[dict] = []

    async def on_report(self, msg) -> None:  # type: ignore[no-untyped-def]
        self.reports.append(json.loads(msg.data))

    async def on_alert(self, msg) -> None:  # type: ignore[no-untyped-def]
        self.alerts.append(json.loads(msg.data))

    def about(self, cid: str, kind: str | None = None) -> list[dict]:
        """Return the reports about one order (of one type)."""
        return [r for r in self.reports if r.get("client_order_id") == cid and (kind is None or r["type"] == kind)]

    def kinds(self, cid: str) -> tuple[str, ...]:
        """Return the types of the reports about one order, in order."""
        return tuple(r["type"] for r in self.about(cid))


def status_of(row: dict | None) -> str:
    """The status of an OMS intent row (GET /intents), 'absent' when there is none."""
    return row["status"] if row else "absent"


def settled(row: dict | None) -> bool:
    """Acknowledged (a fill is due on the next bar) or finished."""
    return status_of(row) == oms.ACKED or status_of(row) in oms.TERMINAL


def finished(row: dict | None) -> bool:
    return status_of(row) in oms.TERMINAL


async def current(value: T) -> T:
    """A probe for settle that reads something already at hand (what subscriptions have collected)."""
    return value


async def settle(probe: Callable[[], Awaitable[T]], done: Callable[[T], bool], timeout: float) -> T:
    """Poll probe until done(result) or timeout; return the last result either way.

    A case that does not get there is judged by the assertions at the end (they show where it
    stuck), so the cases after it still run.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = await probe()
        if done(result) or time.monotonic() > deadline:
            return result
        await asyncio.sleep(0.05)


async def start_pipeline(cluster: Cluster, namespace: Namespace, nc: nats.NATS, **env: str) -> Seen:
    """Start the local exchange (admin API on), then the OMS and execution on it; return what they report.

    `env` adds or overrides KEEL_ keys (poll intervals, breaker thresholds ...) for all three.
    """
    cluster.env.update(
        KEEL_EXCHANGE_API_KEY_ID=KEY,
        KEEL_EXCHANGE_API_SECRET_KEY=SECRET,
        KEEL_EXCHANGE_ADMIN_ENABLED="true",
        KEEL_EXEC_API_KEY_ID=KEY,
        KEEL_EXEC_API_SECRET_KEY=SECRET,
        **env,
    )
    await cluster.start("exchange")
    cluster.env["KEEL_EXEC_BASE_URL"] = cluster["exchange"].url
    await cluster.start("oms", "execution")
    # execution's start-up broker snapshot gives the OMS its account: before it, BUYING_POWER_BLOCK
    # denies every order that adds exposure (fail closed), so a test's first intent waits for it
    state = await settle(lambda: cluster["oms"].get_json("/state"), lambda s: s.get("account") is not None, 15.0)  # type: ignore[union-attr]
    assert state.get("account") is not None, "the OMS got no broker snapshot from execution at start"  # type: ignore[union-attr]
    seen = Seen()
    await nc.subscribe(f"{namespace.prefix}.exec.>", cb=seen.on_report)
    await nc.subscribe(f"{namespace.prefix}.ops.alert_raised.>", cb=seen.on_alert)
    return seen
