"""The alert log (`<prefix>_alerts.alerts`): every AlertRaised any service published."""

from __future__ import annotations

import json

from libs.contracts.ops import AlertRaised
from libs.db import UnitOfWork


async def save(uow: UnitOfWork, alert: AlertRaised) -> None:
    """Store one alert; the same alert twice is stored once."""
    await uow.conn.execute(
        f"""INSERT INTO {uow.schema}.alerts (event_id, code, severity, source, message, details, ts_event)
            VALUES ($1,$2,$3,$4,$5,$6::jsonb,$7) ON CONFLICT (event_id) DO NOTHING""",
        alert.event_id,
        alert.code,
        alert.severity,
        alert.source,
        alert.message,
        json.dumps(alert.details),
        alert.ts_event,
    )
