"""Every service's pure core wired in one process, in the lockstep's order, for long replays.

The services' own handlers (marketdata's generator, signal, risk, the OMS, execution, TCA and the
local exchange) run on the events the real processes would hand them, bar timestamp by bar
timestamp, in the order the lockstep imposes: the exchange matches the bar and announces what
changed; execution reads those orders back and reports; the OMS and risk take the reports; then
signal, risk, the OMS and execution decide the bar; TCA sees it all. Only the transports are
left out: NATS (events are passed as objects), Postgres (state stays in memory) and HTTP (an
order goes to the exchange as the JSON alpaca-py would send, and comes back through the Alpaca
Order model and execution's own `to_broker_order`, as a real round trip would).

Used by the replay scale test to measure what grows with history: the cost of a bar and the
size of each service's state (the snapshot a process writes with every batch).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import msgspec
from alpaca.trading.models import Order

from libs.contracts.base import Event
from libs.contracts.codec import encode
from libs.contracts.execution import ExecutionEvent
from libs.contracts.oms import CancelRequested, PositionChanged, PretradeDecision
from libs.contracts.ops import Watermark
from libs.contracts.risk import OrderIntent
from libs.contracts.signal import TargetProposed
from libs.contracts.tca import CostModelUpdated
from libs.decide import Ctx
from services.exchange import api as exchange_api
from services.exchange import handlers as exchange
from services.exchange.state import ExchangeOrder, ExchangeState, initial_state
from services.execution import handlers as execution
from services.execution import state as est
from services.execution.broker import to_broker_order
from services.execution.config import ExecConfig
from services.execution.orders import build_request
from services.marketdata import handlers as marketdata
from services.marketdata.config import MdConfig
from services.marketdata.state import INITIAL, FeedState
from services.oms import handlers as oms
from services.oms.config import OmsConfig
from services.oms.state import OmsState
from services.risk import handlers as risk
from services.risk.config import RiskConfig
from services.risk.state import RiskState
from services.signal import handlers as signal
from services.signal.config import SignalConfig
from services.signal.state import SignalState
from services.tca import handlers as tca
from services.tca.config import TcaConfig
from services.tca.state import TcaState

BROKER = "keel-local"


class _Clock(msgspec.Struct):
    now_ns: int = 0


def _ctx(service: str, config: Any, now_ns: int) -> Ctx:
    return Ctx(now_ns=now_ns, service=service, config=config, config_sha256="inproc")


@dataclass
class Pipeline:
    """The states of every service and what flowed, for one in-process replay."""

    md: MdConfig
    feed: FeedState = INITIAL
    signal: SignalState = field(default_factory=SignalState)
    risk: RiskState = field(default_factory=RiskState)
    oms: OmsState = field(default_factory=OmsState)
    execution: est.ExecState = field(default_factory=est.ExecState)
    tca: TcaState = field(default_factory=TcaState)
    exchange: ExchangeState = field(default_factory=lambda: initial_state("inproc", Decimal(100000)))
    configs: dict[str, Any] = field(
        default_factory=lambda: {
            "signal": SignalConfig(),
            "risk": RiskConfig(),
            "oms": OmsConfig(),
            "execution": ExecConfig(),
            "tca": TcaConfig(),
        }
    )
    touched: dict[str, None] = field(default_factory=dict)  # the exchange's FillsDone list
    counts: dict[str, int] = field(default_factory=dict)

    def _count(self, events: Sequence[object]) -> None:
        for e in events:
            name = type(e).__name__
            self.counts[name] = self.counts.get(name, 0) + 1

    # --- the hops -------------------------------------------------------------------------

    def _oms(self, events: Sequence[Event], now: int) -> list[Event]:
        out: list[Event] = []
        for e in events:
            self.oms, produced = oms.step(self.oms, e, _ctx("oms", self.configs["oms"], now))
            out.extend(produced)
        return out

    def _risk(self, events: Sequence[object], now: int) -> list[Event]:
        out: list[Event] = []
        for e in events:
            self.risk, produced = risk.step(self.risk, e, _ctx("risk", self.configs["risk"], now))
            out.extend(produced)
        return out

    def _tca(self, events: Sequence[object], now: int) -> list[Event]:
        out: list[Event] = []
        for e in events:
            self.tca, produced = tca.step(self.tca, e, _ctx("tca", self.configs["tca"], now))
            out.extend(produced)
        return out

    def _execution(self, fn: Any) -> list[Event]:
        self.execution, produced = fn(self.execution)
        return list(produced)

    def _changed(self, orders: Sequence[ExchangeOrder]) -> None:
        self.touched.update(dict.fromkeys(o.client_order_id for o in orders))

    def _broker_order(self, o: ExchangeOrder) -> est.BrokerOrder:
        view = exchange_api.nested_view(self.exchange, o)
        bo = to_broker_order(Order(**view))
        return msgspec.structs.replace(bo, nested=True)

    def _read_back(self, now: int) -> list[Event]:
        """Execution reads back what the exchange named, in the order it changed."""
        reports: list[Event] = []
        by_client = self.exchange.by_client_id
        for broker_cid in self.touched:
            cid = self.execution.aliases.get(broker_cid, broker_cid)
            if cid not in self.execution.orders:
                continue
            bo = self._broker_order(self.exchange.orders[by_client[broker_cid]])
            c = _ctx("execution", self.configs["execution"], now)
            reports += self._execution(lambda s, cid=cid, bo=bo, c=c: execution.on_broker_order(s, cid, bo, c))
        self.touched = {}
        return reports

    def _submit(self, d: PretradeDecision, now: int) -> list[Event]:
        c = _ctx("execution", self.configs["execution"], now)
        events = self._execution(lambda s: execution.hand_over(s, d, BROKER, "", c))
        order = self.execution.orders[d.client_order_id]
        body = msgspec.json.encode(build_request(order).to_request_fields())
        self.exchange, result = exchange.submit(self.exchange, exchange_api.parse_order(body), exchange.DEFAULT_CTX)
        if isinstance(result, ExchangeOrder):
            self._changed([result, *(self.exchange.orders[i] for i in result.legs)])
            outcome: execution.Outcome = execution.Accepted(order=self._broker_order(result))
        else:
            outcome = execution.Rejected(code=result.reason, message=result.message)
        return [*events, *self._execution(lambda s: execution.on_outcome(s, d.client_order_id, outcome, c))]

    def _holdings(self) -> est.Holdings:
        """What execution's snapshot reads from the exchange (account, positions, open orders)."""
        ex = self.exchange
        listed = exchange_api.list_orders(ex, {"status": "open", "limit": "500"}, nested=True)
        return est.Holdings(
            cash=ex.account.cash,
            buying_power=exchange.buying_power(ex),
            equity=exchange.equity(ex),
            positions={p.symbol: p.qty for p in ex.positions.values() if p.qty},
            open_orders=tuple(self._broker_order(o) for o in listed),
        )

    def _snapshot(self, kind: str, bar_ts: int, now: int) -> list[Event]:
        held = self._holdings()
        c = _ctx("execution", self.configs["execution"], now)
        return self._execution(lambda s: execution.broker_snapshot(s, kind, held, bar_ts, c))

    def _cancel(self, ev: CancelRequested) -> None:
        self.exchange, result = exchange.cancel(self.exchange, ev.broker_order_id, exchange.DEFAULT_CTX)
        if isinstance(result, ExchangeOrder):
            self._changed([result, *(self.exchange.orders[i] for i in result.legs)])

    # --- one bar timestamp ----------------------------------------------------------------

    def step(self) -> int:
        """Run the next bar timestamp through every service; return how many bars it had (0: done)."""
        ts = marketdata.next_timestamp(self.feed, self.md)
        if ts is None:
            return 0
        if not self.feed.last_ts:  # execution's snapshot at start: the OMS learns the account
            self._oms(self._snapshot("startup", 0, ts), ts)
        self.feed, bars, md_wm = marketdata.bars_for(self.feed, ts, self.md, _Clock(ts))
        # the exchange matches the bar, then (marketdata's watermark) announces what changed
        for bar in bars:
            self.exchange, changed = exchange.on_bar(self.exchange, bar, exchange.DEFAULT_CTX)
            self._changed(changed)
        reports = self._read_back(ts)
        self._tca([*bars, md_wm], ts)
        self._lane(reports, ts)
        # the decision chain of the bar
        targets: list[Event] = []
        for e in [*bars, md_wm]:
            self.signal, produced = signal.step(self.signal, e, _ctx("signal", self.configs["signal"], ts))
            targets.extend(produced)
        intents = self._risk(targets, ts)
        self._tca(intents, ts)
        decisions = self._oms(intents, ts)
        self._decide(decisions, ts)
        self._count([*bars, *targets, *intents, *decisions])
        return len(bars)

    def _lane(self, reports: list[Event], now: int) -> None:
        """Reports reach the OMS (positions), risk and TCA; a calibration reaches risk."""
        self._count(reports)
        self._tca(reports, now)
        positions = self._oms(reports, now)
        self._risk([e for e in positions if isinstance(e, PositionChanged)], now)

    def _decide(self, decisions: list[Event], now: int) -> None:
        exec_out: list[Event] = []
        for d in decisions:
            if isinstance(d, PretradeDecision) and d.approved:
                exec_out += self._submit(d, now)
            elif isinstance(d, CancelRequested):
                self._cancel(d)
            elif isinstance(d, Watermark):
                # every bar (KEEL_EXEC_SNAPSHOT_EVERY_BARS=1): the snapshot first, then the watermark
                exec_out += self._snapshot("periodic", d.bar_ts, now)
                c = _ctx("execution", self.configs["execution"], now)
                exec_out += self._execution(lambda s, d=d, c=c: execution.on_watermark(s, d, est.Health(), c))
            else:
                c = _ctx("execution", self.configs["execution"], now)
                exec_out += self._execution(lambda s, d=d, c=c: execution.step(s, d, c))
        reports = [e for e in exec_out if isinstance(e, ExecutionEvent | Watermark)]
        positions = self._oms(reports, now)
        self._risk([e for e in positions if isinstance(e, PositionChanged)], now)
        self._count(exec_out)
        tca_out = self._tca(reports, now)
        # risk's watermark reached TCA with the intents; a calibration and TCA's watermark go to risk
        self._risk([e for e in tca_out if isinstance(e, CostModelUpdated | Watermark)], now)

    def state_bytes(self) -> dict[str, int]:
        """The size of each service's state as its snapshot would be written."""
        return {
            "signal": len(encode(self.signal)),
            "risk": len(encode(self.risk)),
            "oms": len(encode(self.oms)),
            "execution": len(encode(self.execution)),
            "tca": len(encode(self.tca)),
            "exchange": len(encode(self.exchange)),
            "exchange_open_orders": sum(len(ids) for ids in self.exchange.working.values()),
            "exchange_orders": len(self.exchange.orders),  # in memory: open ones and recent days
            "exchange_accepted": self.exchange.next_seq - 1,  # every order it ever took
        }


__all__ = ["OrderIntent", "Pipeline", "TargetProposed"]
