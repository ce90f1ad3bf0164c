"""Durations as Kubernetes users write them: ``500ms``, ``10s``, ``5m``, ``1h``."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import StringConstraints

PATTERN = r"^[0-9]+(ms|s|m|h)$"
_UNITS = {"ms": 1, "s": 1_000, "m": 60_000, "h": 3_600_000}

Duration = Annotated[str, StringConstraints(pattern=PATTERN)]


def to_ms(duration: str) -> int:
    match = re.fullmatch(PATTERN, duration)
    if match is None:
        raise ValueError(f"duration {duration!r} must look like 500ms, 10s, 5m or 1h")
    return int(duration[: -len(match.group(1))]) * _UNITS[match.group(1)]
