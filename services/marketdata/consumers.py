"""NATS edge of marketdata: it consumes nothing, but reads the watermarks its lockstep waits for
and, in a replay, publishes the recorded operator commands and waits until every control
consumer has acknowledged them."""

from __future__ import annotations

import asyncio
import logging

import msgspec
import nats.js.errors
from nats.aio.msg import Msg
from nats.js.api import AckPolicy

from libs.bus import Bus
from libs.contracts import subjects as sj
from libs.contracts.codec import decode_command
from libs.contracts.control import ScheduledCommand
from libs.contracts.ops import Watermark

log = logging.getLogger(__name__)
_decoder = msgspec.json.Decoder(Watermark)


class WatermarkWatch:
    """The latest watermark one downstream service has published (core subscription + last stored)."""

    def __init__(self, bus: Bus, service: str) -> None:
        self.bus = bus
        self.service = service
        self.bar_ts = 0
        self._changed = asyncio.Event()

    async def start(self) -> None:
        """Follow new watermarks, then read the last stored one (so none falls in between)."""
        await self.bus.nc.subscribe(self.bus.subjects.watermark(self.service), cb=self._on_msg)
        await self.refresh()

    async def refresh(self) -> None:
        """Read the last stored watermark: the stream is the truth, the subscription a shortcut."""
        subject = self.bus.subjects.watermark(self.service)
        stream = self.bus.subjects.stream(sj.SERVICE_FAMILY[self.service])
        try:
            last = await self.bus.js.get_last_msg(stream, subject)
        except nats.js.errors.NotFoundError:
            return  # nothing downstream has run yet
        self.bar_ts = max(self.bar_ts, _decoder.decode(last.data).bar_ts)

    async def _on_msg(self, msg: Msg) -> None:
        wm = _decoder.decode(msg.data)
        if wm.bar_ts > self.bar_ts:
            self.bar_ts = wm.bar_ts
            self._changed.set()

    async def wait_until(self, bar_ts: int, timeout: float | None) -> bool:
        """Wait until the watermark reaches bar_ts; False on timeout."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while self.bar_ts < bar_ts:
            self._changed.clear()
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0:
                return False
            try:
                await asyncio.wait_for(self._changed.wait(), timeout=min(remaining or 1.0, 1.0))
            except TimeoutError:
                await self.refresh()  # a watermark published during a reconnect is in the stream
        return True


async def publish_commands(bus: Bus, commands: list[ScheduledCommand]) -> int:
    """Publish a replay's commands on keel.ctl.<verb>, each under its event id (a restart that
    says one again is de-duplicated); return the control stream's last sequence after them."""
    seq = 0
    for cmd in commands:
        body = cmd.body.encode()
        event_id = decode_command(cmd.verb, body).event_id
        ack = await bus.js.publish(bus.subjects.ctl(cmd.verb), body, headers={sj.H_MSG_ID: event_id})
        seq = max(seq, ack.seq)
    return seq


class ControlWait:
    """Whether every durable control consumer has acknowledged the control stream up to a sequence.

    It remembers every such consumer it has seen, so one that is missing later (a service
    re-creating its consumer at its ack floor after a crash) is waited for, not skipped. Readers
    that acknowledge nothing (an export, a tail) are never waited for.
    """

    def __init__(self, bus: Bus, *, log_every_sec: float = 30.0) -> None:
        self.bus = bus
        self.known: set[str] = set()
        self.log_every_sec = log_every_sec

    async def behind(self, seq: int) -> list[str]:
        """The control consumers that have not acknowledged up to `seq` (or are missing)."""
        durables = {}
        for info in await self.bus.js.consumers_info(self.bus.subjects.stream(sj.CTL)):
            cfg = info.config
            if cfg.durable_name and cfg.ack_policy == AckPolicy.EXPLICIT:
                durables[cfg.durable_name] = info
        self.known |= durables.keys()
        late = {
            name
            for name, info in durables.items()
            if info.ack_floor.stream_seq < seq and (info.num_pending or info.num_ack_pending)
        }
        return sorted(late | (self.known - durables.keys()))

    async def wait(self, seq: int, timeout: float | None, stop: asyncio.Event) -> list[str]:
        """Wait until every control consumer has acknowledged up to `seq`; return those still
        behind when the timeout ran out or `stop` was set ([] when all are through)."""
        loop = asyncio.get_running_loop()
        started = said = loop.time()
        while behind := await self.behind(seq):
            now = loop.time()
            if stop.is_set() or (timeout is not None and now - started >= timeout):
                return behind
            if now - said >= self.log_every_sec:
                said = now
                log.warning("waiting for control consumers", extra={"waiting_for": behind, "control_seq": seq})
            await asyncio.sleep(0.02)
        return []
