"""Kafka -> key_by -> count -> Kafka with real JobManager/TaskManager processes and Tansu.

Tansu's ``read_committed`` does not hide aborted records, and a TaskManager
killed while its sink commits leaves an aborted transaction behind.  The
reader here drops them the way a broker would: each record carries the sink's
``txn`` header (transactional id, checkpoint, attempt), a transaction is
committed at most once (its commit marker), and the copy of a transaction a
restore committed has a higher attempt than any aborted copy before it.  A
transaction produced by two attempts is thus either an aborted copy and its
commit, or a duplicate: the kill test allows one (the commit a kill may cut
short), enough to catch a restore that commits the restored transactions again.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest

from streamjob_runtime.api import models
from tests.conftest import Harness
from tests.jobs import keyed_sum
from tests.kafka import Tansu, committed_output, create_topics, produce_input, tansu

__all__ = ["tansu"]

pytestmark = pytest.mark.timeout(180)

EVENTS = 12_000
KEYS = 13


@pytest.mark.parametrize("seed", [1, 2])
def test_kafka_to_kafka_count_is_exact_after_a_taskmanager_kill(
    cluster_factory: Callable[..., Harness], tansu: Tansu, seed: int
) -> None:
    rng = random.Random(seed)
    h = cluster_factory(taskmanagers=2)
    create_topics(tansu)
    job = h.submit(
        "kafka_count",
        [f"bootstrap={tansu.bootstrap_servers}", f"stop={EVENTS // 4}"],
        parallelism=2,
    )
    h.wait_for("the job running", lambda: h.job(job).state is models.JobStatus.RUNNING)
    feeder = produce_input(tansu, EVENTS, KEYS, per_second=2_500)
    # After a checkpoint, so that the restore has transactions to finish.
    h.wait_for("a completed checkpoint", lambda: h.checkpoints(job).counts.completed >= 1)
    threshold = int(EVENTS * rng.uniform(0.3, 0.7))
    h.wait_for(f"{threshold} sink records", lambda: h.job(job).vertices[-1].records_in >= threshold)
    assert feeder.is_alive(), "the input was complete before the kill"
    h.cluster.kill_taskmanager(rng.randrange(2))
    details = h.wait_terminal(job, timeout_s=150)
    assert details.state is models.JobStatus.FINISHED, details.failure_cause
    assert details.restarts >= 1
    (got, copied), want = committed_output(tansu), keyed_sum.expected(EVENTS, KEYS)
    # One kill aborts at most the one commit in flight on the killed TaskManager; a
    # transaction committed twice (both subtasks' restored ones) would show up here.
    assert copied <= 1, f"{copied} transactions written by more than one attempt"
    missing, extra = want - got, got - want
    assert not missing, f"{sum(missing.values())} records missing, e.g. {list(missing)[:3]}"
    assert not extra, f"{sum(extra.values())} records extra (duplicates), e.g. {list(extra)[:3]}"


def test_kafka_to_kafka_count_is_exact_without_failures(
    cluster_factory: Callable[..., Harness], tansu: Tansu
) -> None:
    create_topics(tansu)
    produce_input(tansu, EVENTS, KEYS)
    h = cluster_factory(taskmanagers=2)
    job = h.submit(
        "kafka_count",
        [f"bootstrap={tansu.bootstrap_servers}", f"stop={EVENTS // 4}"],
        parallelism=2,
    )
    details = h.wait_terminal(job, timeout_s=150)
    assert details.state is models.JobStatus.FINISHED, details.failure_cause
    assert committed_output(tansu) == (keyed_sum.expected(EVENTS, KEYS), 0)


def test_kafka_to_kafka_count_rescales_from_2_to_3_through_a_savepoint_exactly(
    cluster_factory: Callable[..., Harness], tansu: Tansu
) -> None:
    h = cluster_factory(taskmanagers=3)
    create_topics(tansu)
    args = [f"bootstrap={tansu.bootstrap_servers}", f"stop={EVENTS // 4}"]
    job = h.submit("kafka_count", args, parallelism=2)
    h.wait_for("the job running", lambda: h.job(job).state is models.JobStatus.RUNNING)
    feeder = produce_input(tansu, EVENTS, KEYS, per_second=2_500)
    h.wait_for("a completed checkpoint", lambda: h.checkpoints(job).counts.completed >= 1)
    assert feeder.is_alive(), "the input was complete before the stop"
    info = h.wait_savepoint(job, h.stop(job))
    assert info.status is models.SavepointStatus.COMPLETED, info.failure_cause
    assert info.location is not None
    assert h.wait_terminal(job).state is models.JobStatus.FINISHED
    assert h.job(job).vertices[-1].records_in < EVENTS, "the job ended before the stop"
    restored = h.submit("kafka_count", args, parallelism=3, savepoint=info.location)
    details = h.wait_terminal(restored, timeout_s=150)
    assert details.state is models.JobStatus.FINISHED, details.failure_cause
    assert committed_output(tansu) == (keyed_sum.expected(EVENTS, KEYS), 0)
