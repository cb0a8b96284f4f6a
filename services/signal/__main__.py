"""Run the signal service: `python -m services.signal`."""

from libs.runtime.entry import run

if __name__ == "__main__":
    run("signal", "SignalConfig")
