"""The JetStream edge against a real NATS server and Postgres: provision, de-duplication, the
ack policy of STYLE 20, processor idempotency (STYLE 19) and the outbox relay (STYLE 18, 21)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from decimal import Decimal

import msgspec
import nats
import pytest
from nats.js import api

from libs.bus import Bus, ConsumerSpec, Inbound, run_consumer
from libs.bus.consumer import OnBatch, subscribe
from libs.contracts import subjects as sj
from libs.contracts.base import derive_id
from libs.contracts.codec import decode_event, encode
from libs.contracts.control import HaltState
from libs.contracts.marketdata import BarClosed
from libs.contracts.ops import AlertRaised
from libs.db import Store, connect_pool, schema_name
from libs.decide import Ctx
from libs.runtime.clock import FixedClock
from libs.runtime.processor import OutboxRelay, Processor
from tests.support.servers import Namespace, migrate

TS = 1_704_205_860_000_000_000  # 2024-01-02 14:31 UTC
CONSUMER = "test-md"


def bar(symbol: str = "AAPL", n: int = 0, *, close: str = "100.00") -> BarClosed:
    """Build a valid one-minute bar whose id derives from symbol and n."""
    return BarClosed(
        event_id=derive_id("test.bar", symbol, n),
        correlation_id=f"bar-{n}",
        causation_id=f"bar-{n}",
        ts_event=TS + n * 60_000_000_000,
        ts_init=TS + n * 60_000_000_000,
        symbol=symbol,
        bar_start=TS + (n - 1) * 60_000_000_000,
        session="2024-01-02",
        open=Decimal("99.50"),
        high=Decimal("100.50"),
        low=Decimal("99.00"),
        close=Decimal(close),
        volume=1000,
        spread_bps=Decimal("1.5"),
    )


async def eventually(
    check: Callable[[], Awaitable[bool]] | Callable[[], bool], *, timeout: float = 5.0, what: str = ""
) -> None:
    """Poll `check` until it is true or fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or check}")
        await asyncio.sleep(0.02)


@pytest.fixture
async def bus(namespace: Namespace, nats_url: str) -> AsyncIterator[Bus]:
    """Yield a provisioned Bus under the test's prefix."""
    b = await Bus.connect(nats_url, sj.Subjects(namespace.prefix), service="test")
    await b.provision()
    yield b
    await b.close()


def md_spec(bus: Bus, **overrides: object) -> ConsumerSpec:
    """A durable consumer of the test namespace's market-data family."""
    fields: dict[str, object] = dict(
        durable=CONSUMER,
        family=sj.MD,
        filter_subject=bus.subjects.family_wildcard(sj.MD),
        decode=lambda _subject, data: decode_event(data),
        fetch_timeout=0.2,
        retry_delay_sec=0.05,
    )
    fields.update(overrides)
    return ConsumerSpec(**fields)  # type: ignore[arg-type]


@contextlib.asynccontextmanager
async def consuming(bus: Bus, spec: ConsumerSpec, on_batch: OnBatch) -> AsyncIterator[asyncio.Task[None]]:
    """Run a consumer for the duration of the block; fail if it stopped by itself."""
    stop = asyncio.Event()
    task = asyncio.create_task(run_consumer(bus, spec, on_batch, stop=stop))
    try:
        yield task
        assert not task.done(), f"consumer stopped on its own: {task.exception() if task.done() else ''}"
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=5)


async def stream_count(bus: Bus, family: str) -> int:
    return (await bus.js.stream_info(bus.subjects.stream(family))).state.messages


async def stored(bus: Bus, family: str) -> list[api.RawStreamMsg]:
    """Return every message stored in a family's stream, in order."""
    stream = bus.subjects.stream(family)
    info = await bus.js.stream_info(stream)
    if not info.state.messages:
        return []
    return [await bus.js.get_msg(stream, seq) for seq in range(info.state.first_seq, info.state.last_seq + 1)]


async def terminated_advisories(nc: nats.NATS, bus: Bus, durable: str) -> list[dict]:
    """Subscribe to JetStream's MSG_TERMINATED advisories of one consumer; return the live list."""
    seen: list[dict] = []

    async def on_msg(msg) -> None:  # type: ignore[no-untyped-def]
        seen.append(json.loads(msg.data))

    stream = bus.subjects.stream(sj.MD)
    await nc.subscribe(f"$JS.EVENT.ADVISORY.CONSUMER.MSG_TERMINATED.{stream}.{durable}", cb=on_msg)
    await nc.flush()
    return seen


# --- provisioning and publishing -------------------------------------------------------------


def _expected_streams(prefix: str) -> set[str]:
    subjects = sj.Subjects(prefix)
    return {subjects.stream(f) for f in sj.FAMILIES} | {
        f"KV_{subjects.kv(b)}" for b in (sj.KV_CONTROL, sj.KV_BREAKERS, sj.KV_LIMITS)
    }


async def _namespace_streams(js, namespace: Namespace) -> dict[str, api.StreamInfo]:  # type: ignore[no-untyped-def]
    out = {}
    offset = 0
    while page := await js.streams_info(offset=offset):
        offset += len(page)
        out.update(
            {
                i.config.name: i
                for i in page
                if i.config.name.startswith((namespace.stream_prefix, "KV_" + namespace.bucket_prefix))
            }
        )
    return out


async def test_provision_when_run_twice_then_streams_exist_once_and_keep_their_messages(
    namespace: Namespace, nats_url: str, nc: nats.NATS
):
    bus = await Bus.connect(nats_url, sj.Subjects(namespace.prefix), service="test")
    try:
        await bus.provision()
        await bus.publish(bar())

        await bus.provision()

        streams = await _namespace_streams(nc.jetstream(), namespace)
        assert set(streams) == _expected_streams(namespace.prefix)
        md = streams[bus.subjects.stream(sj.MD)]
        assert md.config.subjects == [f"{namespace.prefix}.md.>"]
        assert md.config.duplicate_window == pytest.approx(20 * 60)
        assert md.state.messages == 1  # re-provisioning never wipes a stream
        assert streams[bus.subjects.stream(sj.CTL)].config.subjects == [f"{namespace.prefix}.ctl.>"]
        assert await bus.halt_state() is None  # the control bucket exists and nobody halted
    finally:
        await bus.close()


async def test_provision_when_two_clients_race_then_both_succeed_with_one_set_of_streams(
    namespace: Namespace, nats_url: str, nc: nats.NATS
):
    subjects = sj.Subjects(namespace.prefix)
    first = await Bus.connect(nats_url, subjects, service="one")
    second = await Bus.connect(nats_url, subjects, service="two")
    try:
        await asyncio.gather(first.provision(), second.provision())

        streams = await _namespace_streams(nc.jetstream(), namespace)
        assert set(streams) == _expected_streams(namespace.prefix)
        # both clients see the same control bucket
        await first.put_halt_state(HaltState(halted=True, reason="race", since_ns=1))
        state = await second.halt_state()
        assert state is not None and (state.halted, state.reason) == (True, "race")
    finally:
        await first.close()
        await second.close()


async def test_publish_when_same_event_twice_then_one_message_stored_and_second_ack_is_duplicate(bus: Bus):
    event = bar("MSFT", 7)

    first = await bus.publish(event)
    second = await bus.publish(event)

    assert first.duplicate is not True
    assert second.duplicate is True
    assert second.seq == first.seq
    assert await stream_count(bus, sj.MD) == 1
    [msg] = await stored(bus, sj.MD)
    assert msg.subject == f"{bus.subjects.prefix}.md.bar_closed.MSFT"
    assert msg.headers[sj.H_MSG_ID] == event.event_id
    assert decode_event(msg.data) == event


# --- ack policy at the consumer edge (STYLE 20) ----------------------------------------------


def _bad_bar_with_negative_price() -> bytes:
    good = msgspec.json.decode(encode(bar("NEG", 1)))
    good["low"] = "-1.00"
    return msgspec.json.encode(good)


def _bar_with_unknown_tag() -> bytes:
    body = msgspec.json.decode(encode(bar("TAG", 2)))
    body["type"] = "md.bar_opened.v9"
    return msgspec.json.encode(body)


async def test_consume_when_malformed_unknown_tag_and_negative_price_then_dead_lettered_terminated_and_good_message_handled(
    bus: Bus, nc: nats.NATS
):
    handled: list[object] = []

    async def on_batch(batch: list[Inbound]) -> None:
        handled.extend(i.payload for i in batch)

    terminated = await terminated_advisories(nc, bus, CONSUMER)
    subject = f"{bus.subjects.prefix}.md.bar_closed.X"
    bad = {
        "malformed": b'{"type": "md.bar_closed.v1", not json',
        "unknown tag": _bar_with_unknown_tag(),
        "negative price": _bad_bar_with_negative_price(),
    }
    seqs = {}
    for name, data in bad.items():
        seqs[name] = (await bus.js.publish(subject, data, headers={sj.H_MSG_ID: name})).seq
    good = bar("GOOD", 3)
    await bus.publish(good)

    async with consuming(bus, md_spec(bus), on_batch):
        await eventually(lambda: handled == [good], what="the good bar")
        await eventually(lambda: len(terminated) == 3, what="three terminated advisories")
        info = await bus.js.consumer_info(bus.subjects.stream(sj.MD), CONSUMER)

    assert handled == [good]
    assert sorted(a["stream_seq"] for a in terminated) == sorted(seqs.values())
    assert info.num_ack_pending == 0 and info.num_pending == 0 and info.num_redelivered == 0
    assert info.delivered.consumer_seq == 4  # each message delivered exactly once

    letters = await stored(bus, sj.DLQ)
    assert [m.subject for m in letters] == [f"{bus.subjects.prefix}.dlq.{CONSUMER}"] * 3
    by_seq = {int(m.headers[sj.H_DLQ_STREAM_SEQ]): m for m in letters}
    assert set(by_seq) == set(seqs.values())
    for name, seq in seqs.items():
        letter = by_seq[seq]
        assert letter.data == bad[name], name
        assert letter.headers[sj.H_DLQ_SUBJECT] == subject
        assert letter.headers[sj.H_DLQ_CONSUMER] == CONSUMER
        assert letter.headers[sj.H_DLQ_ERROR].startswith(("DecodeError", "ValidationError")), letter.headers
    assert "md.bar_opened.v9" in by_seq[seqs["unknown tag"]].headers[sj.H_DLQ_ERROR]
    assert "low > 0" in by_seq[seqs["negative price"]].headers[sj.H_DLQ_ERROR]


async def test_consume_when_handler_fails_for_one_message_in_a_batch_then_only_that_message_is_dead_lettered(
    bus: Bus, nc: nats.NATS
):
    calls: list[list[str]] = []
    committed: list[str] = []

    async def on_batch(batch: list[Inbound]) -> None:
        symbols = [i.payload.symbol for i in batch]  # type: ignore[attr-defined]
        calls.append(symbols)
        if "POISON" in symbols:
            raise ValueError("expected a tradable symbol, was POISON")
        committed.extend(symbols)

    terminated = await terminated_advisories(nc, bus, CONSUMER)
    acks = [await bus.publish(bar(s, n)) for n, s in enumerate(["AAA", "POISON", "BBB"])]
    poison_seq = acks[1].seq

    async with consuming(bus, md_spec(bus), on_batch):
        await eventually(lambda: sorted(committed) == ["AAA", "BBB"], what="both good bars")
        await eventually(lambda: len(terminated) == 1, what="the poison bar's termination")
        await eventually(lambda: stream_count(bus, sj.DLQ), what="the dead letter")
        info = await bus.js.consumer_info(bus.subjects.stream(sj.MD), CONSUMER)

    assert calls[0] == ["AAA", "POISON", "BBB"]  # one batch, then isolated one by one
    assert sorted(committed) == ["AAA", "BBB"] and len(committed) == 2
    assert [a["stream_seq"] for a in terminated] == [poison_seq]
    assert info.num_ack_pending == 0 and info.num_pending == 0
    assert info.delivered.consumer_seq == 3  # nothing was redelivered
    [letter] = await stored(bus, sj.DLQ)
    assert letter.headers[sj.H_DLQ_STREAM_SEQ] == str(poison_seq)
    assert letter.headers[sj.H_DLQ_ERROR] == "ValueError: expected a tradable symbol, was POISON"
    assert decode_event(letter.data).symbol == "POISON"  # type: ignore[attr-defined]


async def test_consume_when_handler_raises_transient_error_then_batch_is_held_and_applied_before_newer_messages(
    bus: Bus,
):
    """A transient failure (the database blinked) holds the batch: it is tried again, in place,
    and a bar published meanwhile is applied after it, never before (a nak would let it overtake)."""
    attempts: list[tuple[str, int]] = []
    committed: list[str] = []
    failed_once = asyncio.Event()

    async def on_batch(batch: list[Inbound]) -> None:
        symbols = [i.payload.symbol for i in batch]  # type: ignore[attr-defined]
        attempts.append((",".join(symbols), batch[0].msg.metadata.num_delivered))
        if not failed_once.is_set():
            failed_once.set()
            raise ConnectionError("postgres connection reset")
        committed.extend(symbols)

    await bus.publish(bar("FIRST", 1))

    async with consuming(bus, md_spec(bus, retry_delay_sec=0.3), on_batch):
        await asyncio.wait_for(failed_once.wait(), timeout=5)
        await bus.publish(bar("SECOND", 2))  # while FIRST is held
        await eventually(lambda: committed == ["FIRST", "SECOND"], what="both bars, in order")
        info = await bus.js.consumer_info(bus.subjects.stream(sj.MD), CONSUMER)

    # FIRST tried twice in the same delivery (held, not redelivered), SECOND only after it
    assert attempts == [("FIRST", 1), ("FIRST", 1), ("SECOND", 1)]
    assert info.num_ack_pending == 0 and info.num_pending == 0
    assert info.num_redelivered == 0 and info.delivered.consumer_seq == 2
    assert await stream_count(bus, sj.DLQ) == 0


async def test_consume_when_previous_run_died_holding_messages_then_they_come_first_without_waiting_ack_wait(
    bus: Bus,
):
    """A process killed while it held fetched messages leaves them pending at JetStream; the next
    run starts at the ack floor, so they come before newer ones and without waiting ack_wait."""
    spec = md_spec(bus, ack_wait_sec=60.0)  # a redelivery by timeout would fail the test below
    # the previous run: applies bar 1, then fetches bar 2 and dies before it acks
    await bus.publish(bar("ONE", 1))
    await bus.publish(bar("TWO", 2))
    dead = await subscribe(bus, spec)
    [one] = await dead.fetch(1, timeout=2)
    await one.ack()
    [held] = await dead.fetch(1, timeout=2)
    await dead.unsubscribe()
    await bus.publish(bar("THREE", 3))  # published while the service was down
    stream = bus.subjects.stream(sj.MD)
    before = await bus.js.consumer_info(stream, CONSUMER)

    applied: list[str] = []

    async def on_batch(batch: list[Inbound]) -> None:
        applied.extend(i.payload.symbol for i in batch)  # type: ignore[attr-defined]

    async with consuming(bus, spec, on_batch):
        await eventually(lambda: len(applied) >= 2, what="the held bar and the newer one")
        after = await bus.js.consumer_info(stream, CONSUMER)

    assert (json.loads(held.data)["symbol"], before.num_ack_pending, before.ack_floor.stream_seq) == ("TWO", 1, 1)
    assert applied == ["TWO", "THREE"]  # the held one first; ONE (acked) not again
    assert (after.num_ack_pending, after.num_pending, after.ack_floor.stream_seq) == (0, 0, 3)


# --- processor idempotency and the outbox relay ---------------------------------------------


class Counter(msgspec.Struct, frozen=True, kw_only=True):
    """A toy service state: how many bars it has applied."""

    applied: int = 0
    symbols: tuple[str, ...] = ()


def count_bars(state: Counter, payload: object, ctx: Ctx) -> tuple[Counter, list[AlertRaised]]:
    """Pure step: count the bar and say so in one event."""
    assert isinstance(payload, BarClosed)
    alert = AlertRaised(
        event_id=derive_id("test.counted", payload.event_id),
        correlation_id=payload.correlation_id,
        causation_id=payload.event_id,
        ts_event=payload.ts_event,
        ts_init=ctx.now_ns,
        code="COUNTED",
        severity="info",
        source="counter",
        message=f"counted {payload.symbol}",
    )
    return Counter(applied=state.applied + 1, symbols=(*state.symbols, payload.symbol)), [alert]


@pytest.fixture
async def store(namespace: Namespace, database_url: str) -> AsyncIterator[Store]:
    """Migrate the namespace and yield a Store over one service schema."""
    await asyncio.to_thread(migrate, database_url, namespace.schema_prefix)
    pool = await connect_pool(database_url)
    s = Store(pool, schema_name(namespace.schema_prefix, "signal"))
    await s.check_migrated()
    yield s
    await pool.close()


def processor(bus: Bus, store: Store) -> Processor[Counter]:
    return Processor(
        service="counter",
        store=store,
        relay=OutboxRelay(bus, store),
        bus=bus,
        clock=FixedClock(TS),
        config=None,
        config_sha256="0" * 64,
        state=Counter(),
        state_type=Counter,
    )


async def fetch_inbound(bus: Bus) -> Inbound:
    """Fetch the one message of the MD stream as a consumer would see it."""
    sub = await bus.js.pull_subscribe(
        bus.subjects.family_wildcard(sj.MD), durable="test-fetch", stream=bus.subjects.stream(sj.MD)
    )
    [msg] = await sub.fetch(1, timeout=2)
    return Inbound(msg.subject, msg.metadata.sequence.stream, decode_event(msg.data), dict(msg.headers or {}), msg)


async def test_apply_when_same_stream_seq_twice_then_state_and_outbox_change_once(bus: Bus, store: Store):
    await bus.publish(bar("IDEM", 1))
    inbound = await fetch_inbound(bus)
    proc = processor(bus, store)
    steps: list[int] = []

    def step(state: Counter, payload: object, ctx: Ctx):  # type: ignore[no-untyped-def]
        steps.append(state.applied)
        return count_bars(state, payload, ctx)

    await proc.apply(CONSUMER, [inbound], step)
    await proc.apply(CONSUMER, [inbound], step)  # a redelivery of the same stream_seq

    assert steps == [0]
    assert proc.state == Counter(applied=1, symbols=("IDEM",))
    assert await store.pool.fetchval(f"SELECT count(*) FROM {store.schema}.outbox") == 1
    assert await store.pool.fetchval(f"SELECT count(*) FROM {store.schema}.tracking") == 1
    assert await store.is_tracked(CONSUMER, inbound.stream_seq)
    assert msgspec.json.decode(await store.load_snapshot("state"), type=Counter) == Counter(
        applied=1, symbols=("IDEM",)
    )

    # a restarted process restores the snapshot and still recognises the redelivery
    restarted = processor(bus, store)
    await restarted.restore()
    await restarted.apply(CONSUMER, [inbound], step)
    assert steps == [0]
    assert restarted.state == Counter(applied=1, symbols=("IDEM",))
    assert await store.pool.fetchval(f"SELECT count(*) FROM {store.schema}.outbox") == 1


async def test_apply_when_step_raises_then_nothing_commits_and_a_retry_applies_once(bus: Bus, store: Store):
    await bus.publish(bar("ATOM", 1))
    inbound = await fetch_inbound(bus)
    proc = processor(bus, store)

    def broken(state: Counter, payload: object, ctx: Ctx):  # type: ignore[no-untyped-def]
        raise ConnectionError("lost the database mid-step")

    with pytest.raises(ConnectionError):
        await proc.apply(CONSUMER, [inbound], broken)
    assert not await store.is_tracked(CONSUMER, inbound.stream_seq)
    assert await store.pool.fetchval(f"SELECT count(*) FROM {store.schema}.outbox") == 0
    assert proc.state == Counter()

    await proc.apply(CONSUMER, [inbound], count_bars)
    assert proc.state.applied == 1
    assert await store.pool.fetchval(f"SELECT count(*) FROM {store.schema}.outbox") == 1


async def test_relay_when_outbox_rows_committed_but_never_published_then_flush_publishes_them_once(
    bus: Bus, store: Store
):
    events = [count_bars(Counter(), bar("CRASH", n), Ctx(TS, "counter", None, ""))[1][0] for n in (1, 2)]
    async with store.unit() as uow:  # the process "crashed" right after this commit
        await uow.add_outbox([(e.event_id, bus.subjects.of(e), encode(e), {sj.H_MSG_ID: e.event_id}) for e in events])
    relay = OutboxRelay(bus, store)

    published = await relay.flush()
    again = await relay.flush()

    assert (published, again) == (2, 0)
    messages = await stored(bus, sj.OPS)
    assert [decode_event(m.data) for m in messages] == events
    assert [m.headers[sj.H_MSG_ID] for m in messages] == [e.event_id for e in events]
    assert all(sj.H_EMITTED_AT in m.headers for m in messages)
    assert await store.pending_outbox() == []

    # a crash between publish and mark_published: the re-publish is de-duplicated by Msg-Id
    await store.pool.execute(f"UPDATE {store.schema}.outbox SET published_at = NULL")
    assert await relay.flush() == 2
    assert await stream_count(bus, sj.OPS) == 2


async def test_subscribe_when_a_durable_was_renamed_then_it_starts_after_the_old_ones_ack_floor_and_the_old_one_goes(
    bus: Bus,
):
    """A consumer whose filter changed gets a new name; on its first start it takes over where the
    old one acknowledged up to, so nothing is applied twice (or skipped) across the upgrade."""
    stream = bus.subjects.stream(sj.MD)
    old = md_spec(bus, durable="test-old", filter_subject=bus.subjects.event(sj.MD, "bar_closed"))
    await bus.publish(bar("ONE", 1))
    await bus.publish(bar("TWO", 2))
    old_sub = await subscribe(bus, old)
    for m in await old_sub.fetch(2, timeout=2):
        await m.ack()
    await old_sub.unsubscribe()
    await bus.publish(bar("THREE", 3))  # published while the upgrade was under way
    new = md_spec(bus, durable="test-new", replaces="test-old")

    applied: list[str] = []

    async def on_batch(batch: list[Inbound]) -> None:
        applied.extend(i.payload.symbol for i in batch)  # type: ignore[attr-defined]

    async with consuming(bus, new, on_batch):
        await eventually(lambda: len(applied) >= 1, what="the bar published after the old ack floor")
        await asyncio.sleep(0.3)  # anything taken over twice would show by now
    names = {c.name for c in await bus.js.consumers_info(stream)}

    assert applied == ["THREE"]  # ONE and TWO were the old consumer's: not applied again
    assert "test-old" not in names and "test-new" in names
