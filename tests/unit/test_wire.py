from __future__ import annotations

import collections
import enum
import pickle
from typing import Any

import pytest

from streamjob_runtime.taskmanager import wire

Point = collections.namedtuple("Point", "x y")


class Color(enum.IntEnum):
    RED = 1


class Text(str):
    pass


def _types(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return (type(value), [_types(v) for v in value])
    return type(value)


@pytest.mark.parametrize(
    "values",
    [
        [1, -(2**63), 2**64, 1.5, float("inf"), "x", "\ud800", b"y", True, None],
        [(1, 2), (3, "a"), (), (None, b"z", 2.5, False), (1, (2, 3)), [1, 2]],
        [Point(1, 2), Color.RED, Text("a"), {"a": (1,)}],
    ],
)
def test_batches_decode_to_equal_values_of_the_same_types(values: list[Any]) -> None:
    for timestamps in (None, list(range(len(values)))):
        element = ("b", values, timestamps)
        decoded = wire.decode(wire.encode(element))
        assert decoded == element
        assert _types(decoded[1]) == _types(values)
        assert [type(v) for v in decoded[1]] == [type(v) for v in values]


def test_control_elements_round_trip() -> None:
    for element in [("w", 5), ("c", 3, 1000, None), ("c", 4, 1000, "/tmp/sp"), ("e",)]:
        assert wire.decode(wire.encode(element)) == element


def test_an_unknown_codec_tag_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown codec tag"):
        wire.decode(b"Zjunk")


def test_a_received_batch_stays_encoded_until_the_task_decodes_it() -> None:
    for timestamps in (None, [5, 6]):
        payload = wire.encode(("b", [(1, 2), (3, 4)], timestamps))
        element = wire.receive(payload)
        assert element == ("s", payload)
        assert wire.decode_batch(element[1]) == ([(1, 2), (3, 4)], timestamps)
        # Its channel-state form is the pickle of the decoded element, as for a local batch.
        assert pickle.loads(wire.stored(payload)) == ("b", [(1, 2), (3, 4)], timestamps)


def test_received_control_elements_are_decoded_at_once() -> None:
    for element in [("w", 5), ("c", 3, 1000, None), ("e",)]:
        assert wire.receive(wire.encode(element)) == element


def test_a_frame_that_is_not_a_batch_is_refused_as_one() -> None:
    with pytest.raises(ValueError, match="unknown codec tag"):
        wire.receive(b"Zjunk")
    with pytest.raises(ValueError, match="element kind 'w'"):
        wire.decode_batch(wire.BATCH + pickle.dumps(("w", 5)))
