"""Seeded, deterministic factories for the events and contexts the unit tests feed to handlers.

Every id derives from the factory's seed and the event's content (never uuid4, never the wall
clock), so the same call gives the same event, byte for byte. The seed is in each factory's repr,
so a failing test names the inputs that reproduce it (STYLE 27).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from libs.contracts.base import derive_id
from libs.contracts.control import HaltTrading, ResumeTrading
from libs.contracts.execution import (
    OrderAccepted,
    OrderCanceled,
    OrderExpired,
    OrderFilled,
    OrderPartiallyFilled,
    OrderRejected,
    OrderStatusUnknown,
    OrderSubmitted,
    SubmitFailed,
)
from libs.contracts.marketdata import BarClosed
from libs.contracts.oms import APPROVED, PositionChanged, PretradeDecision
from libs.contracts.ops import FillsDone, Watermark
from libs.contracts.risk import OrderIntent
from libs.contracts.signal import TargetProposed
from libs.decide import Ctx
from services.oms.state import Account, OmsState

D = Decimal
MINUTE_NS = 60 * 1_000_000_000
HOUR_NS = 60 * MINUTE_NS
# XNYS open of 2024-03-05 (14:30 UTC); a literal so no calendar is consulted
T0 = 1_709_649_000_000_000_000
SESSION = "2024-03-05"
NOW_NS = T0 + 10 * HOUR_NS  # the injected clock of every handler context


def ctx(service: str, config: Any, *, now_ns: int = NOW_NS, config_sha256: str = "cfgsha") -> Ctx:
    """Build the handler context of one service with a fixed clock."""
    return Ctx(now_ns=now_ns, service=service, config=config, config_sha256=config_sha256)


def minute(n: int) -> int:
    """Return the event time of the close of the n-th minute bar of the session."""
    return T0 + n * MINUTE_NS


@dataclass(frozen=True)
class Events:
    """Envelope-complete events whose ids derive from `seed` and their content."""

    seed: int = 0

    def _envelope(self, kind: str, ts: int, *parts: object) -> dict[str, Any]:
        return {
            "event_id": derive_id("factory", self.seed, kind, ts, *parts),
            "correlation_id": derive_id("factory.correlation", self.seed, ts),
            "causation_id": derive_id("factory.cause", self.seed, kind, ts, *parts),
            "ts_event": ts,
            "ts_init": ts,
        }

    # --- market data ------------------------------------------------------------------------

    def closes(self, n: int, *, drift_bps: float, vol_bps: float, start: str = "100") -> list[Decimal]:
        """Return n closes of a seeded log-normal walk (drift and noise per bar, in bps)."""
        rng = random.Random(int(derive_id("closes", self.seed, n, drift_bps, vol_bps, start), 16))
        px, out = float(start), []
        for _ in range(n):
            out.append(D(repr(round(px, 4))))
            px *= math.exp((drift_bps + rng.gauss(0.0, vol_bps)) / 10_000)
        return out

    def bar(self, symbol: str, n: int, close: Decimal | str, *, session: str = SESSION) -> BarClosed:
        """Return the closed bar of minute n."""
        c = D(close)
        ts = minute(n)
        return BarClosed(
            **self._envelope("bar", ts, symbol),
            symbol=symbol,
            bar_start=ts - MINUTE_NS,
            session=session,
            open=c,
            high=c,
            low=c,
            close=c,
            volume=1_000,
            spread_bps=D("5"),
        )

    def bars(self, symbol: str, closes: list[Decimal], *, first_minute: int = 1) -> list[BarClosed]:
        """Return one bar per close, a minute apart."""
        return [self.bar(symbol, first_minute + i, c) for i, c in enumerate(closes)]

    def watermark(self, source: str, bar_ts: int, *, final: bool = False) -> Watermark:
        """Return a watermark of `source` for bars up to bar_ts."""
        return Watermark(
            **self._envelope("watermark", bar_ts, source, final), source=source, bar_ts=bar_ts, final=final
        )

    def fills_done(self, source: str, bar_ts: int, *orders: str) -> FillsDone:
        """Return `source`'s FillsDone for bars up to bar_ts (the exchange's names the orders it changed)."""
        return FillsDone(
            **self._envelope("fills_done", bar_ts, source, *orders), source=source, bar_ts=bar_ts, orders=orders
        )

    # --- signal and risk --------------------------------------------------------------------

    def target(
        self,
        symbol: str,
        shares: int,
        price: Decimal | str,
        *,
        sleeve: str = "ema_x",
        n: int = 1,
        horizon: str = "1m",
        session: str = SESSION,
    ) -> TargetProposed:
        """Return a sleeve's target for the bar of minute n."""
        ts = minute(n)
        return TargetProposed(
            **self._envelope("target", ts, sleeve, symbol, shares),
            sleeve=sleeve,
            symbol=symbol,
            target_shares=shares,
            reference_price=D(price),
            bar_ts=ts,
            horizon=horizon,
            session=session,
        )

    def position(
        self,
        symbol: str,
        *,
        qty: int,
        open_order_qty: int,
        intents_seen: int,
        avg_price: str = "0",
        n: int = 1,
    ) -> PositionChanged:
        """Return the OMS's view of a symbol."""
        ts = minute(n)
        return PositionChanged(
            **self._envelope("position", ts, symbol, qty, open_order_qty, intents_seen),
            symbol=symbol,
            qty=qty,
            avg_price=D(avg_price),
            open_order_qty=open_order_qty,
            intents_seen=intents_seen,
        )

    def intent(
        self,
        symbol: str = "AAPL",
        side: str = "buy",
        qty: int = 100,
        price: Decimal | str = "50",
        *,
        n: int = 1,
        cid: str | None = None,
        strategy: str = "keel",
        bar_volume: int = 100_000,
    ) -> OrderIntent:
        """Return an intent; its intent_id derives from its client_order_id as in risk."""
        ts = minute(n)
        cid = cid or f"CIDv2:{strategy}:{symbol}:{side}:20240305:1m:{derive_id(self.seed, n)[:12]}:{qty}:1"
        px = D(price)
        return OrderIntent(
            **self._envelope("intent", ts, cid),
            intent_id=derive_id("intent", cid),
            client_order_id=cid,
            symbol=symbol,
            side=side,  # type: ignore[arg-type]
            qty=qty,
            arrival_price=px,
            bar_ts=ts,
            strategy=strategy,
            notional=qty * px,
            bar_volume=bar_volume,
        )

    # --- oms -> execution -------------------------------------------------------------------

    def decision(self, intent: OrderIntent, *, approved: bool = True, reason: str = APPROVED) -> PretradeDecision:
        """Return the OMS decision on an intent."""
        return PretradeDecision(
            **self._envelope("decision", intent.ts_event, intent.intent_id),
            intent_id=intent.intent_id,
            client_order_id=intent.client_order_id,
            approved=approved,
            reason=reason,
            symbol=intent.symbol,
            side=intent.side,
            qty=intent.qty,
            arrival_price=intent.arrival_price,
            bar_ts=intent.bar_ts,
        )

    def halt(self, reason: str = "manual", *, n: int = 1) -> HaltTrading:
        """Return an operator's halt command."""
        return HaltTrading(**self._envelope("halt", minute(n), reason), reason=reason)

    def resume(self, reason: str = "all clear", *, n: int = 2) -> ResumeTrading:
        """Return an operator's resume command."""
        return ResumeTrading(**self._envelope("resume", minute(n), reason), reason=reason)

    # --- execution reports ------------------------------------------------------------------

    def _order(self, kind: str, intent: OrderIntent, *parts: object) -> dict[str, Any]:
        return {
            **self._envelope(kind, intent.ts_event, intent.client_order_id, *parts),
            "intent_id": intent.intent_id,
            "client_order_id": intent.client_order_id,
            "symbol": intent.symbol,
            "side": intent.side,
        }

    def submitted(self, intent: OrderIntent) -> OrderSubmitted:
        """Return execution's hand-off report."""
        return OrderSubmitted(**self._order("submitted", intent), qty=intent.qty, broker="alpaca")

    def accepted(self, intent: OrderIntent, *, broker_order_id: str = "bo-1") -> OrderAccepted:
        """Return the broker's acknowledgement."""
        return OrderAccepted(**self._order("accepted", intent), broker_order_id=broker_order_id, broker_status="new")

    def fill(
        self,
        intent: OrderIntent,
        *,
        last_qty: int,
        last_px: str,
        cum_qty: int,
        avg_px: str | None = None,
        execution_id: str | None = None,
        broker_order_id: str = "bo-1",
    ) -> OrderPartiallyFilled | OrderFilled:
        """Return a fill report: OrderFilled once cum_qty reaches the intent's qty."""
        cls = OrderFilled if cum_qty >= intent.qty else OrderPartiallyFilled
        return cls(
            **self._order("fill", intent, cum_qty),
            broker_order_id=broker_order_id,
            execution_id=execution_id or derive_id("factory.execution", self.seed, intent.client_order_id, cum_qty),
            last_qty=last_qty,
            last_px=D(last_px),
            cum_qty=cum_qty,
            avg_px=D(avg_px or last_px),
            leaves_qty=max(intent.qty - cum_qty, 0),
        )

    def canceled(self, intent: OrderIntent, *, cum_qty: int = 0) -> OrderCanceled:
        """Return a cancel report."""
        return OrderCanceled(**self._order("canceled", intent), broker_order_id="bo-1", cum_qty=cum_qty)

    def expired(self, intent: OrderIntent, *, cum_qty: int = 0) -> OrderExpired:
        """Return an expiry report."""
        return OrderExpired(**self._order("expired", intent), broker_order_id="bo-1", cum_qty=cum_qty)

    def rejected(
        self, intent: OrderIntent, *, reason: str = "insufficient buying power", code: str = "40310000"
    ) -> OrderRejected:
        """Return a broker rejection."""
        return OrderRejected(**self._order("rejected", intent), reason=reason, code=code)

    def unknown(self, intent: OrderIntent, *, reason: str = "POST /v2/orders: read timed out") -> OrderStatusUnknown:
        """Return execution's report that a submit's outcome is not known."""
        return OrderStatusUnknown(**self._order("unknown", intent), reason=reason)

    def submit_failed(self, intent: OrderIntent, *, reason_code: str = "SUBMIT_NOT_ACCEPTED") -> SubmitFailed:
        """Return a failed submit."""
        return SubmitFailed(
            **self._order("submit_failed", intent),
            category="TRANSIENT_NETWORK",
            reason_code=reason_code,
            message="connection reset",
        )


FUNDED = Account(buying_power=Decimal(10_000_000), cash=Decimal(5_000_000), equity=Decimal(5_000_000), bar_ts=0, seq=0)


def oms_state(**changes: Any) -> OmsState:
    """An OMS state whose last broker snapshot showed a well-funded account (BUYING_POWER_BLOCK
    fails closed without one); `changes` replace fields."""
    return OmsState(**{"account": FUNDED, **changes})
