"""Run the OMS: `python -m services.oms`."""

from libs.runtime.entry import run

if __name__ == "__main__":
    run("oms", "OmsConfig")
