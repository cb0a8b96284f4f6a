"""Run alerts: `python -m services.alerts`."""

from libs.runtime.entry import run

if __name__ == "__main__":
    run("alerts", "AlertsConfig")
