"""Key groups: the unit in which keyed state is partitioned and redistributed.

A key maps to one of ``max_parallelism`` key groups through a hash that is the
same in every process (Python's own ``hash`` of ``str`` is salted per process,
so it cannot be used).  A subtask owns a contiguous range of key groups, with
Flink's formulas, so a restore at another parallelism reassigns whole groups.
"""

from __future__ import annotations

import pickle
import zlib
from typing import Any, NamedTuple

_MASK64 = (1 << 64) - 1


def _mix(h: int) -> int:
    # splitmix64 finaliser: spreads sequential ints over all key groups.
    h = (h + 0x9E3779B97F4A7C15) & _MASK64
    h = ((h ^ (h >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    h = ((h ^ (h >> 27)) * 0x94D049BB133111EB) & _MASK64
    return h ^ (h >> 31)


def stable_hash(key: Any) -> int:
    """A hash of ``key`` that every process computes alike.

    Supported exactly: int, bool, str, bytes, float, None and tuples of these.
    Other types hash through their pickle, which is stable for plain data but
    not for objects whose pickle depends on memory layout.
    """
    t = type(key)
    if t is int or t is bool:
        return _mix(hash(key) & _MASK64)  # int hashing is not salted
    if t is str:
        return _mix(zlib.crc32(key.encode()))
    if t is bytes:
        return _mix(zlib.crc32(key))
    if t is tuple:
        h = 0x345678
        for item in key:
            h = _mix(h ^ stable_hash(item))
        return h
    if key is None:
        return _mix(0)
    if t is float:
        return _mix(hash(key) & _MASK64)
    return _mix(zlib.crc32(pickle.dumps(key, protocol=5)))


def key_group(key: Any, max_parallelism: int) -> int:
    return stable_hash(key) % max_parallelism


# key -> key group, per max parallelism, for exact ``int`` and ``str`` keys only: a key of
# another type can equal a cached one (``IntEnum``, ``StrEnum``, ``1.0``) yet hash
# differently, so it neither enters nor is looked up in a cache.  Bounded: a cache that
# fills up starts over.  Long strings are not cached (the cache keeps its keys alive).
_CACHEABLE = frozenset((int, str))
_CACHE_LIMIT = 1 << 17
_CACHE_MAX_STR = 64
_group_caches: dict[int, dict[Any, int]] = {}


def key_groups(keys: list[Any], max_parallelism: int) -> list[int]:
    """``[key_group(k, max_parallelism) for k in keys]``, faster for batches.

    The result is always identical to :func:`key_group`; batches of only ``int``
    and ``str`` keys go through a per-process cache, so a repeated key costs a
    dict lookup instead of a hash.
    """
    if not _CACHEABLE.issuperset(map(type, keys)):
        h = stable_hash
        return [h(k) % max_parallelism for k in keys]
    cache = _group_caches.get(max_parallelism)
    if cache is None:
        cache = _group_caches[max_parallelism] = {}
    groups: list[Any] = list(map(cache.get, keys))
    if None in groups:
        for i, group in enumerate(groups):
            if group is None:
                key = keys[i]
                groups[i] = group = stable_hash(key) % max_parallelism
                if type(key) is int or len(key) <= _CACHE_MAX_STR:
                    if len(cache) >= _CACHE_LIMIT:
                        cache.clear()
                    cache[key] = group
    return groups


def operator_index(group: int, max_parallelism: int, parallelism: int) -> int:
    """Flink's ``computeOperatorIndexForKeyGroup``."""
    return group * parallelism // max_parallelism


def group_to_operator_table(max_parallelism: int, parallelism: int) -> list[int]:
    return [operator_index(g, max_parallelism, parallelism) for g in range(max_parallelism)]


class KeyGroupRange(NamedTuple):
    """Inclusive range of key groups ``[start, end]``; empty when ``end < start``."""

    start: int
    end: int

    @classmethod
    def for_subtask(cls, index: int, max_parallelism: int, parallelism: int) -> KeyGroupRange:
        """Flink's ``computeKeyGroupRangeForOperatorIndex``."""
        start = (index * max_parallelism + parallelism - 1) // parallelism
        end = ((index + 1) * max_parallelism - 1) // parallelism
        return cls(start, end)

    def contains(self, group: int) -> bool:
        return self.start <= group <= self.end

    def intersects(self, other: KeyGroupRange) -> bool:
        return self.start <= other.end and other.start <= self.end
