"""Randomized soak: SIGKILL random services of a bounded `keel up` paper session, then audit the stores.

Work: one `keel up --speed max --minutes N --exit-when-done --quiet` (a real subprocess, every
service a child of it, the local exchange the broker). While its bars flow, a seeded chaos loop
SIGKILLs one service child at a time - all eight, the exchange too (it persists its book: killing
it is a broker outage in the middle of a call) - until `--kills` kills are done. keel up's
supervisor restarts each one. A child is killed only once it has been up QUICK_EXIT_SEC (+ a
margin), so the supervisor restarts it at once instead of backing off as from a crash loop.
The seed fixes the feed, the pauses and the draws (the victim is drawn among the children up
long enough); which children those are, and where in the pipeline a kill lands, is the
machine's timing. Every kill is written to `<var>/soak-kills.jsonl` for correlating with the logs.

After the last kill keel up drains, settles and prints its summary; the soak then reads the
OMS's and the exchange's own Postgres tables and checks:
  (a) zero duplicate orders at the exchange: each client_order_id once, every order an approved
      keel intent, no two approved intents (or exchange orders) for one symbol|side|qty|bar_ts;
  (b) every fill in the OMS log exactly once: one event per execution_id, and per
      client_order_id the fills' last_qty add up to the exchange's filled_qty;
  (c) every intent terminal and agreeing with the exchange, or open at the exchange in the same
      state (ACKED: new/accepted/held; PARTIALLY_FILLED: partially_filled);
  (d) OMS positions equal exchange positions per symbol;
and that every service exit keel up reported was one of our SIGKILLs (a service that dies on its
own after a restart cannot restart). Prints one JSON line; exit 0 only if every check holds.

Uses `KEEL_NATS_URL` / `KEEL_DATABASE_URL` when set, else embedded servers in a temporary
directory. Its own prefix and schemas (`soak<seed><hex>`), dropped at the end unless `--keep`
or a check failed (then the logs under `--var`/logs and the stores are left for diagnosis).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import random
import secrets
import signal
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import asyncpg  # noqa: E402
import httpx  # noqa: E402
import nats  # noqa: E402

from libs.cli.up import QUICK_EXIT_SEC, SERVICES  # noqa: E402
from libs.contracts.base import leg_client_order_id  # noqa: E402
from libs.db import schema_name  # noqa: E402
from libs.runtime.embedded import start_nats, start_postgres  # noqa: E402
from libs.runtime.migrate import REPO_ROOT  # noqa: E402
from services.oms.state import TERMINAL  # noqa: E402

FILL_TYPES = ("exec.order_filled.v1", "exec.order_partially_filled.v1")
# a victim must have been up this long: keel up backs off from a child that dies sooner
MIN_UPTIME_SEC = QUICK_EXIT_SEC + 1.0
# a killed service that is not up again (for MIN_UPTIME_SEC) this long after its kill cannot restart
RESTART_DEADLINE_SEC = 120.0
# a non-terminal intent is correctly open only if its order works at the exchange in this state
OPEN_AT_EXCHANGE = {"ACKED": {"new", "accepted", "pending_new", "held"}, "PARTIALLY_FILLED": {"partially_filled"}}
TERMINAL_AT_EXCHANGE = {"FILLED": "filled", "CANCELED": "canceled", "EXPIRED": "expired", "REJECTED": "rejected"}
SOAK_ENV = {
    # a faster sleeve than the default so a session trades often: more orders for a kill to land on
    "KEEL_SIGNAL_FAST_SPAN": "3",
    "KEEL_SIGNAL_SLOW_SPAN": "8",
    "KEEL_SIGNAL_REBALANCE_BAND": "0.05",
    "KEEL_RISK_MIN_ORDER_DOLLARS": "1",
    # breakers open for wall-clock seconds, and at --speed max a wall-clock minute is hundreds of
    # bar minutes: with the defaults (60 s, 900 s after 10 failures in 10 min) a few exchange
    # kills would block every order for the rest of the soak. Shorter, they still open and block.
    "KEEL_BREAKER_SHORT_OPEN_SEC": "5",
    "KEEL_BREAKER_LONG_OPEN_SEC": "15",
}
EXAMPLES = 5  # offending ids shown per check


@dataclass
class SoakOptions:
    """What one soak does."""

    kills: int = 200
    seed: int = 7
    # ten XNYS sessions: 200 kills take ~10 min, in which the feed (waiting for every restarted
    # service) made 200 to 1424 bar timestamps on 2 cores; the run's bound holds across
    # marketdata's restarts, so it must outlast the kills by itself
    minutes: int = 3900
    # keel up's --speed; a multiple of real time (e.g. 240) caps the feed so it cannot run out
    # before the kills whatever the pipeline does (a halted one runs ~4 bar timestamps/s)
    speed: str = "max"
    symbols: str = "AAPL,MSFT,SPY,QQQ,IWM"
    start_date: str = "2026-03-02"
    # mean pause between kills, seconds (uniform 0.5x..1.5x); 8 services up MIN_UPTIME_SEC each
    # allow one kill per ~1.5 s at most, so 3 s leaves several to draw from (not a rotation)
    interval: float = 3.0
    env: dict[str, str] = field(default_factory=dict)  # more KEEL_* for keel up, over SOAK_ENV
    var: Path | None = None
    timeout: float = 3600.0  # whole keel up, start to summary
    keep: bool = False


@dataclass
class Child:
    """A service process of keel up, as /proc shows it."""

    pid: int
    name: str
    age: float


@dataclass
class ChaosLog:
    """What the chaos loop did."""

    kills: Counter[str] = field(default_factory=Counter)
    feed_done_at_kill: int = 0  # kills attempted when the feed had already finished: raise --minutes
    not_restarted: list[str] = field(default_factory=list)
    down_since: dict[str, float] = field(default_factory=dict)
    up_ended_early: bool = False
    first_kill_s: float = 0.0
    emitted_at_first_kill: int = 0  # the feed's bar timestamps in all (GET /progress), when known
    emitted_at_last_kill: int = 0
    last_kill_s: float = 0.0


def _uptime() -> float:
    return float(Path("/proc/uptime").read_text().split()[0])


def service_children(ppid: int) -> dict[str, Child]:
    """Return keel up's live service children by name, from /proc (ppid and cmdline)."""
    tick = os.sysconf("SC_CLK_TCK")
    now = _uptime()
    found: dict[str, Child] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry.name}/stat").read_text()
            argv = Path(f"/proc/{entry.name}/cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue  # exited while we looked
        # proc(5): the command name (field 2) may hold spaces and ')', the rest follows the last ')'
        rest = stat[stat.rindex(")") + 2 :].split()
        state, parent, started = rest[0], int(rest[1]), int(rest[19])
        if parent != ppid or state == "Z":  # a zombie is a killed child not yet reaped
            continue
        for arg in argv:
            if arg.startswith("services.") and arg.removeprefix("services.") in SERVICES:
                name = arg.removeprefix("services.")
                found[name] = Child(int(entry.name), name, now - started / tick)
    return found


async def _feed(client: httpx.AsyncClient, md_url: str) -> tuple[bool, int | None]:
    # (done, bar timestamps emitted in all); marketdata down or starting: not done, count unknown
    try:
        r = await client.get(f"{md_url}/progress")
        body = r.json() if r.status_code == 200 else {}
        return bool(body.get("done")), body.get("emitted_total")
    except (httpx.HTTPError, ValueError):
        return False, None


async def chaos(
    proc: asyncio.subprocess.Process, up: dict[str, Any], opts: SoakOptions, started: float, log: ChaosLog
) -> None:
    """SIGKILL `opts.kills` random service children of keel up while its feed runs; record them in `log`."""
    rng = random.Random(opts.seed)
    timeline = (opts.var or Path()) / "soak-kills.jsonl"
    async with httpx.AsyncClient(timeout=1.0) as client:
        while sum(log.kills.values()) < opts.kills:
            await asyncio.sleep(rng.uniform(0.5 * opts.interval, 1.5 * opts.interval))
            deadline = time.monotonic() + RESTART_DEADLINE_SEC
            while True:
                if proc.returncode is not None:
                    log.up_ended_early = True
                    return
                children = service_children(proc.pid)
                eligible = sorted(n for n, c in children.items() if c.age >= MIN_UPTIME_SEC)
                if eligible:
                    break
                if time.monotonic() > deadline:
                    log.not_restarted.extend(n for n in SERVICES if n not in children)
                    return
                await asyncio.sleep(0.1)
            victim = children[rng.choice(eligible)]
            done, emitted = await _feed(client, up["services"]["marketdata"])
            if done:
                log.feed_done_at_kill += 1
                return
            if emitted is not None:
                log.emitted_at_first_kill = log.emitted_at_first_kill or emitted
                log.emitted_at_last_kill = emitted
            try:
                os.kill(victim.pid, signal.SIGKILL)
            except ProcessLookupError:
                continue  # it died by itself meanwhile: keel up's exit line shows it
            log.kills[victim.name] += 1
            log.last_kill_s = time.monotonic() - started
            log.first_kill_s = log.first_kill_s or log.last_kill_s
            with timeline.open("a") as f:
                f.write(json.dumps({"t_s": round(log.last_kill_s, 2), "wall": time.time(), "service": victim.name,
                                    "pid": victim.pid, "up_s": round(victim.age, 1), "bar_timestamps": emitted})
                        + "\n")  # fmt: skip
            # a service that is not back within the deadline cannot restart
            for name in SERVICES:
                if name not in children and name not in log.down_since:
                    log.down_since[name] = time.monotonic()
                elif name in children:
                    log.down_since.pop(name, None)
            stale = [n for n, t in log.down_since.items() if time.monotonic() - t > RESTART_DEADLINE_SEC]
            if stale:
                log.not_restarted.extend(stale)
                return


async def _wait_up_file(proc: asyncio.subprocess.Process, var: Path, timeout: float = 180.0) -> dict[str, Any]:
    # keel up writes up.json once every service is ready, and deletes it when it exits: keep a copy
    deadline = time.monotonic() + timeout
    path = var / "up.json"
    while time.monotonic() < deadline and proc.returncode is None:
        with contextlib.suppress(FileNotFoundError, ValueError):
            doc = json.loads(path.read_text())
            (var / "soak-up.json").write_text(json.dumps(doc, indent=2))
            return doc
        await asyncio.sleep(0.2)
    raise RuntimeError(f"keel up did not write {path} (exit {proc.returncode}); see {var / 'keel-up.err'}")


async def read_stores(database_url: str, schema_prefix: str) -> dict[str, Any]:
    """Read what the OMS and the exchange recorded, from their own schemas."""
    oms, ex = schema_name(schema_prefix, "oms"), schema_name(schema_prefix, "exchange")
    tca, alerts = schema_name(schema_prefix, "tca"), schema_name(schema_prefix, "alerts")
    conn = await asyncpg.connect(database_url)
    try:
        intents = await conn.fetch(
            "SELECT intent_id, client_order_id, symbol, side, qty, status, reason, filled_qty, bar_ts, leg_role "
            f"FROM {oms}.intents"
        )
        fills = await conn.fetch(
            f"SELECT seq, client_order_id, payload::text AS payload FROM {oms}.intent_events "
            "WHERE event_type = ANY($1::text[]) ORDER BY seq",
            list(FILL_TYPES),
        )
        approved = await conn.fetch(
            f"SELECT DISTINCT intent_id FROM {oms}.intent_events WHERE event_type = 'oms.pretrade_decision.v1' "
            "AND (payload->>'approved')::boolean"
        )
        blocked = await conn.fetchval(
            f"SELECT count(*) FROM {oms}.intent_events WHERE event_type = 'oms.pretrade_decision.v1' "
            "AND payload->>'reason' = 'DUPLICATE_ORDER_BLOCK'"
        )
        oms_positions = {r["symbol"]: r["qty"] for r in await conn.fetch(f"SELECT symbol, qty FROM {oms}.positions")}
        ex_rows = await conn.fetch(f"SELECT client_order_id, data::text AS data FROM {ex}.orders ORDER BY seq")
        ex_positions = {r["symbol"]: r["qty"] for r in await conn.fetch(f"SELECT symbol, qty FROM {ex}.positions")}
        tca_ids = {r["execution_id"] for r in await conn.fetch(f"SELECT execution_id FROM {tca}.records")}
        raised = await conn.fetch(f"SELECT code, severity, message FROM {alerts}.alerts ORDER BY ts_event")
    finally:
        await conn.close()
    orders = [json.loads(r["data"]) for r in ex_rows]
    # an exit leg is named by the exchange; keel knows it as its parent's client_order_id + role
    by_id = {o["id"]: o["client_order_id"] for o in orders}
    for o in orders:
        if o.get("leg_role"):
            o["keel_client_order_id"] = leg_client_order_id(by_id[o["parent_id"]], o["leg_role"])
        else:
            o["keel_client_order_id"] = o["client_order_id"]
    approved_ids = {r["intent_id"] for r in approved}
    return {
        # an exit leg is approved with its order (it has no decision of its own); the intent's
        # `reason` is not the decision: a later report's reason code overwrites it
        "intents": [{**dict(r), "approved": r["intent_id"] in approved_ids or bool(r["leg_role"])} for r in intents],
        "fills": [{**json.loads(r["payload"]), "seq": r["seq"]} for r in fills],
        "duplicates_blocked": blocked,
        "oms_positions": oms_positions,
        "ex_orders": orders,
        "ex_positions": ex_positions,
        "tca_execution_ids": tca_ids,
        "alerts": [dict(r) for r in raised],
    }


def check_invariants(stores: dict[str, Any]) -> dict[str, Any]:
    """Count every violation of (a)-(d) with a few offending ids each; all counts 0 = the stores agree."""
    intents = stores["intents"]
    by_cid = {i["client_order_id"]: i for i in intents}
    orders = stores["ex_orders"]
    fills = stores["fills"]

    # (a) duplicates
    cids = Counter(o["keel_client_order_id"] for o in orders)
    dup_cids = {c: n for c, n in cids.items() if n > 1}
    orphans = [o["keel_client_order_id"] for o in orders if o["keel_client_order_id"] not in by_cid]
    not_approved = [c for c in cids if c in by_cid and not by_cid[c]["approved"]]

    def key(i: dict[str, Any]) -> str:
        return f"{i['symbol']}|{i['side']}|{i['qty']}|{i['bar_ts']}"

    approved_keys = Counter(key(i) for i in intents if i["approved"] and not i["leg_role"])
    dup_decisions = {k: n for k, n in approved_keys.items() if n > 1}
    ex_keys = Counter(
        key(by_cid[o["keel_client_order_id"]])
        for o in orders
        if o["keel_client_order_id"] in by_cid and not o.get("leg_role")
    )
    dup_orders = {k: n for k, n in ex_keys.items() if n > 1}

    # (b) every fill once, and all of the exchange's fills in the log
    per_exec = Counter(f["execution_id"] for f in fills)
    doubled_events = {e: n for e, n in per_exec.items() if n > 1}
    logged: dict[str, int] = defaultdict(int)
    for f in fills:
        logged[f["client_order_id"]] += f["last_qty"]
    at_exchange = {o["keel_client_order_id"]: int(o["filled_qty"]) for o in orders}
    lost, doubled = {}, {}
    for cid in set(logged) | set(at_exchange):
        diff = at_exchange.get(cid, 0) - logged.get(cid, 0)
        if diff > 0:
            lost[cid] = diff
        elif diff < 0:
            doubled[cid] = -diff
    projection = [i["client_order_id"] for i in intents if i["filled_qty"] != logged.get(i["client_order_id"], 0)]

    # (c) terminal, or open at the exchange in the same state
    ex_by_cid = {o["keel_client_order_id"]: o for o in orders}
    stuck, mismatched = [], []
    for i in intents:
        o = ex_by_cid.get(i["client_order_id"])
        status = i["status"]
        if status not in TERMINAL:
            if o is None or o["status"] not in OPEN_AT_EXCHANGE.get(status, ()):
                stuck.append(f"{i['client_order_id']} {status} exchange={o['status'] if o else None}")
        elif o is not None and TERMINAL_AT_EXCHANGE.get(status) != o["status"]:
            mismatched.append(f"{i['client_order_id']} {status} exchange={o['status']}")
        elif o is None and status in ("FILLED", "CANCELED", "EXPIRED"):
            mismatched.append(f"{i['client_order_id']} {status} exchange=None")

    # (d) positions
    oms_pos = {s: q for s, q in stores["oms_positions"].items() if q}
    ex_pos = {s: q for s, q in stores["ex_positions"].items() if q}
    positions = {s: {"oms": oms_pos.get(s, 0), "exchange": ex_pos.get(s, 0)} for s in set(oms_pos) | set(ex_pos)}
    positions = {s: v for s, v in positions.items() if v["oms"] != v["exchange"]}

    def ex(items: Any) -> list[str]:
        return sorted(str(x) for x in items)[:EXAMPLES]

    violations = {
        "duplicate_client_order_ids": sum(n - 1 for n in dup_cids.values()),
        "duplicate_approved_intents": sum(n - 1 for n in dup_decisions.values()),
        "duplicate_orders_at_exchange": sum(n - 1 for n in dup_orders.values()),
        "orders_unknown_to_oms": len(orphans),
        "orders_of_denied_intents": len(not_approved),
        "fill_events_doubled": sum(n - 1 for n in doubled_events.values()),
        "orders_with_lost_fills": len(lost),
        "lost_fill_qty": sum(lost.values()),
        "orders_with_doubled_fills": len(doubled),
        "doubled_fill_qty": sum(doubled.values()),
        "intent_filled_qty_mismatches": len(projection),
        "non_terminal_intents_not_open_at_exchange": len(stuck),
        "terminal_status_mismatches": len(mismatched),
        "position_mismatches": len(positions),
    }
    examples = {
        "duplicate_client_order_ids": ex(dup_cids),
        "duplicate_approved_intents": ex(dup_decisions),
        "duplicate_orders_at_exchange": ex(dup_orders),
        "orders_unknown_to_oms": ex(orphans),
        "orders_of_denied_intents": ex(not_approved),
        "fill_events_doubled": ex(doubled_events),
        "orders_with_lost_fills": ex(f"{c} {q}" for c, q in lost.items()),
        "orders_with_doubled_fills": ex(f"{c} {q}" for c, q in doubled.items()),
        "intent_filled_qty_mismatches": ex(projection),
        "non_terminal_intents_not_open_at_exchange": ex(stuck),
        "terminal_status_mismatches": ex(mismatched),
        "position_mismatches": ex(f"{s} {v}" for s, v in positions.items()),
    }
    open_ok = sum(1 for i in intents if i["status"] not in TERMINAL) - len(stuck)
    return {
        "counts": {
            "intents": len(intents),
            "approved": sum(i["approved"] for i in intents),
            "orders_at_exchange": len(orders),
            "fill_events": len(fills),
            "filled_qty": sum(at_exchange.values()),
            "open_intents_working_at_exchange": open_ok,
            "duplicate_decisions_blocked_by_oms": stores["duplicates_blocked"],
            "symbols_with_position": len(ex_pos),
            # not one of (a)-(d): tca is killed too, and records every fill once (execution_id is its key)
            "fills_without_tca_record": len(set(per_exec) - stores["tca_execution_ids"]),
            "alerts": dict(Counter(a["code"] for a in stores["alerts"] if a["severity"] != "info")),
            "halt_reasons": [a["message"] for a in stores["alerts"] if a["code"] == "TRADING_HALTED"],
        },
        "violations": violations,
        "examples": {k: v for k, v in examples.items() if v},
    }


def _exits(stderr: str) -> dict[str, Counter[str]]:
    # keel up says "<service> exited with <code>; restarting (restart n)" for every exit it saw
    out: dict[str, Counter[str]] = defaultdict(Counter)
    for line in stderr.splitlines():
        head, sep, _ = line.partition("; restarting")
        words = head.split()
        if sep and len(words) == 4 and words[1:3] == ["exited", "with"]:
            out[words[0]][words[3]] += 1
    return out


def _start_refusals(logs: Path) -> dict[str, list[str]]:
    # libs/runtime/runner.py: `keel <service>: cannot start: <why>` then exit 2
    out: dict[str, list[str]] = {}
    for path in sorted(logs.glob("*.log")):
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.startswith("keel ")]
        why = [ln.split(": cannot start: ", 1)[1][:160] for ln in lines if ": cannot start: " in ln]
        if why:
            out[path.stem] = why
    return out


def _summary(stdout: str) -> dict[str, Any] | None:
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    return json.loads(lines[-1]) if lines else None


async def _stop(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is not None:
        return
    proc.send_signal(signal.SIGINT)  # keel up stops its children in waves
    try:
        await asyncio.wait_for(proc.wait(), timeout=60)
    except TimeoutError:
        proc.kill()
        await proc.wait()


async def run_soak(
    opts: SoakOptions, *, nats_url: str, database_url: str, prefix: str, schema_prefix: str
) -> dict[str, Any]:
    """Run one soak against these servers under this prefix; return its report (report["ok"])."""
    var = opts.var or Path(tempfile.mkdtemp(prefix=f"keel-{prefix}-"))
    var.mkdir(parents=True, exist_ok=True)
    opts = dataclasses.replace(opts, var=var)
    env = {
        **os.environ,
        **SOAK_ENV,
        **opts.env,
        "KEEL_NATS_URL": nats_url,
        "KEEL_DATABASE_URL": database_url,
        "KEEL_PREFIX": prefix,
        "KEEL_SCHEMA_PREFIX": schema_prefix,
    }
    argv = [
        sys.executable, "-m", "libs.cli.main", "--var", str(var), "up", "--speed", opts.speed,
        "--minutes", str(opts.minutes), "--symbols", opts.symbols, "--start-date", opts.start_date,
        "--seed", str(opts.seed), "--exit-when-done", "--quiet",
    ]  # fmt: skip
    started = time.monotonic()
    with (var / "keel-up.out").open("wb") as out, (var / "keel-up.err").open("wb") as err:
        proc = await asyncio.create_subprocess_exec(*argv, env=env, cwd=REPO_ROOT, stdout=out, stderr=err)
    log = ChaosLog()
    timed_out = False
    try:
        up = await _wait_up_file(proc, var)
        try:
            await asyncio.wait_for(chaos(proc, up, opts, started, log), timeout=opts.timeout)
            if log.not_restarted:
                await _stop(proc)  # it would wait for the missing service until the timeout
            await asyncio.wait_for(proc.wait(), timeout=max(60.0, opts.timeout - (time.monotonic() - started)))
        except TimeoutError:
            timed_out = True
    finally:
        await _stop(proc)
    wall = time.monotonic() - started
    summary = _summary((var / "keel-up.out").read_text())
    exits = _exits((var / "keel-up.err").read_text())
    refused = _start_refusals(var / "logs")
    crashes: dict[str, int] = {}
    for name, codes in exits.items():
        # every exit is one of our SIGKILLs, or a start refused because a dependency was down at
        # that moment (exit 2, `cannot start:`; e.g. execution while the exchange restarts), which
        # keel up retries; anything else is a service that died by itself
        n = codes.total() - log.kills[name] - min(codes["2"], len(refused.get(name, [])))
        if n:
            crashes[name] = n
    audit = check_invariants(await read_stores(database_url, schema_prefix))
    total = sum(log.kills.values())
    harness = {
        "kills_short": opts.kills - total,
        "feed_done_before_last_kill": log.feed_done_at_kill,
        "services_not_restarted": len(log.not_restarted),
        "service_crashes": sum(crashes.values()),
        "keel_up_not_settled": int(not (summary and summary.get("settled") and proc.returncode == 0)),
        "timed_out": int(timed_out),
        "keel_up_ended_during_kills": int(log.up_ended_early),
    }
    ok = not any(audit["violations"].values()) and not any(harness.values())
    return {
        "bench": "soak",
        "ok": ok,
        "seed": opts.seed,
        "minutes": opts.minutes,
        "speed": opts.speed,
        "symbols": opts.symbols,
        "kills": {"total": total, **{n: log.kills[n] for n in SERVICES}},
        "exits_seen_by_keel_up": {n: dict(c) for n, c in sorted(exits.items())},
        "crashes": crashes,
        "start_refusals": {n: len(r) for n, r in sorted(refused.items())},
        "start_refusal_reasons": sorted({r for rs in refused.values() for r in rs})[:EXAMPLES],
        "env": {**SOAK_ENV, **opts.env},
        "not_restarted": log.not_restarted,
        **audit["counts"],
        "violations": audit["violations"],
        "harness": harness,
        "examples": audit["examples"],
        "keel_up_exit": proc.returncode,
        "keel_up_summary": summary,
        # synthetic bars: one per symbol per bar timestamp
        "bar_timestamps_emitted": summary["bars"] // len(opts.symbols.split(",")) if summary else None,
        "first_kill_s": round(log.first_kill_s, 1),
        "last_kill_s": round(log.last_kill_s, 1),
        # how far the feed moved while the kills went on (it waits for every restarted service)
        "bar_timestamps_during_kills": log.emitted_at_last_kill - log.emitted_at_first_kill,
        "wall_s": round(wall, 1),
        "var": str(var),
        "prefix": prefix,
    }


async def drop_prefix(nats_url: str, database_url: str, prefix: str, schema_prefix: str) -> None:
    """Delete the soak's streams and buckets and drop its schemas."""
    nc = await nats.connect(nats_url, allow_reconnect=False)
    try:
        js = nc.jetstream()
        # KV buckets are streams KV_<bucket>, object stores OBJ_<bucket> (NATS ADR-8, ADR-20)
        owned = (prefix.upper() + "_", f"KV_{prefix}_", f"OBJ_{prefix}_")
        names: list[str] = []
        while page := await js.streams_info(offset=len(names)):  # STREAM.LIST answers in pages
            names.extend(info.config.name or "" for info in page)
        for name in names:
            if name.startswith(owned):
                await js.delete_stream(name)
    finally:
        await nc.close()
    conn = await asyncpg.connect(database_url)
    try:
        names = await conn.fetch(
            "SELECT nspname FROM pg_namespace WHERE nspname = $1 OR starts_with(nspname, $2)",
            schema_prefix,
            schema_prefix + "_",
        )
        for r in names:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{r["nspname"]}" CASCADE')
    finally:
        await conn.close()


def main() -> int:
    """Parse the command line, run one soak, print its JSON report; 0 only if every check held."""
    d = SoakOptions()
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=d.kills)
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--minutes", type=int, default=d.minutes, help="bar timestamps of the keel up session")
    parser.add_argument("--speed", default=d.speed, help="keel up's --speed (default max)")
    parser.add_argument("--symbols", default=d.symbols)
    parser.add_argument("--start-date", default=d.start_date)
    parser.add_argument("--interval", type=float, default=d.interval, help="mean seconds between kills")
    parser.add_argument("--var", type=Path, default=None, help="keel up's state and logs (default: a new temp dir)")
    parser.add_argument("--timeout", type=float, default=d.timeout, help="seconds for the whole keel up")
    parser.add_argument("--keep", action="store_true", help="keep the streams and schemas")
    parser.add_argument(
        "--env", action="append", default=[], metavar="KEY=VALUE", help="more configuration for keel up (repeatable)"
    )
    args = parser.parse_args()
    opts = SoakOptions(
        kills=args.kills,
        seed=args.seed,
        minutes=args.minutes,
        speed=args.speed,
        symbols=args.symbols,
        start_date=args.start_date,
        interval=args.interval,
        var=args.var.resolve() if args.var else None,
        timeout=args.timeout,
        keep=args.keep,
        env=dict(kv.split("=", 1) for kv in args.env),
    )
    prefix = f"soak{args.seed}{secrets.token_hex(4)}"
    nats_url = os.environ.get("KEEL_NATS_URL", "")
    database_url = os.environ.get("KEEL_DATABASE_URL", "")
    servers: list[Any] = []
    work = Path(tempfile.mkdtemp(prefix=f"keel-{prefix}-servers-"))
    try:
        if not nats_url:
            servers.append(start_nats(work / "nats"))
            nats_url = servers[-1].url
        if not database_url:
            servers.append(start_postgres(work / "pg", cleanup_mode="delete"))
            database_url = servers[-1].url
        report = asyncio.run(
            run_soak(opts, nats_url=nats_url, database_url=database_url, prefix=prefix, schema_prefix=prefix)
        )
        if report["ok"] and not opts.keep:
            asyncio.run(drop_prefix(nats_url, database_url, prefix, prefix))
    finally:
        for s in servers:
            s.stop()
    print(json.dumps(report))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
