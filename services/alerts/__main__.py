"""Run alerts: `python -m services.alerts`."""

from libs.runtime.runner import main
from services.alerts.app import build
from services.alerts.config import SECTION_PREFIX, AlertsConfig

if __name__ == "__main__":
    main("alerts", build, AlertsConfig, SECTION_PREFIX)
