"""Envelope, typed identifiers and deterministic ids shared by every event family."""

from __future__ import annotations

import hashlib
from decimal import Decimal
from typing import Annotated, Literal, NewType

import msgspec

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
OrderType = Literal["market", "limit"]
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
    }
)


NON_NEGATIVE_FIELDS = frozenset({"spread_bps", "fee", "notional"})


class Event(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", forbid_unknown_fields=False):
    """Envelope carried by every event: identity, causality and the two clocks (STYLE 13)."""

    event_id: str
    correlation_id: str
    causation_id: str
    ts_event: NanoTime
    ts_init: NanoTime

    def __post_init__(self) -> None:
        # msgspec has no numeric bounds for Decimal; reject NaN, inf and non-positive prices at
        # decode so no handler ever sees one (raised errors surface as ValidationError).
        for name in self.__struct_fields__:
            value = getattr(self, name)
            if isinstance(value, Decimal):
                if not value.is_finite():
                    raise ValueError(f"expected a finite {name}, was {value}")
                if name in PRICE_FIELDS and value <= 0:
                    raise ValueError(f"expected {name} > 0, was {value}")
                if name in NON_NEGATIVE_FIELDS and value < 0:
                    raise ValueError(f"expected {name} >= 0, was {value}")


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
