"""Memory measured in tests: a call's peak traced allocation (a growth test compares two of them)."""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable


def peak_allocation(fn: Callable[[], object]) -> int:
    """Return the peak bytes Python allocated while `fn` ran (tracemalloc)."""
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
