"""Crash points: where the crash-safety harness SIGKILLs a process on the submit path.

A crash point is a named instant (`oms.after_commit`, `execution.after_response` ...) at which
a process armed with `KEEL_CRASH_AT=<name>[,<name>]` kills itself with SIGKILL - no cleanup, no
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

_armed: frozenset[str] = frozenset()


def arm(names: tuple[str, ...] | list[str]) -> None:
    """Arm the named crash points for this process (an unknown name is a ValueError)."""
    global _armed
    unknown = sorted(set(names) - set(POINTS))
    if unknown:
        raise ValueError(f"unknown crash point(s) {unknown}; known: {sorted(POINTS)}")
    _armed = frozenset(names)
    for name in sorted(_armed):
        log.warning("CRASH_POINT_ARMED: this process will SIGKILL itself at %s", name, extra={"crash_point": name})


def crash_point(name: str) -> None:
    """SIGKILL this process here when `name` is armed; otherwise do nothing."""
    if name in _armed:
        print(f"CRASH_POINT {name}: SIGKILL", file=sys.stderr, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
