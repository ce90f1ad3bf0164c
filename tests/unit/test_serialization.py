"""Memo-less pickling of snapshots and batches: what round-trips, and what it refuses."""

from __future__ import annotations

import collections
import pickle
import threading
from typing import Any

import pytest

from streamjob_runtime.state import serialization

Point = collections.namedtuple("Point", "x y")


def test_plain_state_round_trips_to_equal_values_of_the_same_types() -> None:
    state: dict[str, dict[Any, Any]] = {
        "count-sum": {k: (k, k * 31 + 2**40) for k in range(1000)},
        "__event_timers__": {k: 2**62 if k % 2 else {1, 2} for k in range(1000)},
        "mixed": {"a": [1, 2.5, "x", b"y", None, True], ("t", 1): {"n": Point(1, 2)}},
    }
    restored = pickle.loads(serialization.dumps((state, [("wm", 5)])))
    assert restored == (state, [("wm", 5)])
    assert type(restored[0]["mixed"][("t", 1)]["n"]) is Point


def test_a_cyclic_value_round_trips_through_the_memo() -> None:
    loop: list[Any] = [1]
    loop.append(loop)
    restored = pickle.loads(serialization.dumps({"k": loop}))
    assert restored["k"][0] == 1
    assert restored["k"][1] is restored["k"]


def test_an_object_reachable_twice_decodes_as_two_equal_objects() -> None:
    shared = [1, 2]
    restored = pickle.loads(serialization.dumps({"a": shared, "b": shared}))
    assert restored == {"a": [1, 2], "b": [1, 2]}
    assert restored["a"] is not restored["b"]


def test_a_deeply_nested_value_round_trips() -> None:
    nested: list[Any] = []
    current = nested
    for _ in range(300):  # past fast mode's 50 levels, where it starts tracking objects
        inner: list[Any] = []
        current.append(inner)
        current = inner
    assert pickle.loads(serialization.dumps(nested)) == nested


def test_an_unpicklable_value_raises_picklings_error() -> None:
    with pytest.raises(TypeError, match="lock"):
        serialization.dumps({"k": threading.Lock()})
