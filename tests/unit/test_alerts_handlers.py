"""Alerts pure core: given rejections, dead letters and heartbeats -> then AlertRaised."""

from __future__ import annotations

import pytest

from libs.contracts.base import derive_id
from libs.contracts.codec import encode
from libs.contracts.ops import AlertRaised
from services.alerts.config import AlertsConfig
from services.alerts.handlers import heartbeat_check, step
from services.alerts.state import AlertsState, DeadLetter
from tests.factories import NOW_NS, Events, ctx

CTX = ctx("alerts", AlertsConfig())
SEC = 1_000_000_000
TIMEOUT_NS = int(AlertsConfig().heartbeat_timeout_sec * SEC)


@pytest.fixture
def f() -> Events:
    return Events(seed=67)


def dead_letter(seq: int = 9) -> DeadLetter:
    return DeadLetter(
        dlq_seq=seq,
        consumer="oms-intents",
        subject="keel.risk.order_intent.AAPL",
        stream_seq="1234",
        error="expected qty > 0, was -5",
    )


# --- rejections and dead letters -------------------------------------------------------------


def test_order_rejected_when_consumed_then_order_rejected_alert_names_client_order_id(f: Events) -> None:
    intent = f.intent("AAPL", "buy", 10, "50")
    ev = f.rejected(intent, reason="insufficient buying power", code="40310000")

    state, out = step(AlertsState(), ev, CTX)

    (alert,) = out
    assert isinstance(alert, AlertRaised)
    assert (alert.code, alert.severity, alert.source) == ("ORDER_REJECTED", "warning", "alerts")
    assert intent.client_order_id in alert.message
    assert "insufficient buying power" in alert.message and "40310000" in alert.message
    assert alert.details == {"client_order_id": intent.client_order_id, "symbol": "AAPL"}
    assert (alert.causation_id, alert.correlation_id, alert.ts_event, alert.ts_init) == (
        ev.event_id,
        ev.correlation_id,
        ev.ts_event,
        NOW_NS,
    )
    assert state == AlertsState()


def test_order_status_unknown_when_consumed_then_alert_says_the_symbol_is_blocked(f: Events) -> None:
    intent = f.intent("NVDA", "buy", 3, "900")
    ev = f.unknown(intent, reason="POST /v2/orders: read timed out after 5.0 s")

    _, out = step(AlertsState(), ev, CTX)

    (alert,) = out
    assert isinstance(alert, AlertRaised)
    assert (alert.code, alert.severity) == ("ORDER_STATUS_UNKNOWN", "warning")
    assert intent.client_order_id in alert.message and "blocked" in alert.message
    assert alert.details == {"client_order_id": intent.client_order_id, "symbol": "NVDA"}


def test_submit_failed_when_consumed_then_submit_failed_alert(f: Events) -> None:
    intent = f.intent("MSFT", "sell", 5, "300")
    ev = f.submit_failed(intent, reason_code="SUBMIT_NOT_ACCEPTED")

    _, out = step(AlertsState(), ev, CTX)

    (alert,) = out
    assert (alert.code, alert.severity) == ("SUBMIT_FAILED", "warning")  # type: ignore[attr-defined]
    assert "SUBMIT_NOT_ACCEPTED" in alert.message and intent.client_order_id in alert.message  # type: ignore[attr-defined]
    assert alert.details["client_order_id"] == intent.client_order_id  # type: ignore[attr-defined]


def test_dead_letter_when_consumed_then_critical_alert_with_consumer_subject_and_error() -> None:
    dl = dead_letter(seq=9)

    _, out = step(AlertsState(), dl, CTX)

    (alert,) = out
    assert isinstance(alert, AlertRaised)
    assert (alert.code, alert.severity) == ("DEAD_LETTER", "critical")
    assert alert.details == {
        "consumer": "oms-intents",
        "subject": "keel.risk.order_intent.AAPL",
        "stream_seq": "1234",
        "error": "expected qty > 0, was -5",
    }
    assert "oms-intents" in alert.message and "keel.risk.order_intent.AAPL" in alert.message
    assert alert.event_id == derive_id("ops.alert_raised.v1", "DEAD_LETTER", "dlq:9")
    assert alert.ts_event == NOW_NS


def test_other_event_when_consumed_then_no_alert(f: Events) -> None:
    intent = f.intent()

    state, out = step(AlertsState(), f.fill(intent, last_qty=10, last_px="50", cum_qty=10), CTX)

    assert out == []
    assert state == AlertsState()


def test_alerts_when_same_input_twice_then_byte_identical_and_ids_follow_causes(f: Events) -> None:
    ev = f.rejected(f.intent())

    _, a = step(AlertsState(), ev, CTX)
    _, b = step(AlertsState(), ev, CTX)
    _, dl1 = step(AlertsState(), dead_letter(seq=1), CTX)
    _, dl2 = step(AlertsState(), dead_letter(seq=2), CTX)

    assert encode(a[0]) == encode(b[0])
    assert a[0].event_id == derive_id("ops.alert_raised.v1", "ORDER_REJECTED", ev.event_id)
    assert dl1[0].event_id != dl2[0].event_id


# --- heartbeats ------------------------------------------------------------------------------


def test_heartbeat_check_when_service_silent_beyond_timeout_then_one_missing_alert() -> None:
    last_seen = {"oms": (NOW_NS - TIMEOUT_NS - 1, 7), "risk": (NOW_NS - SEC, 3)}

    state, out = heartbeat_check(AlertsState(), last_seen, NOW_NS, TIMEOUT_NS, CTX)

    (alert,) = out
    assert isinstance(alert, AlertRaised)
    assert (alert.code, alert.severity) == ("HEARTBEAT_MISSING", "critical")
    assert alert.details == {"service": "oms", "last_seq": "7"}
    assert "oms" in alert.message
    assert state.missing == {"oms": 7}


def test_heartbeat_check_when_silent_exactly_timeout_then_not_missing() -> None:
    state, out = heartbeat_check(AlertsState(), {"oms": (NOW_NS - TIMEOUT_NS, 7)}, NOW_NS, TIMEOUT_NS, CTX)

    assert out == []
    assert state.missing == {}


def test_heartbeat_check_when_still_silent_on_next_check_then_not_repeated() -> None:
    last_seen = {"oms": (NOW_NS - TIMEOUT_NS - 1, 7)}
    state, _ = heartbeat_check(AlertsState(), last_seen, NOW_NS, TIMEOUT_NS, CTX)

    after, out = heartbeat_check(state, last_seen, NOW_NS + SEC, TIMEOUT_NS, CTX)

    assert out == []
    assert after == state


def test_heartbeat_check_when_service_back_then_recovered_alert_and_cleared() -> None:
    state, _ = heartbeat_check(AlertsState(), {"oms": (NOW_NS - TIMEOUT_NS - 1, 7)}, NOW_NS, TIMEOUT_NS, CTX)
    now = NOW_NS + 10 * SEC

    after, out = heartbeat_check(state, {"oms": (now - SEC, 8)}, now, TIMEOUT_NS, CTX)

    (alert,) = out
    assert isinstance(alert, AlertRaised)
    assert (alert.code, alert.severity, alert.details) == ("HEARTBEAT_RECOVERED", "info", {"service": "oms"})
    assert after.missing == {}


def test_heartbeat_check_when_all_alive_then_state_object_is_kept() -> None:
    state = AlertsState()

    after, out = heartbeat_check(state, {"oms": (NOW_NS, 1)}, NOW_NS, TIMEOUT_NS, CTX)

    assert out == []
    assert after is state


def test_heartbeat_check_when_a_service_goes_quiet_twice_at_the_same_seq_then_two_distinct_alerts() -> None:
    first = {"oms": (NOW_NS - TIMEOUT_NS - 1, 7)}
    second = {"oms": (NOW_NS + 100 * TIMEOUT_NS, 7)}  # restarted, died again after 7 heartbeats

    s1, (a,) = heartbeat_check(AlertsState(), first, NOW_NS, TIMEOUT_NS, CTX)
    s2, (back,) = heartbeat_check(s1, {"oms": (NOW_NS + 50 * TIMEOUT_NS, 3)}, NOW_NS + 50 * TIMEOUT_NS, TIMEOUT_NS, CTX)
    _, (b,) = heartbeat_check(s2, second, NOW_NS + 102 * TIMEOUT_NS, TIMEOUT_NS, CTX)

    assert (a.code, back.code, b.code) == ("HEARTBEAT_MISSING", "HEARTBEAT_RECOVERED", "HEARTBEAT_MISSING")
    assert a.event_id != b.event_id


def test_heartbeat_check_when_same_inputs_then_same_ids() -> None:
    last_seen = {"oms": (NOW_NS - TIMEOUT_NS - 1, 7), "tca": (NOW_NS - 2 * TIMEOUT_NS, 2)}

    _, a = heartbeat_check(AlertsState(), last_seen, NOW_NS, TIMEOUT_NS, CTX)
    _, b = heartbeat_check(AlertsState(), last_seen, NOW_NS, TIMEOUT_NS, CTX)

    assert [encode(e) for e in a] == [encode(e) for e in b]
    assert [e.details["service"] for e in a] == ["oms", "tca"]  # type: ignore[attr-defined]
    # one id per outage: the key is the moment the service was last heard, not its heartbeat seq
    # (seq restarts at 1 in every process, so a service dying at the same seq twice would collide)
    assert a[0].event_id == derive_id(
        "ops.alert_raised.v1", "HEARTBEAT_MISSING", f"hb-missing:oms:{NOW_NS - TIMEOUT_NS - 1}"
    )
