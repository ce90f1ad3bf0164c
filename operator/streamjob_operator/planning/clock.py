"""Timestamps as status holds them (RFC 3339, UTC, whole seconds), and durations.

Planning never reads a clock: ``now`` is always an argument.
"""

from __future__ import annotations

import datetime

from streamjob_operator.api import durations

_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


def format_time(moment: datetime.datetime) -> str:
    return moment.astimezone(datetime.UTC).strftime(_FORMAT)


def parse_time(text: str) -> datetime.datetime:
    """A status timestamp; also accepts any ISO 8601 form with an offset."""
    moment = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return moment


def from_epoch_ms(ms: int) -> datetime.datetime:
    """A JobManager timestamp (milliseconds since the epoch, as its REST API reports them)."""
    return datetime.datetime.fromtimestamp(ms / 1000, tz=datetime.UTC)


def duration(text: str) -> datetime.timedelta:
    """A spec duration (``500ms``, ``10s``, ``5m``, ``1h``)."""
    return datetime.timedelta(milliseconds=durations.to_ms(text))
