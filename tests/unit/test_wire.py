from __future__ import annotations

import collections
import enum
from typing import Any

import pytest

from streamjob_runtime.taskmanager import wire

Point = collections.namedtuple("Point", "x y")


class Color(enum.IntEnum):
    RED = 1


class Text(str):
    pass


def _roundtrip(element: tuple[Any, ...]) -> tuple[Any, ...]:
    decoded = wire.decode(wire.encode(element))
    assert decoded == element
    assert type(decoded) is tuple
    return decoded


def _types(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return (type(value), [_types(v) for v in value])
    return type(value)


@pytest.mark.parametrize(
    "values",
    [
        [1, -(2**63), 2**64 - 1, 1.5, float("inf"), "x", b"y", True, None],
        [(1, 2), (3, "a"), (), (None, b"z", 2.5, False)],
    ],
)
def test_plain_batches_go_as_msgpack_and_decode_to_the_same_types(values: list[Any]) -> None:
    for timestamps in (None, list(range(len(values)))):
        element = ("b", values, timestamps)
        assert wire.encode(element)[:1] in (b"M", b"T")
        decoded = _roundtrip(element)
        assert _types(decoded[1]) == _types(values)
        assert _types(decoded[2]) == _types(timestamps)


@pytest.mark.parametrize(
    "values",
    [
        [2**64],  # over msgpack's range
        ["\ud800"],  # a lone surrogate: not UTF-8
        [[1, 2]],  # msgpack has one array type: a list value is left to pickle
        [(1, (2, 3))],  # a nested tuple would come back as a list
        [Point(1, 2)],  # a named tuple keeps its class
        [Color.RED],  # an IntEnum keeps its class
        [Text("a")],
        [{"a": 1}],
        [(1, 2), 3],
    ],
)
def test_other_batches_fall_back_to_pickle_and_decode_exactly(values: list[Any]) -> None:
    element = ("b", values, None)
    assert wire.encode(element)[:1] == b"P"
    decoded = _roundtrip(element)
    assert _types(decoded[1]) == _types(values)
    assert [type(v) for v in decoded[1]] == [type(v) for v in values]


def test_bool_timestamps_and_control_elements_round_trip() -> None:
    assert wire.encode(("b", [1], [True]))[:1] == b"P"
    _roundtrip(("b", [1], [True]))
    for element in [("w", 5), ("c", 3, 1000, None), ("c", 4, 1000, "/tmp/sp"), ("e",)]:
        _roundtrip(element)


def test_an_unknown_codec_tag_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown codec tag"):
        wire.decode(b"Zjunk")
