"""A service that goes quiet is reported; one that comes back is reported back (real processes)."""

from __future__ import annotations

import asyncio
import json

import nats

from tests.support.processes import Cluster
from tests.support.servers import Namespace


async def next_alert(queue: asyncio.Queue, code: str, service: str, timeout: float) -> dict:
    """Return the next alert with this code about this service."""
    async with asyncio.timeout(timeout):
        while True:
            alert = await queue.get()
            if alert["code"] == code and alert["details"].get("service") == service:
                return alert


async def test_heartbeats_when_a_service_is_killed_and_restarted_then_missing_then_recovered(
    cluster: Cluster, namespace: Namespace, nc: nats.NATS
):
    cluster.env.update(
        KEEL_HEARTBEAT_SEC="0.2",
        KEEL_ALERTS_HEARTBEAT_TIMEOUT_SEC="1.5",
        KEEL_ALERTS_CHECK_INTERVAL_SEC="0.2",
    )
    alerts: asyncio.Queue = asyncio.Queue()

    async def on_alert(msg) -> None:  # type: ignore[no-untyped-def]
        await alerts.put(json.loads(msg.data))

    await nc.subscribe(f"{namespace.prefix}.ops.alert_raised.>", cb=on_alert)
    await cluster.start("alerts", "signal")
    await asyncio.sleep(0.6)  # alerts has seen signal's heartbeats

    cluster["signal"].process.kill()  # type: ignore[union-attr]
    missing = await next_alert(alerts, "HEARTBEAT_MISSING", "signal", timeout=6)
    cluster["signal"].start()
    recovered = await next_alert(alerts, "HEARTBEAT_RECOVERED", "signal", timeout=15)

    assert missing["severity"] == "critical" and missing["source"] == "alerts"
    assert recovered["severity"] == "info"
    stored = await cluster["alerts"].get_json("/alerts?code=HEARTBEAT_MISSING")
    assert [a["event_id"] for a in stored] == [missing["event_id"]]  # type: ignore[index]
