"""Fault injection for the local paper exchange: the broker failures keel must survive, on demand.

Disabled unless `KEEL_EXCHANGE_ADMIN_ENABLED=true`: then `/admin/faults` does not exist (404 like
any unknown route) and no fault can fire. When enabled, a test or an operator adds rules with
`POST /admin/faults`, lists them with `GET`, clears them with `DELETE` (same APCA key headers as
/v2/). `FaultPlan` decides which rule fires and counts it down (pure, immutable); `Faults` holds
the current plan, logs and counts every firing; the HTTP middleware and the trade_updates Hub
(services/exchange/stream.py) act on what it decides.

Kinds:
- HTTP, on matching /v2/ requests (method and path; a path ending in `*` is a prefix; an
  optional `query` object matches only requests whose query parameters equal every listed
  value, e.g. `{"feed": "sip"}` fails the primary market data feed while `iex` still answers):
  `status` answers `status` with Alpaca's error body without processing the request (429 also
  sends `Retry-After: retry_after_sec`, default 1; 503 only when retry_after_sec is given); `delay` sleeps `delay_sec` then processes normally; `timeout` sleeps
  `delay_sec` then answers 504 without processing (the request never reached the venue);
  `lose_response` processes the request (an order is accepted and committed), sleeps
  `delay_sec` and answers 504 instead of the real answer.
- Websocket, on trade_update frames: `ws_drop` drops the next `frames` frames, `ws_duplicate`
  sends the next `frames` frames twice, `ws_silent` swallows every frame until cleared or until
  it has swallowed `count` frames.
A rule fires `count` times (HTTP kinds, ws_silent) or on `frames` frames (ws_drop, ws_duplicate);
0 means until cleared. When several rules match, the oldest fires.

Bad market data: `POST /admin/bars` (services/exchange/bars.py, also admin only) replaces raw
fields of one served bar (`NaN`, infinities, negative prices) until `DELETE /admin/bars`.

Venue statuses: `POST /admin/orders/{order_id}/status` with `{"status": ...}` does what a live
venue does on its own and the local one never would: puts an accepted order in pending_cancel,
pending_replace, done_for_day, stopped, suspended or calculated (no fills meanwhile), releases it
again with `new`, or rejects it after acceptance with `rejected`. The change is committed and
streamed (a trade_update named after the status) like any other.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Annotated, Literal

import msgspec
from fastapi import APIRouter, FastAPI, Request, Response

from services.exchange.api import (
    CODE_INVALID,
    CODE_UNAUTHORIZED,
    H_KEY_ID,
    H_SECRET_KEY,
    ApiError,
    error_body,
    json_response,
    order_view,
    rejection_error,
)
from services.exchange.state import Rejection

if TYPE_CHECKING:
    from libs.obs.metrics import Metrics
    from services.exchange.config import ExchangeConfig
    from services.exchange.state import ExchangeOrder

log = logging.getLogger(__name__)

FaultKind = Literal["status", "delay", "timeout", "lose_response", "ws_drop", "ws_duplicate", "ws_silent"]
HTTP_KINDS = frozenset({"status", "delay", "timeout", "lose_response"})
WS_KINDS = frozenset({"ws_drop", "ws_duplicate", "ws_silent"})
KINDS = HTTP_KINDS | WS_KINDS
DELAY_KINDS = frozenset({"delay", "timeout", "lose_response"})
FRAME_KINDS = frozenset({"ws_drop", "ws_duplicate"})
METHODS = frozenset({"*", "GET", "POST", "PATCH", "PUT", "DELETE"})
MAX_DELAY_SEC = 120.0
DEFAULT_RETRY_AFTER_SEC = 1
ADMIN_PATH = "/admin/faults"
ADMIN_ORDERS_PATH = "/admin/orders"

# status -> (Alpaca error code, message) of the answers a `status` rule can give
STATUS_ANSWERS: dict[int, tuple[int, str]] = {
    401: (CODE_UNAUTHORIZED, "request is not authorized"),
    403: (40310000, "forbidden"),
    429: (42910000, "rate limit exceeded"),
    500: (50010000, "internal server error"),
    502: (50210000, "bad gateway"),
    503: (50310000, "service unavailable"),
    504: (50410000, "gateway timeout"),
}
RETRY_AFTER_STATUSES = frozenset({429, 503})  # RFC 9110 §10.2.3
GATEWAY_TIMEOUT = 504


class FaultRule(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One fault to inject (the body of POST /admin/faults)."""

    kind: str  # a FaultKind, checked below so a bad kind gets a message listing the kinds
    method: str = "*"
    path: str = "*"
    count: Annotated[int, msgspec.Meta(ge=0)] | None = None  # default 1; 0 = until cleared
    status: int | None = None
    retry_after_sec: Annotated[int, msgspec.Meta(ge=0)] | None = None
    delay_sec: Annotated[float, msgspec.Meta(ge=0, le=MAX_DELAY_SEC)] | None = None
    frames: Annotated[int, msgspec.Meta(ge=0)] | None = None  # default 1; 0 = until cleared
    query: dict[str, str] | None = None  # fires only when every listed query parameter has this value

    def __post_init__(self) -> None:
        # msgspec turns these ValueErrors into a ValidationError naming the body (422)
        kind = self.kind
        if kind not in KINDS:
            raise ValueError(f"kind: expected one of {sorted(KINDS)}, was {kind!r}")
        if self.method.upper() not in METHODS:
            raise ValueError(f"method: expected one of {sorted(METHODS)}, was {self.method!r}")
        if self.path != "*" and not self.path.startswith("/"):
            raise ValueError(f"path: expected '*' or a path starting with '/', was {self.path!r}")
        if kind in WS_KINDS and (self.method != "*" or self.path != "*"):
            raise ValueError(f"method/path: do not apply to {kind} (it acts on trade_update frames)")
        if self.query is not None and kind not in HTTP_KINDS:
            raise ValueError(f"query: only valid for HTTP kinds {sorted(HTTP_KINDS)}, was given for {kind}")
        if kind == "status":
            if self.status not in STATUS_ANSWERS:
                raise ValueError(f"status: expected one of {sorted(STATUS_ANSWERS)} for kind status, was {self.status}")
        elif self.status is not None:
            raise ValueError(f"status: only valid for kind status, was given for {kind}")
        if self.retry_after_sec is not None and self.status not in RETRY_AFTER_STATUSES:
            raise ValueError(f"retry_after_sec: only valid with status 429 or 503, was given with {self.status}")
        if self.delay_sec is not None and kind not in DELAY_KINDS:
            raise ValueError(f"delay_sec: only valid for {sorted(DELAY_KINDS)}, was given for {kind}")
        if kind == "delay" and not self.delay_sec:
            raise ValueError("delay_sec: expected > 0 for kind delay, was missing or 0")
        if self.frames is not None and kind not in FRAME_KINDS:
            raise ValueError(f"frames: only valid for {sorted(FRAME_KINDS)}, was given for {kind}")
        if self.count is not None and kind in FRAME_KINDS:
            raise ValueError(f"count: not valid for {kind}; frames says how many frames it affects")

    @property
    def budget(self) -> int | None:
        """Return how many times the rule fires, None for until cleared."""
        n = self.frames if self.kind in FRAME_KINDS else self.count
        n = 1 if n is None else n
        return n or None

    def matches(self, method: str, path: str, query: Mapping[str, str] | None = None) -> bool:
        """Tell whether an HTTP request is one this rule targets."""
        if self.kind not in HTTP_KINDS:
            return False
        if self.method != "*" and self.method.upper() != method.upper():
            return False
        if self.query and any((query or {}).get(k) != v for k, v in self.query.items()):
            return False
        if self.path == "*":
            return True
        if self.path.endswith("*"):
            return path.startswith(self.path[:-1])
        return path == self.path


class ActiveFault(msgspec.Struct, frozen=True, kw_only=True):
    """A rule in the plan: its id, firings left (None: until cleared) and firings so far."""

    id: int
    rule: FaultRule
    remaining: int | None
    fired: int = 0

    def view(self) -> dict[str, object]:
        """Render as the JSON the admin API answers."""
        rule = {k: v for k, v in msgspec.structs.asdict(self.rule).items() if v is not None}
        return {"id": self.id, **rule, "remaining": self.remaining, "fired": self.fired}


class FaultPlan(msgspec.Struct, frozen=True, kw_only=True):
    """The active rules in the order they were added; every method returns a new plan."""

    faults: tuple[ActiveFault, ...] = ()
    next_id: int = 1

    def add(self, rule: FaultRule) -> tuple[FaultPlan, ActiveFault]:
        """Append a rule; return the new plan and the rule as added."""
        active = ActiveFault(id=self.next_id, rule=rule, remaining=rule.budget)
        return FaultPlan(faults=(*self.faults, active), next_id=self.next_id + 1), active

    def clear(self) -> FaultPlan:
        """Drop every rule (ids keep counting up)."""
        return FaultPlan(next_id=self.next_id)

    def take_http(
        self, method: str, path: str, query: Mapping[str, str] | None = None
    ) -> tuple[FaultPlan, ActiveFault | None]:
        """Fire the oldest HTTP rule matching a request; return the new plan and what fired."""
        for i, active in enumerate(self.faults):
            if active.rule.matches(method, path, query):
                return self._fire(i)
        return self, None

    def take_frame(self) -> tuple[FaultPlan, ActiveFault | None]:
        """Fire the oldest websocket rule on one trade_update frame; return the new plan and what fired."""
        for i, active in enumerate(self.faults):
            if active.rule.kind in WS_KINDS:
                return self._fire(i)
        return self, None

    def _fire(self, index: int) -> tuple[FaultPlan, ActiveFault]:
        active = self.faults[index]
        remaining = None if active.remaining is None else active.remaining - 1
        fired = ActiveFault(id=active.id, rule=active.rule, remaining=remaining, fired=active.fired + 1)
        rest = self.faults[:index] + ((fired,) if remaining != 0 else ()) + self.faults[index + 1 :]
        return FaultPlan(faults=rest, next_id=self.next_id), fired


def frame_copies(fault: ActiveFault | None) -> int:
    """Return how many times a trade_update frame goes out under a fired websocket rule."""
    if fault is None:
        return 1
    return 2 if fault.rule.kind == "ws_duplicate" else 0


class Faults:
    """The exchange's current fault plan: never fires while disabled; logs and counts every firing."""

    def __init__(self, *, enabled: bool, metrics: Metrics | None = None) -> None:
        self.enabled = enabled
        self.plan = FaultPlan()
        self._metrics = metrics

    def add(self, rule: FaultRule) -> ActiveFault:
        """Add a rule."""
        if not self.enabled:
            raise RuntimeError("expected KEEL_EXCHANGE_ADMIN_ENABLED=true to add a fault, was disabled")
        self.plan, active = self.plan.add(rule)
        log.warning("fault rule added", extra={"fault": active.view()})
        return active

    def clear(self) -> int:
        """Drop every rule; return how many there were."""
        cleared = len(self.plan.faults)
        self.plan = self.plan.clear()
        log.warning("fault rules cleared", extra={"cleared": cleared})
        return cleared

    def take_http(self, method: str, path: str, query: Mapping[str, str] | None = None) -> ActiveFault | None:
        """Fire the rule for an HTTP request, if any."""
        if not self.enabled or not self.plan.faults:
            return None
        self.plan, fired = self.plan.take_http(method, path, query)
        if fired is not None:
            self._count(fired, method=method, path=path)
        return fired

    def frame_copies(self) -> int:
        """Fire the rule for one trade_update frame, if any; return how many copies to send."""
        if not self.enabled or not self.plan.faults:
            return 1
        self.plan, fired = self.plan.take_frame()
        if fired is not None:
            self._count(fired)
        return frame_copies(fired)

    def _count(self, fired: ActiveFault, **where: str) -> None:
        rule = fired.rule
        reason = f"{rule.kind}_{rule.status}" if rule.kind == "status" else rule.kind
        log.warning(
            "fault injected",
            extra={"fault_id": fired.id, "kind": reason, "remaining": fired.remaining, **where},
        )
        if self._metrics is not None:
            self._metrics.decision("fault", reason)


# --- HTTP edge -------------------------------------------------------------------------------


def _fault_answer(status: int, retry_after_sec: int | None = None) -> Response:
    code, message = STATUS_ANSWERS[status]
    response = json_response(error_body(code, f"{message} (injected fault)"), status)
    if status == 429 and retry_after_sec is None:
        retry_after_sec = DEFAULT_RETRY_AFTER_SEC
    if retry_after_sec is not None:
        response.headers["Retry-After"] = str(retry_after_sec)
    return response


def check_keys(request: Request, config: ExchangeConfig) -> None:
    """Require the account's APCA key headers on an admin route (api.configure checks only /v2/)."""
    if not config.accepts(request.headers.get(H_KEY_ID, ""), request.headers.get(H_SECRET_KEY, "")):
        raise ApiError(401, CODE_UNAUTHORIZED, "request is not authorized")


_rule_decoder = msgspec.json.Decoder(FaultRule)


def parse_rule(body: bytes) -> FaultRule:
    """Decode and check a POST /admin/faults body; raise ApiError 422 naming what is wrong."""
    try:
        return _rule_decoder.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError) as e:
        raise ApiError(422, CODE_INVALID, f"invalid fault rule: {e}") from e


class VenueStatus(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The body of POST /admin/orders/{order_id}/status."""

    status: str


_status_decoder = msgspec.json.Decoder(VenueStatus)
SetVenueStatus = Callable[[str, str], Awaitable["list[ExchangeOrder] | Rejection"]]


def admin_router(faults: Faults, config: ExchangeConfig, set_status: SetVenueStatus) -> APIRouter:
    """Return the /admin routes (mount them only when admin is enabled)."""
    r = APIRouter()

    @r.post(ADMIN_ORDERS_PATH + "/{order_id}/status")
    async def venue_status(order_id: str, request: Request) -> Response:
        # what a live venue does on its own (a halt, a pending cancel, done for the day, a
        # rejection after acceptance): committed and streamed like any other change
        check_keys(request, config)
        try:
            body = _status_decoder.decode(await request.body())
        except (msgspec.DecodeError, msgspec.ValidationError) as e:
            raise ApiError(422, CODE_INVALID, f"invalid venue status: {e}") from e
        result = await set_status(order_id.lower(), body.status)
        if isinstance(result, Rejection):
            raise rejection_error(result)
        log.warning("venue status injected", extra={"order_id": order_id, "status": body.status})
        return json_response([order_view(o) for o in result])

    @r.post(ADMIN_PATH)
    async def add_fault(request: Request) -> Response:
        check_keys(request, config)
        active = faults.add(parse_rule(await request.body()))
        return json_response(active.view(), 201)

    @r.get(ADMIN_PATH)
    async def list_faults(request: Request) -> Response:
        check_keys(request, config)
        return json_response([a.view() for a in faults.plan.faults])

    @r.delete(ADMIN_PATH)
    async def clear_faults(request: Request) -> Response:
        check_keys(request, config)
        return json_response({"cleared": faults.clear()})

    return r


def install(app: FastAPI, faults: Faults, config: ExchangeConfig, set_status: SetVenueStatus) -> None:
    """Mount the admin routes and the HTTP fault middleware, only when admin is enabled.

    Call before `api.configure`: middleware added later wraps it, so the key check runs first
    and an unauthenticated request never consumes a rule.
    """
    if not faults.enabled:
        return
    app.include_router(admin_router(faults, config, set_status))

    @app.middleware("http")
    async def _inject_faults(request: Request, call_next):  # type: ignore[no-untyped-def]
        path = request.url.path
        if not path.startswith("/v2/"):
            return await call_next(request)
        fired = faults.take_http(request.method, path, request.query_params)
        if fired is None:
            return await call_next(request)
        rule = fired.rule
        delay = rule.delay_sec or 0.0
        if rule.kind == "status":
            assert rule.status is not None
            return _fault_answer(rule.status, rule.retry_after_sec)
        if rule.kind == "delay":
            await asyncio.sleep(delay)
            return await call_next(request)
        if rule.kind == "timeout":
            await asyncio.sleep(delay)
            return _fault_answer(GATEWAY_TIMEOUT)
        # lose_response: the venue processes and commits the request; the answer never arrives
        response = await call_next(request)
        async for _ in response.body_iterator:
            pass
        await asyncio.sleep(delay)
        return _fault_answer(GATEWAY_TIMEOUT)


__all__ = [
    "ADMIN_PATH",
    "HTTP_KINDS",
    "STATUS_ANSWERS",
    "WS_KINDS",
    "check_keys",
    "ActiveFault",
    "FaultKind",
    "FaultPlan",
    "FaultRule",
    "Faults",
    "admin_router",
    "frame_copies",
    "install",
    "parse_rule",
]
