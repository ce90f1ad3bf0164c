from __future__ import annotations

import enum
import operator
import random
import subprocess
import sys
from typing import Any

import pytest

import tests.native
from streamjob_runtime.graph import keygroups


def test_key_group_ranges_cover_every_group_exactly_once() -> None:
    for maxp in (1, 7, 128):
        for p in range(1, maxp + 1, max(1, maxp // 9)):
            ranges = [keygroups.KeyGroupRange.for_subtask(i, maxp, p) for i in range(p)]
            covered = [g for r in ranges for g in range(r.start, r.end + 1)]
            assert covered == list(range(maxp))
            for g in range(maxp):
                assert ranges[keygroups.operator_index(g, maxp, p)].contains(g)


def test_stable_hash_is_the_same_in_another_process_with_another_hash_seed() -> None:
    keys = [0, 1, -5, 2**70, "user-17", b"raw", (1, "a"), None, 2.5, True]
    here = [keygroups.key_group(k, 128) for k in keys]
    code = (
        "from streamjob_runtime.graph import keygroups;"
        f"print([keygroups.key_group(k, 128) for k in {keys!r}])"
    )
    for seed in ("1", "12345"):
        out = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            env={"PYTHONHASHSEED": seed, "PYTHONPATH": ":".join(sys.path)},
        ).stdout
        assert out.strip() == str(here)


def test_sequential_int_keys_spread_over_all_key_groups() -> None:
    groups = {keygroups.key_group(i, 128) for i in range(2_000)}
    assert len(groups) == 128


class Color(enum.IntEnum):
    RED = 1


def test_key_targets_name_the_subtask_owning_each_keys_group_cached_or_not() -> None:
    batches: list[list[object]] = [
        list(range(1000)),
        list(range(500, 1500)),  # half cached, half new
        list(range(1000)),  # all cached
        ["a", "b", "x" * 100, "a"],
        [1, True, 1.0, Color.RED, (1, "a"), None],  # equal keys that hash differently
        [Color.RED, 1],
    ]
    for parallelism in (1, 2, 3, 7):
        for batch in batches:
            expected = [
                keygroups.operator_index(keygroups.key_group(k, 128), 128, parallelism)
                for k in batch
            ]
            assert keygroups.key_targets(batch, 128, parallelism) == expected
            assert keygroups.key_target_flags(batch, 128, parallelism) == bytes(expected)
            for k, t in zip(batch, expected, strict=True):
                assert keygroups.KeyGroupRange.for_subtask(t, 128, parallelism).contains(
                    keygroups.key_group(k, 128)
                )


def test_key_target_flags_check_each_keys_type_even_when_every_key_is_cached() -> None:
    keygroups.key_target_flags([1, 2, 3, "a"], 128, 5)  # now cached
    batch: list[object] = [Color.RED, 2, 3, "a"]  # Color.RED == 1, but hashes by its pickle
    expected = [keygroups.operator_index(keygroups.key_group(k, 128), 128, 5) for k in batch]
    assert expected[0] != keygroups.key_targets([1], 128, 5)[0]
    assert keygroups.key_target_flags(batch, 128, 5) == bytes(expected)


def test_key_target_flags_refuse_more_subtasks_than_a_byte_holds() -> None:
    with pytest.raises(ValueError, match="< 256"):
        keygroups.key_target_flags([1], 512, 257)


def native() -> Any:
    return tests.native.require(keygroups._native, "streamjob_runtime.graph._keyhash")


class Label(enum.StrEnum):
    A = "a"


KEYS: list[Any] = [
    0, 1, -1, -2, 255, 2**61 - 2, 2**61 - 1, 2**61, 2**63 - 1, 2**63, 2**64 + 5, -(2**70),
    True, False, 1.0, -0.0, 1.5, float("inf"), float("-inf"), 1e300,
    "", "a", "user-17", "é日本語", "x" * 1000, "\U0001f600",
    b"", b"raw", bytearray(b"ba"), None,
    (), (1,), (1, "a", None), (1, (2.5, b"z", (None,))), (Color.RED, "a"),
    Color.RED, Label.A, frozenset({1, 2}), 3 + 4j,
]  # fmt: skip


def test_the_c_extension_hashes_every_key_exactly_as_python_does() -> None:
    module = native()
    for key in KEYS:
        assert module.stable_hash(key) == keygroups.python_stable_hash(key), key
    rng = random.Random(7)
    for _ in range(20_000):
        k = rng.randint(-(2**80), 2**80)
        s = "".join(chr(rng.randint(1, 0x2FFF)) for _ in range(rng.randint(0, 12)))
        for key in (k, s, (k, s), float(k)):
            assert module.stable_hash(key) == keygroups.python_stable_hash(key), key


def test_the_c_extension_raises_where_python_raises() -> None:
    module = native()
    with pytest.raises(UnicodeEncodeError):
        keygroups.python_stable_hash("\ud800")
    with pytest.raises(UnicodeEncodeError):
        module.stable_hash("\ud800")
    with pytest.raises(AttributeError, match="pickle"):
        module.stable_hash(lambda: 0)  # unpicklable: the Python function's error
    with pytest.raises(TypeError):
        module.split((1, 2), None, abs, 128, 2, -1)  # a batch is a list
    with pytest.raises(ValueError, match="parallelism"):
        module.split([1], None, abs, 128, 0, -1)


@pytest.fixture(params=["c", "python"])
def implementation(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "c":
        native()
    else:
        monkeypatch.setattr(keygroups, "_native", None)
    return str(request.param)


def test_split_buckets_records_by_the_subtask_owning_their_key(implementation: str) -> None:
    rng = random.Random(3)
    values = [(rng.choice(KEYS[:30] + list(range(50))), i) for i in range(2_000)]
    timestamps = list(range(1000, 3000))
    for maxp, parallelism in ((128, 1), (128, 2), (128, 3), (128, 4), (128, 7), (512, 300)):
        buckets, ts_buckets = keygroups.split(
            values, timestamps, operator.itemgetter(0), maxp, parallelism
        )
        assert ts_buckets is not None
        assert len(buckets) == len(ts_buckets) == parallelism
        for t in range(parallelism):
            expected = [
                (v, ts)
                for v, ts in zip(values, timestamps, strict=True)
                if keygroups.operator_index(keygroups.key_group(v[0], maxp), maxp, parallelism) == t
            ]
            assert list(zip(buckets[t], ts_buckets[t], strict=True)) == expected
        plain, no_ts = keygroups.split(values, None, lambda v: v[0], maxp, parallelism)
        assert plain == buckets
        assert no_ts is None


def test_split_refuses_timestamps_that_do_not_match_the_records(implementation: str) -> None:
    with pytest.raises(ValueError, match="3 records but 2 timestamps"):
        keygroups.split([1, 2, 3], [1, 2], abs, 128, 2)


def test_split_passes_on_what_the_key_selector_raises(implementation: str) -> None:
    def selector(v: int) -> int:
        if v == 3:
            raise KeyError("no key in record 3")
        return v

    with pytest.raises(KeyError, match="no key in record 3"):
        keygroups.split([1, 2, 3, 4], None, selector, 128, 2)


def test_split_survives_a_key_selector_that_changes_the_batch(implementation: str) -> None:
    values = list(range(10))

    def selector(v: int) -> int:
        values.clear()  # absurd, but must not crash the process
        return v

    try:
        buckets, _ = keygroups.split(values, None, selector, 128, 2)
    except RuntimeError as e:
        assert str(e) == "the batch changed during split()"  # noqa: PT017
    else:
        assert sum(len(b) for b in buckets) <= 10


def test_tuple_index_names_the_item_an_itemgetter_selector_reads() -> None:
    assert keygroups.tuple_index(operator.itemgetter(0)) == 0
    assert keygroups.tuple_index(operator.itemgetter(3)) == 3
    for other in (
        operator.itemgetter(-1),
        operator.itemgetter(0, 1),
        operator.itemgetter("user"),
        operator.attrgetter("x"),
        abs,
    ):
        assert keygroups.tuple_index(other) == -1


def test_split_with_the_tuple_index_hint_gives_what_calling_the_selector_gives(
    implementation: str,
) -> None:
    # Records the hint fits (tuples long enough) and ones it does not (the selector runs).
    values: list[Any] = [(k, "v") for k in KEYS[:30]] + [(1,), [7, 8], {0: "d"}, (2, 3, 4)]
    select = operator.itemgetter(0)
    with pytest.raises(IndexError):
        keygroups.split([(1,), ()], None, select, 128, 2, 0)  # () has no item 0: as itemgetter
    for parallelism in (1, 2, 5):
        hinted = keygroups.split(values, None, select, 128, parallelism, 0)
        assert hinted == keygroups.split(values, None, select, 128, parallelism)
