"""Run TCA: `python -m services.tca`."""

from libs.runtime.entry import run

if __name__ == "__main__":
    run("tca", "TcaConfig")
