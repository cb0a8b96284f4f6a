"""Run the local paper exchange: `python -m services.exchange`."""

from libs.runtime.entry import run

if __name__ == "__main__":
    run("exchange", "ExchangeConfig")
