"""The control plane end to end: real OMS and alerts processes, the operator's NATS CLI recipe,
the halt flag in the control bucket, dead-lettered commands and the `keel` CLI.

The operator recipe (DESIGN "Control plane", services/oms/README.md) is
`nats pub <prefix>.ctl.kill '{"reason":"manual"}'`: a core NATS publish of exactly those bytes,
which the CTL stream captures.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import nats
import nats.js.errors
import pytest

from tests.support.processes import OUTSIDE_KEYS, REPO_ROOT, Cluster
from tests.support.servers import Namespace

HALT_WITHIN_SEC = 1.0  # DESIGN: a kill halts new orders everywhere within one second


async def halt_flag(nc: nats.NATS, namespace: Namespace) -> dict | None:
    """Read the halt flag as any other service would: bucket `<prefix>_ctl`, key `halt`."""
    try:
        kv = await nc.jetstream().key_value(f"{namespace.prefix}_ctl")
        entry = await kv.get("halt")
    except (nats.js.errors.BucketNotFoundError, nats.js.errors.KeyNotFoundError):
        return None
    return json.loads(entry.value) if entry.value else None


async def wait_for_flag(
    nc: nats.NATS, namespace: Namespace, want: Callable[[dict | None], bool], *, since: float, within: float
) -> dict | None:
    """Poll the halt flag until `want` holds; fail if that takes longer than `within` after `since`."""
    while True:
        flag = await halt_flag(nc, namespace)
        if want(flag):
            return flag
        if time.monotonic() - since > within:
            raise AssertionError(f"halt flag still {flag} {time.monotonic() - since:.2f}s after the command")
        await asyncio.sleep(0.01)


async def nats_pub(nc: nats.NATS, subject: str, body: bytes) -> float:
    """Do what `nats pub <subject> <body>` does (a core publish); return when it was sent."""
    await nc.publish(subject, body)
    await nc.flush()
    return time.monotonic()


def halted_with(reason: str) -> Callable[[dict | None], bool]:
    return lambda f: f is not None and f.get("halted") is True and f.get("reason") == reason


def resumed_with(reason: str) -> Callable[[dict | None], bool]:
    return lambda f: f is not None and f.get("halted") is False and f.get("reason") == reason


async def test_kill_when_operator_publishes_cli_recipe_then_halted_within_a_second_resume_lifts_and_restart_keeps_it(
    cluster: Cluster, namespace: Namespace, nc: nats.NATS
):
    await cluster.start("oms")
    kill, resume = f"{namespace.prefix}.ctl.kill", f"{namespace.prefix}.ctl.resume"

    sent = await nats_pub(nc, kill, b'{"reason":"manual"}')
    flag = await wait_for_flag(nc, namespace, halted_with("manual"), since=sent, within=HALT_WITHIN_SEC)
    # the operator's bare JSON is stamped with the time the control stream stored it
    assert flag is not None and flag["command_id"]
    assert abs(flag["since_ns"] - time.time_ns()) < 60 * 1_000_000_000

    sent = await nats_pub(nc, resume, b'{"reason":"back"}')
    await wait_for_flag(nc, namespace, resumed_with("back"), since=sent, within=HALT_WITHIN_SEC)

    sent = await nats_pub(nc, kill, b'{"reason":"overnight"}')
    before = await wait_for_flag(nc, namespace, halted_with("overnight"), since=sent, within=HALT_WITHIN_SEC)

    await cluster.restart("oms")

    # the restarted OMS re-asserts its own (restored) flag at start: it must be the same one
    assert await halt_flag(nc, namespace) == before
    state = await cluster["oms"].get_json("/state")
    assert (state["halted"], state["halt_reason"]) == (True, "overnight")  # type: ignore[index]
    # and it still obeys commands after the restart, without re-applying the old ones
    sent = await nats_pub(nc, resume, b'{"reason":"morning"}')
    await wait_for_flag(nc, namespace, resumed_with("morning"), since=sent, within=HALT_WITHIN_SEC)
    # the flag is written inside the batch, its ack goes after it: wait for the ack to land
    deadline = time.monotonic() + HALT_WITHIN_SEC
    while True:
        info = await nc.jetstream().consumer_info(f"{namespace.stream_prefix}CTL", "oms-control")
        if info.num_ack_pending == 0 or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.02)
    assert info.delivered.consumer_seq == 4 and info.num_ack_pending == 0


async def _next_alert(alerts: asyncio.Queue, code: str, timeout: float = 10.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"no {code} alert within {timeout}s")
        msg = await asyncio.wait_for(alerts.get(), timeout=remaining)
        body = json.loads(msg.data)
        if body.get("code") == code:
            return {"subject": msg.subject, **body}


@pytest.mark.parametrize(
    ("verb", "body", "why"),
    [
        ("kill", b'{"reason":', "not JSON"),
        ("resume", b'{"reason":""}', "empty reason"),
    ],
)
async def test_command_when_invalid_then_dead_lettered_alerted_and_oms_keeps_obeying(
    cluster: Cluster, namespace: Namespace, nc: nats.NATS, verb: str, body: bytes, why: str
):
    alerts: asyncio.Queue = asyncio.Queue()
    await nc.subscribe(f"{namespace.prefix}.ops.alert_raised.>", cb=alerts.put)
    await nc.flush()
    await cluster.start("oms", "alerts")
    js = nc.jetstream()
    kill = f"{namespace.prefix}.ctl.kill"
    sent = await nats_pub(nc, kill, b'{"reason":"manual"}')
    await wait_for_flag(nc, namespace, halted_with("manual"), since=sent, within=HALT_WITHIN_SEC)
    await _next_alert(alerts, "TRADING_HALTED")

    bad_subject = f"{namespace.prefix}.ctl.{verb}"
    await nats_pub(nc, bad_subject, body)

    alert = await _next_alert(alerts, "DEAD_LETTER")
    assert alert["subject"] == f"{namespace.prefix}.ops.alert_raised.alerts"
    assert alert["source"] == "alerts" and alert["severity"] == "critical"
    assert alert["details"]["consumer"] == "oms-control"
    assert alert["details"]["subject"] == bad_subject
    assert "oms-control" in alert["message"], why

    letter = await js.get_msg(f"{namespace.stream_prefix}DLQ", 1)
    assert letter.subject == f"{namespace.prefix}.dlq.oms-control"
    assert letter.data == body
    assert letter.headers["Keel-Dlq-Subject"] == bad_subject
    assert letter.headers["Keel-Dlq-Stream-Seq"] == alert["details"]["stream_seq"] == "2"
    # the bad command changed nothing: still halted for the original reason
    assert halted_with("manual")(await halt_flag(nc, namespace))

    assert cluster["oms"].running, cluster["oms"].log_tail()
    sent = await nats_pub(nc, kill, b'{"reason":"after bad command"}')
    await wait_for_flag(nc, namespace, halted_with("after bad command"), since=sent, within=HALT_WITHIN_SEC)
    assert (await js.stream_info(f"{namespace.stream_prefix}DLQ")).state.messages == 1


async def test_keel_kill_when_oms_running_then_prints_applied_true_and_flag_is_halted(
    cluster: Cluster, namespace: Namespace, nc: nats.NATS, nats_url: str, tmp_path: Path
):
    await cluster.start("oms")
    var = tmp_path / "var"
    var.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEEL_") and k not in OUTSIDE_KEYS}
    env.update(KEEL_NATS_URL=nats_url, KEEL_PREFIX=namespace.prefix)

    proc = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "libs.cli.main", "--var", str(var), "kill", "--reason", "x"],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )

    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["applied"] is True
    assert out["halt"] == {"halted": True, "reason": "x"}
    assert out["subject"] == f"{namespace.prefix}.ctl.kill"
    assert halted_with("x")(await halt_flag(nc, namespace))
