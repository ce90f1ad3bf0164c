from __future__ import annotations

import enum
import subprocess
import sys

import pytest

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
