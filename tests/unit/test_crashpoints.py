"""Crash points fire at the hit they are armed for, and only there (libs/runtime/crashpoints.py)."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest

from libs.runtime import crashpoints

# a child process arms a point and passes it five times, saying each pass it survived
CHILD = """
import sys
from libs.runtime.crashpoints import arm, crash_point
arm(sys.argv[1].split(",") if sys.argv[1] else [])
for i in range(1, 6):
    crash_point("oms.after_commit")
    crash_point("execution.after_response")
    print(i, flush=True)
"""


def run_child(spec: str) -> tuple[int, list[str], str]:
    done = subprocess.run([sys.executable, "-c", CHILD, spec], capture_output=True, text=True, timeout=30)
    kills = [line for line in done.stderr.splitlines() if line.startswith("CRASH_POINT ")]
    return done.returncode, done.stdout.split(), "\n".join(kills)


@pytest.mark.parametrize(
    ("spec", "survived", "said"),
    [
        ("", ["1", "2", "3", "4", "5"], ""),
        ("oms.after_commit", [], "CRASH_POINT oms.after_commit: SIGKILL (hit 1)"),
        ("oms.after_commit@3", ["1", "2"], "CRASH_POINT oms.after_commit: SIGKILL (hit 3)"),
        ("oms.after_commit@9", ["1", "2", "3", "4", "5"], ""),
        (
            "oms.after_commit@4,execution.after_response@2",
            ["1"],
            "CRASH_POINT execution.after_response: SIGKILL (hit 2)",
        ),
    ],
    ids=["unarmed", "first-hit", "third-hit", "never-reached", "earliest-of-two"],
)
def test_crash_point_when_armed_for_the_nth_hit_then_killed_there_and_not_before(spec, survived, said):
    code, out, last_err = run_child(spec)

    assert (code, out, last_err) == (-signal.SIGKILL if said else 0, survived, said)


@pytest.mark.parametrize("spec", ["oms.nowhere", "oms.after_commit@0", "oms.after_commit@x", "oms.after_commit@"])
def test_arm_when_name_or_hit_invalid_then_value_error_naming_it(spec):
    with pytest.raises(ValueError, match="crash point"):
        crashpoints.arm([spec])
