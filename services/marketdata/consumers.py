"""NATS edge of marketdata: it consumes nothing, but reads the watermark its lockstep waits for."""

from __future__ import annotations

import asyncio

import msgspec
import nats.js.errors
from nats.aio.msg import Msg

from libs.bus import Bus
from libs.contracts import subjects as sj
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
