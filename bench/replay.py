"""`keel replay` throughput: bars/s through the whole pipeline, beside bare JetStream, and RSS per service.

Work measured: `keel replay` (a real subprocess, its own prefix and schemas) of a seeded synthetic
bar file of `--symbols` symbols (SYM000...) over `--sessions` sessions of `--minutes-per-session`
1-minute bars from 2026-03-02, through every service in lockstep (marketdata releases a bar
timestamp once signal, risk, oms, execution and tca have published their watermarks for the one
before). Pipeline time is read afterwards from the wall-clock emit headers keel stamps on every
message (`Keel-Emitted-At`): from the first BarClosed published to the last of the five
watermarks for the last bar timestamp, so process start-up, migrations and the summary's
settle-and-dump tail are left out (they are reported apart). bars/s = bars / pipeline time; the
same per session and the bar cycle's p50 / p99 (marketdata watermark to the next).

RSS: every 0.5 s, each service child of the `keel` process (found by its command line,
`-m services.<name>`) and keel itself: peak (the kernel's VmHWM, so no spike between samples is
missed), and the RSS sampled at 10% of the bar timestamps and at the end of each session (from
marketdata's /progress), to show whether memory stays bounded as the replay goes on.

Bare limit, measured in the same run on the same server, before and after the replay: BarClosed
messages as published (the same bytes and headers: Nats-Msg-Id, emit time) pipelined with
publish_async to a temporary stream, then read back by a durable pull consumer with fetch(256)
and an ack per message, all in one Python process; rate = messages / (publish + consume time).
Only the ratio travels (these machines are noisy).

Uses KEEL_BENCH_NATS_URL / KEEL_BENCH_DATABASE_URL when set, else nats://127.0.0.1:4222 and
postgresql://postgres@127.0.0.1:5432/test; deletes the run's streams and drops its schemas at the
end. Prints a table, then one JSON line.
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
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx  # noqa: E402
import msgspec  # noqa: E402
import nats  # noqa: E402
import nats.errors  # noqa: E402
import nats.js.errors  # noqa: E402
import psutil  # noqa: E402
from nats.js import api  # noqa: E402

from bench._servers import cleanup  # noqa: E402
from libs import barfile  # noqa: E402
from libs.contracts import subjects as sj  # noqa: E402
from libs.contracts.codec import encode  # noqa: E402
from libs.contracts.marketdata import BarClosed  # noqa: E402
from libs.contracts.subjects import Subjects  # noqa: E402
from libs.runtime.migrate import REPO_ROOT  # noqa: E402
from libs.sessions import session_of  # noqa: E402
from services.marketdata.config import MdConfig  # noqa: E402
from services.marketdata.handlers import bars_for, next_timestamp  # noqa: E402
from services.marketdata.state import INITIAL  # noqa: E402

START_DATE = "2026-03-02"  # a Monday: the first five sessions are full ones
WAITED = ("signal", "risk", "oms", "execution", "tca")  # marketdata's lockstep (MdConfig.wait_for)
SAMPLE_SEC = 0.5
MIB = 1024 * 1024


class _Ctx(msgspec.Struct):
    now_ns: int = 0


def bar_file(path: Path, symbols: int, sessions: int, minutes: int, seed: int) -> tuple[list[BarClosed], int]:
    """Write the synthetic feed's first `minutes` bars of each of `sessions` sessions; return them
    and the bar timestamps."""
    cfg = MdConfig(symbols=tuple(f"SYM{i:03d}" for i in range(symbols)), start_date=START_DATE, seed=seed)
    state, kept, per_session = INITIAL, [], {}
    while True:
        ts = next_timestamp(state, cfg)
        assert ts is not None  # an unbounded feed always has a next bar
        state, bars, _wm = bars_for(state, ts, cfg, _Ctx())
        if state.session not in per_session and len(per_session) == sessions:
            break
        taken = per_session.setdefault(state.session, 0)
        if taken < minutes:
            per_session[state.session] = taken + 1
            kept.extend(bars)
    barfile.write_bars(path, kept)
    return kept, sum(per_session.values())


def _service_of(proc: psutil.Process) -> str:
    try:
        cmd = proc.cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return ""
    for i, part in enumerate(cmd[:-1]):
        if part == "-m" and cmd[i + 1].startswith("services."):
            return cmd[i + 1].removeprefix("services.")
    return ""  # not a service: keel's brief `git rev-parse` for the run manifest


def _hwm(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


class Sampler:
    """RSS of the keel process and of each service child, with marketdata's progress."""

    def __init__(self, keel_pid: int, var: Path, total: int, checkpoints: dict[str, float]) -> None:
        self.keel = psutil.Process(keel_pid)
        self.var = var
        self.total = total
        self.checkpoints = checkpoints  # label -> fraction of the bar timestamps emitted
        self.peak: dict[str, int] = {}  # service -> the largest VmHWM of any of its processes
        self.at: dict[str, dict[str, int]] = {}  # checkpoint label -> service -> rss
        self.md_url = ""
        self.samples = 0
        self.client = httpx.Client(timeout=0.5)

    def _progress(self) -> int | None:
        if not self.md_url:
            found = list(self.var.glob("replays/*/up.json"))
            if not found:
                return None  # keel replay is still starting its services
            try:
                self.md_url = json.loads(found[0].read_text())["services"]["marketdata"]
            except (ValueError, KeyError, OSError):
                return None  # written while read
        try:
            return self.client.get(f"{self.md_url}/progress").json()["emitted_this_run"]
        except (httpx.HTTPError, ValueError, KeyError):
            return None

    def sample(self) -> None:
        """Read every process's RSS and peak once; fill the checkpoints progress has reached."""
        try:
            children = self.keel.children(recursive=True)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            return
        procs = [(p, name) for p in children if (name := _service_of(p))] + [(self.keel, "keel")]
        rss: dict[str, int] = {}
        for proc, name in procs:
            try:
                rss[name] = rss.get(name, 0) + proc.memory_info().rss
                self.peak[name] = max(self.peak.get(name, 0), _hwm(proc.pid))
            except (psutil.NoSuchProcess, psutil.AccessDenied, FileNotFoundError, ProcessLookupError):
                continue  # exited between the listing and the read
        self.samples += 1
        emitted = self._progress()
        if emitted is None or not self.total:
            return
        for label, fraction in self.checkpoints.items():
            if label not in self.at and emitted >= fraction * self.total:
                self.at[label] = rss


def run_replay(cmd: list[str], env: dict[str, str], sampler_args: tuple, timeout: float, logs: Path) -> dict[str, Any]:
    """Run keel replay, sampling RSS until it exits; return its summary, timings and samples."""
    with (logs / "replay.out").open("wb") as out, (logs / "replay.err").open("wb") as err:
        started_ns = time.time_ns()
        proc = subprocess.Popen(cmd, env=env, cwd=REPO_ROOT, stdout=out, stderr=err)
        sampler = Sampler(proc.pid, *sampler_args)
        try:
            while proc.poll() is None:
                sampler.sample()
                if time.time_ns() - started_ns > timeout * 1e9:
                    proc.terminate()
                    proc.wait(timeout=60)
                    raise SystemExit(f"keel replay ran longer than {timeout:.0f} s; stopped")
                time.sleep(SAMPLE_SEC)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            sampler.client.close()
        exited_ns = time.time_ns()
    lines = [line for line in (logs / "replay.out").read_text().splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (logs / "replay.err").read_text(errors="replace")[-3000:]
        raise SystemExit(f"keel replay exited {proc.returncode}: {tail}")
    return {
        "summary": json.loads(lines[-1]),
        "started_ns": started_ns,
        "exited_ns": exited_ns,
        "sampler": sampler,
    }


def _emitted_at(msg: Any) -> int:
    return int((msg.headers or {}).get(sj.H_EMITTED_AT, "0"))


async def pipeline_times(nats_url: str, prefix: str, timestamps: int) -> dict[str, Any]:
    """Read the emit times of the first bar, of every marketdata watermark and of the last
    watermark of each service marketdata waits for."""
    subjects = Subjects(prefix)
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    try:
        md = subjects.stream(sj.MD)
        first_bar = await js.get_msg(md, seq=1, subject=subjects.event(sj.MD, "bar_closed", "*"), next=True)
        ends = {}
        for service in WAITED:
            msg = await js.get_last_msg(subjects.stream(sj.SERVICE_FAMILY[service]), subjects.watermark(service))
            ends[service] = (json.loads(msg.data)["bar_ts"], _emitted_at(msg))
        sub = await js.pull_subscribe(
            subjects.watermark("marketdata"),
            durable="bench-replay-read",
            stream=md,
            config=api.ConsumerConfig(ack_policy=api.AckPolicy.NONE, deliver_policy=api.DeliverPolicy.ALL),
        )
        marks: list[tuple[int, int]] = []  # (bar_ts, emitted at) of marketdata's watermarks
        while len(marks) < timestamps:
            for m in await sub.fetch(256, timeout=5):
                marks.append((json.loads(m.data)["bar_ts"], _emitted_at(m)))
        await sub.unsubscribe()
    finally:
        await nc.close()
    return {"first_bar_ns": _emitted_at(first_bar), "ends": ends, "marks": marks}


async def bare_rate(nats_url: str, prefix: str, payloads: list[tuple[str, bytes]], tag: str) -> dict[str, float]:
    """Publish the payloads pipelined to a temporary stream, read them back with fetch(256) + ack."""
    stream, subject = f"{prefix.upper()}_BARE{tag.upper()}", f"{prefix}.bare{tag}"
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    try:
        await js.add_stream(name=stream, subjects=[f"{subject}.>"])
        sub = await js.pull_subscribe(
            f"{subject}.>",
            durable="bench-bare",
            stream=stream,
            config=api.ConsumerConfig(ack_policy=api.AckPolicy.EXPLICIT, max_ack_pending=-1),
        )
        started = time.perf_counter()
        futures = []
        for i, (symbol, data) in enumerate(payloads):
            headers = {sj.H_MSG_ID: f"{tag}-{i}", sj.H_EMITTED_AT: str(time.time_ns())}
            futures.append(await js.publish_async(f"{subject}.{symbol}", data, headers=headers))
        await asyncio.gather(*futures)
        published = time.perf_counter()
        got = 0
        while got < len(payloads):
            try:
                msgs = await sub.fetch(256, timeout=1)
            except nats.errors.TimeoutError:
                continue
            for m in msgs:
                await m.ack()
            got += len(msgs)
        await nc.flush()
        consumed = time.perf_counter()
    finally:
        try:
            await js.delete_stream(stream)
        except nats.js.errors.NotFoundError:
            pass  # never created: add_stream failed
        await nc.close()
    n = len(payloads)
    return {
        "msgs_per_s": n / (consumed - started),
        "publish_per_s": n / (published - started),
        "consume_per_s": n / (consumed - published),
    }


def _mib(value: int | None) -> float | None:
    return None if value is None else round(value / MIB, 1)


def report(args: argparse.Namespace, run: dict[str, Any], times: dict[str, Any], bare: list[dict]) -> dict[str, Any]:
    """Compute every figure of the run."""
    summary, sampler = run["summary"], run["sampler"]
    bars = summary["bars"]
    last_ts = max(ts for ts, _at in times["marks"])
    end_ns = max(at for _ts, at in times["ends"].values())
    pipeline_s = (end_ns - times["first_bar_ns"]) / 1e9
    rate = bars / pipeline_s
    marks = sorted(times["marks"])
    cycles = [(b - a) / 1e6 for (_t1, a), (_t2, b) in zip(marks, marks[1:], strict=False)]
    # per session: from the previous session's last watermark (or the first bar) to this one's
    per_session, prev = [], times["first_bar_ns"]
    by_session: dict[str, list[int]] = {}
    for ts, at in marks:
        by_session.setdefault(str(session_of(ts)), []).append(at)
    for _day, ats in sorted(by_session.items()):
        per_session.append(round(len(ats) * args.symbols / ((ats[-1] - prev) / 1e9)))
        prev = ats[-1]
    bare_rate = statistics.fmean(b["msgs_per_s"] for b in bare)
    services = sorted(sampler.peak, key=lambda n: (n == "keel", n))
    return {
        "bench": "replay",
        "symbols": args.symbols,
        "sessions": len(summary["sessions"]),
        "minutes_per_session": args.minutes_per_session,
        "seed": args.seed,
        "bar_timestamps": summary["bar_timestamps"],
        "bars": bars,
        "intents": summary["intents"],
        "fills": summary["fills"],
        "settled": summary["settled"],
        # every waited service's last watermark is for the last bar (else pipeline_s ends early)
        "watermarks_at_last_bar": all(ts == last_ts for ts, _at in times["ends"].values()),
        "digest": summary["digest"],
        "wall_s": round((run["exited_ns"] - run["started_ns"]) / 1e9, 1),
        "startup_s": round((times["first_bar_ns"] - run["started_ns"]) / 1e9, 1),
        "pipeline_s": round(pipeline_s, 1),
        "tail_s": round((run["exited_ns"] - end_ns) / 1e9, 1),
        "bars_per_s": round(rate, 1),
        "bars_per_s_wall": round(bars / ((run["exited_ns"] - run["started_ns"]) / 1e9), 1),
        "bars_per_s_by_session": per_session,
        "cycle_ms": {
            "p50": round(statistics.median(cycles), 1) if cycles else None,
            "p99": round(sorted(cycles)[int(0.99 * (len(cycles) - 1))], 1) if cycles else None,
        },
        "bare_msgs_per_s": round(bare_rate),
        "bare_runs": [{k: round(v) for k, v in b.items()} for b in bare],
        "bare_msgs": args.bare_messages,
        "bare_vs_pipeline": round(bare_rate / rate, 1),
        "peak_rss_mib": {n: _mib(sampler.peak[n]) for n in services},
        "rss_mib_at": {
            label: {n: _mib(rss.get(n)) for n in services}
            for label, rss in sorted(sampler.at.items(), key=lambda kv: sampler.checkpoints[kv[0]])
        },
        "rss_samples": sampler.samples,
    }


def table(r: dict[str, Any]) -> str:
    """Render the figures people read first."""
    lines = [
        f"keel replay: {r['symbols']} symbols x {r['sessions']} sessions x {r['minutes_per_session']} min = "
        f"{r['bars']} bars ({r['bar_timestamps']} bar timestamps), {r['intents']} intents, {r['fills']} fills, "
        f"settled {r['settled']}",
        f"  wall {r['wall_s']} s = startup {r['startup_s']} s + first bar -> last watermark {r['pipeline_s']} s "
        f"+ settle/dump/exit {r['tail_s']} s",
        f"  pipeline     {r['bars_per_s']:>10.1f} bars/s  (by session {r['bars_per_s_by_session']}; "
        f"cycle p50 {r['cycle_ms']['p50']} ms, p99 {r['cycle_ms']['p99']} ms)",
        f"  bare JetStream publish+consume {r['bare_msgs_per_s']:>8} msgs/s  "
        f"(runs {[b['msgs_per_s'] for b in r['bare_runs']]}) = {r['bare_vs_pipeline']}x the pipeline",
        "",
    ]
    labels = list(r["rss_mib_at"])
    lines.append(f"  {'RSS MiB':<12}{'peak':>8}" + "".join(f"{label:>12}" for label in labels))
    for name, peak in r["peak_rss_mib"].items():
        at = "".join(f"{r['rss_mib_at'][label].get(name) or '-':>12}" for label in labels)
        lines.append(f"  {name:<12}{peak:>8}{at}")
    return "\n".join(lines)


def main() -> None:
    """Generate the bar file, run the bare limit, the replay, the bare limit again; print."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--symbols", type=int, default=100)
    parser.add_argument("--sessions", type=int, default=5)
    parser.add_argument("--minutes-per-session", type=int, default=390)
    parser.add_argument("--seed", type=int, default=1, help="the bar generator's and the fill simulator's")
    parser.add_argument("--bare-messages", type=int, default=20000)
    parser.add_argument("--timeout", type=float, default=7200.0, help="give up on keel replay after this (s)")
    args = parser.parse_args()
    nats_url = os.environ.get("KEEL_BENCH_NATS_URL", "nats://127.0.0.1:4222")
    database_url = os.environ.get("KEEL_BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
    prefix = f"benchrp{os.getpid()}t{time.time_ns() % 10**6}"
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        source = tmp / "bars.parquet"
        bars, timestamps = bar_file(source, args.symbols, args.sessions, args.minutes_per_session, args.seed)
        payloads = [(b.symbol, encode(b)) for b in bars[: args.bare_messages]]
        while len(payloads) < args.bare_messages:  # a short replay: reuse its bars
            payloads += payloads[: args.bare_messages - len(payloads)]
        checkpoints = {"10%": 0.1} | {f"s{k} end": k / args.sessions for k in range(1, args.sessions + 1)}
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("KEEL_")},
            "KEEL_NATS_URL": nats_url,
            "KEEL_DATABASE_URL": database_url,
        }
        cmd = [
            sys.executable, "-m", "libs.cli.main", "--var", str(tmp / "var"), "replay", "--quiet",
            "--prefix", prefix, "--out", str(tmp / "out"), "--source", str(source), "--seed", str(args.seed),
        ]  # fmt: skip
        try:
            bare = [asyncio.run(bare_rate(nats_url, prefix, payloads, "a"))]
            run = run_replay(cmd, env, (tmp / "var", timestamps, checkpoints), args.timeout, tmp)
            times = asyncio.run(pipeline_times(nats_url, prefix, timestamps))
            bare.append(asyncio.run(bare_rate(nats_url, prefix, payloads, "b")))
        finally:
            streams, schemas = asyncio.run(cleanup(nats_url, database_url, prefix))
    result = report(args, run, times, bare)
    result["dropped"] = {"streams": streams, "schemas": schemas}
    print(table(result))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
