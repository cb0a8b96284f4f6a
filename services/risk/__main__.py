"""Run the risk service: `python -m services.risk`."""

from libs.runtime.entry import run

if __name__ == "__main__":
    run("risk", "RiskConfig")
