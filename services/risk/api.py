"""Read-only views of the risk service."""

from __future__ import annotations

from fastapi import APIRouter

from libs.runtime.processor import Processor
from libs.runtime.runner import state_router


def router(processor: Processor) -> APIRouter:  # type: ignore[type-arg]
    """Return the service's views: GET /state."""
    return state_router(processor)
