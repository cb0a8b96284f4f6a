"""The cost model's loop through real processes (seed 002 C-TCA-01): fills -> TCA's daily
calibration -> CostModelUpdated -> risk's cost gate blocks an entry; and the local exchange's fill
simulator pricing with a calibration (KEEL_EXCHANGE_COST_MODEL_SOURCE=calibrated).

Real NATS JetStream and Postgres; the events a service upstream would send are published by the
test as that service would (its family, its subjects).
"""

from __future__ import annotations

import asyncio
import json
from decimal import Decimal
from pathlib import Path

import asyncpg
import msgspec
import nats
import pytest
from alpaca.trading.client import TradingClient
from alpaca.trading.enums import OrderSide, TimeInForce
from alpaca.trading.requests import MarketOrderRequest

from libs import costmodel
from libs.bus import Bus
from libs.contracts import subjects as sj
from libs.contracts.base import derive_id
from libs.contracts.subjects import Subjects
from libs.contracts.tca import CostModelUpdated, SymbolCost
from tests.factories import MINUTE_NS, Events, minute
from tests.support.exchange import (
    FRICTIONLESS,
    KEY,
    OPEN_NS,
    SECRET,
    bar_publisher,
    call,
    eventually,
    exchange_env,
    make_bar,
    running_exchange,
)
from tests.support.pipeline import settle
from tests.support.processes import Cluster
from tests.support.servers import Namespace

pytestmark = pytest.mark.timeout(120)

D = Decimal
NEXT_SESSION = minute(0) + 24 * 60 * MINUTE_NS  # 2024-03-06, the open
SETTLE_SEC = 20.0


class Collected:
    """Messages of one subject filter, decoded as JSON, in arrival order."""

    def __init__(self) -> None:
        self.seen: list[dict] = []

    async def on_msg(self, msg) -> None:  # type: ignore[no-untyped-def]
        self.seen.append(json.loads(msg.data))

    def of(self, kind: str) -> list[dict]:
        return [m for m in self.seen if m["type"] == kind]


async def test_loop_when_a_symbols_fills_cost_a_wide_spread_then_next_session_its_entries_are_cost_gated(
    cluster: Cluster, namespace: Namespace, nats_url: str, database_url: str, nc: nats.NATS
):
    # calibration that follows one day's fills in full (for a test that fits in one day)
    cluster.env.update(
        KEEL_TCA_MIN_SAMPLES_FOR_ADAPT="1",
        KEEL_TCA_CALIBRATION_HALFLIFE_SESSIONS="0.01",
        KEEL_TCA_MAX_DAILY_CHANGE="1000",
    )
    bus = await Bus.connect(nats_url, Subjects(namespace.prefix), service="execution")
    await bus.provision()
    risk_out, tca_out = Collected(), Collected()
    await nc.subscribe(f"{namespace.prefix}.risk.>", cb=risk_out.on_msg)
    await nc.subscribe(f"{namespace.prefix}.tca.>", cb=tca_out.on_msg)
    await cluster.start("tca", "risk")
    f = Events(seed=611)
    try:
        # day 1: TCA's first model (the prior), then WILD's orders, quoted 150 bps wide, and
        # AAPL's, 2 bps wide, each filled at the ask (75 and 1 bps over the decision close)
        await bus.publish(f.watermark("execution", minute(1)))
        await bus.publish(f.watermark("risk", minute(1)))  # what risk says when its bar is done
        for n in range(1, 21):
            for symbol, spread, ask in (("WILD", 150, "10.075"), ("AAPL", 2, "10.001")):
                intent = msgspec.structs.replace(
                    f.intent(symbol, "buy", 100, "10", n=n), spread_bps=D(spread), spread_is_proxy=False
                )
                await bus.publish(intent)
                await bus.publish(f.fill(intent, last_qty=100, last_px=ask, cum_qty=100))
        # day 2: execution's first watermark, and risk's -> TCA calibrates on day 1
        await bus.publish(f.watermark("execution", NEXT_SESSION + MINUTE_NS))
        await bus.publish(f.watermark("risk", NEXT_SESSION + MINUTE_NS))
        models = await settle(
            lambda: asyncio.sleep(0, tca_out.of("tca.cost_model_updated.v1")), lambda m: len(m) == 2, SETTLE_SEC
        )
        assert [m["effective_session"] for m in models] == ["2024-03-05", "2024-03-06"]
        wild = next(c for c in models[1]["symbols"] if c["symbol"] == "WILD")
        assert D(wild["spread_bps"]) > 2 * 50 and wild["samples"] == 20

        # risk adopts it, then prices day 2's targets with it
        await settle(
            lambda: cluster["risk"].get_json("/state"),
            lambda s: (s.get("cost_model") or {}).get("effective_session") == "2024-03-06",  # type: ignore[union-attr]
            SETTLE_SEC,
        )
        day2 = "2024-03-06"
        for symbol in ("WILD", "AAPL"):
            target = msgspec.structs.replace(
                f.target(symbol, 100, "10", n=24 * 60 + 2, session=day2), sigma_bps=D(5), bar_volume=100_000
            )
            await bus.publish(target)
        await settle(
            lambda: asyncio.sleep(0, risk_out.seen),
            lambda seen: (
                any(m["type"] == "risk.entry_blocked.v1" for m in seen)
                and any(m["type"] == "risk.order_intent.v1" and m["symbol"] == "AAPL" for m in seen)
            ),
            SETTLE_SEC,
        )
    finally:
        await bus.close()

    (block,) = risk_out.of("risk.entry_blocked.v1")
    assert (block["symbol"], block["reason_code"]) == ("WILD", "COST_GATE_BLOCK")
    assert D(block["expected_cost_bps"]) > 50
    day2_intents = [m for m in risk_out.of("risk.order_intent.v1") if m["bar_ts"] >= NEXT_SESSION]
    assert [m["symbol"] for m in day2_intents] == ["AAPL"] and D(day2_intents[0]["expected_cost_bps"]) < 50

    # TCA measured day 1's orders (final records) and keeps the block for the report
    conn = await asyncpg.connect(database_url)
    try:
        tca = f"{namespace.schema_prefix}_tca"
        blocks = await settle(
            lambda: conn.fetch(f"SELECT symbol, stage, reason, session FROM {tca}.blocks"), bool, SETTLE_SEC
        )
        spread_paid = await conn.fetch(f"SELECT spread_paid_bps, spread_is_proxy FROM {tca}.orders")
        stored = await conn.fetch(f"SELECT effective_session FROM {tca}.cost_models ORDER BY effective_session")
    finally:
        await conn.close()
    assert [tuple(b) for b in blocks] == [("WILD", "risk", "COST_GATE_BLOCK", day2)]
    assert len(spread_paid) == 40 and {(r[0], r[1]) for r in spread_paid} == {
        (D("75.0000"), False),
        (D("1.0000"), False),
    }
    assert [r[0] for r in stored] == ["2024-03-05", "2024-03-06"]


def calibration(spread: str) -> CostModelUpdated:
    cost = SymbolCost(symbol="AAPL", spread_bps=D(spread), slippage_bps=D(0), vol_coef=D(0), impact_coef=D(0))
    return CostModelUpdated(
        event_id=derive_id("it-calibration", spread),
        correlation_id="it",
        causation_id="it",
        ts_event=OPEN_NS,
        ts_init=OPEN_NS,
        session="2024-03-04",
        effective_session="2024-03-05",
        calibrated_ts=OPEN_NS,
        default=costmodel.PRIOR,
        symbols=(cost,),
    )


@pytest.mark.parametrize(("source", "price"), [("static", "100.05"), ("calibrated", "101.00")])
async def test_exchange_when_cost_model_source_then_fills_pay_the_configured_or_calibrated_spread(
    namespace: Namespace, nats_url: str, database_url: str, tmp_path: Path, source: str, price: str
):
    env = await exchange_env(namespace, nats_url, database_url, **FRICTIONLESS, KEEL_EXCHANGE_COST_MODEL_SOURCE=source)
    async with bar_publisher(namespace, nats_url) as md, running_exchange(env, tmp_path / "exchange.log") as ex:
        tca = await Bus.connect(nats_url, Subjects(namespace.prefix), service="tca")
        try:
            await tca.publish(calibration("200"))  # AAPL: 200 bps wide; the configured proxy is 10
        finally:
            await tca.close()
        if source == "calibrated":
            js = md.js
            stream = Subjects(namespace.prefix).stream(sj.TCA)

            async def applied() -> int:
                return (await js.consumer_info(stream, "exchange-costs")).ack_floor.stream_seq

            assert await settle(applied, lambda seq: seq >= 1, SETTLE_SEC) >= 1
        client = TradingClient(KEY, SECRET, paper=True, url_override=ex.url)
        await md.publish(make_bar("AAPL", 1, "100"))
        order = await call(
            client.submit_order,
            MarketOrderRequest(symbol="AAPL", qty=10, side=OrderSide.BUY, time_in_force=TimeInForce.DAY),
        )
        await md.publish(make_bar("AAPL", 2, "100"))  # harness bars carry no quoted spread
        filled = await eventually(lambda: (o := client.get_order_by_id(order.id)).filled_at is not None and o)

    assert filled.filled_avg_price is not None and D(str(filled.filled_avg_price)) == D(price)
