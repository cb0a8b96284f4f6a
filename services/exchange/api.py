"""Alpaca-compatible REST surface of the local paper exchange (health and metrics: the runtime).

Shapes follow alpaca-py 0.44 (alpaca/trading/models.py: Order, Position, TradeAccount, Clock):
money and quantities as strings, ids as UUID strings, timestamps ISO-8601. Errors are Alpaca's
`{"code": <int>, "message": <str>}` bodies, which alpaca-py's APIError parses (`.code`,
`.message`, `.status_code`); every error the app returns, including unknown routes and
internal errors, has that shape (`configure` installs the handlers app-wide).
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Iterable, Mapping
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

import msgspec
from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from libs import fillsim, sessions
from services.exchange import handlers
from services.exchange.state import (
    DUPLICATE_CLIENT_ORDER_ID,
    HELD,
    INSUFFICIENT_BUYING_POWER,
    INSUFFICIENT_QTY,
    INVALID_ORDER,
    MARKET_SESSION_RULE,
    OPPOSITE_SIDE_ORDER_OPEN,
    ORDER_NOT_CANCELABLE,
    ORDER_NOT_FOUND,
    ORDER_NOT_REPLACEABLE,
    POSITION_NOT_FOUND,
    SHORT_NOT_ALLOWED,
    ExchangeOrder,
    ExchangeState,
    OrderQuery,
    Position,
    Rejection,
    ReplaceOrder,
    SubmitOrder,
)

if TYPE_CHECKING:
    from services.exchange.app import ExchangeService
    from services.exchange.config import ExchangeConfig

log = logging.getLogger(__name__)

H_KEY_ID = "APCA-API-KEY-ID"
H_SECRET_KEY = "APCA-API-SECRET-KEY"
# keel extension (not Alpaca): ts_event ns of the bar an order was decided on; the order then
# fills after that bar even when the exchange has not consumed it yet (DESIGN: determinism)

# Alpaca error codes (observed on the Trading API v2)
CODE_MALFORMED = 40010000
CODE_INVALID = 40010001
CODE_UNAUTHORIZED = 40110000
CODE_FORBIDDEN = 40310000
CODE_NOT_FOUND = 40410000
CODE_UNPROCESSABLE = 42210000
CODE_INTERNAL = 50010000

# reason -> (HTTP status, Alpaca code)
REJECTION_HTTP: dict[str, tuple[int, int]] = {
    INVALID_ORDER: (422, CODE_INVALID),
    DUPLICATE_CLIENT_ORDER_ID: (422, CODE_INVALID),
    INSUFFICIENT_BUYING_POWER: (403, CODE_FORBIDDEN),
    SHORT_NOT_ALLOWED: (403, CODE_FORBIDDEN),
    INSUFFICIENT_QTY: (403, CODE_FORBIDDEN),
    OPPOSITE_SIDE_ORDER_OPEN: (403, CODE_FORBIDDEN),
    MARKET_SESSION_RULE: (422, CODE_UNPROCESSABLE),
    ORDER_NOT_FOUND: (404, CODE_NOT_FOUND),
    POSITION_NOT_FOUND: (404, CODE_NOT_FOUND),
    ORDER_NOT_CANCELABLE: (422, CODE_UNPROCESSABLE),
    ORDER_NOT_REPLACEABLE: (422, CODE_UNPROCESSABLE),
}
ORDER_TYPES = ("market", "limit", "stop", "stop_limit", "trailing_stop")
TIME_IN_FORCE = ("day", "gtc", "ioc", "fok", "opg", "cls")
ORDER_CLASSES = ("simple", "bracket", "oco", "oto")

ORDER_LIST_DEFAULT = 50
ORDER_LIST_MAX = 500  # Alpaca's cap on GET /v2/orders?limit
MAX_SYMBOL_LEN = 21
NEW_YORK = ZoneInfo("America/New_York")
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
CENT = Decimal("0.01")
RATIO_QUANTUM = Decimal("1E-6")

_encoder = msgspec.json.Encoder(decimal_format="string")


class _TakeProfit(msgspec.Struct, kw_only=True):
    limit_price: Decimal | None = None


class _StopLoss(msgspec.Struct, kw_only=True):
    stop_price: Decimal | None = None
    limit_price: Decimal | None = None


class _OrderBody(msgspec.Struct, kw_only=True):
    # raw POST /v2/orders body; unknown fields are ignored like Alpaca does
    symbol: str | None = None
    qty: Decimal | None = None
    notional: Decimal | None = None
    side: str | None = None
    type: str | None = None
    time_in_force: str | None = None
    limit_price: Decimal | None = None
    stop_price: Decimal | None = None
    trail_price: Decimal | None = None
    trail_percent: Decimal | None = None
    client_order_id: str | None = None
    extended_hours: bool | None = None
    order_class: str | None = None
    legs: list[Any] | None = None
    take_profit: _TakeProfit | None = None
    stop_loss: _StopLoss | None = None


class _ReplaceBody(msgspec.Struct, kw_only=True):
    qty: Decimal | None = None
    time_in_force: str | None = None
    limit_price: Decimal | None = None
    stop_price: Decimal | None = None
    trail: Decimal | None = None
    client_order_id: str | None = None


_body_decoder = msgspec.json.Decoder(_OrderBody)
_replace_decoder = msgspec.json.Decoder(_ReplaceBody)


class ApiError(Exception):
    """An Alpaca-shaped error answer."""

    def __init__(self, status: int, code: int, message: str, **extra: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.extra = extra


# --- encoding --------------------------------------------------------------------------------


def json_response(body: object, status: int = 200) -> Response:
    """Encode a body as JSON (Decimals as strings)."""
    return Response(_encoder.encode(body), status_code=status, media_type="application/json")


def error_body(code: int, message: str, **extra: str) -> dict[str, object]:
    """Return Alpaca's error body."""
    return {**extra, "code": code, "message": message}


def _error(exc: ApiError) -> Response:
    return json_response(error_body(exc.code, exc.message, **exc.extra), exc.status)


def rejection_error(rejection: Rejection) -> ApiError:
    """Map a business rejection to Alpaca's HTTP status, code and body."""
    status, code = REJECTION_HTTP[rejection.reason]
    shown = ("buying_power", "cost_basis", "available", "existing_qty", "held_for_orders", "symbol")
    extra = {k: v for k, v in rejection.details.items() if k in shown}
    return ApiError(status, code, rejection.message, **extra)


def iso_utc(ns: int | None) -> str | None:
    """Format ns UTC as Alpaca does: `2024-03-05T14:31:00.123456789Z`."""
    if ns is None:
        return None
    secs, frac = divmod(ns, 1_000_000_000)
    text = datetime.fromtimestamp(secs, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{text}.{frac:09d}Z" if frac else f"{text}Z"


def iso_new_york(ns: int) -> str:
    """Format ns as New York local time with offset (the /v2/clock convention)."""
    secs, frac = divmod(ns, 1_000_000_000)
    local = datetime.fromtimestamp(secs, tz=NEW_YORK)
    text = local.strftime("%Y-%m-%dT%H:%M:%S")
    offset = local.strftime("%z")
    return f"{text}{f'.{frac:09d}' if frac else ''}{offset[:3]}:{offset[3:]}"


def plain(d: Decimal) -> str:
    """Format a Decimal as Alpaca does: no exponent, no trailing zeros (str(Decimal('1E+2')) is '1E+2')."""
    text = format(d, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text or "0"


def _money(d: Decimal) -> str:
    return format(d.quantize(CENT), "f")


def _ratio(num: Decimal, den: Decimal) -> str:
    return plain((num / den).quantize(RATIO_QUANTUM)) if den else "0"


# --- views -----------------------------------------------------------------------------------


def _price(d: Decimal | None) -> str | None:
    return plain(d) if d is not None else None


def order_view(o: ExchangeOrder, legs: list[ExchangeOrder] | None = None) -> dict[str, object]:
    """Render an order as Alpaca's Order JSON; `legs` rolls its exit legs up under it (nested)."""
    return {
        "id": o.id,
        "client_order_id": o.client_order_id,
        "created_at": iso_utc(o.created_at),
        "updated_at": iso_utc(o.updated_at),
        "submitted_at": iso_utc(o.submitted_at),
        "filled_at": iso_utc(o.filled_at),
        "expired_at": iso_utc(o.expired_at),
        "canceled_at": iso_utc(o.canceled_at),
        "failed_at": None,
        "replaced_at": iso_utc(o.replaced_at),
        "replaced_by": o.replaced_by,
        "replaces": o.replaces,
        "asset_id": handlers.asset_id_for(o.symbol),
        "symbol": o.symbol,
        "asset_class": "us_equity",
        "notional": None,
        "qty": str(o.qty),
        "filled_qty": str(o.filled_qty),
        "filled_avg_price": _price(o.filled_avg_price),
        "order_class": o.order_class,
        "order_type": o.type,
        "type": o.type,
        "side": o.side,
        "position_intent": o.position_intent,
        "time_in_force": o.time_in_force,
        "limit_price": _price(o.limit_price),
        "stop_price": _price(o.stop_price),
        "status": o.status,
        "extended_hours": False,
        "legs": [order_view(leg) for leg in legs] if legs else None,
        "trail_percent": _price(o.trail_percent),
        "trail_price": _price(o.trail_price),
        "hwm": _price(o.hwm),
        "subtag": None,
        "source": None,
        "expires_at": iso_utc(o.expires_at),
    }


def nested_view(
    state: ExchangeState, o: ExchangeOrder, stored: Mapping[str, ExchangeOrder] | None = None
) -> dict[str, object]:
    """Render an order with its legs rolled up (what POST /v2/orders and nested=true return)."""
    return order_view(o, [state.orders.get(i) or (stored or {})[i] for i in o.legs])


def position_view(state: ExchangeState, p: Position) -> dict[str, object]:
    """Render a position as Alpaca's Position JSON."""
    mark = state.marks.get(p.symbol)
    price = mark.price if mark else p.avg_entry_price
    lastday = mark.lastday_price if mark and mark.lastday_price is not None else price
    market_value = p.qty * price
    cost_basis = p.qty * p.avg_entry_price
    unrealized = market_value - cost_basis
    # intraday reference: yesterday's close for a position carried overnight, the entry price
    # for one opened this session (approximation: adds to a carried position use the close)
    opened_today = mark is None or p.opened_session == mark.session or mark.lastday_price is None
    reference = p.avg_entry_price if opened_today else lastday
    intraday = p.qty * (price - reference)
    sign = 1 if p.qty > 0 else -1
    return {
        "asset_id": handlers.asset_id_for(p.symbol),
        "symbol": p.symbol,
        "exchange": "",  # the local exchange has no listing data (AssetExchange.EMPTY)
        "asset_class": "us_equity",
        "asset_marginable": True,
        "avg_entry_price": plain(p.avg_entry_price),
        "qty": str(p.qty),
        "qty_available": str(p.qty - sign * handlers.held_for_orders(state, p)),
        "side": "long" if p.qty > 0 else "short",
        "market_value": _money(market_value),
        "cost_basis": _money(cost_basis),
        "unrealized_pl": _money(unrealized),
        "unrealized_plpc": _ratio(unrealized, abs(cost_basis)),
        "unrealized_intraday_pl": _money(intraday),
        "unrealized_intraday_plpc": _ratio(intraday, abs(p.qty * reference)),
        "current_price": plain(price),
        "lastday_price": plain(lastday),
        "change_today": _ratio(price - lastday, lastday),
    }


def account_view(service: ExchangeService, state: ExchangeState) -> dict[str, object]:
    """Render the account as Alpaca's TradeAccount JSON."""
    cfg = service.config
    long_mv = handlers.long_market_value(state)
    short_mv = handlers.short_market_value(state)
    equity = state.account.cash + long_mv + short_mv
    bp = handlers.buying_power(state, service.ctx)
    return {
        "id": handlers.account_uuid(cfg.account_id),
        "account_number": cfg.account_number,
        "status": "ACTIVE",
        "crypto_status": "INACTIVE",
        "currency": "USD",
        "buying_power": _money(bp),
        "regt_buying_power": _money(bp),
        "daytrading_buying_power": "0",
        "effective_buying_power": _money(bp),
        "non_marginable_buying_power": _money(max(state.account.cash, Decimal(0))),
        "options_buying_power": "0",
        "bod_dtbp": "0",
        "cash": _money(state.account.cash),
        "accrued_fees": "0",
        "pending_transfer_in": "0",
        "pending_transfer_out": "0",
        "portfolio_value": _money(equity),
        "pattern_day_trader": False,
        "trading_blocked": False,
        "transfers_blocked": False,
        "account_blocked": False,
        "created_at": iso_utc(0),
        "trade_suspended_by_user": False,
        "multiplier": plain(service.ctx.margin_multiplier),
        "shorting_enabled": True,
        "equity": _money(equity),
        "last_equity": _money(state.account.last_equity),
        "long_market_value": _money(long_mv),
        "short_market_value": _money(short_mv),
        "position_market_value": _money(long_mv - short_mv),
        # Reg T: 50% initial; maintenance 25% long / 30% short (FINRA 4210 minimums)
        "initial_margin": _money((long_mv - short_mv) / 2),
        "maintenance_margin": _money(long_mv * Decimal("0.25") - short_mv * Decimal("0.30")),
        "last_maintenance_margin": "0",
        "sma": "0",
        "daytrade_count": 0,
        "balance_asof": state.account.session or None,
        "options_approved_level": 0,
        "options_trading_level": 0,
    }


def clock_view(clock: int) -> dict[str, object]:
    """Render the exchange's event clock as Alpaca's Clock JSON."""
    return {
        "timestamp": iso_new_york(clock),
        "is_open": sessions.is_open(clock),
        "next_open": iso_new_york(sessions.next_open(clock)),
        "next_close": iso_new_york(sessions.next_close(clock)),
    }


# --- request parsing -------------------------------------------------------------------------


def _invalid(message: str) -> ApiError:
    return ApiError(422, CODE_INVALID, message)


def _unprocessable(message: str) -> ApiError:
    return ApiError(422, CODE_UNPROCESSABLE, message)


def _check_price(name: str, value: Decimal | None, *, required: bool, kind: str) -> Decimal | None:
    if value is None:
        if required:
            raise _invalid(f"{name} is required for {kind} orders")
        return None
    if not value.is_finite() or value <= 0:
        raise _invalid(f"{name} must be > 0")
    if not fillsim.on_tick(value):
        # Alpaca: sub-penny prices are refused from $1.00 up (Reg NMS Rule 612)
        raise _unprocessable(
            f"invalid {name} {plain(value)}. sub-penny increment does not fulfill minimum pricing criteria"
        )
    return Decimal(plain(value))


def _whole_shares(value: Decimal | None, name: str = "qty") -> int:
    if value is None:
        raise _invalid(f"{name} is required")
    if not value.is_finite() or value <= 0:
        raise _invalid(f"{name} must be > 0")
    if value != value.to_integral_value():
        raise _invalid("fractional orders are not supported by the local exchange; qty must be whole shares")
    return int(value)


def parse_order(body: bytes) -> SubmitOrder:
    """Check a POST /v2/orders body the way Alpaca does; raise ApiError when it is bad."""
    try:
        raw = _body_decoder.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError) as e:
        raise ApiError(400, CODE_MALFORMED, f"request body format is invalid: {e}") from e
    symbol = (raw.symbol or "").strip().upper()
    if not symbol:
        raise _invalid("symbol is required")
    if len(symbol) > MAX_SYMBOL_LEN or not all(c.isalnum() or c in "./-" for c in symbol):
        raise _invalid(f'asset "{symbol}" not found')
    if raw.notional is not None:
        raise _invalid("notional orders are not supported by the local exchange; use qty")
    qty = _whole_shares(raw.qty)
    if raw.side not in ("buy", "sell"):
        raise _invalid(f"invalid side {raw.side!r}: expected buy or sell")
    kind = raw.type
    if kind not in ORDER_TYPES:
        raise _invalid(f"invalid order type {kind!r}: expected one of {', '.join(ORDER_TYPES)}")
    tif = raw.time_in_force
    if tif not in TIME_IN_FORCE:
        raise _invalid(f"invalid time_in_force {tif!r}: expected one of {', '.join(TIME_IN_FORCE)}")
    order_class = raw.order_class or "simple"
    if order_class not in ORDER_CLASSES:
        raise _invalid(f"invalid order_class {order_class!r}: expected one of {', '.join(ORDER_CLASSES)}")
    if raw.extended_hours:
        raise _invalid("extended hours orders are not supported by the local exchange")
    if raw.legs:
        raise _invalid("legs are not accepted on order submission; use take_profit and stop_loss")
    if kind == "trailing_stop" and tif not in ("day", "gtc"):
        raise _invalid("trailing_stop orders support time_in_force day or gtc only")
    if tif in ("opg", "cls") and kind not in ("market", "limit"):
        raise _invalid(f"time_in_force {tif} is valid for market and limit orders only")

    # an OCO's limit is its take-profit: Alpaca takes it from take_profit.limit_price alone
    oco_limit = order_class == "oco" and raw.take_profit is not None and raw.take_profit.limit_price is not None
    limit_required = kind in ("limit", "stop_limit") and not oco_limit
    limit = _check_price("limit_price", raw.limit_price, required=limit_required, kind=kind)
    stop = _check_price("stop_price", raw.stop_price, required=kind in ("stop", "stop_limit"), kind=kind)
    if limit is not None and kind not in ("limit", "stop_limit"):
        raise _invalid(f"limit_price is not valid for {kind} orders")
    if stop is not None and kind not in ("stop", "stop_limit"):
        raise _invalid(f"stop_price is not valid for {kind} orders")
    trail_price, trail_percent = raw.trail_price, raw.trail_percent
    if kind == "trailing_stop":
        if (trail_price is None) == (trail_percent is None):
            raise _invalid("exactly one of trail_price or trail_percent is required for trailing_stop orders")
        trail_price = _check_price("trail_price", trail_price, required=False, kind=kind)
        if trail_percent is not None and (not trail_percent.is_finite() or not 0 < trail_percent < 100):
            raise _invalid("trail_percent must be > 0 and < 100")
    elif trail_price is not None or trail_percent is not None:
        raise _invalid(f"trail_price/trail_percent are not valid for {kind} orders")

    tp = _check_price(
        "take_profit.limit_price", raw.take_profit.limit_price if raw.take_profit else None, required=False, kind=kind
    )
    sl_stop = _check_price(
        "stop_loss.stop_price", raw.stop_loss.stop_price if raw.stop_loss else None, required=False, kind=kind
    )
    sl_limit = _check_price(
        "stop_loss.limit_price", raw.stop_loss.limit_price if raw.stop_loss else None, required=False, kind=kind
    )
    if order_class == "simple" and (tp or sl_stop or sl_limit):
        raise _invalid("take_profit and stop_loss need order_class bracket, oco or oto")
    if sl_limit is not None and sl_stop is None:
        raise _invalid("stop_loss.stop_price is required when stop_loss.limit_price is given")
    if order_class == "bracket":
        if tp is None or sl_stop is None:
            raise _invalid("bracket orders require take_profit.limit_price and stop_loss.stop_price")
        if kind not in ("market", "limit"):
            raise _invalid("bracket orders must have type market or limit")
    if order_class == "oto":
        if (tp is None) == (sl_stop is None):
            raise _invalid("oto orders require exactly one of take_profit or stop_loss")
        if kind not in ("market", "limit"):
            raise _invalid("oto orders must have type market or limit")
    if order_class == "oco":
        if tp is None or sl_stop is None:
            raise _invalid("oco orders require take_profit.limit_price and stop_loss.stop_price")
        if kind != "limit":
            raise _invalid("oco orders must have type limit")
        limit = tp  # the OCO order itself is the take-profit limit
    cid = raw.client_order_id or None
    if cid is not None and len(cid) > handlers.DEFAULT_CTX.max_client_order_id_len:
        raise _invalid("client_order_id must be no more than 128 characters")
    return SubmitOrder(
        symbol=symbol,
        qty=qty,
        side=raw.side,  # type: ignore[arg-type]
        type=kind,  # type: ignore[arg-type]
        time_in_force=tif,  # type: ignore[arg-type]
        limit_price=limit,
        stop_price=stop,
        trail_price=trail_price,
        trail_percent=Decimal(plain(trail_percent)) if trail_percent is not None else None,
        client_order_id=cid,
        order_class=order_class,  # type: ignore[arg-type]
        take_profit_limit_price=tp,
        stop_loss_stop_price=sl_stop,
        stop_loss_limit_price=sl_limit,
    )


def parse_replace(body: bytes) -> ReplaceOrder:
    """Check a PATCH /v2/orders/{id} body; raise ApiError when it is bad."""
    try:
        raw = _replace_decoder.decode(body or b"{}")
    except (msgspec.DecodeError, msgspec.ValidationError) as e:
        raise ApiError(400, CODE_MALFORMED, f"request body format is invalid: {e}") from e
    if raw.time_in_force is not None and raw.time_in_force not in TIME_IN_FORCE:
        raise _invalid(f"invalid time_in_force {raw.time_in_force!r}")
    if raw.trail is not None and (not raw.trail.is_finite() or raw.trail <= 0):
        raise _invalid("trail must be > 0")
    fields = (raw.qty, raw.time_in_force, raw.limit_price, raw.stop_price, raw.trail, raw.client_order_id)
    if all(v is None for v in fields):
        raise _invalid(
            "at least one of qty, time_in_force, limit_price, stop_price, trail, client_order_id is required"
        )
    return ReplaceOrder(
        qty=_whole_shares(raw.qty) if raw.qty is not None else None,
        time_in_force=raw.time_in_force,  # type: ignore[arg-type]
        limit_price=_check_price("limit_price", raw.limit_price, required=False, kind="the replaced"),
        stop_price=_check_price("stop_price", raw.stop_price, required=False, kind="the replaced"),
        trail=raw.trail,
        client_order_id=raw.client_order_id or None,
    )


def calendar_view(start: date, end: date) -> list[dict[str, str]]:
    """Render XNYS sessions between two dates as Alpaca's Calendar JSON (times in New York)."""
    days = sessions.sessions_between(start, end)
    out = []
    for d in days:
        open_ns, close_ns = sessions.session_open_close(d)
        settle = sessions.next_session(d, inclusive=False)  # T+1 settlement (SEC rule 15c6-1, 2024)
        out.append(
            {
                "date": d.isoformat(),
                "open": datetime.fromtimestamp(open_ns / 1e9, tz=NEW_YORK).strftime("%H:%M"),
                "close": datetime.fromtimestamp(close_ns / 1e9, tz=NEW_YORK).strftime("%H:%M"),
                "session_open": "0400",
                "session_close": "2000",
                "settlement_date": settle.isoformat(),
            }
        )
    return out


def _parse_time(name: str, value: str) -> int:
    text = value.strip()
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00") if text.endswith("Z") else text)
    except ValueError as e:
        raise _invalid(f"invalid {name}: expected an RFC 3339 timestamp, was {value!r}") from e
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return (dt - EPOCH) // timedelta(microseconds=1) * 1000


def order_query(params: Mapping[str, str], *, nested: bool = False) -> OrderQuery:
    """Validate GET /v2/orders' query parameters."""
    status = params.get("status") or "open"
    if status not in ("open", "closed", "all"):
        raise _invalid(f"invalid status {status!r}: expected open, closed or all")
    direction = params.get("direction") or "desc"
    if direction not in ("asc", "desc"):
        raise _invalid(f"invalid direction {direction!r}: expected asc or desc")
    try:
        limit = int(params.get("limit") or ORDER_LIST_DEFAULT)
    except ValueError as e:
        raise _invalid(f"invalid limit {params.get('limit')!r}") from e
    if limit <= 0:
        raise _invalid("limit must be > 0")
    side = params.get("side") or None
    if side not in (None, "buy", "sell"):
        raise _invalid(f"invalid side {side!r}: expected buy or sell")
    return OrderQuery(
        status=status,  # type: ignore[arg-type]
        direction=direction,  # type: ignore[arg-type]
        limit=min(limit, ORDER_LIST_MAX),
        side=side,  # type: ignore[arg-type]
        after=_parse_time("after", params["after"]) if params.get("after") else None,
        until=_parse_time("until", params["until"]) if params.get("until") else None,
        symbols=frozenset(s.strip().upper() for s in (params.get("symbols") or "").split(",") if s.strip()),
        nested=nested,
    )


def select_orders(state: ExchangeState, q: OrderQuery, stored: Iterable[ExchangeOrder] = ()) -> list[ExchangeOrder]:
    """Filter and sort orders for a listing: memory's, and for closed / all those the store picked
    (`ExchangeStore.listed`) that memory no longer holds."""
    if q.status == "open":
        # Alpaca lists a `held` order (a bracket leg waiting for its entry or its trigger) as
        # closed, not open (alpaca-trade-api-python#322, alpaca-trade-api-js#87)
        candidates = [o for ids in state.working.values() for oid in ids if (o := state.orders[oid]).status != HELD]
    else:
        candidates = [*state.orders.values(), *(o for o in stored if o.id not in state.orders)]
    chosen = [
        o
        for o in candidates
        if (q.status != "closed" or not o.is_open or o.status == HELD)
        and not (q.nested and o.parent_id is not None)  # nested: legs are rolled up under their order
        and (not q.symbols or o.symbol in q.symbols)
        and (q.side is None or o.side == q.side)
        and (q.after is None or o.submitted_at > q.after)
        and (q.until is None or o.submitted_at < q.until)
    ]
    chosen.sort(key=lambda o: (o.submitted_at, o.seq), reverse=q.direction == "desc")
    return chosen[: q.limit]


def list_orders(
    state: ExchangeState, params: Mapping[str, str], *, nested: bool = False, stored: Iterable[ExchangeOrder] = ()
) -> list[ExchangeOrder]:
    """Filter and sort orders for GET /v2/orders (legs listed on their own unless nested)."""
    return select_orders(state, order_query(params, nested=nested), stored)


# --- app -------------------------------------------------------------------------------------


def configure(app: FastAPI, config: ExchangeConfig) -> None:
    """Give the whole app Alpaca's error bodies and require the account's keys on /v2/ paths."""

    @app.exception_handler(ApiError)
    async def _on_api_error(request: Request, exc: ApiError) -> Response:
        return _error(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _on_http_error(request: Request, exc: StarletteHTTPException) -> Response:
        code = {404: CODE_NOT_FOUND, 401: CODE_UNAUTHORIZED, 403: CODE_FORBIDDEN}.get(
            exc.status_code, exc.status_code * 100000
        )
        message = "endpoint not found" if exc.status_code == 404 else str(exc.detail)
        return json_response(error_body(code, message), exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def _on_validation_error(request: Request, exc: RequestValidationError) -> Response:
        return json_response(error_body(CODE_INVALID, f"invalid request: {exc.errors()}"), 422)

    @app.exception_handler(Exception)
    async def _on_crash(request: Request, exc: Exception) -> Response:
        log.exception("request failed", extra={"path": request.url.path})
        return json_response(error_body(CODE_INTERNAL, "internal server error"), 500)

    # only the Alpaca surface is authenticated: /healthz, /readyz and /metrics stay open
    @app.middleware("http")
    async def _authenticate(request: Request, call_next):  # type: ignore[no-untyped-def]
        if request.url.path.startswith("/v2/"):
            key = request.headers.get(H_KEY_ID, "")
            secret = request.headers.get(H_SECRET_KEY, "")
            ok_key = hmac.compare_digest(key.encode(), config.api_key_id.encode())
            ok_secret = hmac.compare_digest(secret.encode(), config.api_secret_key.encode())
            if not (ok_key and ok_secret):
                return json_response(error_body(CODE_UNAUTHORIZED, "request is not authorized"), 401)
        return await call_next(request)


def _flag(params: dict[str, str], name: str) -> bool:
    return (params.get(name) or "").lower() == "true"


def router(service: ExchangeService) -> APIRouter:
    """Return Alpaca's Trading API v2 routes over a running exchange."""
    r = APIRouter()

    def view(
        state: ExchangeState, o: ExchangeOrder, nested: bool, stored: Mapping[str, ExchangeOrder]
    ) -> dict[str, object]:
        return nested_view(state, o, stored) if nested else order_view(o)

    @r.post("/v2/orders")
    async def post_order(request: Request) -> Response:
        order_request = parse_order(await request.body())
        result = await service.submit(order_request)
        if isinstance(result, Rejection):
            raise rejection_error(result)
        return json_response(nested_view(service.state, result))

    @r.get("/v2/orders")
    async def get_orders(request: Request) -> Response:
        params = dict(request.query_params)
        q = order_query(params, nested=_flag(params, "nested"))
        # the store first, then memory: an order that closes in between is in memory by then
        # (closed sets only grow, and a stored-only order never changes), so none is lost
        before = service.state
        stored = await service.listed(before, q)
        state = service.state
        if before.complete and not state.complete:
            stored = await service.listed(state, q)  # orders left memory meanwhile (a session's first bar)
        orders = select_orders(state, q, stored)
        by_id = {o.id: o for o in stored}
        return json_response([view(state, o, q.nested, by_id) for o in orders])

    @r.get("/v2/orders:by_client_order_id")
    async def get_order_by_client_id(request: Request) -> Response:
        cid = request.query_params.get("client_order_id", "")
        if not cid:
            raise _invalid("client_order_id is required")
        state = service.state
        found = await service.find(state, client_order_id=cid)
        if found is None:
            raise ApiError(404, CODE_NOT_FOUND, "order not found")
        order, family = found
        return json_response(nested_view(state, order, family))

    @r.get("/v2/orders/{order_id}")
    async def get_order(order_id: str, request: Request) -> Response:
        state = service.state
        found = await service.find(state, order_id=order_id.lower())
        if found is None:
            raise ApiError(404, CODE_NOT_FOUND, "order not found")
        order, family = found
        return json_response(view(state, order, _flag(dict(request.query_params), "nested"), family))

    @r.patch("/v2/orders/{order_id}")
    async def patch_order(order_id: str, request: Request) -> Response:
        result = await service.replace(order_id.lower(), parse_replace(await request.body()))
        if isinstance(result, Rejection):
            raise rejection_error(result)
        return json_response(order_view(result))

    @r.delete("/v2/orders/{order_id}")
    async def delete_order(order_id: str) -> Response:
        result = await service.cancel(order_id.lower())
        if isinstance(result, Rejection):
            raise rejection_error(result)
        return Response(status_code=204)

    @r.delete("/v2/orders")
    async def delete_orders() -> Response:
        canceled = await service.cancel_all()
        # Alpaca answers 207 Multi-Status with one {id, status, body} per order it canceled
        return json_response([{"id": o.id, "status": 200, "body": order_view(o)} for o in canceled], 207)

    @r.get("/v2/positions")
    async def get_positions() -> Response:
        state = service.state
        return json_response([position_view(state, state.positions[s]) for s in sorted(state.positions)])

    def find_position(state: ExchangeState, symbol_or_asset_id: str) -> Position:
        position = state.positions.get(symbol_or_asset_id.upper())
        if position is None:
            lowered = symbol_or_asset_id.lower()
            position = next(
                (p for p in state.positions.values() if handlers.asset_id_for(p.symbol) == lowered),
                None,
            )
        if position is None:
            raise ApiError(404, CODE_NOT_FOUND, "position does not exist")
        return position

    @r.get("/v2/positions/{symbol_or_asset_id}")
    async def get_position(symbol_or_asset_id: str) -> Response:
        state = service.state
        return json_response(position_view(state, find_position(state, symbol_or_asset_id)))

    @r.delete("/v2/positions/{symbol_or_asset_id}")
    async def close_position(symbol_or_asset_id: str, request: Request) -> Response:
        params = dict(request.query_params)
        position = find_position(service.state, symbol_or_asset_id)
        qty = _whole_shares(Decimal(params["qty"])) if params.get("qty") else None
        percentage = None
        if params.get("percentage"):
            percentage = Decimal(params["percentage"])
            if not percentage.is_finite() or not 0 < percentage <= 100:
                raise _invalid("percentage must be > 0 and <= 100")
        if qty is not None and percentage is not None:
            raise _invalid("only one of qty or percentage may be given")
        result = await service.close_position(position.symbol, qty=qty, percentage=percentage)
        if isinstance(result, Rejection):
            raise rejection_error(result)
        return json_response(order_view(result))

    @r.delete("/v2/positions")
    async def close_all_positions(request: Request) -> Response:
        results = await service.close_all(cancel_orders=_flag(dict(request.query_params), "cancel_orders"))
        body: list[dict[str, object]] = []
        for symbol, result in results:
            if isinstance(result, Rejection):
                status, code = REJECTION_HTTP[result.reason]
                body.append({"symbol": symbol, "status": status, "body": error_body(code, result.message)})
            else:
                body.append({"symbol": symbol, "status": 200, "order_id": result.id, "body": order_view(result)})
        return json_response(body, 207)

    @r.get("/v2/account")
    async def get_account() -> Response:
        return json_response(account_view(service, service.state))

    @r.get("/v2/clock")
    async def get_clock() -> Response:
        # the event clock (the last bar seen), never the wall clock: execution polls it to be
        # sure the exchange has seen a decision bar before it submits (0 before any bar: 1970)
        return json_response(clock_view(service.state.clock))

    @r.get("/v2/calendar")
    async def get_calendar(request: Request) -> Response:
        params = dict(request.query_params)
        try:
            start = date.fromisoformat(params["start"]) if params.get("start") else sessions.FIRST_DAY
            end = date.fromisoformat(params["end"]) if params.get("end") else sessions.LAST_DAY
        except ValueError as e:
            raise _invalid(f"invalid date: {e}") from e
        start, end = max(start, sessions.FIRST_DAY), min(end, sessions.LAST_DAY)
        return json_response(calendar_view(start, end) if start <= end else [])

    return r
