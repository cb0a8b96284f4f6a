"""Write a golden JSON file for every wire type that has none yet; run by hand, never by tests.

    .venv/bin/python tests/contract/generate_golden.py

Existing goldens are pinned and never rewritten: a golden is what old data looks like, so a
change to one is a deliberate act (delete the file, rerun, and say why in review).
"""

from __future__ import annotations

import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgspec

from libs.contracts.base import ClientOrderId, IntentId, Symbol, derive_id, tag_of
from libs.contracts.codec import all_event_types, encode
from libs.contracts.control import CancelAllOrders, HaltTrading, ResumeTrading
from libs.contracts.execution import (
    BrokerOrderView,
    BrokerSnapshot,
    OrderAccepted,
    OrderCanceled,
    OrderExpired,
    OrderFilled,
    OrderPartiallyFilled,
    OrderRejected,
    OrderStatusUnknown,
    OrderSubmitted,
    SubmitFailed,
    SubmitSkipped,
)
from libs.contracts.marketdata import BarClosed
from libs.contracts.oms import CancelRequested, OrderLookupRequested, PositionChanged, PretradeDecision, SessionSummary
from libs.contracts.ops import AlertRaised, CycleSummary, FillsDone, Heartbeat, Watermark
from libs.contracts.risk import EntryBlocked, OrderIntent, SleeveShare
from libs.contracts.signal import TargetProposed
from libs.contracts.tca import CostModelUpdated, SymbolCost, TcaOrderRecorded, TcaRecorded

GOLDEN = Path(__file__).parent / "golden"
VARIANTS = GOLDEN / "variants"  # more shapes of a tag (order families), pinned the same way

BAR_TS = 1_767_623_460_000_000_000  # 2026-01-05T14:31:00Z, the first bar close of a session
TS_INIT = BAR_TS + 1_250_000
CYCLE = derive_id("bar", BAR_TS)
INTENT = IntentId(derive_id("intent", "momo", "AAPL", BAR_TS))
CID = ClientOrderId(f"k2-momo-AAPL-{BAR_TS}-{INTENT[:8]}")
AAPL = Symbol("AAPL")


def envelope(tag: str) -> dict[str, Any]:
    """Return a populated envelope for an example event."""
    return {
        "event_id": derive_id(tag, "golden"),
        "correlation_id": CYCLE,
        "causation_id": CYCLE,
        "ts_event": BAR_TS,
        "ts_init": TS_INIT,
    }


def order(tag: str) -> dict[str, Any]:
    """Return the envelope and order identity shared by execution reports."""
    return {
        **envelope(tag),
        "intent_id": INTENT,
        "client_order_id": CID,
        "symbol": AAPL,
        "side": "buy",
    }


def fill(tag: str, last_qty: int, cum_qty: int, leaves_qty: int) -> dict[str, Any]:
    """Return the fields of a fill report."""
    return {
        **order(tag),
        "broker_order_id": "b-7f3c2a",
        "execution_id": f"x-{cum_qty}",
        "last_qty": last_qty,
        "last_px": Decimal("187.26"),
        "cum_qty": cum_qty,
        "avg_px": Decimal("187.255"),
        "leaves_qty": leaves_qty,
        "fee": Decimal("0.02"),
    }


def examples() -> list[msgspec.Struct]:
    """Return one fully populated example of every wire type."""
    return [
        BarClosed(
            **envelope("md.bar_closed.v1"),
            symbol=AAPL,
            bar_start=BAR_TS - 60_000_000_000,
            session="2026-01-05",
            open=Decimal("187.20"),
            high=Decimal("187.41"),
            low=Decimal("187.02"),
            close=Decimal("187.25"),
            volume=412_530,
            spread_bps=Decimal("3.75"),
            spread_is_proxy=False,
            timeframe="1Min",
            source="file",
        ),
        TargetProposed(
            **envelope("signal.target_proposed.v1"),
            sleeve="momo",
            symbol=AAPL,
            target_shares=-150,
            reference_price=Decimal("187.25"),
            bar_ts=BAR_TS,
            score=Decimal("-0.8125"),
            horizon="5m",
            signal_hash="3f9a1c0e",
            session="2026-01-05",
        ),
        OrderIntent(
            **envelope("risk.order_intent.v1"),
            intent_id=INTENT,
            client_order_id=CID,
            symbol=AAPL,
            side="sell",
            qty=150,
            order_type="limit",
            limit_price=Decimal("187.10"),
            time_in_force="ioc",
            arrival_price=Decimal("187.25"),
            bar_ts=BAR_TS,
            strategy="momo",
            sleeves=(SleeveShare(sleeve="momo", shares=-200), SleeveShare(sleeve="mr", shares=50)),
            notional=Decimal("28065.00"),
        ),
        PretradeDecision(
            **envelope("oms.pretrade_decision.v1"),
            intent_id=INTENT,
            client_order_id=CID,
            approved=False,
            reason="PRICE_COLLAR_BLOCK",
            details={"collar_bps": "50", "deviation_bps": "73.4"},
            symbol=AAPL,
            side="sell",
            qty=150,
            order_type="limit",
            limit_price=Decimal("187.10"),
            time_in_force="ioc",
            arrival_price=Decimal("187.25"),
            bar_ts=BAR_TS,
            config_sha256="9c1e" * 16,
        ),
        PositionChanged(
            **envelope("oms.position_changed.v1"),
            symbol=AAPL,
            qty=-150,
            avg_price=Decimal("187.255"),
            open_order_qty=-50,
            intents_seen=3,
            realized_pnl=Decimal("-12.40"),
        ),
        OrderSubmitted(**order("exec.order_submitted.v1"), qty=200, broker="alpaca-paper"),
        OrderAccepted(**order("exec.order_accepted.v1"), broker_order_id="b-7f3c2a", broker_status="new"),
        OrderPartiallyFilled(**fill("exec.order_partially_filled.v1", 120, 120, 80)),
        OrderFilled(**fill("exec.order_filled.v1", 80, 200, 0)),
        OrderCanceled(**order("exec.order_canceled.v1"), broker_order_id="b-7f3c2a", cum_qty=120),
        OrderRejected(
            **order("exec.order_rejected.v1"),
            reason="insufficient buying power",
            code="40310000",
            broker_order_id="b-7f3c2a",
        ),
        OrderExpired(**order("exec.order_expired.v1"), broker_order_id="b-7f3c2a", cum_qty=40),
        OrderStatusUnknown(
            **order("exec.order_status_unknown.v1"), reason="POST /v2/orders: read timed out after 5.0 s"
        ),
        SubmitFailed(
            **order("exec.submit_failed.v1"),
            category="transient",
            reason_code="BROKER_TIMEOUT",
            message="expected a reply within 5.0 s, was none",
        ),
        SubmitSkipped(
            **order("exec.submit_skipped.v1"),
            qty=200,
            stage="execution",
            reason_code="CIRCUIT_OPEN_broker_submit",
            message="broker_submit breaker open after repeated failures (RATE_LIMIT_RETRY); not sent",
            details={"dependency": "broker_submit"},
        ),
        TcaRecorded(
            **envelope("tca.tca_recorded.v1"),
            client_order_id=CID,
            execution_id="x-200",
            symbol=AAPL,
            side="buy",
            qty=200,
            arrival_price=Decimal("187.25"),
            fill_price=Decimal("187.26"),
            shortfall_bps=Decimal("0.534"),
            strategy="momo",
        ),
        TcaOrderRecorded(
            **envelope("tca.order_recorded.v1"),
            client_order_id=CID,
            intent_id=INTENT,
            revision=2,
            final=True,
            status="canceled",
            session="2026-01-05",
            symbol=AAPL,
            side="buy",
            qty=1000,
            strategy="momo",
            sleeve="ema_x",
            trading_profile="balanced",
            order_type="limit",
            time_in_force="day",
            provider="alpaca",
            arrival_price=Decimal("10.00"),
            decision_price=Decimal("10.00"),
            submit_price=Decimal("10.05"),
            mid_at_arrival=Decimal("10.00"),
            bid_at_arrival=Decimal("9.995"),
            ask_at_arrival=Decimal("10.005"),
            spread_bps_at_arrival=Decimal("10"),
            spread_is_proxy=False,
            decision_ts=BAR_TS,
            submit_ts=BAR_TS + 60_000_000_000,
            first_fill_ts=BAR_TS + 120_000_000_000,
            end_ts=BAR_TS + 180_000_000_000,
            filled_qty=800,
            fill_vwap=Decimal("10.07"),
            fees=Decimal("20"),
            partial_fill=True,
            end_price=Decimal("10.08"),
            shortfall_bps=Decimal("92"),
            explicit_bps=Decimal("20"),
            delay_bps=Decimal("40"),
            execution_bps=Decimal("16"),
            opportunity_bps=Decimal("16"),
            shortfall_usd=Decimal("92"),
            spread_paid_bps=Decimal("70"),
            fill_latency_ms=60_000,
            cancel_rate=Decimal("0.25"),
            expected_cost_bps=Decimal("8.5"),
            reason="SESSION_CLOSE_CLEANUP",
        ),
        CostModelUpdated(
            **envelope("tca.cost_model_updated.v1"),
            session="2026-01-05",
            effective_session="2026-01-06",
            calibrated_ts=BAR_TS,
            default=SymbolCost(
                symbol="*",
                spread_bps=Decimal("5"),
                slippage_bps=Decimal("0.5"),
                vol_coef=Decimal("0.08"),
                impact_coef=Decimal("0.7"),
                samples=1200,
            ),
            symbols=(
                SymbolCost(
                    symbol="AAPL",
                    spread_bps=Decimal("1.2"),
                    slippage_bps=Decimal("0.4"),
                    vol_coef=Decimal("0.09"),
                    impact_coef=Decimal("0.65"),
                    samples=340,
                ),
                SymbolCost(
                    symbol="PENNY",
                    spread_bps=Decimal("200"),
                    slippage_bps=Decimal("100"),
                    vol_coef=Decimal("2"),
                    impact_coef=Decimal("3"),
                    samples=25,
                    clamped=("spread_bps", "slippage_bps"),
                ),
            ),
            out_of_bounds=("PENNY",),
            samples=365,
        ),
        EntryBlocked(
            **envelope("risk.entry_blocked.v1"),
            symbol=AAPL,
            side="buy",
            qty=200,
            reason_code="COST_GATE_BLOCK",
            message="expected cost 61.2 bps is above KEEL_RISK_MAX_ENTRY_COST_BPS 50",
            bar_ts=BAR_TS,
            session="2026-01-05",
            strategy="momo",
            sleeves=(SleeveShare(sleeve="ema_x", shares=200),),
            expected_cost_bps=Decimal("61.2"),
            details={"max_entry_cost_bps": "50"},
        ),
        AlertRaised(
            **envelope("ops.alert_raised.v1"),
            code="WATERMARK_STALL",
            severity="critical",
            source="alerts",
            message="expected execution watermark within 30 s, was 45 s",
            details={"service": "execution", "bar_ts": str(BAR_TS)},
        ),
        Heartbeat(
            **envelope("ops.heartbeat.v1"),
            service="oms",
            instance="oms-1",
            seq=42,
            api_url="http://127.0.0.1:8003",
        ),
        Watermark(**envelope("ops.watermark.v1"), source="marketdata", bar_ts=BAR_TS, final=True),
        FillsDone(**envelope("ops.fills_done.v1"), source="exchange", bar_ts=BAR_TS, orders=("CIDv2:keel:AAPL:buy",)),
        CycleSummary(
            **envelope("ops.cycle_summary.v1"),
            source="execution",
            bar_ts=BAR_TS,
            submitted=3,
            skipped={"KILL_SWITCH_BLOCK": 1, "ORDER_SIZE_BLOCK": 2},
            failed={"NET_RETRY": 1},
            breakers={"broker_submit": "RATE_LIMIT_RETRY"},
            broker_locked_until_ns=BAR_TS + 60_000_000_000,
            broker_lock_reason="RATE_LIMIT_RETRY",
        ),
        HaltTrading(
            **envelope("ctl.halt_trading.v1"),
            operator="ops@desk",
            reason="manual",
            cancel_all=True,
        ),
        ResumeTrading(**envelope("ctl.resume_trading.v1"), operator="ops@desk", reason="cleared"),
        CancelAllOrders(**envelope("ctl.cancel_all_orders.v1"), operator="ops@desk", reason="eod"),
        BrokerSnapshot(
            **envelope("exec.broker_snapshot.v1"),
            kind="periodic",
            seq=7,
            bar_ts=BAR_TS,
            cash=Decimal("71912.50"),
            buying_power=Decimal("143825.00"),
            equity=Decimal("100000.00"),
            positions={"AAPL": 150, "MSFT": -20},
            open_orders=(
                BrokerOrderView(
                    client_order_id=CID,
                    broker_order_id="b0d4f5a2-8c1e-4f3a-9d2b-6e7f8a9b0c1d",
                    symbol="AAPL",
                    side="buy",
                    qty=150,
                    filled_qty=50,
                    filled_avg_price=Decimal("187.20"),
                    status="partially_filled",
                    time_in_force="day",
                    keel_client_order_id=CID,
                ),
            ),
            tracked=(CID,),
        ),
        CancelRequested(
            **envelope("oms.cancel_requested.v1"),
            client_order_id="manual-order-1",
            broker_order_id="4e1c2b3a-0f9d-4c8b-a7e6-5d4c3b2a1f0e",
            symbol=AAPL,
            reason="STARTUP_CLEANUP",
            message="foreign order open at start",
        ),
        OrderLookupRequested(
            **envelope("oms.order_lookup_requested.v1"),
            intent_id=INTENT,
            client_order_id=CID,
            broker_order_id="4e1c2b3a-0f9d-4c8b-a7e6-5d4c3b2a1f0e",
            symbol=AAPL,
            side="buy",
            qty=100,
            filled_qty=40,
            avg_fill_price=Decimal("187.20"),
            time_in_force="day",
            bar_ts=BAR_TS,
            reason="RECON_ORDER_ENDED_UNSEEN",
        ),
        SessionSummary(
            **envelope("oms.session_summary.v1"),
            session="2026-01-05",
            intents=12,
            approved=9,
            denied={"PRICE_COLLAR_BLOCK": 2, "MARKET_CLOSED_BLOCK": 1},
            ended={"FILLED": 8, "CANCELED": 1},
            open_at_close=0,
            canceled_at_close=1,
            positions={"AAPL": 150},
            realized_pnl=Decimal("12.34"),
        ),
    ]


def variants() -> list[tuple[str, msgspec.Struct]]:
    """Return (variant name, example) for shapes of a tag its one golden does not show."""
    family = {
        "intent_id": INTENT,
        "client_order_id": CID,
        "symbol": AAPL,
        "side": "buy",
        "qty": 150,
        "arrival_price": Decimal("187.25"),
        "bar_ts": BAR_TS,
    }
    bracket = {
        "order_type": "limit",
        "limit_price": Decimal("187.44"),
        "time_in_force": "gtc",
        "order_class": "bracket",
        "take_profit_limit_price": Decimal("189.13"),
        "stop_loss_stop_price": Decimal("186.31"),
        "stop_loss_limit_price": Decimal("186.12"),
    }
    decision = {
        "approved": True,
        "reason": "APPROVED",
        "details": {"checked": "size,collar"},
        "config_sha256": "9c1e" * 16,
    }
    examples = [
        (
            "bracket",
            OrderIntent(
                **envelope("risk.order_intent.v1"),
                **family,
                **bracket,
                strategy="momo",
                sleeves=(SleeveShare(sleeve="momo", shares=150),),
                notional=Decimal("28087.50"),
                risk_seq=4,
            ),
        ),
        ("bracket", PretradeDecision(**envelope("oms.pretrade_decision.v1"), **family, **bracket, **decision)),
        (
            "trailing_stop",
            PretradeDecision(
                **envelope("oms.pretrade_decision.v1"),
                **{**family, "side": "sell"},
                **decision,
                order_type="trailing_stop",
                time_in_force="day",
                order_class="oto",
                trail_percent=Decimal("1.5"),
                take_profit_limit_price=Decimal("185.37"),
            ),
        ),
    ]
    # a variant's event_id names its variant, so it never shares an id with its tag's golden
    return [
        (name, msgspec.structs.replace(ex, event_id=derive_id(tag_of(type(ex)), "golden", name)))
        for name, ex in examples
    ]


def main() -> int:
    """Write the goldens that are missing; fail when a wire type has no example here."""
    made = {type(ex) for ex in examples()}
    lacking = [tag_of(t) for t in all_event_types() if t not in made]
    if lacking:
        print(f"expected an example for every wire type, missing {lacking}", file=sys.stderr)
        return 1
    GOLDEN.mkdir(exist_ok=True)
    for example in examples():
        path = GOLDEN / f"{example.__struct_config__.tag}.json"
        if path.exists():
            print(f"kept    {path.name}")
            continue
        path.write_bytes(encode(example))
        print(f"wrote   {path.name}")
    VARIANTS.mkdir(exist_ok=True)
    for name, example in variants():
        path = VARIANTS / f"{example.__struct_config__.tag}.{name}.json"
        if path.exists():
            print(f"kept    variants/{path.name}")
            continue
        path.write_bytes(encode(example))
        print(f"wrote   variants/{path.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
