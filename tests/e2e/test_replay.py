"""`keel replay` as a user runs it: record then replay, and the determinism release gate.

- Record, then replay (issue 7.4): the BarClosed stream a bounded `keel up` paper session stored,
  replayed from that stream, gives the same intents with the same client_order_ids.
- Seed matrix (issue 7.3, seed 002 A-CI-02 / C-CONFIG-03): for seeds 1, 42 and 1337, two replays
  of a bar file of 3 symbols over 2 sessions print the same digest and write byte-identical
  decision, intent and order-report dumps; different seeds fill at different prices.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest

from libs import barfile
from libs.bus import Bus
from libs.cli import export
from libs.contracts.subjects import Subjects
from libs.runtime.migrate import REPO_ROOT
from services.marketdata.config import MdConfig
from services.marketdata.handlers import bars_for, next_timestamp
from services.marketdata.state import INITIAL
from tests.support.servers import Namespace, cleanup_namespace, new_namespace

pytestmark = pytest.mark.e2e

SEEDS = (1, 42, 1337)
SYMBOLS = ("AAPL", "MSFT", "SPY")
WINDOW = 30  # bars at the end of the first session and at the start of the second


class _Ctx(msgspec.Struct):
    now_ns: int = 0


def two_session_file(path: Path) -> int:
    """Write the synthetic feed's last WINDOW bars of one session and first WINDOW of the next."""
    cfg = MdConfig(symbols=SYMBOLS, start_date="2026-02-02", seed=11)
    state, groups = INITIAL, []
    while len(groups) < 390 + WINDOW:
        ts = next_timestamp(state, cfg)
        assert ts is not None
        state, bars, _wm = bars_for(state, ts, cfg, _Ctx())
        groups.append(bars)
    picked = groups[390 - WINDOW :]
    assert {b.session for b in picked[0]} != {b.session for b in picked[-1]}  # two sessions
    barfile.write_bars(path, [b for bars in picked for b in bars])
    return len(picked)


Replay = Callable[..., Awaitable[dict[str, Any]]]


@pytest.fixture
async def keel_replay(nats_url: str, database_url: str, tmp_path: Path) -> AsyncIterator[Replay]:
    """Run `keel replay` to its end under a namespace of its own; return its summary line."""
    made: list[Namespace] = []

    async def run(*args: str, env: dict[str, str] | None = None) -> dict[str, Any]:
        ns = new_namespace(f"replay-{len(made)}")
        out_dir = tmp_path / ns.prefix
        made.append(ns)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "libs.cli.main", "--var", str(tmp_path / "var"), "replay", "--quiet",
            "--prefix", ns.prefix, "--out", str(out_dir), *args,
            env={**os.environ, "KEEL_NATS_URL": nats_url, "KEEL_DATABASE_URL": database_url, **(env or {})},
            cwd=REPO_ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(proc.communicate(), timeout=400)
        assert proc.returncode == 0, f"keel replay exited {proc.returncode}: {err.decode()[-3000:]}"
        return json.loads(out.decode().splitlines()[-1])

    yield run
    for ns in made:
        await cleanup_namespace(ns, nats_url=nats_url, database_url=database_url)


async def _intents(nats_url: str, prefix: str) -> list[dict[str, Any]]:
    """Every OrderIntent of a run, without its wall-clock ts_init, in event time then id order."""
    bus = await Bus.connect(nats_url, Subjects(prefix), service="test")
    try:
        messages = [m async for batch in export.iter_stream(bus, "risk") for m in batch]
    finally:
        await bus.close()
    intents = [json.loads(data) for _seq, _subject, data in messages]
    intents = [{k: v for k, v in i.items() if k != "ts_init"} for i in intents if i["type"] == "risk.order_intent.v1"]
    return sorted(intents, key=lambda i: (i["ts_event"], i["event_id"]))


async def test_replay_when_a_recorded_keel_up_session_is_replayed_then_its_intents_and_cids_come_back(
    keel_up, keel_replay, namespace, nats_url
):
    run = await keel_up(
        "--symbols", ",".join(SYMBOLS), "--minutes", "150", "--speed", "max", "--exit-when-done",
        "--start-date", "2026-03-02", "--seed", "5",
    )  # fmt: skip
    recorded = await run.summary(timeout=300)
    assert recorded["settled"] is True and recorded["intents"] > 0

    # keel up's simulator seed is KEEL_EXCHANGE_SIM_SEED's default, 0: the same fills need the same
    summary = await keel_replay("--source", f"{namespace.prefix.upper()}_MD", "--seed", "0")

    assert summary["settled"] is True and summary["replay"] is True
    assert summary["bar_timestamps"] == recorded["bar_timestamps"] == 150
    assert summary["bars"] == recorded["bars"]
    assert (summary["intents"], summary["fills"]) == (recorded["intents"], recorded["fills"])
    original, replayed = await _intents(nats_url, namespace.prefix), await _intents(nats_url, summary["prefix"])
    assert len(original) == recorded["intents"]
    assert [i["client_order_id"] for i in replayed] == [i["client_order_id"] for i in original]
    assert replayed == original  # every field but the paper run's wall-clock ts_init


async def test_replay_when_each_seed_runs_twice_then_the_digest_and_the_dumps_are_byte_identical(keel_replay, tmp_path):
    source = tmp_path / "two-sessions.csv"
    timestamps = two_session_file(source)
    fills: dict[int, str] = {}
    for seed in SEEDS:
        # the two run at once: each one's processes are scheduled against the other's, so the
        # same digest says the lockstep, not quiet timing, made them agree
        first, second = await asyncio.gather(
            keel_replay("--source", str(source), "--seed", str(seed)),
            keel_replay("--source", str(source), "--seed", str(seed)),
        )

        assert first["settled"] is True and first["bar_timestamps"] == timestamps == 2 * WINDOW
        assert len(first["sessions"]) == 2 and first["bars"] == timestamps * len(SYMBOLS)
        assert first["intents"] > 0 and first["order_reports"] > 0
        assert first["digest"] == second["digest"] and first["digests"] == second["digests"]
        for name in ("decisions", "intents", "fills"):
            a, b = Path(first["out"], f"{name}.jsonl"), Path(second["out"], f"{name}.jsonl")
            assert a.read_bytes() == b.read_bytes() and a.stat().st_size > 0
        assert Path(first["out"], "tca.jsonl").read_bytes() == Path(second["out"], "tca.jsonl").read_bytes()
        rep = json.loads(Path(first["out"], "replay-report.json").read_text())
        assert rep["sessions"] == first["sessions"]
        fills[seed] = first["digests"]["fills"]
    # the seed reaches the exchange's fill simulator: each seed fills at prices of its own
    assert len(set(fills.values())) == len(SEEDS)


async def record_with_operator(
    namespace: Namespace, nats_url: str, minutes: int, kill_after: int, resume_after: int
) -> list[int]:
    """Store what a recorded session leaves: the synthetic feed's bars and marketdata's watermarks
    in the md stream and, between them, an operator's kill (with cancel-all) after bar
    `kill_after` and a resume after bar `resume_after`, as `nats pub` stores them. Return the
    bar timestamps."""
    cfg = MdConfig(symbols=SYMBOLS, start_date="2026-02-03", seed=11)
    bus = await Bus.connect(nats_url, Subjects(namespace.prefix), service="marketdata")
    state, stamps = INITIAL, []
    try:
        await bus.provision()
        for n in range(1, minutes + 1):
            ts = next_timestamp(state, cfg)
            assert ts is not None
            state, bars, wm = bars_for(state, ts, cfg, _Ctx())
            for event in (*bars, wm):
                await bus.publish(event)
            stamps.append(ts)
            if n == kill_after:
                await bus.js.publish(bus.subjects.ctl("kill"), b'{"reason":"desk says stop","cancel_all":true}')
            if n == resume_after:
                await bus.js.publish(bus.subjects.ctl("resume"), b'{"reason":"desk says go"}')
    finally:
        await bus.close()
    return stamps


async def test_replay_when_the_recording_holds_a_halt_and_a_resume_then_they_act_between_the_same_bars_every_time(
    keel_replay, namespace, nats_url
):
    stamps = await record_with_operator(namespace, nats_url, minutes=90, kill_after=30, resume_after=60)
    halted = (stamps[30], stamps[59])  # bars 31..60 are decided while halted

    first, second = await asyncio.gather(
        keel_replay("--source", f"{namespace.prefix.upper()}_MD", "--seed", "1"),
        keel_replay("--source", f"{namespace.prefix.upper()}_MD", "--seed", "1"),
    )

    assert first["control_commands"] == second["control_commands"] == 2
    assert first["digest"] == second["digest"]
    control = [json.loads(line) for line in Path(first["out"], "control.jsonl").read_text().splitlines()]
    assert [(c["verb"], c["after"]) for c in control] == [("kill", stamps[29]), ("resume", stamps[59])]
    decisions = [json.loads(line) for line in Path(first["out"], "decisions.jsonl").read_text().splitlines()]
    pretrade = [d for d in decisions if d["type"] == "oms.pretrade_decision.v1"]
    blocked = [d for d in pretrade if d["reason"] == "KILL_SWITCH_BLOCK"]
    assert blocked, "no intent came while halted: the window proves nothing"
    assert all(halted[0] <= d["bar_ts"] <= halted[1] for d in blocked)
    # while halted nothing is approved; before the kill and after the resume orders go
    assert not [d for d in pretrade if d["approved"] and halted[0] <= d["bar_ts"] <= halted[1]]
    assert [d for d in pretrade if d["approved"] and d["bar_ts"] < halted[0]]
    assert [d for d in pretrade if d["approved"] and d["bar_ts"] > halted[1]]


async def test_replay_when_the_prefix_already_holds_a_run_then_refused_before_anything_starts(
    namespace, nats_url, database_url, tmp_path
):
    source = tmp_path / "two-sessions.csv"
    two_session_file(source)
    bus = await Bus.connect(nats_url, Subjects(namespace.prefix), service="test")
    try:
        await bus.provision()  # an earlier run's streams under this prefix
    finally:
        await bus.close()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "libs.cli.main", "--var", str(tmp_path / "var"), "replay", "--quiet",
        "--prefix", namespace.prefix, "--source", str(source), "--seed", "1",
        env={**os.environ, "KEEL_NATS_URL": nats_url, "KEEL_DATABASE_URL": database_url},
        cwd=REPO_ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), timeout=120)

    assert proc.returncode == 2 and out == b""
    assert f"--prefix {namespace.prefix}: expected a prefix no run has used" in err.decode()
    assert not list((tmp_path / "var" / "replays").glob("*/logs/*.log"))  # no service was started


@pytest.mark.parametrize(
    ("source", "said"),
    [
        ("missing.csv", "expected a bar file at"),
        ("notes.txt", "expected a bar file (.csv / .parquet) or a stored stream name"),
    ],
)
async def test_replay_when_the_source_is_not_a_bar_file_or_stream_then_exit_2_saying_so(tmp_path, source, said):
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "libs.cli.main", "--var", str(tmp_path / "var"), "replay", "--quiet",
        "--source", str(tmp_path / source), "--seed", "1",
        env={k: v for k, v in os.environ.items() if k not in ("KEEL_NATS_URL", "KEEL_DATABASE_URL")},
        cwd=REPO_ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), timeout=120)

    assert proc.returncode == 2 and out == b"" and said in err.decode()
