"""Run marketdata: `python -m services.marketdata`."""

from libs.runtime.runner import main
from services.marketdata.app import build
from services.marketdata.config import MdConfig

if __name__ == "__main__":
    main("marketdata", build, MdConfig, "KEEL_MD_")
