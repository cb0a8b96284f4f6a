"""Which events deserve a person's attention, and what to tell them (pure)."""

from __future__ import annotations

from collections.abc import Sequence

import msgspec

from libs.contracts.base import Event, derive_id
from libs.contracts.execution import OrderRejected, OrderStatusUnknown, SubmitFailed
from libs.contracts.ops import AlertRaised
from libs.decide import Ctx
from services.alerts.state import AlertsState, DeadLetter


def _alert(
    code: str,
    severity: str,
    message: str,
    ctx: Ctx,
    key: str,
    *,
    correlation_id: str = "",
    causation_id: str = "",
    ts_event: int = 0,
    **details: str,
) -> AlertRaised:
    return AlertRaised(
        event_id=derive_id("ops.alert_raised.v1", code, key),
        correlation_id=correlation_id or key,
        causation_id=causation_id or key,
        ts_event=ts_event or ctx.now_ns,
        ts_init=ctx.now_ns,
        code=code,
        severity=severity,  # type: ignore[arg-type]
        source=ctx.service,
        message=message,
        details=details,
    )


def on_reject(ev: OrderRejected | SubmitFailed | OrderStatusUnknown, ctx: Ctx) -> AlertRaised:
    """Alert on an order the broker refused, that could not be submitted, or whose fate is unknown."""
    if isinstance(ev, OrderRejected):
        code, why = "ORDER_REJECTED", f"{ev.reason} (code {ev.code or '-'})"
    elif isinstance(ev, OrderStatusUnknown):
        # the symbol is blocked until a lookup by client_order_id resolves it (seed 002 A-OMS-02)
        code, why = "ORDER_STATUS_UNKNOWN", f"{ev.reason}; symbol blocked until resolved by client_order_id"
    else:
        code, why = "SUBMIT_FAILED", f"{ev.reason_code}: {ev.message}"
    return _alert(
        code,
        "warning",
        f"{ev.symbol} {ev.side} {ev.client_order_id}: {why}",
        ctx,
        ev.event_id,
        correlation_id=ev.correlation_id,
        causation_id=ev.event_id,
        ts_event=ev.ts_event,
        client_order_id=ev.client_order_id,
        symbol=ev.symbol,
    )


def on_dead_letter(dl: DeadLetter, ctx: Ctx) -> AlertRaised:
    """Alert on a dead-lettered message, saying which consumer refused it and why."""
    return _alert(
        "DEAD_LETTER",
        "critical",
        f"{dl.consumer} dead-lettered {dl.subject}: {dl.error}",
        ctx,
        f"dlq:{dl.dlq_seq}",
        consumer=dl.consumer,
        subject=dl.subject,
        stream_seq=dl.stream_seq,
        error=dl.error,
    )


def heartbeat_check(
    state: AlertsState, last_seen: dict[str, tuple[int, int]], now_ns: int, timeout_ns: int, ctx: Ctx
) -> tuple[AlertsState, list[Event]]:
    """Report services silent for longer than the timeout, and their recovery."""
    missing = dict(state.missing)
    events: list[Event] = []
    for service, (seen_ns, seq) in sorted(last_seen.items()):
        silent = now_ns - seen_ns > timeout_ns
        if silent and service not in missing:
            missing[service] = seq
            events.append(
                _alert(
                    "HEARTBEAT_MISSING",
                    "critical",
                    f"{service} silent for {(now_ns - seen_ns) / 1e9:.1f}s",
                    ctx,
                    f"hb-missing:{service}:{seen_ns}",
                    service=service,
                    last_seq=str(seq),
                )
            )
        elif not silent and service in missing:
            went_quiet = missing.pop(service)
            events.append(
                _alert(
                    "HEARTBEAT_RECOVERED",
                    "info",
                    f"{service} is back",
                    ctx,
                    f"hb-recovered:{service}:{went_quiet}:{seen_ns}",
                    service=service,
                )
            )
    if missing == state.missing:
        return state, events
    return msgspec.structs.replace(state, missing=missing), events


def step(state: AlertsState, event: object, ctx: Ctx) -> tuple[AlertsState, Sequence[Event]]:
    """Route one consumed message."""
    if isinstance(event, OrderRejected | SubmitFailed | OrderStatusUnknown):
        return state, [on_reject(event, ctx)]
    if isinstance(event, DeadLetter):
        return state, [on_dead_letter(event, ctx)]
    return state, []
