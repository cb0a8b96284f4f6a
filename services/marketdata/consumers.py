"""NATS edge of marketdata: it consumes nothing, but reads the watermarks its lockstep waits for
and, in a replay, publishes the recorded operator commands and waits until every control
consumer has acknowledged them."""

from __future__ import annotations

import asyncio

import msgspec
import nats.js.errors
from nats.aio.msg import Msg
from nats.js.api import AckPolicy

from libs.bus import Bus
from libs.contracts import subjects as sj
from libs.contracts.codec import decode_command
from libs.contracts.control import ScheduledCommand
from libs.contracts.ops import Watermark

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


async def control_behind(bus: Bus, seq: int) -> list[str]:
    """The durable control consumers that have not yet acknowledged the control stream up to `seq`."""
    stream = bus.subjects.stream(sj.CTL)
    behind = []
    for info in await bus.js.consumers_info(stream):
        cfg = info.config
        if not cfg.durable_name or cfg.ack_policy != AckPolicy.EXPLICIT:
            continue  # an export's or a tail's reader: it acknowledges nothing
        if info.ack_floor.stream_seq < seq and (info.num_pending or info.num_ack_pending):
            behind.append(cfg.durable_name)
    return sorted(behind)


async def wait_control_applied(bus: Bus, seq: int, timeout: float | None) -> list[str]:
    """Wait until every control consumer has acknowledged up to `seq`; return those still behind
    at the timeout ([] when all are through)."""
    loop = asyncio.get_running_loop()
    deadline = None if timeout is None else loop.time() + timeout
    while behind := await control_behind(bus, seq):
        if deadline is not None and loop.time() >= deadline:
            return behind
        await asyncio.sleep(0.02)
    return []
