"""Connection, stream provisioning, publishing and the control key-value bucket."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable
from typing import TypeVar

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import api
from nats.js.kv import KeyValue

from libs.config import redact_url
from libs.contracts import subjects as sj
from libs.contracts.base import Event
from libs.contracts.codec import decode_halt_state, encode
from libs.contracts.control import HaltState
from libs.errors import DependencyUnavailable
from libs.obs import tracing

log = logging.getLogger(__name__)
T = TypeVar("T")

# JetStream de-duplicates on Nats-Msg-Id within this window (seconds); it must outlast a
# restart of any publisher so an outbox re-publish after a crash is recognised (STYLE 18).
DUPLICATE_WINDOW_SEC = 20 * 60
HEARTBEAT_MAX_AGE_SEC = 10 * 60
CONNECT_TIMEOUT_SEC = 5.0
SERVER_ERRORS_KEPT = 8
# what a server says (nats-py lowercased) when it refuses a connection's user or password
REFUSED_CREDENTIALS = "authorization violation"
DENIED = "permissions violation"  # ... for publish to "<subject>": a publish the server dropped


class BusUnavailable(DependencyUnavailable):
    """NATS could not be reached or JetStream is not enabled."""


def _stream_config(subjects: sj.Subjects, family: str) -> api.StreamConfig:
    max_age = HEARTBEAT_MAX_AGE_SEC if family == sj.HB else None
    return api.StreamConfig(
        name=subjects.stream(family),
        subjects=[subjects.family_wildcard(family)] if family != sj.CTL else [f"{subjects.prefix}.{sj.CTL}.>"],
        retention=api.RetentionPolicy.LIMITS,
        storage=api.StorageType.FILE,
        duplicate_window=DUPLICATE_WINDOW_SEC if family != sj.HB else 60,
        max_age=max_age,
        discard=api.DiscardPolicy.OLD,
    )


class Bus:
    """One service's connection to NATS JetStream under one subject prefix."""

    def __init__(self, nc: NatsClient, subjects: sj.Subjects, service: str) -> None:
        self.nc = nc
        self.js = nc.jetstream(timeout=10)
        self.subjects = subjects
        self.service = service
        self._ctl_kv: KeyValue | None = None
        self._brk_kv: KeyValue | None = None
        self._rl_kv: KeyValue | None = None
        self.server_errors: deque[str] = deque(maxlen=SERVER_ERRORS_KEPT)
        self.denied = asyncio.Event()  # set when the server refused a publish (permissions)

    @classmethod
    async def connect(cls, url: str, subjects: sj.Subjects, *, service: str) -> Bus:
        """Connect or raise BusUnavailable naming the URL, never its password (fail fast at start).

        A server that refuses the credentials fails the connect at once with the server's words
        (nats-py, allowed to reconnect, would otherwise retry the handshake until the time bound).
        """
        nc = NatsClient()
        bus = cls(nc, subjects, service)
        where = redact_url(url)
        refused = asyncio.Event()

        async def on_error(e: Exception) -> None:
            said = str(e) or type(e).__name__
            bus.server_errors.append(said)
            if not nc.is_connected and REFUSED_CREDENTIALS in said.lower():
                refused.set()
            if DENIED in said.lower():
                bus.denied.set()
            log.warning("nats error", extra={"service": service, "error": said})

        connecting = asyncio.ensure_future(
            nc.connect(
                url,
                name=f"keel-{service}",
                connect_timeout=2,
                allow_reconnect=True,
                max_reconnect_attempts=-1,
                reconnect_time_wait=0.5,
                error_cb=on_error,
            )
        )
        # a bounded first connect: with reconnects allowed nats-py would retry forever
        waiting = asyncio.ensure_future(refused.wait())
        await asyncio.wait({connecting, waiting}, timeout=CONNECT_TIMEOUT_SEC, return_when=asyncio.FIRST_COMPLETED)
        waiting.cancel()
        if connecting.done():
            problem = connecting.exception()
        else:
            connecting.cancel()
            problem = TimeoutError(bus.last_server_error() or f"no answer within {CONNECT_TIMEOUT_SEC:.0f} s")
        if problem is not None:
            await nc.close()
            why = str(problem) or bus.last_server_error() or type(problem).__name__
            if refused.is_set():  # the server's words, not the reset that followed them
                said = next(e for e in bus.server_errors if REFUSED_CREDENTIALS in e.lower())
                why = f"{said} (the server refused the credentials in the URL)"
            raise BusUnavailable(f"NATS at {where} is unreachable: {why}") from problem
        try:
            await bus.js.account_info()
        except nats.js.errors.Error as e:
            await nc.close()
            raise BusUnavailable(f"NATS at {where} has no JetStream enabled: {e}") from e
        return bus

    def last_server_error(self) -> str:
        """The last error the server sent this connection (a refused publish), or ''."""
        return self.server_errors[-1] if self.server_errors else ""

    async def provision(self) -> None:
        """Create or update every stream and bucket; safe to run concurrently.

        Needs JetStream administration: `keel provision` as the operator, `keel up`, the tests.
        """
        for family in sj.FAMILIES:
            config = _stream_config(self.subjects, family)
            try:
                await self.js.add_stream(config)
            except nats.js.errors.BadRequestError:
                # exists with another config (e.g. an older keel): bring it up to date
                await self.js.update_stream(config)
        await self.control_kv()
        await self.breakers_kv()
        await self.limits_kv()

    async def unprovisioned(self) -> list[str]:
        """Return the streams (key-value buckets as their KV_ streams) that do not exist yet."""
        names = [self.subjects.stream(f) for f in sj.FAMILIES]
        names += [f"KV_{self.subjects.kv(b)}" for b in (sj.KV_CONTROL, sj.KV_BREAKERS, sj.KV_LIMITS)]
        missing = []
        for name in names:
            try:
                await self.js.stream_info(name)
            except nats.js.errors.NotFoundError:
                missing.append(name)
        return missing

    async def ensure_provisioned(self) -> None:
        """Check every stream and bucket exists; create what is missing, or fail naming who may.

        Under the deploy config a service's identity may not create or change streams (a stream's
        republish or sources could land a message on keel.ctl.resume): `keel provision`, run as
        the operator, does it. Where the identity may (keel up, the tests), what is missing is
        created here.
        """
        missing = await self.unprovisioned()
        if not missing:
            return
        try:
            await self.or_refused(self.provision())
        except PermissionError as e:
            raise BusUnavailable(
                f"JetStream lacks {', '.join(missing)} and this NATS user may not create them ({e}): "
                "run `keel provision` with the operator identity"
            ) from e

    async def or_refused(self, work: Awaitable[T]) -> T:
        """Run work that publishes (JetStream administration, a command); raise PermissionError
        with the server's words if the server refuses one of its publishes.

        A request the permissions refuse gets no answer, only the server's error on the
        connection: that error ends the wait at once instead of the request's timeout.
        """
        self.denied.clear()
        doing = asyncio.ensure_future(work)
        denied = asyncio.ensure_future(self.denied.wait())
        await asyncio.wait({doing, denied}, return_when=asyncio.FIRST_COMPLETED)
        denied.cancel()
        if not doing.done():
            doing.cancel()
            raise PermissionError(self.last_server_error())
        if doing.cancelled():
            raise PermissionError("canceled before the server answered")
        problem = doing.exception()
        if isinstance(problem, (nats.errors.Error, TimeoutError)):
            raise PermissionError(self.last_server_error() or repr(problem)) from problem
        if problem is not None:
            raise problem
        return doing.result()

    async def control_kv(self) -> KeyValue:
        """Return the control bucket holding the halt flag, creating it if needed."""
        if self._ctl_kv is None:
            bucket = self.subjects.kv(sj.KV_CONTROL)
            try:
                self._ctl_kv = await self.js.key_value(bucket)
            except nats.js.errors.BucketNotFoundError:
                self._ctl_kv = await self.js.create_key_value(bucket=bucket, history=16)
        return self._ctl_kv

    async def breakers_kv(self) -> KeyValue:
        """Return the bucket of the dependency circuit breakers, creating it if needed."""
        if self._brk_kv is None:
            bucket = self.subjects.kv(sj.KV_BREAKERS)
            try:
                self._brk_kv = await self.js.key_value(bucket)
            except nats.js.errors.BucketNotFoundError:
                self._brk_kv = await self.js.create_key_value(bucket=bucket, history=1)
        return self._brk_kv

    async def limits_kv(self) -> KeyValue:
        """Return the bucket of the broker rate limits (one key per account), creating it if needed."""
        if self._rl_kv is None:
            bucket = self.subjects.kv(sj.KV_LIMITS)
            try:
                self._rl_kv = await self.js.key_value(bucket)
            except nats.js.errors.BucketNotFoundError:
                self._rl_kv = await self.js.create_key_value(bucket=bucket, history=1)
        return self._rl_kv

    async def halt_state(self) -> HaltState | None:
        """Read the halt flag; None when nobody has ever halted."""
        kv = await self.control_kv()
        try:
            entry = await kv.get(sj.KV_HALT_KEY)
        except nats.js.errors.KeyNotFoundError:
            return None
        return decode_halt_state(entry.value) if entry.value else None

    async def put_halt_state(self, state: HaltState) -> None:
        """Write the halt flag."""
        kv = await self.control_kv()
        await kv.put(sj.KV_HALT_KEY, encode(state))

    def headers_for(self, event: Event, extra: dict[str, str] | None = None) -> dict[str, str]:
        """Build the headers of an event: Msg-Id, trace context and wall-clock emit time."""
        headers = {sj.H_MSG_ID: event.event_id, sj.H_EMITTED_AT: str(time.time_ns())}
        if extra:
            headers.update(extra)
        if sj.H_TRACEPARENT not in headers:
            tracing.inject(headers)
        return headers

    async def publish(self, event: Event, *, headers: dict[str, str] | None = None) -> api.PubAck:
        """Publish an event and wait for its PubAck; a duplicate ack counts as success."""
        return await self.js.publish(self.subjects.of(event), encode(event), headers=self.headers_for(event, headers))

    async def publish_encoded(self, subject: str, data: bytes, headers: dict[str, str]) -> None:
        """Publish pre-encoded events pipelined; the caller awaits the returned futures."""
        return await self.js.publish_async(subject, data, headers=headers)

    async def dead_letter(self, consumer: str, msg: Msg, error: BaseException) -> None:
        """Copy a message to the dead-letter stream with why, then terminate it (STYLE 20)."""
        meta = msg.metadata
        headers = dict(msg.headers or {})
        headers.pop(sj.H_MSG_ID, None)
        headers.update(
            {
                sj.H_DLQ_SUBJECT: msg.subject,
                sj.H_DLQ_STREAM_SEQ: str(meta.sequence.stream),
                sj.H_DLQ_CONSUMER: consumer,
                sj.H_DLQ_ERROR: f"{type(error).__name__}: {error}"[:1000],
                # the same message dead-lettered twice by one consumer (redelivery) is stored once;
                # another consumer refusing it too gets its own copy
                sj.H_MSG_ID: f"dlq:{consumer}:{meta.stream}:{meta.sequence.stream}",
            }
        )
        await self.js.publish(self.subjects.dlq(consumer), msg.data, headers=headers)
        await msg.term()
        log.error(
            "dead-lettered message",
            extra={
                "consumer": consumer,
                "subject": msg.subject,
                "stream_seq": meta.sequence.stream,
                "error": headers[sj.H_DLQ_ERROR],
            },
        )

    async def close(self) -> None:
        """Flush what was published and close.

        Not drain(): a draining connection waits for lingering pull requests to expire, and
        anything fetched but unacked is redelivered anyway (ack happens only after commit).
        """
        if self.nc.is_closed:
            return
        try:
            await self.nc.flush(timeout=2)
        except (nats.errors.ConnectionClosedError, nats.errors.TimeoutError, TimeoutError) as e:
            log.warning("flush before close failed; closing anyway", extra={"error": repr(e)})
        await self.nc.close()
