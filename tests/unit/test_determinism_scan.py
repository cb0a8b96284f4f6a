"""Decision paths stay deterministic: a scan of their source for what would make them not.

DESIGN "Determinism": no builtin hash() (salted per process), no unseeded or global random, no
uuid4, no wall clock. Handlers and state of every service, the shared pure helpers and the
contracts are decision paths; time comes in through ctx and randomness from a seeded Random.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DECISION_PATHS = sorted(
    [*ROOT.glob("services/*/handlers.py"), *ROOT.glob("services/*/state.py")]
    + [
        *ROOT.glob("libs/decide/*.py"),
        *ROOT.glob("libs/contracts/*.py"),
        *ROOT.glob("libs/sessions/*.py"),
        *ROOT.glob("libs/fillsim/*.py"),
        *ROOT.glob("libs/synth/*.py"),
        *ROOT.glob("libs/costmodel/*.py"),
        ROOT / "services/tca/shortfall.py",
    ]
)
RANDOM_MODULE_FUNCS = {
    "random",
    "randint",
    "uniform",
    "gauss",
    "choice",
    "choices",
    "shuffle",
    "sample",
    "seed",
    "normalvariate",
    "lognormvariate",
    "expovariate",
    "getrandbits",
    "randrange",
    "betavariate",
}
CLOCK_CALLS = {
    ("time", "time"),
    ("time", "time_ns"),
    ("time", "monotonic"),
    ("time", "perf_counter"),
    ("datetime", "now"),
    ("datetime", "utcnow"),
    ("date", "today"),
}


# hash(), uuid4 and unseeded randomness are refused everywhere in services/ and libs/ (issue 7:
# "a test scans services/ and libs/"); the wall clock only in decision paths, since pacing,
# timeouts, heartbeats and log times legitimately read it at the edges
EVERY_MODULE = sorted([*ROOT.glob("services/**/*.py"), *ROOT.glob("libs/**/*.py")])


def violations(source: str, *, clock: bool = True) -> list[str]:
    """Return what the source does that a decision path must not (`clock`: wall-clock reads too)."""
    found: list[str] = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        if isinstance(f, ast.Name) and f.id in ("hash", "uuid4", "uuid1"):
            found.append(f"{f.id}() at line {node.lineno}")
        if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name):
            owner, name = f.value.id, f.attr
            if owner == "random" and name in RANDOM_MODULE_FUNCS:
                found.append(f"random.{name}() at line {node.lineno}")
            if owner == "random" and name == "Random" and not node.args:
                found.append(f"random.Random() without a seed at line {node.lineno}")
            if owner == "uuid" and name in ("uuid1", "uuid4"):
                found.append(f"uuid.{name}() at line {node.lineno}")
            if clock and (owner, name) in CLOCK_CALLS:
                found.append(f"{owner}.{name}() at line {node.lineno}")
        if (
            clock
            and isinstance(f, ast.Attribute)
            and isinstance(f.value, ast.Attribute)
            and (f.value.attr, f.attr) in CLOCK_CALLS
        ):
            found.append(f"{f.value.attr}.{f.attr}() at line {node.lineno}")
    return found


@pytest.mark.parametrize("path", DECISION_PATHS, ids=lambda p: str(p.relative_to(ROOT)))
def test_scan_when_decision_path_then_no_hash_global_random_uuid4_or_wall_clock(path: Path):
    assert violations(path.read_text()) == []


@pytest.mark.parametrize("path", EVERY_MODULE, ids=lambda p: str(p.relative_to(ROOT)))
def test_scan_when_any_module_of_services_or_libs_then_no_hash_uuid4_or_unseeded_random(path: Path):
    assert violations(path.read_text(), clock=False) == []


def test_scan_when_clock_not_checked_then_hash_and_random_still_caught_and_clock_allowed():
    found = violations("import random, time\nhash(1)\nrandom.shuffle([])\ntime.time()", clock=False)

    assert [v.split(" at ")[0] for v in found] == ["hash()", "random.shuffle()"]


def test_scan_when_forbidden_calls_present_then_each_is_caught():
    source = "\n".join(
        [
            "import random, time, uuid, datetime",
            "hash('x')",
            "random.random()",
            "random.Random()",
            "uuid.uuid4()",
            "time.time_ns()",
            "datetime.datetime.now()",
            "datetime.now()",
            "random.Random(42).random()",  # seeded: allowed
        ]
    )

    found = violations(source)

    assert [v.split(" at ")[0] for v in found] == [
        "hash()",
        "random.random()",
        "random.Random() without a seed",
        "uuid.uuid4()",
        "time.time_ns()",
        "datetime.now()",
        "datetime.now()",
    ]


def test_scan_when_listing_decision_paths_then_every_service_core_is_covered():
    names = {p.relative_to(ROOT).as_posix() for p in DECISION_PATHS}
    for service in ("marketdata", "signal", "risk", "oms", "execution", "tca", "alerts", "exchange"):
        assert f"services/{service}/handlers.py" in names
    assert {"libs/costmodel/__init__.py", "services/tca/shortfall.py"} <= names  # the cost gate's and TCA's math
