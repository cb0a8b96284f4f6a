"""Marketdata's wait in a replay: a command counts as applied once every durable control consumer
has acknowledged it (real JetStream); readers that acknowledge nothing are not waited for, one
seen and then missing is."""

from __future__ import annotations

import asyncio

import pytest
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from libs.bus import Bus
from libs.cli import replay_control
from libs.cli.replay_control import Recorded
from libs.contracts import subjects as sj
from libs.contracts.subjects import Subjects
from services.marketdata.consumers import ControlWait, publish_commands
from tests.support.servers import Namespace

pytestmark = pytest.mark.timeout(60)


async def test_control_wait_when_a_consumer_has_not_acked_then_it_is_named_until_it_does(
    namespace: Namespace, nats_url: str
) -> None:
    bus = await Bus.connect(nats_url, Subjects(namespace.prefix), service="marketdata")
    try:
        await bus.provision()
        stream = bus.subjects.stream(sj.CTL)
        every = f"{namespace.prefix}.{sj.CTL}.>"
        for name, ack in (("probe-control", AckPolicy.EXPLICIT), ("probe-tail", AckPolicy.NONE)):
            await bus.js.add_consumer(
                stream,
                ConsumerConfig(
                    durable_name=name, ack_policy=ack, deliver_policy=DeliverPolicy.ALL, filter_subject=every
                ),
            )
        commands = replay_control.place(
            [(1, 60)], [Recorded(stream_seq=4, stored_ns=2, verb="kill", data=b'{"reason":"x"}')]
        )
        seq = await publish_commands(bus, commands)
        assert seq > 0
        wait, stop = ControlWait(bus), asyncio.Event()
        assert await wait.behind(seq) == ["probe-control"]
        assert await wait.wait(seq, 0.2, stop) == ["probe-control"]  # timed out, still behind

        # said again (a restart between publishing and committing): de-duplicated, same place
        assert await publish_commands(bus, commands) == seq

        sub = await bus.js.pull_subscribe_bind(durable="probe-control", stream=stream)
        (msg,) = await sub.fetch(1, timeout=5)
        assert msg.data == commands[0].body.encode() and msg.headers[sj.H_MSG_ID]
        await msg.ack_sync()
        assert await wait.behind(seq) == []
        assert await wait.wait(seq, 5, stop) == []
        await sub.unsubscribe()

        # a consumer seen once and gone (a service re-creating it at its ack floor) is waited for
        await bus.js.delete_consumer(stream, "probe-control")
        assert await wait.behind(seq) == ["probe-control"]
        stop.set()
        assert await wait.wait(seq, None, stop) == ["probe-control"]  # stopping ends the wait
    finally:
        await bus.close()
