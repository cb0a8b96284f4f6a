"""Run the risk service: `python -m services.risk`."""

from libs.runtime.runner import main
from services.risk.app import build
from services.risk.config import SECTION_PREFIX, RiskConfig

if __name__ == "__main__":
    main("risk", build, RiskConfig, SECTION_PREFIX)
