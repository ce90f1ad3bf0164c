"""A TaskManager's garbage collector settings (see executor.tune_garbage_collector)."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from typing import Any

import pytest

from streamjob_runtime.taskmanager import executor


@pytest.fixture
def restored_threshold() -> Iterator[None]:
    before = gc.get_threshold()
    yield
    gc.set_threshold(*before)


def test_a_taskmanager_does_not_collect_while_records_flow_through_its_state(
    restored_threshold: None,
) -> None:
    gc.set_threshold(700, 10, 10)  # CPython's default
    executor.tune_garbage_collector()
    assert gc.get_threshold() == (executor.GC_THRESHOLD, 10, 10)
    collections: list[int] = []

    def count(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            collections.append(info["generation"])

    gc.collect()
    gc.callbacks.append(count)
    try:
        # Keyed state written record by record: new tuples that stay alive.
        state = {k: (k, k) for k in range(executor.GC_THRESHOLD // 2)}
    finally:
        gc.callbacks.remove(count)
    assert len(state) == executor.GC_THRESHOLD // 2
    assert collections == []
