"""Crash points: where the crash-safety harness SIGKILLs a process on the submit path.

A crash point is a named instant (`oms.after_commit`, `execution.after_response` ...) at which
a process armed with `KEEL_CRASH_AT=<name>[@<n>][,...]` kills itself with SIGKILL at the n-th
time it gets there (default the first) - no cleanup, no
flush, exactly what a power cut or the OOM killer does. Unarmed (the default) a crash point is a
lookup in an empty set. Arming is refused in live mode (libs.config), and every armed point is
in the effective config logged at start, so a process that dies at one never does so silently.
The harness restarts the process without the key and checks that nothing was lost or doubled
(tests/integration/test_crash_points.py, bench/soak.py).
"""

from __future__ import annotations

import logging
import os
import signal
import sys

log = logging.getLogger(__name__)

# every crash point, by where it sits on the submit path (a name not here is refused at start)
POINTS: dict[str, str] = {
    # the processor committed a transaction that wrote outbox rows (the OMS: an intent and its
    # decision; execution: a report), and has not published them
    "oms.after_commit": "OMS: decision committed, not yet published",
    "execution.after_commit": "execution: a transaction with outbox rows committed, not yet published",
    # the outbox relay's publish was acknowledged by JetStream, the rows not yet marked published
    "oms.after_publish": "OMS: decision published, outbox not yet marked",
    "execution.after_publish": "execution: reports published, outbox not yet marked",
    # the order is committed as handed over (SUBMITTING), the POST not yet sent
    "execution.handed_over": "execution: order handed over, broker not yet called",
    # the broker answered the POST, the answer not yet committed
    "execution.after_response": "execution: broker answered, state not yet updated",
}

_armed: dict[str, int] = {}  # crash point -> the hit that kills
_hits: dict[str, int] = {}


def parse(spec: str) -> tuple[str, int]:
    """Split `name[@n]` into the point's name and the hit that kills (1-based); ValueError if bad."""
    name, at, nth = spec.partition("@")
    if name not in POINTS:
        raise ValueError(f"unknown crash point {name!r}; known: {sorted(POINTS)}")
    if at and not (nth.isdigit() and int(nth) >= 1):
        raise ValueError(f"crash point {spec!r}: expected <name>@<n> with n >= 1")
    return name, int(nth or 1)


def arm(specs: tuple[str, ...] | list[str]) -> None:
    """Arm the crash points for this process: `name` (first hit) or `name@n` (n-th hit)."""
    global _armed, _hits
    _armed = dict(parse(spec) for spec in specs)
    _hits = {}
    for name, nth in sorted(_armed.items()):
        log.warning(
            "CRASH_POINT_ARMED: this process will SIGKILL itself at %s (hit %d)",
            name,
            nth,
            extra={"crash_point": name, "hit": nth},
        )


def crash_point(name: str) -> None:
    """SIGKILL this process here when `name` is armed and this is its n-th hit; else do nothing."""
    nth = _armed.get(name)
    if nth is None:
        return
    _hits[name] = _hits.get(name, 0) + 1
    if _hits[name] == nth:
        print(f"CRASH_POINT {name}: SIGKILL (hit {nth})", file=sys.stderr, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
