"""``bench/keyed_count.py --cost-interval``: the CPU of one checkpoint from a run that takes
many, paired with the run without checkpoints of the same repeat."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _load() -> Any:
    """The script as a module (by path: examples/ has a keyed_count.py of its own)."""
    spec = importlib.util.spec_from_file_location("bench_keyed_count", BENCH / "keyed_count.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    # For its `import common`, and only while it loads: bench/ has a profile.py, which
    # would shadow the standard library's for the rest of the test process.
    sys.path.insert(0, str(BENCH))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(BENCH))
    return module


keyed_count = _load()


def _run(checkpoints: int, wall_s: float, cpu_s: float) -> Any:
    return keyed_count.Result(
        parallelism=1,
        checkpoints=checkpoints > 0,
        events=10_000_000,
        state="FINISHED",
        wall_s=wall_s,
        tm_cpu_s=cpu_s - 0.1,
        jm_cpu_s=0.1,
        other_cores=0.0,
        durations_ms=[20.0] * checkpoints,
        sizes=[1000] * checkpoints,
        failures=[],
        exact=True,
        detail="",
    )


def test_the_cost_of_one_checkpoint_and_its_overhead_at_the_interval(
    capsys: pytest.CaptureFixture[str],
) -> None:
    off = [_run(0, 4.0, 4.0), _run(0, 4.0, 4.0), _run(0, 4.0, 4.0)]
    # 40 checkpoints for 0.4 s more CPU: 10 ms each; every 1000 ms, a 4 s run pays for
    # 4 of them: 40 ms of its 4 s, 1 %.  The third pair (30 ms each) is the spread.
    many = [_run(40, 4.4, 4.4), _run(40, 4.4, 4.4), _run(40, 4.4, 5.2)]
    keyed_count.print_checkpoint_cost(off, many, 100, 1000)
    out = capsys.readouterr().out
    assert "checkpoint cost at p=1: 10.0 ms engine CPU per checkpoint (10.0-30.0 ms" in out
    assert "40 checkpoints per run every 100 ms, p50 20 ms" in out
    assert "every 1000 ms that is +1.0% CPU per event (target < 5%): met" in out
    keyed_count.print_checkpoint_cost(off, [_run(40, 4.4, 9.0)], 100, 1000)
    assert "+12.5% CPU per event (target < 5%): MISSED" in capsys.readouterr().out


def test_the_cost_needs_runs_without_checkpoints_and_completed_checkpoints(
    capsys: pytest.CaptureFixture[str],
) -> None:
    keyed_count.print_checkpoint_cost([], [_run(40, 4.4, 4.4)], 100, 1000)
    assert "needs the p=1 runs without checkpoints" in capsys.readouterr().out
    keyed_count.print_checkpoint_cost([_run(0, 4.0, 4.0)], [_run(0, 4.4, 4.4)], 100, 1000)
    assert "no checkpoint completed" in capsys.readouterr().out
