from __future__ import annotations

import collections
import contextlib
import enum
import functools
import pickle
import random
from typing import Any, cast

import pytest

import tests.native
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


def native() -> Any:
    return tests.native.require(wire._native, "streamjob_runtime.taskmanager._plainbatch")


PLAIN: list[Any] = [
    0, 1, -1, 127, 128, -129, 2**31, 2**62, 2**63 - 1, -(2**63), 2**30 - 1, 2**30, -(2**30),
    0.0, -0.0, 1.5, float("inf"), float("-inf"), 1e-310, True, False, None,
    "", "x", "é日本語", "\U0001f600", "a" * 300, b"", b"\x00\xff", b"y" * 200,
    (), (1,), (1, 2), (None, b"z", 2.5, False, "s"), (1, (2, (3, ("deep",)))),
]  # fmt: skip


def test_plain_batches_use_the_plain_format_and_keep_values_and_types() -> None:
    native()
    for timestamps in (None, [(-1) ** i * 2**i for i in range(len(PLAIN))]):
        payload = wire.encode(("b", PLAIN, timestamps))
        assert payload[:1] == wire.PLAIN
        for decoded in (wire.decode_batch(payload), wire._decode_plain(payload, 1)):
            assert decoded == (PLAIN, timestamps)
            assert _types(decoded[0]) == _types(PLAIN)
        assert wire.decode(payload) == ("b", PLAIN, timestamps)
        assert pickle.loads(wire.stored(payload)) == ("b", PLAIN, timestamps)
    nan = wire.decode_batch(wire.encode(("b", [float("nan")], None)))[0][0]
    assert nan != nan


@pytest.mark.parametrize(
    ("values", "timestamps"),
    [
        ([1, 2**63], None),  # an int beyond 64 bits
        ([1, -(2**63) - 1], None),
        ([(1, 2), (1, [2])], None),  # a list inside
        ([1, Color.RED], None),  # an int subclass
        ([Text("a")], None),
        (["ok", "\ud800"], None),  # a lone surrogate is not UTF-8
        ([1, 2], [1, 2**64]),  # a timestamp beyond 64 bits
        ([1, 2], [1, Color.RED]),
        ([functools.reduce(lambda t, _: (t,), range(40), cast(tuple[Any, ...], ()))], None),
    ],
)
def test_a_batch_that_is_not_plain_is_pickled_and_still_exact(
    values: list[Any], timestamps: list[int] | None
) -> None:
    native()
    payload = wire.encode(("b", values, timestamps))
    assert payload[:1] == wire.BATCH
    decoded = wire.decode_batch(payload)
    assert decoded == (values, timestamps)
    assert _types(decoded[0]) == _types(values)


def test_the_python_decoder_reads_what_the_c_encoder_writes() -> None:
    native()
    rng = random.Random(5)
    for _ in range(200):
        n = rng.randint(0, 50)
        values = [tuple(rng.choice(PLAIN) for _ in range(rng.randint(0, 4))) for _ in range(n)]
        timestamps = rng.choice([None, [rng.randint(-(2**63), 2**63 - 1) for _ in range(n)]])
        payload = wire.encode(("b", values, timestamps))
        assert wire._decode_plain(payload, 1) == wire.decode_batch(payload) == (values, timestamps)


def test_a_corrupt_plain_batch_is_a_value_error_in_both_decoders() -> None:
    module = native()
    payload = wire.encode(("b", PLAIN, list(range(len(PLAIN)))))
    broken = [payload[:cut] for cut in range(1, len(payload))]  # every truncation
    broken += [payload + b"\x00", wire.PLAIN + b"\xff" * 11, wire.PLAIN + b"\x01\x02\x09"]
    broken += [wire.PLAIN + b"\x05\x00" + b"\x08\xff\xff\xff\xff\x0f" + b"\x01" * 5]  # huge tuple
    deep = wire.PLAIN + b"\x01\x00" + b"\x08\x01" * 40 + b"\x05"
    broken.append(deep)
    for data in broken:
        with pytest.raises(ValueError, match="corrupt plain batch"):
            module.decode(data, 1)
        with pytest.raises(ValueError, match="corrupt plain batch"):
            wire._decode_plain(data, 1)
    rng = random.Random(11)
    for _ in range(2000):  # flipped bytes: an error or some batch, never a crash
        flipped = bytearray(payload)
        flipped[rng.randrange(1, len(flipped))] = rng.randrange(256)
        for decoder in (module.decode, wire._decode_plain):
            with contextlib.suppress(ValueError):  # UnicodeDecodeError is one
                decoder(bytes(flipped), 1)
