"""BarClosed -> order at the exchange, beside the bare 5-hop JetStream chain, in one run.

Whole system: `keel up` with 20 symbols at one bar timestamp per second (speed 60). Latency is
read afterwards from the wall-clock emit headers keel stamps on every message
(`Keel-Emitted-At`): BarClosed -> OrderSubmitted (handed to the broker) and -> OrderAccepted
(the exchange's answer recorded and published).

Bare limit: five processes chained by JetStream (durable pull consumer, pipelined publish to the
next stream, ack), fed the same 20 messages per second; latency source publish -> sink receive.
The first WARMUP bar timestamps of the system run are left out (process and connection warm-up).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nats

from libs.contracts import subjects as sj
from libs.contracts.subjects import Subjects
from libs.runtime.embedded import start_nats, start_postgres
from libs.runtime.migrate import REPO_ROOT

SYMBOLS = [f"S{i:02d}" for i in range(20)]
WARMUP = 5
HOPS = 5

HOP_CODE = r"""
import asyncio, sys, nats
from nats.js import api
from libs.bus.consumer import fetch_batch
async def main(url, prefix, i):
    nc = await nats.connect(url)
    js = nc.jetstream()
    sub = await js.pull_subscribe(f"{prefix}.h{i}.x", durable=f"hop{i}", stream=f"{prefix.upper()}_H{i}",
                                  config=api.ConsumerConfig(ack_policy=api.AckPolicy.EXPLICIT))
    print("ready", flush=True)
    while True:
        try:
            msgs = await fetch_batch(sub, 256, 1.0)
        except (nats.errors.TimeoutError, TimeoutError):
            continue
        acks = [await js.publish_async(f"{prefix}.h{i+1}.x", m.data, headers={"Nats-Msg-Id": f"{i}-{m.metadata.sequence.stream}"})
                for m in msgs]
        await asyncio.gather(*acks)
        for m in msgs:
            await m.ack()
asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
"""


def pct(values: list[float], q: float) -> float:
    """Return the q-quantile (0..1) of values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def bare_chain(url: str, seconds: int) -> list[float]:
    """Run the bare 5-hop chain for `seconds` at 20 msg/s; return latencies in ms."""
    prefix = f"bench{os.getpid()}"
    nc = await nats.connect(url)
    js = nc.jetstream()
    for i in range(HOPS + 1):
        await js.add_stream(name=f"{prefix.upper()}_H{i}", subjects=[f"{prefix}.h{i}.x"])
    procs = [
        subprocess.Popen([sys.executable, "-c", HOP_CODE, url, prefix, str(i)], stdout=subprocess.PIPE, cwd=REPO_ROOT)
        for i in range(HOPS)
    ]
    try:
        for p in procs:
            assert p.stdout is not None and p.stdout.readline().strip() == b"ready"
        latencies: list[float] = []
        done = asyncio.Event()

        async def on_msg(msg) -> None:  # type: ignore[no-untyped-def]
            latencies.append((time.time_ns() - int(msg.data)) / 1e6)

        await nc.subscribe(f"{prefix}.h{HOPS}.x", cb=on_msg)
        for _ in range(seconds):
            for _sym in SYMBOLS:
                await js.publish(f"{prefix}.h0.x", str(time.time_ns()).encode())
            await asyncio.sleep(1.0)
        await asyncio.sleep(1.0)
        done.set()
        return latencies
    finally:
        for p in procs:
            p.kill()
        for i in range(HOPS + 1):
            await js.delete_stream(f"{prefix.upper()}_H{i}")
        await nc.close()


async def system_latencies(url: str, prefix: str) -> dict[str, list[float]]:
    """Read emit headers from the stored streams: bar -> submitted / accepted, in ms."""
    subjects = Subjects(prefix)
    nc = await nats.connect(url)
    js = nc.jetstream()
    bar_at: dict[tuple[str, str], int] = {}
    cycles: list[str] = []
    out: dict[str, list[float]] = {"submitted": [], "accepted": []}
    try:
        for family, handle in ((sj.MD, "bars"), (sj.EXEC, "orders")):
            stream = subjects.stream(family)
            info = await js.stream_info(stream)
            for seq in range(info.state.first_seq, info.state.last_seq + 1):
                msg = await js.get_msg(stream, seq)
                body = json.loads(msg.data)
                emitted = int((msg.headers or {}).get(sj.H_EMITTED_AT, "0"))
                if handle == "bars" and body["type"] == "md.bar_closed.v1":
                    bar_at[(body["symbol"], body["correlation_id"])] = emitted
                    if body["correlation_id"] not in cycles:
                        cycles.append(body["correlation_id"])
                elif body["type"] in ("exec.order_submitted.v1", "exec.order_accepted.v1"):
                    start = bar_at.get((body["symbol"], body["correlation_id"]))
                    if start and body["correlation_id"] not in cycles[:WARMUP]:
                        key = "submitted" if body["type"] == "exec.order_submitted.v1" else "accepted"
                        out[key].append((emitted - start) / 1e6)
    finally:
        await nc.close()
    return out


def run_system(url: str, database_url: str, prefix: str, minutes: int, var: Path) -> dict[str, object]:
    """Run a bounded `keel up` at one bar per second; return its summary."""
    env = {
        **os.environ,
        "KEEL_NATS_URL": url,
        "KEEL_DATABASE_URL": database_url,
        "KEEL_PREFIX": prefix,
        "KEEL_SCHEMA_PREFIX": prefix,
        # a faster sleeve so a short run produces enough orders to read a p99
        "KEEL_SIGNAL_FAST_SPAN": "2",
        "KEEL_SIGNAL_SLOW_SPAN": "4",
        "KEEL_SIGNAL_REBALANCE_BAND": "0.02",
        "KEEL_RISK_MIN_ORDER_DOLLARS": "1",
    }
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "libs.cli.main",
            "--var",
            str(var),
            "up",
            "--quiet",
            "--symbols",
            ",".join(SYMBOLS),
            "--minutes",
            str(minutes),
            "--speed",
            "60",
            "--exit-when-done",
        ],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=minutes * 3 + 300,
    )
    if out.returncode != 0:
        raise SystemExit(f"keel up failed: {out.stderr[-2000:]}")
    return json.loads([line for line in out.stdout.splitlines() if line.startswith("{")][-1])


def main() -> None:
    """Run both measurements and print one JSON line."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--minutes", type=int, default=120, help="bar timestamps (one per second)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        url = os.environ.get("KEEL_NATS_URL", "")
        database_url = os.environ.get("KEEL_DATABASE_URL", "")
        servers = []
        if not url:
            servers.append(start_nats(Path(tmp) / "nats"))
            url = servers[-1].url
        if not database_url:
            servers.append(start_postgres(Path(tmp) / "pg", cleanup_mode="delete"))
            database_url = servers[-1].url
        prefix = f"bench{os.getpid()}"
        try:
            summary = run_system(url, database_url, prefix, args.minutes, Path(tmp) / "var")
            system = asyncio.run(system_latencies(url, prefix))
            bare = asyncio.run(bare_chain(url, args.minutes))
        finally:
            for s in servers:
                s.stop()
    result = {
        "symbols": len(SYMBOLS),
        "warmup_bar_timestamps_excluded": WARMUP,
        "bar_timestamps": summary["bar_timestamps"],
        "orders": len(system["accepted"]),
        "bar_to_submitted_ms": {
            "p50": round(pct(system["submitted"], 0.5), 2),
            "p99": round(pct(system["submitted"], 0.99), 2),
        },
        "bar_to_accepted_ms": {
            "p50": round(pct(system["accepted"], 0.5), 2),
            "p99": round(pct(system["accepted"], 0.99), 2),
        },
        "bare_5hop_ms": {"p50": round(pct(bare, 0.5), 2), "p99": round(pct(bare, 0.99), 2), "n": len(bare)},
    }
    result["ratio_accepted_to_bare"] = {
        q: round(result["bar_to_accepted_ms"][q] / result["bare_5hop_ms"][q], 1) for q in ("p50", "p99")
    }
    result["mean_accepted_ms"] = round(statistics.fmean(system["accepted"]), 2) if system["accepted"] else None
    print(json.dumps(result))


if __name__ == "__main__":
    main()
