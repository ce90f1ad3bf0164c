"""The runtime's optional C extensions, built with the package by ``hatch_build.py`` when a
C compiler is at hand.  Each has a Python twin in the module that loads it, with the same
results; ``STREAMJOB_NATIVE=0`` in the environment makes every process use the twins."""

from __future__ import annotations

import importlib
import os
from types import ModuleType


def load(name: str, version: int) -> ModuleType | None:
    """The extension module ``name`` when it is built at ``version`` (its ``VERSION``);
    None when it is missing, when it is a build of another version (stale: its results
    may differ from what the loader expects) or when ``STREAMJOB_NATIVE=0``."""
    if os.environ.get("STREAMJOB_NATIVE", "1") == "0":
        return None
    try:
        module = importlib.import_module(name)
    except ImportError:
        return None
    if getattr(module, "VERSION", None) != version:
        return None
    return module
