"""What pipeline tests share: a cluster of exchange + OMS + execution, every execution report and
alert seen on NATS, and a settle loop."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import nats

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
    seen = Seen()
    await nc.subscribe(f"{namespace.prefix}.exec.>", cb=seen.on_report)
    await nc.subscribe(f"{namespace.prefix}.ops.alert_raised.>", cb=seen.on_alert)
    return seen
