"""Run TCA: `python -m services.tca`."""

from libs.runtime.runner import main
from services.tca.app import build
from services.tca.config import SECTION_PREFIX, TcaConfig

if __name__ == "__main__":
    main("tca", build, TcaConfig, SECTION_PREFIX)
