"""Run execution: `python -m services.execution`."""

from libs.runtime.runner import main
from services.execution.app import build
from services.execution.config import SECTION_PREFIX, ExecConfig

if __name__ == "__main__":
    main("execution", build, ExecConfig, SECTION_PREFIX)
