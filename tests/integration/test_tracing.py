"""W3C trace context rides from a consumed message, through Processor.apply, onto the events it causes."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from decimal import Decimal

import msgspec
import pytest

from libs.bus import Bus, ConsumerSpec, Inbound, run_consumer
from libs.contracts import subjects as sj
from libs.contracts.base import derive_id
from libs.contracts.codec import decode_event
from libs.contracts.marketdata import BarClosed
from libs.contracts.ops import AlertRaised
from libs.db import Store, connect_pool, schema_name
from libs.decide import Ctx
from libs.obs import tracing
from libs.runtime.clock import FixedClock
from libs.runtime.processor import OutboxRelay, Processor
from tests.support.servers import Namespace, migrate

TS = 1_704_205_860_000_000_000
CONSUMER = "tracer-md"
# two upstream traces, as an upstream service's span would have written them
PARENTS = {
    "AAPL": ("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"),
    "MSFT": ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"),
}


class Seen(msgspec.Struct, frozen=True, kw_only=True):
    """Toy state: how many bars were seen."""

    bars: int = 0


def bar(symbol: str) -> BarClosed:
    return BarClosed(
        event_id=derive_id("trace.bar", symbol),
        correlation_id="bar-1",
        causation_id="bar-1",
        ts_event=TS,
        ts_init=TS,
        symbol=symbol,
        bar_start=TS - 60_000_000_000,
        session="2024-01-02",
        open=Decimal("10"),
        high=Decimal("11"),
        low=Decimal("9"),
        close=Decimal("10.5"),
        volume=100,
        spread_bps=Decimal("2"),
    )


def note_bar(state: Seen, payload: object, ctx: Ctx) -> tuple[Seen, list[AlertRaised]]:
    assert isinstance(payload, BarClosed)
    return Seen(bars=state.bars + 1), [
        AlertRaised(
            event_id=derive_id("trace.noted", payload.event_id),
            correlation_id=payload.correlation_id,
            causation_id=payload.event_id,
            ts_event=payload.ts_event,
            ts_init=ctx.now_ns,
            code="NOTED",
            severity="info",
            source="tracer",
            message=payload.symbol,
        )
    ]


def parse_traceparent(value: str) -> tuple[str, str, str]:
    version, trace_id, span_id, flags = value.split("-")
    assert version == "00" and len(trace_id) == 32 and len(span_id) == 16, value
    return trace_id, span_id, flags


@pytest.fixture
async def wired(namespace: Namespace, nats_url: str, database_url: str) -> AsyncIterator[tuple[Bus, Processor[Seen]]]:
    tracing.setup_tracing("test")
    await asyncio.to_thread(migrate, database_url, namespace.schema_prefix)
    bus = await Bus.connect(nats_url, sj.Subjects(namespace.prefix), service="tracer")
    await bus.provision()
    pool = await connect_pool(database_url)
    store = Store(pool, schema_name(namespace.schema_prefix, "signal"))
    processor = Processor(
        service="tracer",
        store=store,
        relay=OutboxRelay(bus, store),
        bus=bus,
        clock=FixedClock(TS),
        config=None,
        config_sha256="",
        state=Seen(),
        state_type=Seen,
    )
    try:
        yield bus, processor
    finally:
        await bus.close()
        await pool.close()


@contextlib.asynccontextmanager
async def consuming(bus: Bus, processor: Processor[Seen]) -> AsyncIterator[None]:
    spec = ConsumerSpec(
        durable=CONSUMER,
        family=sj.MD,
        filter_subject=bus.subjects.family_wildcard(sj.MD),
        decode=lambda _s, data: decode_event(data),
        fetch_timeout=0.2,
    )

    async def on_batch(batch: list[Inbound]) -> None:
        await processor.apply(CONSUMER, batch, note_bar)

    stop = asyncio.Event()
    task = asyncio.create_task(run_consumer(bus, spec, on_batch, stop=stop))
    try:
        yield
        assert not task.done(), "consumer stopped on its own"
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=5)


async def test_apply_when_inbound_carries_traceparent_then_caused_events_continue_its_trace_in_a_new_span(wired):
    bus, processor = wired
    for symbol, (trace_id, span_id) in PARENTS.items():
        await bus.publish(bar(symbol), headers={sj.H_TRACEPARENT: f"00-{trace_id}-{span_id}-01"})

    async with consuming(bus, processor):
        deadline = time.monotonic() + 5
        while processor.state.bars < len(PARENTS):
            assert time.monotonic() < deadline, "the consumer never applied both bars"
            await asyncio.sleep(0.02)
    assert await processor.relay.flush() == len(PARENTS)

    stream = bus.subjects.stream(sj.OPS)
    info = await bus.js.stream_info(stream)
    assert info.state.messages == len(PARENTS)
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        msg = await bus.js.get_msg(stream, seq)
        symbol = decode_event(msg.data).message  # type: ignore[attr-defined]
        parent_trace, parent_span = PARENTS[symbol]
        trace_id, span_id, flags = parse_traceparent(msg.headers[sj.H_TRACEPARENT])
        assert trace_id == parent_trace, symbol  # same trace as the message that caused it
        assert span_id not in (parent_span, "0" * 16), symbol  # the consumer's own span
        assert flags == "01"
        assert tracing.trace_id(msg.headers) == parent_trace
        assert msg.headers[sj.H_MSG_ID] == decode_event(msg.data).event_id
    # trace context lives only in headers: the payload is the same whatever the trace
    assert "traceparent" not in msg.data.decode()


async def test_apply_when_inbound_has_no_traceparent_then_events_start_a_trace_of_their_own(wired):
    bus, processor = wired
    await bus.publish(bar("AAPL"))  # published outside any span

    async with consuming(bus, processor):
        deadline = time.monotonic() + 5
        while processor.state.bars < 1:
            assert time.monotonic() < deadline, "the consumer never applied the bar"
            await asyncio.sleep(0.02)
    await processor.relay.flush()

    msg = await bus.js.get_msg(bus.subjects.stream(sj.OPS), 1)
    trace_id, span_id, _ = parse_traceparent(msg.headers[sj.H_TRACEPARENT])
    assert trace_id != "0" * 32 and span_id != "0" * 16
    assert trace_id not in {t for t, _ in PARENTS.values()}
