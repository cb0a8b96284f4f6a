"""No exception is swallowed in services/ or libs/ (seed 000 §C, issue 4): a scan of the source.

A broad handler (`except:`, `except Exception`, `except BaseException`) must classify what it
caught (call `classify_exception`) or raise again; and no handler anywhere may be a bare `pass`.
In keel's trading services (services/ but the exchange, which is the venue keel trades against)
a broad handler, or one catching a failed dependency (DependencyFailed), must go through the one
error handler (`ErrorHandler.handle`: classify, count against the breaker, act) or raise.
Narrow handlers that turn an expected condition into a value (`KeyNotFoundError` -> None, a
`TimeoutError` ending a wait) are fine: they name what they expect.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from libs.runtime.migrate import REPO_ROOT

BROAD = frozenset({"Exception", "BaseException"})
ROOTS = ("services", "libs")


def _names(node: ast.expr | None) -> set[str]:
    if node is None:
        return {"BaseException"}  # a bare except catches everything
    if isinstance(node, ast.Tuple):
        return set().union(*(_names(e) for e in node.elts))
    if isinstance(node, ast.Attribute):
        return {node.attr}
    return {node.id} if isinstance(node, ast.Name) else set()


def _handles(handler: ast.ExceptHandler, ways: frozenset[str]) -> bool:
    for node in ast.walk(ast.Module(body=handler.body, type_ignores=[])):
        if isinstance(node, ast.Raise):
            return True
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name in ways:
                return True
    return False


CLASSIFY = frozenset({"classify_exception", "handle"})
HANDLE = frozenset({"handle"})
DEPENDENCY_FAILURES = frozenset({"DependencyFailed"})


def swallowed(source: str, filename: str, *, trading: bool = False) -> list[str]:
    """Return `file:line` of every handler that swallows what it caught.

    trading: a trading service's source, where broad and dependency-failure handlers must call
    the one error handler (`.handle(...)`) or raise.
    """
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if not isinstance(node, ast.ExceptHandler):
            continue
        only_pass = all(isinstance(s, ast.Pass) for s in node.body)
        names = _names(node.type)
        broad = bool(names & BROAD)
        if (
            trading
            and (broad or names & DEPENDENCY_FAILURES)
            and not _handles(node, HANDLE)
            or only_pass
            or (broad and not _handles(node, CLASSIFY))
        ):
            found.append(f"{filename}:{node.lineno}")
    return found


def is_trading(path: Path) -> bool:
    """Tell whether a source file belongs to one of keel's trading services (not the venue)."""
    parts = path.relative_to(REPO_ROOT).parts
    return parts[0] == "services" and parts[1] != "exchange"


def sources() -> list[Path]:
    return sorted(p for root in ROOTS for p in (REPO_ROOT / root).rglob("*.py"))


def test_scan_when_source_scanned_then_no_handler_swallows_an_exception() -> None:
    files = sources()

    found = [
        hit for p in files for hit in swallowed(p.read_text(), str(p.relative_to(REPO_ROOT)), trading=is_trading(p))
    ]

    assert len(files) > 50 and sum(map(is_trading, files)) > 20  # the scan saw the tree and the services
    assert found == []


@pytest.mark.parametrize(
    ("snippet", "flagged"),
    [
        ("try:\n    f()\nexcept Exception:\n    pass\n", True),
        ("try:\n    f()\nexcept Exception:\n    continue_()\n", True),
        ("try:\n    f()\nexcept:\n    return []\n", True),
        ("try:\n    f()\nexcept (ValueError, BaseException) as e:\n    log(e)\n", True),
        ("try:\n    f()\nexcept KeyError:\n    pass\n", True),
        ("try:\n    f()\nexcept Exception as e:\n    info = classify_exception(e, dependency='db')\n", False),
        ("try:\n    f()\nexcept Exception:\n    cleanup()\n    raise\n", False),
        ("try:\n    f()\nexcept KeyError:\n    return None\n", False),
    ],
)
def test_scan_when_handler_given_then_swallowing_ones_flagged(snippet: str, flagged: bool) -> None:
    source = "def g():\n" + "".join(f"    {line}\n" for line in snippet.splitlines())

    assert bool(swallowed(source, "snippet.py")) is flagged


@pytest.mark.parametrize(
    ("snippet", "flagged"),
    [
        ("try:\n    f()\nexcept Exception as e:\n    info = classify_exception(e, dependency='db')\n", True),
        ("try:\n    f()\nexcept DependencyFailed as e:\n    log(e)\n", True),
        ("try:\n    f()\nexcept Exception as e:\n    await errors.handle(e, dependency='db', context='x')\n", False),
        (
            "try:\n    f()\nexcept DependencyFailed as e:\n    await errors.handle(e, dependency='db', context='x')\n",
            False,
        ),
        ("try:\n    f()\nexcept Exception:\n    raise\n", False),
        ("try:\n    f()\nexcept KeyError:\n    return None\n", False),
    ],
)
def test_scan_when_trading_service_handler_given_then_only_the_one_handler_or_raise_passes(
    snippet: str, flagged: bool
) -> None:
    source = "async def g():\n" + "".join(f"    {line}\n" for line in snippet.splitlines())

    assert bool(swallowed(source, "snippet.py", trading=True)) is flagged
