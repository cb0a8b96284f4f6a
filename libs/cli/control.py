"""`keel kill | resume | cancel-all | status`: the same control the NATS CLI has, plus a status view.

Commands are the plain JSON an operator would type after `nats pub keel.ctl.kill`; they are
published through JetStream so the control stream keeps them, and the OMS applies them to the
halt flag in the control bucket.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx
from nats.js.errors import NotFoundError

from libs.bus import Bus, BusUnavailable
from libs.config import redact_url
from libs.contracts import subjects as sj
from libs.contracts.control import HaltState
from libs.contracts.subjects import Subjects
from libs.errors.breakers import BreakerPolicy, Breakers

CTL_ACK_TIMEOUT_SEC = 3.0  # a stored command is acknowledged in milliseconds
COUNTED = {
    "bars": (sj.MD, "bar_closed"),
    "targets": (sj.SIGNAL, "target_proposed"),
    "intents": (sj.RISK, "order_intent"),
    "decisions": (sj.OMS, "pretrade_decision"),
    "orders": (sj.EXEC, "order_submitted"),
    "accepted": (sj.EXEC, "order_accepted"),
    "fills": (sj.EXEC, "order_filled"),
    "partial_fills": (sj.EXEC, "order_partially_filled"),
    "rejects": (sj.EXEC, "order_rejected"),
    "submit_failed": (sj.EXEC, "submit_failed"),
    "skipped": (sj.EXEC, "submit_skipped"),
    "tca_records": (sj.TCA, "tca_recorded"),
    "alerts": (sj.OPS, "alert_raised"),
    "dead_letters": (sj.DLQ, ""),
    "halts": (sj.CTL, sj.CTL_KILL),
}


async def counts(bus: Bus) -> dict[str, int]:
    """Count stored events per kind from the streams' per-subject totals."""
    out: dict[str, int] = {}
    for name, (family, event) in COUNTED.items():
        if family == sj.CTL:
            subject = bus.subjects.ctl(event)  # keel.ctl.<verb> has no key token
        elif event:
            subject = bus.subjects.event(family, event, ">")
        else:
            subject = bus.subjects.family_wildcard(family)
        try:
            info = await bus.js.stream_info(bus.subjects.stream(family), subjects_filter=subject)
        except NotFoundError:
            out[name] = 0  # the stream is not provisioned yet
            continue
        out[name] = sum((info.state.subjects or {}).values())
    return out


class CommandNotStored(RuntimeError):
    """The stream did not acknowledge a control command (refused by permissions, or no answer)."""


async def send(
    nats_url: str, prefix: str, verb: str, body: dict[str, Any], *, wait_halt: bool | None
) -> dict[str, Any]:
    """Publish a control command; optionally wait (up to 5 s) until the halt flag shows it applied."""
    bus = await Bus.connect(nats_url, Subjects(prefix), service="cli")
    try:
        await bus.ensure_provisioned()
        started = time.monotonic()
        subject = bus.subjects.ctl(verb)
        try:
            # a publish the server's permissions refuse is dropped, and no PubAck ever comes: the
            # server's error says so at once
            ack = await bus.or_refused(bus.js.publish(subject, json.dumps(body).encode(), timeout=CTL_ACK_TIMEOUT_SEC))
        except PermissionError as e:
            said = str(e) or f"no PubAck within {CTL_ACK_TIMEOUT_SEC:.0f} s"
            raise CommandNotStored(
                f"{subject} was not stored: {said}. Resume and cancel-all need the NATS operator "
                "identity (KEEL_NATS_URL=nats://operator:<password>@host:4222)"
            ) from e
        result: dict[str, Any] = {"subject": subject, "stream_seq": ack.seq, "body": body}
        if wait_halt is not None:
            state: HaltState | None = None
            while time.monotonic() - started < 5.0:
                state = await bus.halt_state()
                if state is not None and state.halted == wait_halt and state.reason == body.get("reason"):
                    break
                await asyncio.sleep(0.05)
            applied = state is not None and state.halted == wait_halt
            result["applied"] = applied
            result["applied_after_ms"] = round((time.monotonic() - started) * 1000, 1)
            result["halt"] = {"halted": state.halted, "reason": state.reason} if state else None
        return result
    finally:
        await bus.close()


async def provision(nats_url: str, prefix: str) -> dict[str, Any]:
    """Create or update every stream and bucket (`keel provision`, as the NATS operator)."""
    bus = await Bus.connect(nats_url, Subjects(prefix), service="cli")
    try:
        missing = await bus.unprovisioned()
        try:
            await bus.or_refused(bus.provision())
        except PermissionError as e:
            raise CommandNotStored(f"streams not provisioned: {e}; provisioning needs the operator identity") from e
        return {"provisioned": prefix, "created": missing}
    finally:
        await bus.close()


async def status(up: dict[str, Any]) -> dict[str, Any]:
    """Return each service's health, the exchange's URL and keys, the halt flag and counts."""
    services: dict[str, Any] = {}
    async with httpx.AsyncClient(timeout=2.0) as client:
        for name, url in sorted(up.get("services", {}).items()):
            entry: dict[str, Any] = {"url": url}
            for probe in ("healthz", "readyz"):
                try:
                    r = await client.get(f"{url}/{probe}")
                    entry[probe] = r.status_code == 200
                except httpx.HTTPError as e:
                    entry[probe] = False
                    entry["error"] = type(e).__name__
            services[name] = entry
    out: dict[str, Any] = {
        "prefix": up.get("prefix"),
        "nats_url": redact_url(up.get("nats_url") or ""),
        "database_url": up.get("database_url_redacted"),
        "services": services,
        "exchange": up.get("exchange"),
    }
    try:
        bus = await Bus.connect(up["nats_url"], Subjects(up.get("prefix", "keel")), service="cli")
    except BusUnavailable as e:
        out["nats"] = f"unreachable: {e}"
        return out
    try:
        halt = await bus.halt_state()
        out["halt"] = (
            {"halted": halt.halted, "reason": halt.reason, "since_ns": halt.since_ns}
            if halt
            else {"halted": False, "reason": ""}
        )
        # every dependency breaker open now (libs/errors/breakers.py): what blocks new orders
        breakers = Breakers(await bus.breakers_kv(), BreakerPolicy(), time.time_ns)
        now = time.time_ns()
        out["breakers_open"] = {
            dep: {"reason": s.reason, "open_until_ns": s.open_until_ns}
            for dep, s in (await breakers.states()).items()
            if s.is_open(now)
        }
        out["counts"] = await counts(bus)
    finally:
        await bus.close()
    return out
