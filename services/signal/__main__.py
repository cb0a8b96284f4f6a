"""Run the signal service: `python -m services.signal`."""

from libs.runtime.runner import main
from services.signal.app import build
from services.signal.config import SECTION_PREFIX, SignalConfig

if __name__ == "__main__":
    main("signal", build, SignalConfig, SECTION_PREFIX)
