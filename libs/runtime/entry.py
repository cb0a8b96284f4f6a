"""A service's entry point (`python -m services.<name>`): the imports happen here, inside a guard.

The runtime contract: a package keel needs but the environment lacks stops the start with one
line naming it (exit 2, like every other missing dependency), not a traceback. Only the standard
library is imported at module level, so the guard is in place before anything else is imported.
A keel module that fails to import is a bug in keel and keeps its traceback.
"""

from __future__ import annotations

import importlib
import sys

OWN_PACKAGES = frozenset({"", "libs", "services", "tests"})


def run(service: str, config_class: str, section_prefix: str = "") -> None:
    """Import the runner and services.<service>'s app and config, then run the service."""
    try:
        from libs.runtime.runner import main

        build = importlib.import_module(f"services.{service}.app").build
        config = importlib.import_module(f"services.{service}.config")
    except ImportError as e:
        package = e.name or ""
        if package.split(".")[0] in OWN_PACKAGES:
            raise
        how = "is missing" if isinstance(e, ModuleNotFoundError) else "cannot be imported"
        print(
            f"keel {service}: cannot start: required package {package!r} {how} ({e}); install keel's dependencies",
            file=sys.stderr,
        )
        sys.exit(2)
    main(service, build, getattr(config, config_class), section_prefix or config.SECTION_PREFIX)
