"""What pipeline tests share: every execution report and alert seen on NATS, and a settle loop."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

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
