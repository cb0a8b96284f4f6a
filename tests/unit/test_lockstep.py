"""The lockstep's pure parts: the fill lane (FillsDone) hop by hop, TCA's watermark, risk's gate,
marketdata's wait list, replay's event-time ts_init and the replay digest."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace

import msgspec
import pytest

from libs.cli import replay
from libs.contracts.codec import encode
from libs.contracts.ops import FillsDone, Watermark
from libs.runtime.processor import Processor
from services.exchange.handlers import fills_done as exchange_fills_done
from services.execution import handlers as execution
from services.execution.config import ExecConfig
from services.execution.state import ExecState
from services.marketdata.config import MdConfig
from services.oms import handlers as oms
from services.oms.config import OmsConfig
from services.risk import handlers as risk
from services.risk.config import RiskConfig
from services.risk.consumers import Lockstep
from services.risk.state import RiskState
from services.tca import handlers as tca
from services.tca.config import TcaConfig
from services.tca.state import TcaState
from tests.factories import Events, ctx, minute, oms_state

E = Events()


def test_exchange_fills_done_when_built_then_event_time_only_and_names_the_orders() -> None:
    done = exchange_fills_done(minute(3), ["b-2", "b-1"])

    assert (done.source, done.bar_ts, done.ts_event, done.ts_init) == ("exchange", minute(3), minute(3), minute(3))
    assert done.orders == ("b-2", "b-1")
    assert done.event_id != exchange_fills_done(minute(3), ["b-1"]).event_id  # the orders are its content


def test_execution_step_when_the_exchanges_fills_done_then_forwarded_once_as_its_own() -> None:
    c = ctx("execution", ExecConfig())
    state, out = execution.step(ExecState(), E.fills_done("exchange", minute(2), "b-1"), c)

    assert [(type(e), e.source, e.bar_ts, e.orders) for e in out] == [(FillsDone, "execution", minute(2), ())]
    assert state.fills_done == minute(2)
    _, again = execution.step(state, E.fills_done("exchange", minute(1)), c)
    assert again == []  # an older one (a redelivery) is not forwarded again


def test_execution_step_when_its_own_or_another_fills_done_then_nothing() -> None:
    state, out = execution.step(ExecState(), E.fills_done("execution", minute(2)), ctx("execution", ExecConfig()))

    assert out == [] and state.fills_done == 0


def test_oms_step_when_executions_fills_done_then_forwarded_after_the_reports_before_it() -> None:
    c = ctx("oms", OmsConfig())
    state, out = oms.step(oms_state(), E.fills_done("execution", minute(4)), c)

    assert [(e.source, e.bar_ts) for e in out if isinstance(e, FillsDone)] == [("oms", minute(4))]
    assert state.fills_done == minute(4)
    same, ignored = oms.step(oms_state(), E.fills_done("exchange", minute(4), "b-1"), c)
    assert ignored == [] and same.fills_done == 0  # the exchange's goes through execution first


def test_risk_step_when_the_oms_fills_done_or_tcas_watermark_then_recorded_not_forwarded() -> None:
    c = ctx("risk", RiskConfig())
    state, out = risk.step(RiskState(), E.fills_done("oms", minute(5)), c)
    state, out2 = risk.step(state, E.watermark("tca", minute(4)), c)

    assert out == [] and out2 == []
    assert (state.fills_done, state.tca_watermark, state.last_watermark) == (minute(5), minute(4), 0)
    state, oms_wm = risk.step(state, E.watermark("oms", minute(5)), c)
    assert oms_wm == [] and state.last_watermark == 0  # the OMS's watermark on risk-oms is only read
    state, fwd = risk.step(state, E.watermark("signal", minute(5)), c)
    assert [(e.source, e.bar_ts) for e in fwd] == [("risk", minute(5))] and state.last_watermark == minute(5)


def _gate(state: RiskState, *, enabled: bool = True) -> Lockstep:
    return Lockstep(SimpleNamespace(state=state), enabled=enabled)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("fills_done", "tca_watermark", "ready"),
    [
        (minute(5), minute(4), True),
        (minute(4), minute(4), False),  # a fill of bar 5 may still be on its way to the positions
        (minute(5), minute(3), False),  # a cost model made after bar 4 may not be adopted yet
        (minute(6), minute(6), True),
    ],
)
def test_lockstep_ready_when_the_fill_lane_and_tca_stand_then_bar_5_goes_only_once_both_reached_it(
    fills_done: int, tca_watermark: int, ready: bool
) -> None:
    state = RiskState(fills_done=fills_done, tca_watermark=tca_watermark, last_watermark=minute(4))

    assert _gate(state).ready(minute(5)) is ready
    assert _gate(state, enabled=False).ready(minute(5)) is True  # KEEL_LOCKSTEP off: never held


async def test_lockstep_wait_when_the_fill_lane_arrives_later_then_the_bar_is_released() -> None:
    holder = SimpleNamespace(state=RiskState(last_watermark=minute(1), tca_watermark=minute(1)))
    gate = Lockstep(holder, enabled=True)  # type: ignore[arg-type]
    waiting = asyncio.create_task(gate.wait(minute(2)))
    await asyncio.sleep(0.05)
    assert not waiting.done()

    holder.state = msgspec.structs.replace(holder.state, fills_done=minute(2))
    gate.changed.set()
    await asyncio.wait_for(waiting, 1.0)


def test_tca_own_watermark_when_its_inputs_stand_at_a_bar_never_said_then_said_once() -> None:
    c = ctx("tca", TcaConfig())
    state = TcaState(md_watermark=minute(7), exec_watermark=minute(6), risk_watermark=minute(6))

    state, out = tca.own_watermark(state, [], c)  # at start: a state from before TCA had a watermark
    _, again = tca.own_watermark(state, [], c)

    assert [(e.source, e.bar_ts) for e in out] == [("tca", minute(6))] and again == []


def test_tca_watermark_when_every_input_reached_a_bar_then_emitted_once_after_what_they_caused() -> None:
    c = ctx("tca", TcaConfig())
    state, out = tca.step(TcaState(), E.watermark("marketdata", minute(3)), c)
    state, out2 = tca.step(state, E.watermark("risk", minute(3)), c)
    assert [e for e in [*out, *out2] if isinstance(e, Watermark)] == []  # execution has not reached it

    state, out3 = tca.step(state, E.watermark("execution", minute(2)), c)
    assert [(e.source, e.bar_ts) for e in out3 if isinstance(e, Watermark)] == [("tca", minute(2))]
    assert isinstance(out3[-1], Watermark)  # last: anything the watermark caused goes out before it
    state, out4 = tca.step(state, E.watermark("execution", minute(3)), c)
    assert [(e.source, e.bar_ts) for e in out4 if isinstance(e, Watermark)] == [("tca", minute(3))]
    _, out5 = tca.step(state, E.watermark("marketdata", minute(3)), c)
    assert out5 == []


def test_md_config_when_wait_for_auto_or_listed_then_those_are_waited_for_and_unknown_refused() -> None:
    assert MdConfig().waits(lockstep=True) == ("signal", "risk", "oms", "execution", "tca")
    assert MdConfig().waits(lockstep=False) == ("execution",)  # a TCA outage never stops live bars
    assert MdConfig(wait_for="execution, tca").waits(lockstep=True) == ("execution", "tca")
    assert MdConfig(wait_for="").waits(lockstep=True) == ()
    with pytest.raises(msgspec.ValidationError, match="KEEL_MD_WAIT_FOR"):
        msgspec.convert({"wait_for": "execution,exchange"}, MdConfig)


def test_processor_stamp_when_replay_then_ts_init_is_the_event_time_else_untouched() -> None:
    wm = msgspec.structs.replace(E.watermark("risk", minute(2)), ts_init=123)

    (stamped,) = Processor.stamp(SimpleNamespace(event_time_only=True), [wm])  # type: ignore[arg-type]
    (kept,) = Processor.stamp(SimpleNamespace(event_time_only=False), [wm])  # type: ignore[arg-type]

    assert stamped.ts_init == minute(2) and stamped.event_id == wm.event_id
    assert kept.ts_init == 123


def _messages(*events: object) -> list[tuple[int, str, bytes]]:
    return [(n, "s", encode(e)) for n, e in enumerate(events)]  # type: ignore[arg-type]


def test_replay_digest_when_the_same_events_arrive_in_another_order_then_the_same_digest() -> None:
    i1 = E.intent("AAPL", "buy", 10, "100")
    i2 = E.intent("MSFT", "buy", 5, "200")
    fill = E.fill(i1, last_qty=10, last_px="100.01", cum_qty=10)
    decision = E.decision(i1)
    wm = E.watermark("risk", minute(1))

    a = replay.canonical(_messages(i1, i2, fill, decision, wm))
    b = replay.canonical(_messages(wm, decision, fill, i2, i1))

    assert a == b and replay.digests(a) == replay.digests(b)
    assert [json.loads(x)["type"] for x in a["intents"]] == ["risk.order_intent.v1"] * 2
    assert [json.loads(x)["type"] for x in a["decisions"]] == ["oms.pretrade_decision.v1"]
    assert [json.loads(x)["type"] for x in a["fills"]] == ["exec.order_filled.v1"]


def test_replay_digest_when_one_field_of_one_fill_differs_then_the_digest_differs() -> None:
    i1 = E.intent("AAPL", "buy", 10, "100")
    one = replay.digests(replay.canonical(_messages(i1, E.fill(i1, last_qty=10, last_px="100.01", cum_qty=10))))
    other = replay.digests(replay.canonical(_messages(i1, E.fill(i1, last_qty=10, last_px="100.02", cum_qty=10))))

    assert one["intents"] == other["intents"]
    assert one["fills"] != other["fills"] and one["digest"] != other["digest"]


def test_stalled_alert_when_a_bar_is_held_then_it_names_what_is_missing_once_per_bar() -> None:
    s = RiskState(fills_done=minute(4), tca_watermark=minute(4), last_watermark=minute(4))
    alert = risk.lockstep_stalled(s, minute(5))

    assert alert.code == "LOCKSTEP_STALLED" and "fill lane" in alert.message and "TCA" not in alert.message
    assert (
        alert.event_id == risk.lockstep_stalled(s, minute(5)).event_id != risk.lockstep_stalled(s, minute(6)).event_id
    )


def test_replay_canonical_when_an_event_was_stored_twice_then_it_counts_once() -> None:
    i1 = E.intent("AAPL", "buy", 10, "100")

    assert replay.canonical(_messages(i1, i1)) == replay.canonical(_messages(i1))


def test_exchange_config_when_calibrated_costs_under_lockstep_then_refused_naming_the_key() -> None:
    from services.exchange.config import ExchangeConfig

    calibrated = msgspec.convert({"cost_model_source": "calibrated"}, ExchangeConfig)

    assert "KEEL_EXCHANGE_COST_MODEL_SOURCE=calibrated" in calibrated.lockstep_problem(True)
    assert calibrated.lockstep_problem(False) == "" and ExchangeConfig().lockstep_problem(True) == ""


def test_common_config_when_lockstep_in_live_mode_then_refused() -> None:
    from libs.config import CommonConfig

    with pytest.raises(msgspec.ValidationError, match="KEEL_LOCKSTEP"):
        msgspec.convert({"lockstep": True, "execution_mode": "live"}, CommonConfig)
    assert CommonConfig(lockstep=True, execution_mode="replay").lockstep
