"""Run the local paper exchange: `python -m services.exchange`."""

from libs.runtime.runner import main
from services.exchange.app import build
from services.exchange.config import SECTION_PREFIX, ExchangeConfig

if __name__ == "__main__":
    main("exchange", build, ExchangeConfig, SECTION_PREFIX)
