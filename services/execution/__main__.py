"""Run execution: `python -m services.execution`."""

from libs.runtime.entry import run

if __name__ == "__main__":
    run("execution", "ExecConfig")
