"""Run marketdata: `python -m services.marketdata`."""

from libs.runtime.entry import run

if __name__ == "__main__":
    run("marketdata", "MdConfig", "KEEL_MD_")
