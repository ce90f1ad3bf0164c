from __future__ import annotations

import subprocess
import sys

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
