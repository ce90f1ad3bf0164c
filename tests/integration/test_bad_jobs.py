"""Bad job files fail fast, with a message that says what to fix."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from streamjob_runtime.api import client, models
from tests.conftest import Harness

GOOD_TAIL = """
from streamjob_runtime.connectors.files import FileSink
from streamjob_runtime.connectors.generator import GeneratorSource
"""


def streamjob(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streamjob_runtime.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("def build(env):\n    env.from_source(\n", "syntax error at line"),
        ("x = 1\n", "defines no build(env) function"),
        ("import no_such_module_anywhere\n", "No module named 'no_such_module_anywhere'"),
        ("def build(env):\n    raise ValueError('bad argument')\n", "bad argument"),
        ("def build(env):\n    pass\n", "defines no operators"),
    ],
)
def test_cli_refuses_a_bad_job_before_starting_any_process(
    tmp_path: Path, source: str, message: str
) -> None:
    job = tmp_path / "job.py"
    job.write_text(source)
    started = time.monotonic()
    result = streamjob("run", "--workdir", str(tmp_path / "wd"), str(job))
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert str(job) in result.stderr or "job" in result.stderr
    assert not (tmp_path / "wd").exists(), "a cluster was started for a job that cannot run"
    assert time.monotonic() - started < 30


def test_rest_submission_of_a_bad_job_is_a_400_with_the_reason(
    cluster_factory: Callable[..., Harness], tmp_path: Path
) -> None:
    h = cluster_factory()
    job = tmp_path / "job.py"
    job.write_text("def build(env)\n")

    async def submit() -> client.RestError:
        async with h.cluster.client() as c:
            try:
                await c.submit(models.JobSubmission(entrypoint=str(job)))
            except client.RestError as e:
                return e
        raise AssertionError("the submission was accepted")

    import asyncio

    error = asyncio.run(submit())
    assert error.status == 400
    assert "syntax error at line 1" in error.message


def _fails_at_once(h: Harness, tmp_path: Path, source: str, parallelism: int = 1) -> str:
    """Run a job file of ``source`` after GOOD_TAIL: it must fail without a restart (its
    checkpointing would allow them); the failure cause."""
    job = tmp_path / "job.py"
    job.write_text(GOOD_TAIL + source)
    job_id = h.submit(str(job), [str(tmp_path / "out")], parallelism=parallelism)
    details = h.wait_terminal(job_id, timeout_s=30)
    assert details.state is models.JobStatus.FAILED
    assert details.restarts == 0, "an unrecoverable error must not be retried"
    return details.failure_cause or ""


def test_unpicklable_state_fails_the_job_at_once_naming_the_operator(
    cluster_factory: Callable[..., Harness], tmp_path: Path
) -> None:
    source = """
import threading
from streamjob_runtime.functions import KeyedProcessFunction

class Remember(KeyedProcessFunction):
    def open(self, ctx):
        self.last = ctx.value_state("last")

    def process_element(self, value, ctx):
        self.last.update(threading.Lock())  # cannot be pickled
        return [value]

def build(env):
    env.enable_checkpointing(100)
    (env.from_source(GeneratorSource(lambda i: i, count=None, rate=1000))
        .key_by(lambda v: v % 10).process(Remember()).uid("remember")
        .sink_to(FileSink(env.args[0])))
"""
    cause = _fails_at_once(cluster_factory(), tmp_path, source)
    assert "state of operator 'remember' cannot be checkpointed" in cause
    assert "lock" in cause.lower()


def test_records_that_cannot_cross_taskmanagers_fail_the_job_at_once_saying_why(
    cluster_factory: Callable[..., Harness], tmp_path: Path
) -> None:
    source = """
import threading

def build(env):
    env.enable_checkpointing(100)  # the default strategy then restarts a failed job
    (env.from_source(GeneratorSource(lambda i: (i % 10, threading.Lock()), count=None, rate=1000))
        .key_by(lambda v: v[0]).map(lambda v: v[0])
        .sink_to(FileSink(env.args[0])))
"""
    cause = _fails_at_once(cluster_factory(taskmanagers=2), tmp_path, source, parallelism=2)
    assert "a record cannot be sent to a subtask in another TaskManager" in cause
    assert "lock" in cause.lower()


def test_staged_sink_files_removed_outside_the_job_fail_it_at_once_under_the_default_strategy(
    cluster_factory: Callable[..., Harness], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    h = cluster_factory()
    job_id = h.submit(
        "keyed_sum",
        [f"out={out}", "events=-1", "rate=20000", "interval=200", "restart=default"],
    )
    h.wait_for("a completed checkpoint", lambda: h.checkpoints(job_id).counts.completed >= 1)
    staging = out / ".staging" / "sink" / job_id  # the job's own staged files
    # Someone cleans the sink directory: every staged file (being written or pre-committed)
    # is gone, so its commit cannot happen, now or after any restart.
    h.wait_for("a staged file", lambda: any(staging.glob("*.inprogress")))
    for staged in staging.glob("*.inprogress"):
        staged.unlink(missing_ok=True)
    details = h.wait_terminal(job_id, timeout_s=60)
    assert details.state is models.JobStatus.FAILED
    assert details.restarts == 0, "a restart cannot bring the staged file back"
    cause = details.failure_cause or ""
    assert "UnrecoverableError" in cause
    assert "the sink directory was modified outside the job" in cause
