"""The runtime's optional C extensions in tests: those that test one need it built."""

from __future__ import annotations

import os
from types import ModuleType

import pytest


def require(module: ModuleType | None, name: str) -> ModuleType:
    """``module`` (a loaded extension, or None), or a skip saying why the extension ``name``
    is missing; a failure with ``STREAMJOB_REQUIRE_TOOLS`` set, as in CI, which builds it."""
    if module is None:
        why = (
            f"the C extension {name} is not built (no C compiler when the package was"
            " installed, or STREAMJOB_NATIVE=0): only its Python twin is tested"
        )
        if os.environ.get("STREAMJOB_REQUIRE_TOOLS"):
            pytest.fail(why)
        pytest.skip(why)
    return module
