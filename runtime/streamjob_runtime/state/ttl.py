"""State time-to-live (Flink's ``StateTtlConfig``), processing time, on every backend.

A state with a TTL stores each value as a :class:`TtlValue`: the user value
and the processing time (ms) of its last write (or read, with
``ON_READ_AND_WRITE``).  An entry is expired once ``timestamp + ttl_ms <= now``.
Reading an expired entry clears it; with ``NEVER_RETURN_EXPIRED`` the read
sees nothing, with ``RETURN_EXPIRED_IF_NOT_CLEANED_UP`` it sees the expired
value this one last time (Flink's semantics).  List state expires per element
and map state per map entry.

Cleanup of entries nobody reads again:

- ``cleanup_full_snapshot``: snapshots that write the state's entries (savepoints,
  ``hashmap`` checkpoints, ``rocksdb`` checkpoints that are not incremental) leave
  expired entries out; the working state keeps them.
- ``cleanup_incremental_size``: every access to the state also checks that many
  further entries of it, round-robin over the whole state, and deletes the
  expired ones (Flink's incremental cleanup).  This is the cleanup for the
  ``rocksdb`` backend too: the binding offers no compaction filter, so Flink's
  ``cleanupInRocksdbCompactFilter`` is not available.

Timestamps are saved with the values: a state restored from a checkpoint or
savepoint expires when it would have without the restore.  Not done: event-time
TTL (Flink has none either), and changing a state from TTL to no TTL (or back)
across a restore: the stored values are then read as they are.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

Clock = Callable[[], int]


def processing_time() -> int:
    """The TaskManager's wall clock, milliseconds since the epoch."""
    return int(time.time() * 1000)


class UpdateType(enum.StrEnum):
    """When an entry's timestamp is renewed (Flink's ``StateTtlConfig.UpdateType``)."""

    ON_CREATE_AND_WRITE = "OnCreateAndWrite"
    ON_READ_AND_WRITE = "OnReadAndWrite"


class StateVisibility(enum.StrEnum):
    """Whether a read may see an expired entry not cleaned up yet."""

    NEVER_RETURN_EXPIRED = "NeverReturnExpired"
    RETURN_EXPIRED_IF_NOT_CLEANED_UP = "ReturnExpiredIfNotCleanedUp"


@dataclass(frozen=True)
class StateTtlConfig:
    """Flink's ``StateTtlConfig``; pass it as ``ttl=`` when creating a state view."""

    ttl_ms: int
    update_type: UpdateType = UpdateType.ON_CREATE_AND_WRITE
    state_visibility: StateVisibility = StateVisibility.NEVER_RETURN_EXPIRED
    cleanup_full_snapshot: bool = True
    cleanup_incremental_size: int = 5  # entries checked per access; 0: no incremental cleanup

    def __post_init__(self) -> None:
        if self.ttl_ms <= 0:
            raise ValueError(f"state TTL must be > 0 ms, got {self.ttl_ms}")
        if self.cleanup_incremental_size < 0:
            raise ValueError("cleanup_incremental_size must be >= 0 (0 turns it off)")

    @property
    def update_on_read(self) -> bool:
        return self.update_type is UpdateType.ON_READ_AND_WRITE

    @property
    def return_expired(self) -> bool:
        return self.state_visibility is StateVisibility.RETURN_EXPIRED_IF_NOT_CLEANED_UP


class TtlValue(NamedTuple):
    """A stored value of a state with a TTL: the user value and its last-access time (ms)."""

    value: Any
    timestamp: int


def expired(entry: Any, ttl_ms: int, now: int) -> bool:
    """Whether stored ``entry`` has expired; a value without a timestamp never does."""
    return type(entry) is TtlValue and entry.timestamp + ttl_ms <= now


def without_expired(stored: Any, ttl_ms: int, now: int) -> Any:
    """``stored`` (a table value) without its expired parts, or ``None`` if nothing is left.

    A value expires whole, a list per element, a map per entry (for full
    snapshots; the views apply the same rule on reads).
    """
    if type(stored) is TtlValue:
        return None if stored.timestamp + ttl_ms <= now else stored
    if isinstance(stored, list):
        kept = [e for e in stored if not expired(e, ttl_ms, now)]
        return kept or None
    if isinstance(stored, dict):
        entries = type(stored)((k, v) for k, v in stored.items() if not expired(v, ttl_ms, now))
        return entries or None
    return stored
