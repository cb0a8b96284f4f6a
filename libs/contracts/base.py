"""Envelope, typed identifiers and deterministic ids shared by every event family."""

from __future__ import annotations

import hashlib
from decimal import ROUND_CEILING, ROUND_FLOOR, ROUND_HALF_EVEN, Decimal
from typing import Annotated, Literal, NewType, Protocol

import msgspec

from libs.errors import InvariantViolation

Symbol = NewType("Symbol", str)
ClientOrderId = NewType("ClientOrderId", str)
IntentId = NewType("IntentId", str)
EventId = NewType("EventId", str)

# Value rules live on the types so a bad payload fails at decode, before any handler sees it.
Shares = Annotated[int, msgspec.Meta(gt=0)]
SignedShares = int
Price = Decimal  # positive and finite: checked in Event.__post_init__ by field name
Money = Decimal
NanoTime = Annotated[int, msgspec.Meta(ge=0)]
Side = Literal["buy", "sell"]
OrderType = Literal["market", "limit", "stop", "stop_limit", "trailing_stop"]
# simple: one order; bracket: entry + take-profit + stop-loss; oco: two exits, one cancels the
# other; oto: entry + one exit (Alpaca's order_class values for equities)
OrderClass = Literal["simple", "bracket", "oco", "oto"]
TimeInForce = Literal["day", "gtc", "ioc", "fok", "opg", "cls"]


PRICE_FIELDS = frozenset(
    {
        "open",
        "high",
        "low",
        "close",
        "reference_price",
        "limit_price",
        "arrival_price",
        "last_px",
        "avg_px",
        "fill_price",
        "stop_price",
        "trail_price",
        "take_profit_limit_price",
        "stop_loss_stop_price",
        "stop_loss_limit_price",
    }
)
# not prices, but only meaningful when positive
POSITIVE_FIELDS = frozenset({"trail_percent"})


NON_NEGATIVE_FIELDS = frozenset({"spread_bps", "fee", "notional", "sigma_bps", "expected_cost_bps"})


class Event(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", forbid_unknown_fields=False):
    """Envelope carried by every event: identity, causality and the two clocks (STYLE 13)."""

    event_id: str
    correlation_id: str
    causation_id: str
    ts_event: NanoTime
    ts_init: NanoTime

    def __post_init__(self) -> None:
        # msgspec has no numeric bounds for Decimal; reject NaN, inf and non-positive prices at
        # decode so no handler ever sees one. Such a value is impossible, not merely malformed:
        # InvariantViolation (a ValueError, so msgspec raises a ValidationError caused by it),
        # which libs.errors classifies INVARIANT_VIOLATION -> halt trading.
        for name in self.__struct_fields__:
            value = getattr(self, name)
            if isinstance(value, Decimal):
                if not value.is_finite():
                    raise InvariantViolation(f"expected a finite {name}, was {value}")
                if (name in PRICE_FIELDS or name in POSITIVE_FIELDS) and value <= 0:
                    raise InvariantViolation(f"expected {name} > 0, was {value}")
                if name in NON_NEGATIVE_FIELDS and value < 0:
                    raise InvariantViolation(f"expected {name} >= 0, was {value}")


class OrderFamily(Protocol):
    """The fields that say how an order works at the broker: its type, class, prices and legs."""

    side: str
    order_type: str
    order_class: str
    limit_price: Decimal | None
    stop_price: Decimal | None
    trail_price: Decimal | None
    trail_percent: Decimal | None
    take_profit_limit_price: Decimal | None
    stop_loss_stop_price: Decimal | None
    stop_loss_limit_price: Decimal | None


def check_order_family(order: OrderFamily) -> None:
    """Raise ValueError unless an order's type, class, prices and exit legs fit together.

    Shared by OrderIntent and PretradeDecision; the rules follow Alpaca's order API (the one
    broker adapter), so an order that passes here can always be built for the broker.
    """
    otype, oclass, side = order.order_type, order.order_class, order.side
    limit, stop = order.limit_price, order.stop_price
    trail_price, trail_percent = order.trail_price, order.trail_percent
    tp, sl_stop, sl_limit = order.take_profit_limit_price, order.stop_loss_stop_price, order.stop_loss_limit_price
    needs_limit = otype == "stop_limit" or (otype == "limit" and oclass != "oco")
    if needs_limit and limit is None:
        raise ValueError(f"expected limit_price for a {otype} order, was None")
    if otype not in ("limit", "stop_limit") and limit is not None:
        raise ValueError(f"expected no limit_price on a {otype} order, was {limit}")
    if otype in ("stop", "stop_limit") and stop is None:
        raise ValueError(f"expected stop_price for a {otype} order, was None")
    if otype not in ("stop", "stop_limit") and stop is not None:
        raise ValueError(f"expected no stop_price on a {otype} order, was {stop}")
    if otype == "trailing_stop" and (trail_price is None) == (trail_percent is None):
        was = "both" if trail_price is not None else "neither"
        raise ValueError(f"expected exactly one of trail_price, trail_percent for a trailing_stop order, was {was}")
    if otype != "trailing_stop" and (trail_price is not None or trail_percent is not None):
        raise ValueError(f"expected no trail_price/trail_percent on a {otype} order, was {trail_price}/{trail_percent}")
    if trail_percent is not None and trail_percent >= 100:
        raise ValueError(f"expected trail_percent < 100, was {trail_percent}")
    if sl_limit is not None and sl_stop is None:
        raise ValueError(f"expected stop_loss_stop_price with stop_loss_limit_price, was None (limit {sl_limit})")
    legs = (tp is not None) + (sl_stop is not None)
    if oclass == "simple" and legs:
        raise ValueError(f"expected no exit legs on a simple order, was take-profit {tp}, stop-loss {sl_stop}")
    if oclass in ("bracket", "oco") and legs != 2:
        raise ValueError(
            f"expected take_profit_limit_price and stop_loss_stop_price on a {oclass} order, was {tp} and {sl_stop}"
        )
    if oclass == "oco" and otype != "limit":
        raise ValueError(f"expected order_type limit for an oco order, was {otype}")
    if oclass == "oto" and legs != 1:
        raise ValueError(f"expected exactly one exit leg (take-profit or stop-loss) on an oto order, was {legs}")
    if legs == 2:
        # a bracket/oto's legs exit the entry; an oco is itself the exit: either way a long
        # position takes profit above its stop-loss and a short one below
        long = (side == "buy") != (oclass == "oco")
        if (tp > sl_stop) != long:
            want = "above" if long else "below"
            raise ValueError(
                f"expected take_profit_limit_price {want} stop_loss_stop_price for a {side} {oclass} order, "
                f"was {tp} vs {sl_stop}"
            )


LegRole = Literal["take_profit", "stop_loss"]
_LEG_SUFFIX: dict[str, str] = {"take_profit": "tp", "stop_loss": "sl"}


class ExitLeg(msgspec.Struct, frozen=True, kw_only=True):
    """An exit leg that a bracket, oto or oco order places at the broker beside its own order.

    The broker names a leg itself (Alpaca takes no client_order_id for one); keel knows it by
    `leg_client_order_id(parent, role)`, an id never sent to the broker.
    """

    role: LegRole
    side: Side
    order_type: OrderType  # limit (take-profit); stop or stop_limit (stop-loss)
    limit_price: Decimal | None = None
    stop_price: Decimal | None = None

    @property
    def reference_price(self) -> Decimal:
        """The price the leg is meant to trade at: the take-profit limit or the stop-loss stop."""
        price = self.limit_price if self.role == "take_profit" else self.stop_price
        assert price is not None  # exit_legs builds every leg with its price
        return price


class HasExits(Protocol):
    """The fields of an order that define its exit legs."""

    side: str
    order_class: str
    take_profit_limit_price: Decimal | None
    stop_loss_stop_price: Decimal | None
    stop_loss_limit_price: Decimal | None


def exit_legs(order: HasExits) -> tuple[ExitLeg, ...]:
    """Return the exit legs an order places beside itself, take-profit first (none for simple).

    A bracket's or oto's legs exit the position its entry opens (the other side, held until the
    entry fills); an oco is itself the take-profit limit, so its only leg is the stop-loss on its
    own side (seed 000 App. K, Alpaca's order classes).
    """
    if order.order_class == "simple":
        return ()
    oco = order.order_class == "oco"
    side: Side = order.side if oco else ("sell" if order.side == "buy" else "buy")  # type: ignore[assignment]
    legs: list[ExitLeg] = []
    if order.take_profit_limit_price is not None and not oco:
        legs.append(
            ExitLeg(role="take_profit", side=side, order_type="limit", limit_price=order.take_profit_limit_price)
        )
    if order.stop_loss_stop_price is not None:
        limit = order.stop_loss_limit_price
        legs.append(
            ExitLeg(
                role="stop_loss",
                side=side,
                order_type="stop" if limit is None else "stop_limit",
                limit_price=limit,
                stop_price=order.stop_loss_stop_price,
            )
        )
    return tuple(legs)


def intent_id_for(client_order_id: str) -> str:
    """Return the intent id of an order: derived from its client_order_id (so a re-sent intent is the same)."""
    return derive_id("intent", client_order_id)


def leg_client_order_id(parent_cid: str, role: str) -> str:
    """Return keel's id of an exit leg: its parent's client_order_id and the role (`:tp`, `:sl`)."""
    return f"{parent_cid}:{_LEG_SUFFIX[role]}"


def is_leg_client_order_id(cid: str) -> bool:
    """Tell whether a client_order_id is keel's name for an exit leg (`<parent>:tp` / `:sl`)."""
    return cid.endswith(tuple(f":{suffix}" for suffix in _LEG_SUFFIX.values()))


def tick_size(price: Decimal) -> Decimal:
    """Return the minimum price increment of a US equity quote (SEC Rule 612)."""
    return Decimal("0.01") if price >= 1 else Decimal("0.0001")


def to_tick(price: Decimal, *, toward: int = 0) -> Decimal:
    """Round a price to its tick, never below one tick: half-even, or up (toward > 0) / down (< 0)."""
    tick = tick_size(price)
    rounding = ROUND_HALF_EVEN if toward == 0 else ROUND_CEILING if toward > 0 else ROUND_FLOOR
    return max(price.quantize(tick, rounding=rounding), tick)


def derive_id(*parts: object) -> str:
    """Derive a stable 32-hex id from its causes and content (never uuid4, never hash())."""
    h = hashlib.sha256()
    for part in parts:
        h.update(str(part).encode())
        h.update(b"\x1f")
    return h.hexdigest()[:32]


def tag_of(cls: type[Event]) -> str:
    """Return the wire tag of an event class."""
    return cls.__struct_config__.tag  # type: ignore[return-value]
