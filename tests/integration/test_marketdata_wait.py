"""Marketdata's lockstep wait: every awaited service under one timeout, not one after another.

A real marketdata process waits for the watermarks of two services that are not running, with a
short KEEL_MD_WATERMARK_TIMEOUT_SEC: each release is delayed once, and the one warning it logs
names both services (waits in turn would log one warning per service and bar).
"""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from tests.support.processes import Cluster

pytestmark = pytest.mark.timeout(60)

MINUTES = 3


async def test_marketdata_wait_when_two_services_are_silent_then_one_timeout_names_both_and_bars_still_flow(
    cluster: Cluster,
) -> None:
    cluster.env.update(
        KEEL_MD_FEED="synthetic",
        KEEL_MD_SYMBOLS="AAPL",
        KEEL_MD_MINUTES=str(MINUTES),
        KEEL_MD_SPEED="max",
        KEEL_MD_WAIT_FOR="signal,risk",
        KEEL_MD_WATERMARK_TIMEOUT_SEC="0.3",
    )
    await cluster.start("marketdata")
    log = cluster["marketdata"].log_path
    deadline = time.monotonic() + 30
    while True:
        warnings = [
            json.loads(line)
            for line in log.read_text().splitlines()
            if "watermark timeout; releasing the next bar anyway" in line
        ]
        if len(warnings) >= MINUTES - 1 or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.1)

    # one warning per released bar after the first, each naming every late service
    assert len(warnings) >= MINUTES - 1, log.read_text()[-2000:]
    assert all(w["waiting_for"] == ["signal", "risk"] for w in warnings), warnings
    assert len({w["bar_ts"] for w in warnings}) == len(warnings)
