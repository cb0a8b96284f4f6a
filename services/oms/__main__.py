"""Run the OMS: `python -m services.oms`."""

from libs.runtime.runner import main
from services.oms.app import build
from services.oms.config import SECTION_PREFIX, OmsConfig

if __name__ == "__main__":
    main("oms", build, OmsConfig, SECTION_PREFIX)
