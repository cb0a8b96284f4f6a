"""Golden JSON per wire tag: what was written once must decode, and keep its fields, forever.

An additive change (a new field with a default, STYLE 12) re-encodes an old golden with the new
field added and every old field unchanged, so it passes; renaming, removing or retyping a field
fails here.

Goldens are written by hand with `tests/contract/generate_golden.py`; this suite never rewrites
them, so a wire change shows up here as a failure to explain, not a silent new fixture.
"""

from __future__ import annotations

import json
import typing
from pathlib import Path

import msgspec
import pytest

from libs.contracts.base import NON_NEGATIVE_FIELDS, POSITIVE_FIELDS, PRICE_FIELDS
from libs.contracts.codec import all_event_types, decode_command, decode_event, encode
from libs.contracts.control import CancelAllOrders, HaltTrading, ResumeTrading
from libs.contracts.subjects import CTL_CANCEL_ALL, CTL_KILL, CTL_RESUME

GOLDEN = Path(__file__).parent / "golden"
COMMAND_VERBS: dict[type[msgspec.Struct], str] = {
    HaltTrading: CTL_KILL,
    ResumeTrading: CTL_RESUME,
    CancelAllOrders: CTL_CANCEL_ALL,
}
WIRE_TYPES: tuple[type[msgspec.Struct], ...] = (*all_event_types(), *COMMAND_VERBS)


def tag(typ: type[msgspec.Struct]) -> str:
    return typ.__struct_config__.tag  # type: ignore[return-value]


def golden(typ: type[msgspec.Struct]) -> bytes:
    return (GOLDEN / f"{tag(typ)}.json").read_bytes()


def decode(typ: type[msgspec.Struct], data: bytes) -> msgspec.Struct:
    # commands are decoded by the subject's verb, events by their tag (as the consumers do)
    verb = COMMAND_VERBS.get(typ)
    return decode_command(verb, data) if verb else decode_event(data)


def mutated(typ: type[msgspec.Struct], change: dict[str, object], drop: str = "") -> bytes:
    doc = json.loads(golden(typ))
    doc.update(change)
    doc.pop(drop, None)
    return json.dumps(doc).encode()


def field_cases(pick: typing.Callable[[msgspec.inspect.Field], bool]) -> list[typing.Any]:
    return [
        pytest.param(typ, field.name, id=f"{tag(typ)}.{field.name}")
        for typ in WIRE_TYPES
        for field in typing.cast(msgspec.inspect.StructType, msgspec.inspect.type_info(typ)).fields
        if pick(field)
    ]


def is_decimal(field: msgspec.inspect.Field) -> bool:
    kinds = getattr(field.type, "types", (field.type,))  # Optional[Decimal] is a union
    return any(isinstance(kind, msgspec.inspect.DecimalType) for kind in kinds)


BY_TAG = pytest.mark.parametrize("typ", WIRE_TYPES, ids=tag)


@BY_TAG
def test_lookup_when_wire_type_exists_then_it_has_a_golden_file(typ):
    assert (GOLDEN / f"{tag(typ)}.json").is_file(), (
        f"expected a golden for {tag(typ)}: run tests/contract/generate_golden.py"
    )


def test_list_goldens_when_read_then_every_file_names_a_wire_type():
    known = {f"{tag(typ)}.json" for typ in WIRE_TYPES}

    orphans = sorted(p.name for p in GOLDEN.glob("*.json") if p.name not in known)

    assert orphans == [], "a golden's type left the wire, so its stored data no longer decodes"


@BY_TAG
def test_decode_when_golden_then_its_type_and_reencodes_every_golden_field_unchanged(typ):
    data = golden(typ)

    decoded = decode(typ, data)

    assert type(decoded) is typ
    old = json.loads(data)
    again = json.loads(encode(decoded))
    assert {k: again.get(k) for k in old} == old
    assert decode(typ, encode(decoded)) == decoded


@BY_TAG
def test_decode_when_golden_then_every_field_is_populated(typ):
    doc = json.loads(golden(typ))

    empty = [name for name, value in doc.items() if value in ("", [], {}, None)]

    assert empty == [], "a fully populated example shows every field's wire form"


@BY_TAG
def test_decode_when_unknown_field_added_then_tolerated(typ):
    extra = mutated(typ, {"added_in_a_later_minor": {"nested": [1, 2]}})

    assert decode(typ, extra) == decode(typ, golden(typ))


def test_decode_command_when_bare_operator_kill_then_halt_trading():
    command = decode_command(CTL_KILL, b'{"reason":"manual"}')

    assert command == HaltTrading(reason="manual")


@pytest.mark.parametrize(("typ", "name"), field_cases(is_decimal))
def test_decode_when_decimal_is_nan_then_validation_error(typ, name):
    with pytest.raises(msgspec.ValidationError, match=f"finite {name}"):
        decode(typ, mutated(typ, {name: "NaN"}))


@pytest.mark.parametrize(("typ", "name"), field_cases(lambda f: f.name in PRICE_FIELDS | POSITIVE_FIELDS))
def test_decode_when_price_is_negative_then_validation_error(typ, name):
    with pytest.raises(msgspec.ValidationError, match=f"{name} > 0"):
        decode(typ, mutated(typ, {name: "-1.00"}))


@pytest.mark.parametrize(("typ", "name"), field_cases(lambda f: f.name in NON_NEGATIVE_FIELDS))
def test_decode_when_non_negative_field_is_negative_then_validation_error(typ, name):
    # spreads, fees, notionals, a bar's volatility, the cost gate's estimate: a negative one would
    # flip a cost into a gain (or crash the cost model deep in a handler), so it never decodes
    with pytest.raises(msgspec.ValidationError, match=f"{name} >= 0"):
        decode(typ, mutated(typ, {name: "-0.5"}))


@pytest.mark.parametrize(("typ", "name"), field_cases(lambda f: f.required))
def test_decode_when_required_field_missing_then_validation_error(typ, name):
    with pytest.raises(msgspec.ValidationError, match=f"missing required field `{name}`"):
        decode(typ, mutated(typ, {}, drop=name))


def test_cases_when_built_then_cover_prices_and_required_fields_of_every_family():
    # guards the parametrisation itself: an empty case list would pass vacuously
    priced = {tag(c.values[0]) for c in field_cases(lambda f: f.name in PRICE_FIELDS)}
    required = {tag(c.values[0]) for c in field_cases(lambda f: f.required)}

    assert {"md.bar_closed.v1", "risk.order_intent.v1", "tca.tca_recorded.v1"} <= priced
    non_negative = {(tag(c.values[0]), c.values[1]) for c in field_cases(lambda f: f.name in NON_NEGATIVE_FIELDS)}
    assert {("signal.target_proposed.v1", "sigma_bps"), ("risk.order_intent.v1", "expected_cost_bps")} <= non_negative
    assert required >= {tag(t) for t in all_event_types()} | {"ctl.halt_trading.v1"}


# --- variants: more shapes of one tag (order families), pinned like the goldens ---------------

VARIANTS = sorted((GOLDEN / "variants").glob("*.json"))


def variant_tag(path: Path) -> str:
    return path.stem.rsplit(".", 1)[0]  # "<tag>.<variant>.json"


def test_list_variants_when_read_then_bracket_and_trailing_stop_shapes_are_pinned():
    names = {p.name for p in VARIANTS}

    assert {
        "risk.order_intent.v1.bracket.json",
        "oms.pretrade_decision.v1.bracket.json",
        "oms.pretrade_decision.v1.trailing_stop.json",
    } <= names


@pytest.mark.parametrize("path", VARIANTS, ids=lambda p: p.stem)
def test_decode_when_variant_then_its_tag_and_reencodes_every_field_unchanged(path: Path):
    data = path.read_bytes()
    by_tag = {tag(t): t for t in WIRE_TYPES}

    decoded = decode(by_tag[variant_tag(path)], data)

    assert tag(type(decoded)) == variant_tag(path)
    old = json.loads(data)
    again = json.loads(encode(decoded))
    assert {k: again.get(k) for k in old} == old
    assert decode(type(decoded), encode(decoded)) == decoded
