"""Restart strategies (Flink's): decide whether and when a failed job restarts.

Pure: the caller passes the time of each failure; nothing here sleeps.
"""

from __future__ import annotations

import collections
import random
from typing import Protocol

from streamjob_runtime import config


class RestartStrategy(Protocol):
    description: str

    def notify_failure(self, now_ms: int) -> None: ...

    def can_restart(self) -> bool: ...

    def backoff_ms(self) -> int: ...


class NoRestart:
    description = "none"

    def notify_failure(self, now_ms: int) -> None:
        pass

    def can_restart(self) -> bool:
        return False

    def backoff_ms(self) -> int:
        return 0


class FixedDelay:
    def __init__(self, attempts: int, delay_ms: int) -> None:
        self.attempts = attempts
        self.delay_ms = delay_ms
        self.failures = 0
        self.description = f"fixed-delay (attempts {attempts}, delay {delay_ms} ms)"

    def notify_failure(self, now_ms: int) -> None:
        self.failures += 1

    def can_restart(self) -> bool:
        return self.failures <= self.attempts

    def backoff_ms(self) -> int:
        return self.delay_ms


class FailureRate:
    def __init__(self, max_failures: int, interval_ms: int, delay_ms: int) -> None:
        self.max_failures = max_failures
        self.interval_ms = interval_ms
        self.delay_ms = delay_ms
        self.failures: collections.deque[int] = collections.deque()
        self.description = (
            f"failure-rate (max {max_failures} failures per {interval_ms} ms, delay {delay_ms} ms)"
        )

    def notify_failure(self, now_ms: int) -> None:
        self.failures.append(now_ms)
        while self.failures and self.failures[0] <= now_ms - self.interval_ms:
            self.failures.popleft()

    def can_restart(self) -> bool:
        return len(self.failures) <= self.max_failures

    def backoff_ms(self) -> int:
        return self.delay_ms


class ExponentialDelay:
    def __init__(self, cfg: config.RestartStrategyConfig, rng: random.Random) -> None:
        self.cfg = cfg
        self.rng = rng
        self.current_ms = 0
        self.last_failure_ms: int | None = None
        self.description = (
            f"exponential-delay (initial {cfg.initial_backoff_ms} ms, max {cfg.max_backoff_ms} ms,"
            f" x{cfg.backoff_multiplier})"
        )

    def notify_failure(self, now_ms: int) -> None:
        cfg = self.cfg
        quiet = self.last_failure_ms is None or (
            now_ms - self.last_failure_ms >= cfg.reset_backoff_threshold_ms
        )
        if quiet:
            self.current_ms = cfg.initial_backoff_ms
        else:
            self.current_ms = min(int(self.current_ms * cfg.backoff_multiplier), cfg.max_backoff_ms)
        self.last_failure_ms = now_ms

    def can_restart(self) -> bool:
        return True

    def backoff_ms(self) -> int:
        jitter = self.current_ms * self.cfg.jitter_factor
        return max(0, int(self.current_ms + self.rng.uniform(-jitter, jitter)))


def create(
    cfg: config.RestartStrategyConfig, checkpointing_enabled: bool, rng: random.Random | None = None
) -> RestartStrategy:
    kind = cfg.kind
    if kind is None:
        kind = (
            config.RestartStrategyKind.FIXED_DELAY
            if checkpointing_enabled
            else config.RestartStrategyKind.NONE
        )
    if kind is config.RestartStrategyKind.NONE:
        return NoRestart()
    if kind is config.RestartStrategyKind.FIXED_DELAY:
        return FixedDelay(cfg.attempts, cfg.delay_ms)
    if kind is config.RestartStrategyKind.FAILURE_RATE:
        return FailureRate(
            cfg.max_failures_per_interval, cfg.failure_rate_interval_ms, cfg.delay_ms
        )
    return ExponentialDelay(cfg, rng or random.Random())
