"""Subject and stream names: `<prefix>.<family>.<event>.<key>`, one stream per family (STYLE 16-17).

The prefix is `keel` in production; tests and replays use their own, so runs never see each
other's messages.
"""

from __future__ import annotations

from dataclasses import dataclass

from libs.contracts.base import Event, tag_of

# family tokens
MD = "md"
SIGNAL = "signal"
RISK = "risk"
OMS = "oms"
EXEC = "exec"
TCA = "tca"
OPS = "ops"
HB = "hb"
CTL = "ctl"
DLQ = "dlq"

FAMILIES = (MD, SIGNAL, RISK, OMS, EXEC, TCA, OPS, HB, CTL, DLQ)

# control verbs: `nats pub keel.ctl.kill '{"reason":"manual"}'`
CTL_KILL = "kill"
CTL_RESUME = "resume"
CTL_CANCEL_ALL = "cancel_all"

# which family a service's watermark travels in, so it follows that service's events in order
SERVICE_FAMILY = {
    "marketdata": MD,
    "signal": SIGNAL,
    "risk": RISK,
    "oms": OMS,
    "execution": EXEC,
    "tca": TCA,
    "alerts": OPS,
    "exchange": EXEC,  # the local exchange's announcements sit with the orders they are about
}

# header names (STYLE 16)
H_MSG_ID = "Nats-Msg-Id"
H_TRACEPARENT = "traceparent"
H_TRACESTATE = "tracestate"
H_EMITTED_AT = "Keel-Emitted-At"
# the service that said a control command on its own (an automatic halt): a replay re-derives
# those, so only commands without it (an operator's) are re-published
H_ISSUER = "Keel-Issuer"
H_DLQ_SUBJECT = "Keel-Dlq-Subject"
H_DLQ_STREAM_SEQ = "Keel-Dlq-Stream-Seq"
H_DLQ_CONSUMER = "Keel-Dlq-Consumer"
H_DLQ_ERROR = "Keel-Dlq-Error"

KV_CONTROL = "ctl"
KV_HALT_KEY = "halt"
KV_BREAKERS = "brk"  # dependency circuit breakers, one key per dependency (libs/errors/breakers.py)
KV_LIMITS = "rl"  # broker rate limits, one token bucket per account (libs/errors/ratelimit.py)


def subject_key(value: str) -> str:
    """Make a value safe as one subject token (a symbol such as BRK.B has a dot)."""
    return value.replace(".", "_").replace(" ", "_").replace("*", "_").replace(">", "_") or "_"


@dataclass(frozen=True, slots=True)
class Subjects:
    """Every subject, stream and bucket name for one prefix."""

    prefix: str = "keel"

    def stream(self, family: str) -> str:
        """Return the stream holding a family, e.g. KEEL_MD."""
        return f"{self.prefix.upper()}_{family.upper()}"

    def family_wildcard(self, family: str) -> str:
        """Return the subject filter matching a whole family."""
        return f"{self.prefix}.{family}.>"

    def event(self, family: str, event: str, key: str = "*") -> str:
        """Return a subject (or a filter when key is a wildcard)."""
        return f"{self.prefix}.{family}.{event}.{key}"

    def of(self, ev: Event) -> str:
        """Return the subject an event is published on."""
        family, name, _version = tag_of(type(ev)).split(".")
        if name in ("watermark", "fills_done"):
            return self.event(SERVICE_FAMILY[ev.source], name, subject_key(ev.source))  # type: ignore[attr-defined]
        if name == "heartbeat":
            return self.event(HB, name, subject_key(ev.service))  # type: ignore[attr-defined]
        if name in ("alert_raised", "cycle_summary"):
            return self.event(OPS, name, subject_key(ev.source))  # type: ignore[attr-defined]
        if name in ("broker_snapshot", "session_summary", "cost_model_updated"):
            return self.event(family, name, "all")  # about the whole account, not one symbol
        return self.event(family, name, subject_key(ev.symbol))

    def watermark(self, service: str) -> str:
        """Return the subject of one service's watermark."""
        return self.event(SERVICE_FAMILY[service], "watermark", subject_key(service))

    def fills_done(self, service: str) -> str:
        """Return the subject of one service's FillsDone (the lockstep's fill lane)."""
        return self.event(SERVICE_FAMILY[service], "fills_done", subject_key(service))

    def ctl(self, verb: str) -> str:
        """Return a control subject: keel.ctl.kill, keel.ctl.resume, keel.ctl.cancel_all."""
        return f"{self.prefix}.{CTL}.{verb}"

    def dlq(self, consumer: str) -> str:
        """Return the dead-letter subject for one consumer."""
        return f"{self.prefix}.{DLQ}.{subject_key(consumer)}"

    def kv(self, bucket: str) -> str:
        """Return a key-value bucket name for this prefix."""
        return f"{self.prefix}_{bucket}".replace(".", "_")
