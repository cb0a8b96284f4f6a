"""Durable pull consumers with explicit ack and the ack policy of STYLE 20.

handled -> ack after the batch commits; undecodable or invalid -> copied to the dead-letter
stream and terminated; a message whose handling raises a non-transient error is isolated from
its batch and dead-lettered, so one bad message never stops a consumer and nothing is silently
dropped.

Order is kept across failures and crashes: a transient failure holds the batch and retries it
(nothing newer is fetched meanwhile, unlike a nak, behind which newer messages would overtake);
a consumer that finds messages its previous run fetched and never acknowledged (a SIGKILL) starts
again at its ack floor, so those come first instead of after ack_wait behind newer ones. The
messages redelivered that were applied already are skipped by the processor's tracking rows.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import msgspec
import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js import api

from libs.bus.client import Bus
from libs.errors import classify_exception, dependency_of
from libs.obs.metrics import Metrics

if TYPE_CHECKING:
    from libs.errors.handle import ErrorHandler

log = logging.getLogger(__name__)

Decode = Callable[[str, bytes], object]


@dataclass(frozen=True, slots=True)
class ConsumerSpec:
    """One durable consumer: `<service>-<purpose>` on one family, one filter subject."""

    durable: str
    family: str
    filter_subject: str
    decode: Decode
    batch: int = 256
    fetch_timeout: float = 1.0
    ack_wait_sec: float = 10.0  # how long a crashed consumer's messages wait before redelivery
    max_ack_pending: int = 4096
    retry_delay_sec: float = 1.0  # a batch held by a transient failure is tried again after this
    # the subject of the message that ends a unit (an upstream's watermark after a bar's events):
    # a batch is fetched on until it ends one, so a bar is never applied in two parts that another
    # consumer of the same process could run between (DESIGN: lockstep); "" = any batch
    unit_end: str = ""
    # the durable this one took over from (a filter that changed gets a new name): on first start
    # it begins after the old one's ack floor, and the old one is deleted, so nothing is applied
    # twice or skipped across the upgrade
    replaces: str = ""


@dataclass(frozen=True, slots=True)
class Inbound:
    """A decoded message and where it came from."""

    subject: str
    stream_seq: int
    payload: object
    headers: dict[str, str]
    msg: Msg = field(repr=False, compare=False)


OnBatch = Callable[[list[Inbound]], Awaitable[None]]


# A second fetch drains what is already waiting without holding the first message back.
DRAIN_TIMEOUT_SEC = 0.005
# how long a batch waits for the end of its unit before it goes as it is (an upstream that died
# between a bar's events and its watermark); logged, since a bar may then be decided in two parts
UNIT_WAIT_SEC = 5.0  # under the default ack_wait (10 s): what waits is never redelivered meanwhile


async def _drain(sub, n: int) -> list[Msg]:  # type: ignore[no-untyped-def]
    try:
        return await sub.fetch(n, timeout=DRAIN_TIMEOUT_SEC)
    except (nats.errors.TimeoutError, TimeoutError):
        return []  # nothing else was waiting


async def fetch_batch(sub, batch: int, timeout: float, unit_end: str = "") -> list[Msg]:  # type: ignore[no-untyped-def]
    """Wait up to timeout for one message, then take whatever else is already there (up to batch).

    nats-py 2.16's fetch(n > 1) on an idle consumer can hold a message that arrived for up to
    the whole fetch timeout while it waits for the rest of the batch (measured here: ~700 ms
    with a 1 s timeout after an idle gap). fetch(1) returns as soon as one message arrives, and
    a short second fetch picks up the rest of a burst. With `unit_end`, fetching goes on (past
    `batch` if need be) until the last message is one on that subject.
    """
    msgs = await sub.fetch(1, timeout=timeout)
    if batch > 1:
        msgs += await _drain(sub, batch - 1)
    if not unit_end:
        return msgs
    loop = asyncio.get_running_loop()
    deadline = loop.time() + UNIT_WAIT_SEC
    while msgs[-1].subject != unit_end:
        left = deadline - loop.time()
        if left <= 0:
            log.warning("unit not ended in time; applying what came", extra={"unit_end": unit_end, "held": len(msgs)})
            break
        try:
            msgs += await sub.fetch(max(batch, 1), timeout=min(left, timeout))
        except (nats.errors.TimeoutError, TimeoutError):
            continue
    return msgs


def stored_ns(msg: Msg) -> int:
    """When the stream stored a message (ns UTC, to the microsecond the server's time carries)."""
    return int(msg.metadata.timestamp.timestamp() * 1_000_000) * 1_000


def consumer_config(spec: ConsumerSpec, start_seq: int = 0) -> api.ConsumerConfig:
    """The durable's JetStream config: from the stream's start, or from start_seq when given."""
    return api.ConsumerConfig(
        durable_name=spec.durable,
        ack_policy=api.AckPolicy.EXPLICIT,
        deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE if start_seq else api.DeliverPolicy.ALL,
        opt_start_seq=start_seq or None,
        ack_wait=spec.ack_wait_sec,
        max_deliver=-1,
        max_ack_pending=spec.max_ack_pending,
        filter_subject=spec.filter_subject,
    )


async def restart_at_ack_floor(bus: Bus, spec: ConsumerSpec) -> int:
    """Recreate the durable at its ack floor when a previous run left messages unacknowledged.

    A process killed while it held fetched messages leaves them pending; JetStream would hand them
    out again only after ack_wait, behind everything published since (a stale intent approved
    bars late, a fill applied after a later one). Recreated at the ack floor, the consumer delivers
    them first, in stream order. One process runs a service's consumer, so nobody else holds
    them. Return the stream sequence it starts at (0: nothing was pending, nothing changed).
    """
    stream = bus.subjects.stream(spec.family)
    try:
        info = await bus.js.consumer_info(stream, spec.durable)
    except nats.js.errors.NotFoundError:
        return 0
    if not info.num_ack_pending:
        return 0
    start = (info.ack_floor.stream_seq if info.ack_floor else 0) + 1
    log.warning(
        "messages of a previous run unacknowledged: consumer restarts at its ack floor",
        extra={"consumer": spec.durable, "pending": info.num_ack_pending, "start_seq": start},
    )
    await bus.js.delete_consumer(stream, spec.durable)
    await bus.js.add_consumer(stream, config=consumer_config(spec, start))
    return start


async def take_over(bus: Bus, spec: ConsumerSpec) -> int:
    """Start a renamed durable where the one it replaces stopped, then delete that one.

    Return the stream sequence the new durable starts at (0: nothing to take over).
    """
    if not spec.replaces:
        return 0
    stream = bus.subjects.stream(spec.family)
    try:
        old = await bus.js.consumer_info(stream, spec.replaces)
    except nats.js.errors.NotFoundError:
        return 0
    start = 0
    try:
        await bus.js.consumer_info(stream, spec.durable)
    except nats.js.errors.NotFoundError:
        start = (old.ack_floor.stream_seq if old.ack_floor else 0) + 1
        await bus.js.add_consumer(stream, config=consumer_config(spec, start))
    await bus.js.delete_consumer(stream, spec.replaces)
    log.warning(
        "durable renamed: taken over from the old one",
        extra={"consumer": spec.durable, "replaces": spec.replaces, "start_seq": start},
    )
    return start


async def subscribe(bus: Bus, spec: ConsumerSpec):  # type: ignore[no-untyped-def]
    """Create (or bind to) the durable pull consumer of a spec, unacknowledged messages first."""
    await take_over(bus, spec)
    await restart_at_ack_floor(bus, spec)
    return await bus.js.pull_subscribe(
        spec.filter_subject,
        durable=spec.durable,
        stream=bus.subjects.stream(spec.family),
        config=consumer_config(spec),
    )


async def _handle(errors: ErrorHandler, exc: BaseException, **how: str) -> None:
    """Hand a failure to the error handler; a handler that fails itself (the bus is down) must not
    take the consumer with it: the message is nak'd or dead-lettered either way."""
    try:
        await errors.handle(exc, **how)
    except Exception as e:  # classified: logged, and the consumer goes on
        info = classify_exception(e, dependency=dependency_of(e, "bus"))
        log.error("error handler failed", extra={"reason": info.reason_code, "error": repr(e)[:300],
                                                 "original": repr(exc)[:300]})  # fmt: skip


async def _decode_batch(
    bus: Bus, spec: ConsumerSpec, msgs: list[Msg], metrics: Metrics | None, errors: ErrorHandler | None = None
) -> list[Inbound]:
    good: list[Inbound] = []
    for m in msgs:
        try:
            payload = spec.decode(m.subject, m.data)
        except (msgspec.DecodeError, msgspec.ValidationError) as e:
            await bus.dead_letter(spec.durable, m, e)
            if metrics:
                metrics.dead_lettered.labels(metrics.service, spec.durable).inc()
            if errors is not None:
                # kept (dead-lettered) and acted on: malformed input is skipped, an impossible
                # value (a NaN price the contract refused) halts trading
                seq = m.metadata.sequence.stream
                where = f"consumer {spec.durable} decoding {m.subject} (stream seq {seq})"
                await _handle(errors, e, dependency=spec.durable, context=where, key=f"{spec.durable}:{seq}")
            continue
        good.append(Inbound(m.subject, m.metadata.sequence.stream, payload, dict(m.headers or {}), m))
    return good


async def _apply(
    bus: Bus,
    spec: ConsumerSpec,
    batch: list[Inbound],
    on_batch: OnBatch,
    metrics: Metrics | None,
    errors: ErrorHandler | None = None,
) -> list[Inbound]:
    """Apply a batch; return what a transient failure left to try again (empty: all done)."""
    try:
        await on_batch(batch)
    except Exception as e:  # classified: transient -> held and retried; anything else -> isolate, dead-letter, act
        dependency = dependency_of(e, spec.durable)
        info = classify_exception(e, dependency=dependency)
        if info.retryable:
            if errors is not None:  # counted against its dependency (db, bus)
                await _handle(errors, e, dependency=dependency, context=f"consumer {spec.durable}")
            elif metrics:
                metrics.errors.labels(metrics.service, info.category.value, info.reason_code).inc()
            log.warning("transient failure, batch held for retry", extra={"consumer": spec.durable, "error": repr(e)})
            return batch
        if len(batch) > 1:
            # find the poison message: apply one at a time (each apply is atomic)
            for n, inbound in enumerate(batch):
                if await _apply(bus, spec, [inbound], on_batch, metrics, errors):
                    return batch[n:]  # held from here: the ones before it are done (acked)
            return []
        log.exception("handler failed; dead-lettering", extra={"consumer": spec.durable, "reason": info.reason_code})
        await bus.dead_letter(spec.durable, batch[0].msg, e)
        if metrics:
            metrics.dead_lettered.labels(metrics.service, spec.durable).inc()
        if errors is not None:
            # the message is kept (dead-lettered); the action applies: a bug in a decision path
            # (PROGRAMMING_ERROR) or an impossible value (INVARIANT_VIOLATION) halts trading
            where = f"consumer {spec.durable} on {batch[0].subject} (stream seq {batch[0].stream_seq})"
            await _handle(errors, e, dependency=dependency, context=where, key=f"{spec.durable}:{batch[0].stream_seq}")
        elif metrics:
            metrics.errors.labels(metrics.service, info.category.value, info.reason_code).inc()
        return []
    for inbound in batch:
        await inbound.msg.ack()
    if metrics:
        metrics.consumed.labels(metrics.service, spec.durable).inc(len(batch))
    return []


async def _apply_in_order(
    bus: Bus,
    spec: ConsumerSpec,
    batch: list[Inbound],
    on_batch: OnBatch,
    stop: asyncio.Event,
    metrics: Metrics | None,
    errors: ErrorHandler | None,
) -> None:
    """Apply a batch, holding it through transient failures so nothing newer overtakes it.

    While held, the messages are kept ours (in_progress resets their ack_wait). On stop they are
    nak'd: the next run gets them first.
    """
    while batch := await _apply(bus, spec, batch, on_batch, metrics, errors):
        with contextlib.suppress(TimeoutError):  # the retry delay ran out without a stop: try again
            await asyncio.wait_for(stop.wait(), timeout=spec.retry_delay_sec)
        try:
            for inbound in batch:
                await (inbound.msg.nak() if stop.is_set() else inbound.msg.in_progress())
        except Exception as e:  # classified: the bus is down too; redelivery after ack_wait covers it
            info = classify_exception(e, dependency=dependency_of(e, "bus"))
            log.warning("could not keep a held batch", extra={"consumer": spec.durable, "reason": info.reason_code})
        if stop.is_set():
            return


async def run_consumer(
    bus: Bus,
    spec: ConsumerSpec,
    on_batch: OnBatch,
    *,
    stop: asyncio.Event,
    metrics: Metrics | None = None,
    errors: ErrorHandler | None = None,
) -> None:
    """Fetch, decode and hand batches to on_batch until stop is set.

    With `errors` (every service's consumers), a failure goes through the process's error handler:
    counted against its dependency, and a handler bug or impossible value halts trading.
    """
    sub = await subscribe(bus, spec)
    while not stop.is_set():
        try:
            msgs = await fetch_batch(sub, spec.batch, spec.fetch_timeout, spec.unit_end)
        except (nats.errors.TimeoutError, TimeoutError):
            continue  # nothing to fetch (nats-py raises either, depending on where it timed out)
        except nats.errors.ConnectionClosedError:
            if stop.is_set():
                return
            raise
        batch = await _decode_batch(bus, spec, msgs, metrics, errors)
        if batch:
            await _apply_in_order(bus, spec, batch, on_batch, stop, metrics, errors)
