"""The exchange's trade_updates derivation, its listener hub and the fault plan: pure, no I/O."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import msgspec
import pytest
from alpaca.trading.models import TradeUpdate
from msgspec.structs import replace

from libs import sessions
from services.exchange import handlers
from services.exchange.api import ApiError
from services.exchange.faults import FaultPlan, FaultRule, Faults, frame_copies, parse_rule
from services.exchange.state import ExchangeOrder, ExchangeState, Fill, Position, initial_state
from services.exchange.stream import Hub, trade_updates

D = Decimal
ACCOUNT = "unit-account"
T0 = 1_709_649_060_000_000_000  # 2024-03-05T14:31:00Z
MINUTE = sessions.MINUTE_NS


def order(cid: str, seq: int, *, qty: int = 10, side: str = "buy", symbol: str = "AAPL", **fields) -> ExchangeOrder:  # type: ignore[no-untyped-def]
    base = ExchangeOrder(
        id=handlers.order_id_for(ACCOUNT, cid),
        client_order_id=cid,
        seq=seq,
        symbol=symbol,
        side=side,  # type: ignore[arg-type]
        type="market",
        time_in_force="day",
        qty=qty,
        position_intent="buy_to_open" if side == "buy" else "sell_to_open",
        created_at=T0,
        submitted_at=T0,
        updated_at=T0,
    )
    return replace(base, **fields)


def fill(o: ExchangeOrder, n: int, qty: int, price: str, ts: int) -> Fill:
    return Fill(execution_id=handlers.execution_id_for(o.id, n), qty=qty, price=D(price), ts=ts)


def filled(o: ExchangeOrder, *fills: Fill) -> ExchangeOrder:
    qty = sum(f.qty for f in fills)
    avg = sum((f.qty * f.price for f in fills), D(0)) / qty
    status = "filled" if qty == o.qty else "partially_filled"
    last = fills[-1].ts
    return replace(
        o,
        fills=fills,
        filled_qty=qty,
        filled_avg_price=avg,
        status=status,
        updated_at=last,
        filled_at=last if status == "filled" else None,
    )


def state(*orders: ExchangeOrder, positions: dict[str, int] | None = None) -> ExchangeState:
    base = initial_state(ACCOUNT, D(100000))
    return replace(
        base,
        orders={o.id: o for o in orders},
        by_client_id={o.client_order_id: o.id for o in orders},
        positions={s: Position(symbol=s, qty=q, avg_entry_price=D(100)) for s, q in (positions or {}).items()},
    )


def events(updates: list[dict]) -> list[tuple[str, str]]:
    return [(u["event"], u["order"]["client_order_id"]) for u in updates]


# --- trade_updates ---------------------------------------------------------------------------


def test_trade_updates_when_order_accepted_then_new_event_without_fill_fields() -> None:
    o = order("a", 1)

    updates = trade_updates(state(), state(o), [o])

    assert updates == [
        {
            "event": "new",
            "order": updates[0]["order"],
            "timestamp": "2024-03-05T14:31:00Z",
        }
    ]
    assert updates[0]["order"]["id"] == o.id and updates[0]["order"]["status"] == "new"
    parsed = TradeUpdate(**updates[0])  # what alpaca-py's TradingStream builds from the frame
    assert parsed.event == "new" and parsed.execution_id is None and parsed.position_qty is None


def test_trade_updates_when_partial_then_final_fill_in_two_commits_then_partial_fill_then_fill() -> None:
    o = order("a", 1)
    f1 = fill(o, 1, 4, "100.05", T0 + MINUTE)
    f2 = fill(o, 2, 6, "100.15", T0 + 2 * MINUTE)
    s0 = state(o)
    s1 = state(filled(o, f1), positions={"AAPL": 4})
    s2 = state(filled(o, f1, f2), positions={"AAPL": 10})

    first = trade_updates(s0, s1, [s1.orders[o.id]])
    second = trade_updates(s1, s2, [s2.orders[o.id]])

    assert [u["event"] for u in first] == ["partial_fill"]
    assert {k: first[0][k] for k in ("execution_id", "price", "qty", "position_qty", "timestamp")} == {
        "execution_id": f1.execution_id,
        "price": "100.05",
        "qty": "4",
        "position_qty": "4",
        "timestamp": "2024-03-05T14:32:00Z",
    }
    assert first[0]["order"]["status"] == "partially_filled" and first[0]["order"]["filled_qty"] == "4"
    assert [u["event"] for u in second] == ["fill"]
    assert (second[0]["execution_id"], second[0]["price"], second[0]["qty"], second[0]["position_qty"]) == (
        f2.execution_id,
        "100.15",
        "6",
        "10",
    )
    assert second[0]["order"]["status"] == "filled" and second[0]["order"]["filled_qty"] == "10"
    parsed = TradeUpdate(**second[0])
    assert str(parsed.execution_id) == f2.execution_id and parsed.position_qty == 10 and parsed.qty == 6


def test_trade_updates_when_two_fills_in_one_commit_then_each_event_shows_the_order_as_of_its_fill() -> None:
    o = order("a", 1)
    f1 = fill(o, 1, 4, "100", T0 + MINUTE)
    f2 = fill(o, 2, 6, "101", T0 + 2 * MINUTE)
    after = state(filled(o, f1, f2), positions={"AAPL": 10})

    updates = trade_updates(state(o), after, [after.orders[o.id]])

    assert [(u["event"], u["qty"], u["position_qty"]) for u in updates] == [
        ("partial_fill", "4", "4"),
        ("fill", "6", "10"),
    ]
    first = updates[0]["order"]
    assert (first["status"], first["filled_qty"], first["filled_avg_price"], first["filled_at"]) == (
        "partially_filled",
        "4",
        "100",
        None,
    )
    assert updates[1]["order"]["filled_avg_price"] == "100.6"


def test_trade_updates_when_two_orders_of_a_symbol_fill_then_position_qty_follows_execution_order() -> None:
    buy = order("buy", 1, qty=10)
    sell = order("sell", 2, qty=3, side="sell")
    after = state(
        filled(buy, fill(buy, 1, 10, "100", T0 + MINUTE)),
        filled(sell, fill(sell, 1, 3, "100", T0 + MINUTE)),
        positions={"AAPL": 7},
    )

    updates = trade_updates(state(buy, sell), after, [after.orders[sell.id], after.orders[buy.id]])

    assert [(e, cid) for e, cid in events(updates)] == [("fill", "buy"), ("fill", "sell")]  # by seq
    assert [u["position_qty"] for u in updates] == ["10", "7"]


def test_trade_updates_when_position_closed_then_position_qty_zero() -> None:
    sell = order("sell", 1, qty=5, side="sell")
    after = state(filled(sell, fill(sell, 1, 5, "99", T0 + MINUTE)))

    updates = trade_updates(state(sell, positions={"AAPL": 5}), after, [after.orders[sell.id]])

    assert updates[0]["position_qty"] == "0"


@pytest.mark.parametrize("status", ["canceled", "expired", "replaced", "done_for_day", "pending_cancel"])
def test_trade_updates_when_status_changes_then_event_of_that_name_at_updated_at(status: str) -> None:
    o = order("a", 1)
    later = replace(o, status=status, updated_at=T0 + 5 * MINUTE)

    updates = trade_updates(state(o), state(later), [later])

    assert [(u["event"], u["timestamp"]) for u in updates] == [(status, "2024-03-05T14:36:00Z")]
    assert updates[0]["order"]["status"] == status
    assert "execution_id" not in updates[0] and "position_qty" not in updates[0]


def test_trade_updates_when_partially_filled_then_canceled_in_one_commit_then_partial_fill_then_canceled() -> None:
    o = order("ioc", 1, time_in_force="ioc")
    f1 = fill(o, 1, 4, "100", T0 + MINUTE)
    done = replace(filled(o, f1), status="canceled", canceled_at=T0 + MINUTE, updated_at=T0 + MINUTE)
    after = state(done, positions={"AAPL": 4})

    updates = trade_updates(state(o), after, [done])

    assert [u["event"] for u in updates] == ["partial_fill", "canceled"]
    assert updates[0]["order"]["status"] == "partially_filled" and updates[0]["order"]["canceled_at"] is None
    assert updates[1]["order"]["status"] == "canceled"


def test_trade_updates_when_held_leg_activates_then_new_and_while_held_nothing() -> None:
    leg = order("leg", 2, side="sell", status="held")
    active = replace(leg, status="new", updated_at=T0 + MINUTE)

    assert trade_updates(state(), state(leg), [leg]) == []
    updates = trade_updates(state(leg), state(active), [active])

    assert [(u["event"], u["timestamp"]) for u in updates] == [("new", "2024-03-05T14:32:00Z")]


def test_trade_updates_when_order_unchanged_or_status_repeats_then_nothing() -> None:
    o = order("a", 1)
    canceled = replace(o, status="canceled")

    assert trade_updates(state(o), state(o), [o]) == []
    assert trade_updates(state(canceled), state(canceled), [canceled]) == []


def test_trade_updates_when_many_orders_change_then_ordered_by_seq_then_fill() -> None:
    a, b, c = order("a", 1), order("b", 2), order("c", 3, symbol="MSFT")
    a2 = replace(a, status="canceled", updated_at=T0 + MINUTE)
    b2 = filled(b, fill(b, 1, 10, "100", T0 + MINUTE))
    after = state(a2, b2, c, positions={"AAPL": 10})

    updates = trade_updates(state(a, b), after, [c, b2, a2])

    assert events(updates) == [("canceled", "a"), ("fill", "b"), ("new", "c")]


# --- hub -------------------------------------------------------------------------------------


class FakeSocket:
    def __init__(self, *, block: bool = False) -> None:
        self.sent: list[bytes] = []
        self.closed: tuple[int, str | None] | None = None
        self.block = asyncio.Event() if block else None

    async def send_bytes(self, data: bytes) -> None:
        if self.block is not None:
            await self.block.wait()
        self.sent.append(data)

    async def close(self, code: int = 1000, reason: str | None = None) -> None:
        self.closed = (code, reason)

    def frames(self) -> list[dict]:
        return [msgspec.json.decode(b) for b in self.sent]


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_hub_when_publishing_then_only_listeners_of_trade_updates_get_frames_in_order() -> None:
    hub = Hub()
    listening, idle = FakeSocket(), FakeSocket()
    a = hub.connect(listening, "a")
    hub.connect(idle, "b")
    hub.listen(a, ["trade_updates", "account_updates"])

    hub.publish([{"event": "new", "n": 1}, {"event": "fill", "n": 2}])
    await settle()

    assert listening.frames() == [
        {"stream": "listening", "data": {"streams": ["trade_updates"]}},
        {"stream": "trade_updates", "data": {"event": "new", "n": 1}},
        {"stream": "trade_updates", "data": {"event": "fill", "n": 2}},
    ]
    assert idle.frames() == []
    await hub.close()
    assert listening.closed is not None and idle.closed is not None


async def test_hub_when_a_listener_overflows_then_it_is_disconnected_and_others_keep_receiving() -> None:
    hub = Hub(queue_size=2)
    slow, fast = FakeSocket(block=True), FakeSocket()
    for sock in (slow, fast):
        hub.listen(hub.connect(sock), ["trade_updates"])
    await settle()  # the slow sender is now stuck sending its listening ack

    for i in range(3):  # the fast sender keeps up; the slow one's queue holds 2
        hub.publish([{"n": i}])
        await settle()

    assert slow.closed is not None and slow.closed[0] == 1013
    assert [x.socket for x in hub.listeners] == [fast]
    assert [f["data"] for f in fast.frames()[1:]] == [{"n": i} for i in range(3)]
    await hub.close()


async def test_hub_when_ws_faults_then_frames_dropped_duplicated_or_swallowed() -> None:
    faults = Faults(enabled=True)
    hub = Hub(faults)
    sock = FakeSocket()
    hub.listen(hub.connect(sock), ["trade_updates"])
    faults.add(FaultRule(kind="ws_drop", frames=1))
    faults.add(FaultRule(kind="ws_duplicate", frames=1))

    hub.publish([{"n": 1}, {"n": 2}, {"n": 3}])
    await settle()

    assert [f["data"] for f in sock.frames()[1:]] == [{"n": 2}, {"n": 2}, {"n": 3}]
    faults.add(FaultRule(kind="ws_silent", count=0))
    hub.publish([{"n": 4}, {"n": 5}])
    faults.clear()
    hub.publish([{"n": 6}])
    await settle()
    assert [f["data"] for f in sock.frames()[4:]] == [{"n": 6}]
    await hub.close()


async def test_hub_when_nobody_listens_then_ws_rules_are_not_consumed() -> None:
    faults = Faults(enabled=True)
    hub = Hub(faults)
    faults.add(FaultRule(kind="ws_drop"))

    hub.publish([{"n": 1}])

    assert [f.remaining for f in faults.plan.faults] == [1]


# --- fault plan ------------------------------------------------------------------------------


def test_fault_plan_when_rule_matches_then_fires_count_times_then_is_gone() -> None:
    plan, added = FaultPlan().add(FaultRule(kind="status", status=429, method="post", path="/v2/orders", count=2))

    plan, miss_method = plan.take_http("GET", "/v2/orders")
    plan, miss_path = plan.take_http("POST", "/v2/orders/x")
    plan, first = plan.take_http("POST", "/v2/orders")
    plan, second = plan.take_http("POST", "/v2/orders")
    plan, third = plan.take_http("POST", "/v2/orders")

    assert (added.id, added.remaining) == (1, 2)
    assert miss_method is None and miss_path is None and third is None
    assert first is not None and (first.remaining, first.fired) == (1, 1)
    assert second is not None and (second.remaining, second.fired) == (0, 2)
    assert plan.faults == ()


def test_fault_plan_when_prefix_and_wildcards_then_oldest_matching_fires() -> None:
    plan, _ = FaultPlan().add(FaultRule(kind="delay", delay_sec=0.1, path="/v2/orders*", count=0))
    plan, _ = plan.add(FaultRule(kind="timeout"))

    plan, on_orders = plan.take_http("DELETE", "/v2/orders/abc")
    plan, on_account = plan.take_http("GET", "/v2/account")
    plan, again = plan.take_http("GET", "/v2/orders")

    assert on_orders is not None and on_orders.rule.kind == "delay" and on_orders.remaining is None
    assert on_account is not None and on_account.rule.kind == "timeout"
    assert again is not None and again.rule.kind == "delay"
    assert [(f.id, f.remaining, f.fired) for f in plan.faults] == [(1, None, 2)]
    assert plan.clear().faults == () and plan.clear().next_id == 3


def test_fault_plan_when_frames_then_ws_rules_count_frames_and_http_rules_ignore_them() -> None:
    plan, _ = FaultPlan().add(FaultRule(kind="status", status=500))
    plan, _ = plan.add(FaultRule(kind="ws_drop", frames=2))
    plan, _ = plan.add(FaultRule(kind="ws_silent", count=0))

    copies = []
    for _ in range(4):
        plan, fired = plan.take_frame()
        copies.append(frame_copies(fired))

    assert copies == [0, 0, 0, 0]  # two dropped, then silent until cleared
    assert [(f.rule.kind, f.remaining) for f in plan.faults] == [("status", 1), ("ws_silent", None)]
    assert frame_copies(None) == 1
    assert frame_copies(FaultPlan().add(FaultRule(kind="ws_duplicate"))[1]) == 2


def test_faults_when_disabled_then_nothing_fires_and_nothing_can_be_added() -> None:
    faults = Faults(enabled=False)
    faults.plan, _ = faults.plan.add(FaultRule(kind="status", status=500))  # even if a plan had one

    assert faults.take_http("GET", "/v2/account") is None
    assert faults.frame_copies() == 1
    with pytest.raises(RuntimeError, match="ADMIN_ENABLED"):
        faults.add(FaultRule(kind="status", status=500))


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"kind": "explode"}', "kind: expected one of"),
        (b'{"kind": "status"}', "status: expected one of"),
        (b'{"kind": "status", "status": 418}', "status: expected one of"),
        (b'{"kind": "delay"}', "delay_sec: expected > 0"),
        (b'{"kind": "status", "status": 500, "frames": 2}', "frames: only valid"),
        (b'{"kind": "ws_drop", "count": 2}', "count: not valid for ws_drop"),
        (b'{"kind": "ws_silent", "path": "/v2/orders"}', "do not apply to ws_silent"),
        (b'{"kind": "status", "status": 500, "retry_after_sec": 3}', "retry_after_sec: only valid"),
        (b'{"kind": "timeout", "path": "v2/orders"}', "path: expected"),
        (b'{"kind": "timeout", "method": "FETCH"}', "method: expected"),
        (b'{"kind": "timeout", "count": -1}', "Expected `int` >= 0"),
        (b'{"kind": "timeout", "colour": "red"}', "unknown field `colour`"),
        (b"{not json", "invalid fault rule"),
    ],
)
def test_parse_rule_when_body_is_bad_then_422_naming_the_problem(body: bytes, message: str) -> None:
    with pytest.raises(ApiError) as caught:
        parse_rule(body)

    assert caught.value.status == 422
    assert message in caught.value.message


def test_parse_rule_when_defaults_then_fires_once_on_every_path() -> None:
    rule = parse_rule(b'{"kind": "lose_response", "delay_sec": 0.5}')

    assert (rule.method, rule.path, rule.budget) == ("*", "*", 1)
    assert rule.matches("POST", "/v2/orders")
    assert parse_rule(b'{"kind": "ws_silent", "count": 0}').budget is None
    assert parse_rule(b'{"kind": "ws_duplicate", "frames": 3}').budget == 3
