"""Read-only views of execution."""

from __future__ import annotations

from fastapi import APIRouter

from libs.runtime.processor import Processor
from libs.runtime.runner import state_router


def router(processor: Processor) -> APIRouter:  # type: ignore[type-arg]
    """Return GET /state (orders held at the broker)."""
    return state_router(processor)
