"""`keel up`: the whole system on one machine, supervised, with a live progress line.

With no KEEL_NATS_URL / KEEL_DATABASE_URL it starts the embedded NATS (JetStream store under
./var/nats) and Postgres (./var/pg); migrates; starts the local exchange and every service as
its own process (logs under ./var/logs); writes the run manifest; restarts a service that dies;
and stops everything on Ctrl-C. A second `keel up` resumes from the stored state.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import secrets
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import asyncpg
import httpx
from nats.js.errors import NotFoundError

from libs.bus import Bus
from libs.cli import control
from libs.config import ConfigError
from libs.contracts import subjects as sj
from libs.contracts.subjects import Subjects
from libs.runtime import manifest
from libs.runtime.embedded import EmbeddedNats, EmbeddedPostgres, start_nats, start_postgres
from libs.runtime.migrate import migrate
from libs.runtime.process import ServiceProcess
from libs.sessions import session_of, sessions_between

SERVICES = ("exchange", "alerts", "tca", "oms", "execution", "risk", "signal", "marketdata")
STARTUP_WAVES = (("exchange",), ("alerts", "tca", "oms", "execution", "risk", "signal"), ("marketdata",))
# stop the feed first (nothing new enters) and alerts next (no false HEARTBEAT_MISSING while the
# others stop), then everything else at once
# --exit-when-done gives up (summary with "settled": false, exit 1) if the pipeline has not
# settled this long after the feed finished: a crash-looping service, an order nobody tracks
SETTLE_TIMEOUT_SEC = 120.0
QUICK_EXIT_SEC = 10.0  # a child that dies sooner than this after its start is crash-looping
SHUTDOWN_WAVES = (("marketdata",), ("alerts",), ("signal", "risk", "oms", "execution", "tca", "exchange"))


@dataclass
class UpOptions:
    """What `keel up` was asked to do."""

    var: Path
    feed: str = "synthetic"
    file: str = ""
    symbols: str = ""
    minutes: int = 0
    speed: str = "1"
    start_date: str = ""
    seed: int | None = None
    exit_when_done: bool = False
    quiet: bool = False
    prefix: str = ""
    # keel replay's: keys for every child (EXECUTION_MODE=replay, the simulator's seed), the bar
    # timestamps to expect (progress), and what to add to the summary once settled
    extra_env: dict[str, str] = field(default_factory=dict)
    total: int = 0
    fresh: bool = False  # refuse a prefix that already holds streams (a replay must start from nothing)
    finish: Callable[[Cluster, Bus, dict[str, Any]], Awaitable[dict[str, Any]]] | None = None


@dataclass
class Cluster:
    """The servers and children of one `keel up`."""

    nats_url: str
    database_url: str
    prefix: str
    schema_prefix: str
    children: dict[str, ServiceProcess] = field(default_factory=dict)
    embedded_nats: EmbeddedNats | None = None
    embedded_pg: EmbeddedPostgres | None = None


def _redact(url: str) -> str:
    return url.split("://", 1)[0] + "://***@" + url.split("@", 1)[1] if "@" in url else url


def _holds_password(url: str) -> bool:
    parts = urlsplit(url)
    return bool(parts.password) or "password" in parse_qs(parts.query)


def _exchange_keys(var: Path) -> dict[str, str]:
    path = var / "exchange-keys.json"
    if path.exists():
        return json.loads(path.read_text())
    keys = {"api_key_id": "PK" + secrets.token_hex(8).upper(), "api_secret_key": secrets.token_urlsafe(30)}
    path.write_text(json.dumps(keys))
    path.chmod(0o600)
    return keys


def _servers(opts: UpOptions) -> tuple[str, str, EmbeddedNats | None, EmbeddedPostgres | None]:
    nats_url = os.environ.get("KEEL_NATS_URL", "")
    database_url = os.environ.get("KEEL_DATABASE_URL", "")
    en = ep = None
    if not nats_url:
        en = start_nats(opts.var / "nats")
        nats_url = en.url
    if not database_url:
        ep = start_postgres(opts.var / "pg", cleanup_mode="stop")
        database_url = ep.url
    return nats_url, database_url, en, ep


def _child_env(cluster: Cluster, opts: UpOptions, keys: dict[str, str], run_id: str) -> dict[str, str]:
    # keel up trades the local exchange: a shell's Alpaca keys must not reach its execution
    env = {k: v for k, v in os.environ.items() if k not in ("ALPACA_API_KEY", "ALPACA_SECRET_KEY")}
    env.update(
        {
            "KEEL_NATS_URL": cluster.nats_url,
            "KEEL_DATABASE_URL": cluster.database_url,
            "KEEL_PREFIX": cluster.prefix,
            "KEEL_SCHEMA_PREFIX": cluster.schema_prefix,
            "KEEL_EXCHANGE_API_KEY_ID": keys["api_key_id"],
            "KEEL_EXCHANGE_API_SECRET_KEY": keys["api_secret_key"],
            "KEEL_EXEC_API_KEY_ID": keys["api_key_id"],
            "KEEL_EXEC_API_SECRET_KEY": keys["api_secret_key"],
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.pop("KEEL_API_PORT", None)
    # keel up trades the local exchange, which announces FillsDone: decisions run in lockstep
    # with it, so a recorded session replays to the same intents (DESIGN: determinism)
    env.setdefault("KEEL_LOCKSTEP", "1")
    env.update(opts.extra_env)
    if "KEEL_EXECUTION_MODE" in opts.extra_env:
        env.pop("EXECUTION_MODE", None)  # the shell's legacy key would conflict with the run's mode
    md = {
        "KEEL_MD_FEED": opts.feed,
        "KEEL_MD_FILE_PATH": opts.file,
        "KEEL_MD_SYMBOLS": opts.symbols,
        "KEEL_MD_MINUTES": str(opts.minutes) if opts.minutes else "",
        "KEEL_MD_RUN_ID": run_id,  # a marketdata restart goes on to this run's end, not N more
        "KEEL_MD_SPEED": opts.speed,
        "KEEL_MD_START_DATE": opts.start_date,
        "KEEL_MD_SEED": "" if opts.seed is None else str(opts.seed),
    }
    env.update({k: v for k, v in md.items() if v})
    if opts.feed == "alpaca":
        # the local exchange is the data provider too: it serves the synthetic feed's bars (same
        # symbols, start and seed) through Alpaca's market data API, marketdata reads them with
        # alpaca-py as it would from data.alpaca.markets
        data = {
            "KEEL_EXCHANGE_DATA_SOURCE": "synthetic",
            "KEEL_EXCHANGE_DATA_SYMBOLS": opts.symbols,
            "KEEL_EXCHANGE_DATA_START_DATE": opts.start_date,
            "KEEL_EXCHANGE_DATA_SEED": "" if opts.seed is None else str(opts.seed),
            "KEEL_MD_API_KEY_ID": keys["api_key_id"],
            "KEEL_MD_API_SECRET_KEY": keys["api_secret_key"],
        }
        env.update({k: v for k, v in data.items() if v})
    return env


async def _write_manifest(cluster: Cluster, opts: UpOptions, run_id: str) -> dict[str, Any]:
    doc = manifest.build(
        run_id=run_id,
        options=vars(opts) | {"var": str(opts.var)},
        env=_child_env(cluster, opts, {"api_key_id": "", "api_secret_key": ""}, run_id),
    )
    manifest.write_file(opts.var / "runs", doc)
    conn = await asyncpg.connect(cluster.database_url)
    try:
        await manifest.write_db(conn, cluster.schema_prefix, doc)
    finally:
        await conn.close()
    return doc


async def _consumers_idle(bus: Bus) -> bool:
    for family in sj.FAMILIES:
        stream = bus.subjects.stream(family)
        for info in await bus.js.consumers_info(stream):
            if info.num_pending or info.num_ack_pending:
                return False
    return True


async def _execution_caught_up(client: httpx.AsyncClient, cluster: Cluster) -> bool:
    """True when execution has reported every fill and end the exchange knows of (its poll is async)."""
    exchange = cluster.children["exchange"]
    headers = {
        "APCA-API-KEY-ID": exchange.env["KEEL_EXCHANGE_API_KEY_ID"],
        "APCA-API-SECRET-KEY": exchange.env["KEEL_EXCHANGE_API_SECRET_KEY"],
    }
    try:
        held = (await client.get(f"{cluster.children['execution'].url}/state")).json()["orders"]
        open_orders = (
            await client.get(f"{exchange.url}/v2/orders", params={"status": "open", "limit": 500}, headers=headers)
        ).json()
        # `held` orders (bracket legs) are not listed as open, as at Alpaca: ask for those one by one
        for o in held.values():
            if o["broker_status"] == "held" and o["broker_order_id"]:
                leg = await client.get(f"{exchange.url}/v2/orders/{o['broker_order_id']}", headers=headers)
                if leg.json()["status"] == "held":
                    open_orders.append(leg.json())
    except (httpx.HTTPError, KeyError, ValueError):
        return False
    at_exchange = {o["client_order_id"]: int(float(o["filled_qty"])) for o in open_orders}
    # an exit leg is known at the broker by the broker's own id (broker_client_order_id)
    return at_exchange == {o.get("broker_client_order_id") or cid: o["cum_qty"] for cid, o in held.items()}


async def _md_progress(client: httpx.AsyncClient, child: ServiceProcess) -> dict[str, Any] | None:
    try:
        r = await client.get(f"{child.url}/progress")
    except httpx.HTTPError:
        return None
    return r.json() if r.status_code == 200 else None


def _sessions(first_ts: int, last_ts: int) -> list[str]:
    if not last_ts:
        return []
    a, b = session_of(first_ts) if first_ts else None, session_of(last_ts)
    if b is None:
        return []
    return [d.isoformat() for d in sessions_between(a or b, b)]


async def _prefix_used(bus: Bus) -> bool:
    """Tell whether any stream of this prefix exists on the server."""
    for family in sj.FAMILIES:
        try:
            await bus.js.stream_info(bus.subjects.stream(family))
        except NotFoundError:
            continue
        return True
    return False


async def _exec_watermark(bus: Bus) -> int:
    try:
        msg = await bus.js.get_last_msg(bus.subjects.stream(sj.EXEC), bus.subjects.watermark("execution"))
    except NotFoundError:
        return 0  # nothing executed yet
    return json.loads(msg.data)["bar_ts"]


async def run(opts: UpOptions) -> int:
    """Run keel up until Ctrl-C or, with exit_when_done, until the bounded feed has settled."""
    opts.var.mkdir(parents=True, exist_ok=True)
    (opts.var / "logs").mkdir(exist_ok=True)
    nats_url, database_url, en, ep = _servers(opts)
    prefix = opts.prefix or os.environ.get("KEEL_PREFIX", "keel")
    # an explicit --prefix names the schemas too (a replay's own); else KEEL_SCHEMA_PREFIX may differ
    schema_prefix = opts.prefix or os.environ.get("KEEL_SCHEMA_PREFIX", prefix)
    cluster = Cluster(nats_url, database_url, prefix, schema_prefix, embedded_nats=en, embedded_pg=ep)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    bus: Bus | None = None
    try:
        await asyncio.to_thread(migrate, database_url, cluster.schema_prefix)
        bus = await Bus.connect(nats_url, Subjects(prefix), service="keel-up")
        if opts.fresh and await _prefix_used(bus):
            raise ConfigError(
                f"--prefix {prefix}: expected a prefix no run has used, was one with stored streams "
                "(its feed would resume that run and the digest cover both)"
            )
        await bus.provision()
        keys = _exchange_keys(opts.var)
        run_id = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S") + "-" + secrets.token_hex(3)
        doc = await _write_manifest(cluster, opts, run_id)
        env = _child_env(cluster, opts, keys, run_id)
        start_counts = await control.counts(bus)
        for name in SERVICES:
            child_env = dict(env)
            if name == "execution":
                child_env["KEEL_EXEC_BASE_URL"] = cluster.children["exchange"].url
                child_env["KEEL_EXEC_BROKER"] = "keel-local"  # the capability row of that exchange
                # the local exchange has no request limit: replays are not paced by one
                child_env.setdefault("KEEL_EXEC_RATE_LIMIT_PER_MIN", "0")
            if name == "marketdata" and opts.feed == "alpaca":
                child_env["KEEL_MD_DATA_URL"] = cluster.children["exchange"].url
            cluster.children[name] = ServiceProcess(name, child_env, opts.var / "logs" / f"{name}.log")
        # the exchange first (execution checks its broker at start), the feed last (so every
        # consumer is listening before the first bar; durable consumers would catch up anyway)
        for wave in STARTUP_WAVES:
            for name in wave:
                cluster.children[name].start()
            await asyncio.gather(*(cluster.children[name].wait_ready() for name in wave))
        _write_up_file(opts.var, cluster, keys, run_id)
        return await _supervise(cluster, bus, opts, start_counts, doc, stop)
    finally:
        _stop_all(cluster)
        if bus is not None:
            await bus.close()
        (opts.var / "up.json").unlink(missing_ok=True)
        if en is not None:
            en.stop()
        if ep is not None:
            ep.stop()


def _stop_all(cluster: Cluster) -> None:
    for wave in SHUTDOWN_WAVES:
        children = [cluster.children[n] for n in wave if n in cluster.children]
        for child in children:
            child.terminate()
        for child in children:
            child.stop()


def _write_up_file(var: Path, cluster: Cluster, keys: dict[str, str], run_id: str) -> None:
    doc = {
        "run_id": run_id,
        "pid": os.getpid(),
        "prefix": cluster.prefix,
        "schema_prefix": cluster.schema_prefix,
        "nats_url": cluster.nats_url,
        "database_url_redacted": _redact(cluster.database_url),
        # the plain URL only when it holds no password (embedded Postgres: none): `keel report` reads it
        **({"database_url": cluster.database_url} if not _holds_password(cluster.database_url) else {}),
        "services": {name: c.url for name, c in cluster.children.items()},
        "exchange": {"base_url": cluster.children["exchange"].url, **keys},
    }
    path = var / "up.json"
    path.write_text(json.dumps(doc, indent=2))
    path.chmod(0o600)


def _restart_exited(cluster: Cluster, opts: UpOptions, backoff: dict[str, float]) -> None:
    """Restart children that died; one that keeps dying at start waits longer each time (max 30 s)."""
    now = time.monotonic()
    for child in cluster.children.values():
        if child.running:
            continue
        if child.name not in backoff:
            quick = now - child.started_at < QUICK_EXIT_SEC
            child.quick_exits = child.quick_exits + 1 if quick else 0
            backoff[child.name] = now + (min(2 ** (child.quick_exits - 1), 30) if quick else 0)
            code = child.process.returncode if child.process else None
            _line(opts, f"{child.name} exited with {code}; restarting (restart {child.restarts + 1})", newline=True)
        if now >= backoff[child.name]:
            del backoff[child.name]
            child.restarts += 1
            child.start()


async def _supervise(
    cluster: Cluster, bus: Bus, opts: UpOptions, start_counts: dict[str, int], doc: dict[str, Any], stop: asyncio.Event
) -> int:
    md = cluster.children["marketdata"]
    backoff: dict[str, float] = {}
    first_ts = 0
    settled_checks = 0
    done_at = 0.0
    async with httpx.AsyncClient(timeout=1.0) as client:
        while not stop.is_set():
            _restart_exited(cluster, opts, backoff)
            progress = await _md_progress(client, md)
            now_counts = await control.counts(bus)
            delta = {k: now_counts[k] - start_counts.get(k, 0) for k in now_counts}
            halt = await bus.halt_state()
            if progress and progress["emitted_this_run"] and not first_ts:
                first_ts = progress["last_ts"]
            _line(opts, _progress_text(progress, delta, halt, opts.total))
            if opts.exit_when_done and progress and progress["done"]:
                done_at = done_at or time.monotonic()
                if (
                    await _exec_watermark(bus) >= progress["last_ts"]
                    and await _consumers_idle(bus)
                    and await _execution_caught_up(client, cluster)
                ):
                    settled_checks += 1
                else:
                    settled_checks = 0
                timed_out = time.monotonic() - done_at > SETTLE_TIMEOUT_SEC
                if settled_checks >= 3 or timed_out:
                    summary = {
                        "settled": not timed_out,
                        "run_id": doc["run_id"],
                        "bars": delta["bars"],
                        "bar_timestamps": progress["emitted_this_run"],
                        "intents": delta["intents"],
                        "orders": delta["orders"],
                        "fills": delta["fills"],
                        "partial_fills": delta["partial_fills"],
                        "rejects": delta["rejects"] + delta["submit_failed"],
                        "skipped": delta["skipped"],
                        "halts": delta["halts"],
                        "halted_at_end": bool(halt and halt.halted),
                        "tca_records": delta["tca_records"],
                        "dead_letters": delta["dead_letters"],
                        "restarts": {n: c.restarts for n, c in cluster.children.items() if c.restarts},
                        "sessions": _sessions(first_ts, progress["last_ts"]),
                        "config_sha256": doc["config_sha256"],
                    }
                    if opts.finish is not None:
                        summary = await opts.finish(cluster, bus, summary)
                    _line(opts, "", newline=True)
                    print(json.dumps(summary), flush=True)
                    return 1 if timed_out else 0
            try:
                await asyncio.wait_for(stop.wait(), timeout=0.5)
            except TimeoutError:
                continue
    _line(opts, "stopping", newline=True)
    return 0


def _progress_text(progress: dict[str, Any] | None, d: dict[str, int], halt: Any, total: int = 0) -> str:
    session = progress["session"] if progress else "-"
    halted = f"HALTED ({halt.reason})" if halt is not None and halt.halted else "trading"
    done = progress["emitted_this_run"] if progress else 0
    bar = ""
    if total:  # a replay knows its length: a progress bar
        filled = min(20, 20 * done // total)
        bar = f"[{'#' * filled}{'.' * (20 - filled)}] {done}/{total} "
    return (
        f"{bar}{session} bars {d['bars']} intents {d['intents']} orders {d['orders']} "
        f"fills {d['fills'] + d['partial_fills']} rejects {d['rejects'] + d['submit_failed']} skipped {d['skipped']} "
        f"alerts {d['alerts']} | {halted}"
    )


def _line(opts: UpOptions, text: str, *, newline: bool = False) -> None:
    if opts.quiet:
        if newline and text:
            print(text, file=sys.stderr, flush=True)
        return
    end = "\n" if newline else ""
    print(f"\r\x1b[2K{text}", end=end, file=sys.stderr, flush=True)
