from __future__ import annotations

import random

from streamjob_runtime import config
from streamjob_runtime.jobmanager import restart


def test_default_is_fixed_delay_with_unlimited_attempts_when_checkpointing() -> None:
    s = restart.create(config.RestartStrategyConfig(), checkpointing_enabled=True)
    assert isinstance(s, restart.FixedDelay)
    for t in range(1000):
        s.notify_failure(t)
    assert s.can_restart()
    assert s.backoff_ms() == 1000


def test_default_is_no_restart_without_checkpointing() -> None:
    s = restart.create(config.RestartStrategyConfig(), checkpointing_enabled=False)
    s.notify_failure(0)
    assert not s.can_restart()


def test_fixed_delay_allows_its_attempts_then_stops() -> None:
    s = restart.create(config.fixed_delay(2, 50), True)
    s.notify_failure(0)
    s.notify_failure(1)
    assert s.can_restart()
    s.notify_failure(2)
    assert not s.can_restart()


def test_failure_rate_counts_only_failures_within_the_interval() -> None:
    s = restart.create(config.failure_rate(2, 1_000, 10), True)
    s.notify_failure(0)
    s.notify_failure(500)
    assert s.can_restart()
    s.notify_failure(900)
    assert not s.can_restart()
    s.notify_failure(2_000)  # the earlier failures left the window
    assert s.can_restart()


def test_exponential_delay_grows_caps_and_resets_after_a_quiet_period() -> None:
    cfg = config.exponential_delay(100, 1_000, 2.0, reset_threshold_ms=10_000, jitter_factor=0.0)
    s = restart.create(cfg, True, random.Random(1))
    delays = []
    for t in range(6):
        s.notify_failure(t)
        delays.append(s.backoff_ms())
    assert delays == [100, 200, 400, 800, 1_000, 1_000]
    s.notify_failure(20_000)
    assert s.backoff_ms() == 100


def test_exponential_jitter_stays_within_its_factor() -> None:
    cfg = config.exponential_delay(1_000, 1_000, 2.0, jitter_factor=0.1)
    s = restart.create(cfg, True, random.Random(7))
    s.notify_failure(0)
    assert all(900 <= s.backoff_ms() <= 1_100 for _ in range(100))
