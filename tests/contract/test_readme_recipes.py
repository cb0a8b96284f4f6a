"""The README's `nats sub` recipes name subjects keel really publishes.

Every recipe's filter must match the subject of at least one wire type (one golden event per
tag, placed by `Subjects.of` as the services place it), with NATS wildcard rules: `*` one
token, `>` one or more trailing tokens.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from libs.contracts.base import tag_of
from libs.contracts.codec import all_event_types, decode_event
from libs.contracts.subjects import Subjects

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = Path(__file__).parent / "golden"
RECIPES = re.findall(r"^nats sub '([^']+)'", (ROOT / "README.md").read_text(), flags=re.M)


def matches(pattern: str, subject: str) -> bool:
    """Tell whether a NATS subscription filter matches a subject."""
    want, got = pattern.split("."), subject.split(".")
    for i, token in enumerate(want):
        if token == ">":
            return len(got) > i
        if i >= len(got) or (token != "*" and token != got[i]):
            return False
    return len(got) == len(want)


def published() -> list[str]:
    subjects = Subjects("keel")
    goldens = [GOLDEN / f"{tag_of(t)}.json" for t in all_event_types()]
    return sorted({subjects.of(decode_event(p.read_bytes())) for p in goldens})


def test_matches_when_nats_wildcards_then_token_rules_hold() -> None:
    assert matches("keel.>", "keel.exec.order_filled.AAPL")
    assert matches("keel.*.watermark.>", "keel.risk.watermark.risk")
    assert not matches("keel.*.watermark.>", "keel.risk.watermark")
    assert not matches("keel.ops.alert_raised.>", "keel.exec.order_filled.AAPL")
    assert not matches("keel.exec.*", "keel.exec.order_filled.AAPL")


def test_readme_when_read_then_it_has_sub_recipes() -> None:
    assert len(RECIPES) >= 5 and "keel.*.fills_done.>" in RECIPES


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_when_subscribed_then_some_published_subject_matches(recipe: str) -> None:
    assert [s for s in published() if matches(recipe, s)], f"no wire type is published on {recipe}"
