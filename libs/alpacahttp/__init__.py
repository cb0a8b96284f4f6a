"""alpaca-py's REST clients as keel runs them: no SDK retries, an explicit timeout on every request.

alpaca-py (alpaca/common/rest.py) retries 429 and 504 answers by itself - a retried order submit
can duplicate the order, a retried data request hides a failing provider from its breaker - and
sends requests without a timeout, so a silent venue hangs the caller. `harden` switches both
off: keel decides about retries itself (libs/errors/retry.py, the dependency breakers).
"""

from __future__ import annotations

from typing import Any

import requests
import requests.adapters


class _TimeoutAdapter(requests.adapters.HTTPAdapter):
    def __init__(self, timeout: float) -> None:
        super().__init__(max_retries=0)
        self.timeout = timeout

    def send(self, request, **kwargs):  # type: ignore[no-untyped-def,override]
        if kwargs.get("timeout") is None:
            kwargs["timeout"] = self.timeout
        return super().send(request, **kwargs)


def harden(client: Any, timeout: float) -> Any:
    """Return an alpaca-py REST client with its own retries off and `timeout` on every request."""
    client._retry = 0
    adapter = _TimeoutAdapter(timeout)
    client._session.mount("http://", adapter)
    client._session.mount("https://", adapter)
    return client
