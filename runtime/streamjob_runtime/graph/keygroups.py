"""Key groups: the unit in which keyed state is partitioned and redistributed.

A key maps to one of ``max_parallelism`` key groups through a hash that is the
same in every process (Python's own ``hash`` of ``str`` is salted per process,
so it cannot be used).  A subtask owns a contiguous range of key groups, with
Flink's formulas, so a restore at another parallelism reassigns whole groups.

The per-record work of a keyed shuffle (a key selector call, the hash, the
bucket) runs in C when the optional extension ``_keyhash`` was built with the
package (``hatch_build.py``; a C compiler at install time): :func:`split`
costs about a third of the Python path's time.  Without it, or with
``STREAMJOB_NATIVE=0`` in the environment, the same functions run in Python and
give the same results (``tests/unit/test_keygroups.py`` checks the two agree).
"""

from __future__ import annotations

import operator
import pickle
import zlib
from collections.abc import Callable
from itertools import compress
from typing import Any, NamedTuple

from streamjob_runtime import native

_MASK64 = (1 << 64) - 1
# The _keyhash.c behaviour this module expects; a build of another version is not used.
NATIVE_VERSION = 2


def _mix(h: int) -> int:
    # splitmix64 finaliser: spreads sequential ints over all key groups.
    h = (h + 0x9E3779B97F4A7C15) & _MASK64
    h = ((h ^ (h >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    h = ((h ^ (h >> 27)) * 0x94D049BB133111EB) & _MASK64
    return h ^ (h >> 31)


def python_stable_hash(key: Any) -> int:
    """A hash of ``key`` that every process computes alike (:func:`stable_hash` in Python).

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
            h = _mix(h ^ python_stable_hash(item))
        return h
    if key is None:
        return _mix(0)
    if t is float:
        return _mix(hash(key) & _MASK64)
    return _mix(zlib.crc32(pickle.dumps(key, protocol=5)))


_native = native.load("streamjob_runtime.graph._keyhash", NATIVE_VERSION)
if _native is not None:
    _native.configure(python_stable_hash)
# Whether the C extension runs this module's per-record work (see the module docstring).
NATIVE = _native is not None

stable_hash: Callable[[Any], int] = python_stable_hash if _native is None else _native.stable_hash


def key_group(key: Any, max_parallelism: int) -> int:
    return stable_hash(key) % max_parallelism


# A per-process cache of key -> subtask (one per max parallelism and parallelism), for
# batches whose keys are all exact ``int`` or ``str``: a key of another type can equal a
# cached one (``IntEnum``, ``StrEnum``, ``1.0``) yet hash differently, so such batches are
# always hashed.  Strings longer than _CACHE_MAX_STR are not kept (the cache holds its keys
# alive).  The cache takes new keys until it holds _CACHE_LIMIT of them.  Every _WINDOW
# lookups it checks its hit rate: when it is full and fewer than 80% of the lookups hit (more
# keys than fit, or the keys changed), it empties itself and is bypassed for _BYPASS keys,
# then fills up again.
# (A lookup in a large dict is bound by memory latency when keys come in random order, so
# the cache only pays when most lookups hit; when keys rarely repeat it costs a few percent.)
_CACHEABLE = frozenset((int, str))
_CACHE_LIMIT = 1 << 17
_CACHE_MAX_STR = 64
_WINDOW = _CACHE_LIMIT
_BYPASS = 64 * _CACHE_LIMIT


class _GroupCache:
    __slots__ = ("bypass", "groups", "hits", "lookups")

    def __init__(self) -> None:
        self.groups: dict[Any, int] = {}
        self.hits = 0
        self.lookups = 0
        self.bypass = 0


_target_caches: dict[tuple[int, int], _GroupCache] = {}


def key_targets(keys: list[Any], max_parallelism: int, parallelism: int) -> list[int]:
    """The subtask index (of ``parallelism``) that owns each key's key group.

    Equal to ``[operator_index(key_group(k, m), m, parallelism) for k in keys]``;
    the Python partitioner of :func:`split`, through a bounded per-process cache from
    key straight to subtask for batches of only ``int`` and ``str`` keys.
    """
    c = _target_caches.get((max_parallelism, parallelism))
    if c is None:
        c = _target_caches[(max_parallelism, parallelism)] = _GroupCache()
    h = stable_hash
    return _cached(keys, c, lambda k: h(k) % max_parallelism * parallelism // max_parallelism)


def key_target_flags(keys: list[Any], max_parallelism: int, parallelism: int) -> bytes:
    """:func:`key_targets` as bytes (one per key), for ``parallelism`` <= 256.

    When every key is an exact ``int`` or ``str`` already in the cache, the bytes
    come from one pass of dict lookups in C, without a list of targets in between.
    """
    if parallelism > 256:
        raise ValueError(f"target bytes hold subtasks < 256, not {parallelism}")
    c = _target_caches.get((max_parallelism, parallelism))
    if c is not None and c.bypass <= 0 and _all_cacheable(keys):
        try:
            flags = bytes(map(c.groups.__getitem__, keys))
        except KeyError:
            pass  # a key not cached yet: the general path below adds it
        else:
            c.lookups += len(keys)
            c.hits += len(keys)
            if c.lookups >= _WINDOW:
                c.hits = c.lookups = 0  # all hits: nothing to clear (see _cached)
            return flags
    return bytes(key_targets(keys, max_parallelism, parallelism))


def _all_cacheable(keys: list[Any]) -> bool:
    """Whether every key is an exact ``int`` or ``str`` (all ints: one pass of identity checks)."""
    return operator.countOf(map(type, keys), int) == len(keys) or set(map(type, keys)) <= _CACHEABLE


def _cached(keys: list[Any], c: _GroupCache, compute: Callable[[Any], int]) -> list[int]:
    """``list(map(compute, keys))`` through the cache ``c`` (see the comment above)."""
    if c.bypass > 0:
        c.bypass -= len(keys)
        return list(map(compute, keys))
    kinds = set(map(type, keys))
    if not kinds <= _CACHEABLE:
        return list(map(compute, keys))
    cache = c.groups
    found: list[Any] = list(map(cache.get, keys))
    misses = found.count(None)
    c.lookups += len(keys)
    c.hits += len(keys) - misses
    if not misses:
        groups: list[int] = found
    else:
        groups = [g if g is not None else compute(k) for k, g in zip(keys, found, strict=True)]
        if len(cache) < _CACHE_LIMIT:
            if str in kinds:
                cache.update(
                    (k, g)
                    for k, g in zip(keys, groups, strict=True)
                    if type(k) is int or len(k) <= _CACHE_MAX_STR
                )
            else:
                cache.update(zip(keys, groups, strict=True))
    if c.lookups >= _WINDOW:
        if len(cache) >= _CACHE_LIMIT and 5 * c.hits < 4 * c.lookups:
            cache.clear()
            c.bypass = _BYPASS
        c.hits = c.lookups = 0
    return groups


def tuple_index(key_selector: Callable[[Any], Any]) -> int:
    """``i`` when ``key_selector`` is ``operator.itemgetter(i)`` with one index ``i >= 0``
    (the key of a tuple record is its item ``i``), else -1: a hint for :func:`split`."""
    if type(key_selector) is operator.itemgetter:
        items = key_selector.__reduce__()[1]  # itemgetter(*items)
        if len(items) == 1 and type(items[0]) is int and items[0] >= 0:
            return items[0]
    return -1


def split(
    values: list[Any],
    timestamps: list[int] | None,
    key_selector: Callable[[Any], Any],
    max_parallelism: int,
    parallelism: int,
    key_index: int = -1,
) -> tuple[list[list[Any]], list[list[int]] | None]:
    """``values`` (and their ``timestamps``) bucketed by the subtask of ``parallelism``
    that owns each record's key (``key_selector(value)``), keeping their order:
    ``(buckets, timestamp buckets or None)``, one bucket per subtask.

    A record writer's hash partitioner: in C when the extension is built, otherwise
    through the key-to-subtask cache of :func:`key_target_flags`.  ``key_index`` is
    :func:`tuple_index` of the key selector (the C path then reads a tuple record's
    key without calling it); the result is the same whatever it is.
    """
    if _native is not None:
        result: tuple[list[list[Any]], list[list[int]] | None] = _native.split(
            values, timestamps, key_selector, max_parallelism, parallelism, key_index
        )
        return result
    if timestamps is not None and len(timestamps) != len(values):
        raise ValueError(f"{len(values)} records but {len(timestamps)} timestamps")
    keys = list(map(key_selector, values))
    targets: bytes | list[int] = (
        key_target_flags(keys, max_parallelism, parallelism)
        if parallelism <= 256
        else key_targets(keys, max_parallelism, parallelism)
    )
    buckets = _split(values, targets, parallelism)
    return buckets, None if timestamps is None else _split(timestamps, targets, parallelism)


# _ONLY[t] is a bytes.translate table that maps byte t to 1 and every other byte to 0.
_ONLY = [bytes(b == t for b in range(256)) for t in range(4)]


def _split(items: list[Any], targets: bytes | list[int], n: int) -> list[list[Any]]:
    """``items`` bucketed by target index (0 <= target < n), keeping their order."""
    if n <= 4:
        # One pass in C per target: the targets as bytes, translated to 0/1 flags.
        flags = targets if type(targets) is bytes else bytes(targets)
        if n == 2:
            return [list(compress(items, flags.translate(_ONLY[0]))), list(compress(items, flags))]
        return [list(compress(items, flags.translate(_ONLY[t]))) for t in range(n)]
    buckets: list[list[Any]] = [[] for _ in range(n)]
    appends = [b.append for b in buckets]
    for item, t in zip(items, targets, strict=True):
        appends[t](item)
    return buckets


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
