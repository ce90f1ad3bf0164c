"""Shared fixtures: a real local cluster (JobManager and TaskManagers as processes)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from streamjob_runtime.api import client, models
from streamjob_runtime.local import LocalCluster

pytest_plugins = ["tests.etcd"]

JOBS = Path(__file__).parent / "jobs"
T = TypeVar("T")


class Harness:
    """Synchronous access to a running local cluster's REST API, for tests."""

    def __init__(self, cluster: LocalCluster) -> None:
        self.cluster = cluster

    def _call(self, fn: Callable[[client.JobManagerClient], object]) -> object:
        async def go() -> object:
            async with self.cluster.client() as c:
                return await fn(c)  # type: ignore[misc]

        return asyncio.run(go())

    def submit(
        self,
        job: str,
        args: list[str],
        parallelism: int = 1,
        savepoint: str | None = None,
        allow_non_restored_state: bool = False,
        options: dict[str, str] | None = None,
    ) -> str:
        path = job if "/" in job else str(JOBS / f"{job}.py")
        submission = models.JobSubmission(
            entrypoint=path,
            args=args,
            parallelism=parallelism,
            savepoint_path=savepoint,
            allow_non_restored_state=allow_non_restored_state,
            config=options or {},
        )
        result = self._call(lambda c: c.submit(submission))
        assert isinstance(result, str)
        return result

    def job(self, job_id: str) -> models.JobDetails:
        result = self._call(lambda c: c.job(job_id))
        assert isinstance(result, models.JobDetails)
        return result

    def checkpoints(self, job_id: str) -> models.CheckpointingStatistics:
        result = self._call(lambda c: c.checkpoints(job_id))
        assert isinstance(result, models.CheckpointingStatistics)
        return result

    def exceptions(self, job_id: str) -> models.JobExceptions:
        result = self._call(lambda c: c.exceptions(job_id))
        assert isinstance(result, models.JobExceptions)
        return result

    def taskmanagers(self) -> models.TaskManagerList:
        result = self._call(lambda c: c.taskmanagers())
        assert isinstance(result, models.TaskManagerList)
        return result

    def cancel(self, job_id: str) -> None:
        self._call(lambda c: c.cancel(job_id))

    def trigger_savepoint(self, job_id: str, cancel: bool = False) -> str:
        result = self._call(lambda c: c.trigger_savepoint(job_id, None, cancel))
        assert isinstance(result, str)
        return result

    def stop(self, job_id: str, drain: bool = False) -> str:
        result = self._call(lambda c: c.stop(job_id, None, drain))
        assert isinstance(result, str)
        return result

    def savepoint_info(self, job_id: str, request_id: str) -> models.SavepointInfo:
        result = self._call(lambda c: c.savepoint_status(job_id, request_id))
        assert isinstance(result, models.SavepointInfo)
        return result

    def wait_savepoint(self, job_id: str, request_id: str) -> models.SavepointInfo:
        infos: list[models.SavepointInfo] = []

        def done() -> bool:
            infos.append(self.savepoint_info(job_id, request_id))
            return infos[-1].status is not models.SavepointStatus.IN_PROGRESS

        self.wait_for(f"savepoint {request_id}", done)
        return infos[-1]

    def wait_for(self, what: str, condition: Callable[[], bool], timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"timed out after {timeout_s} s waiting for {what}\n"
                    + self.cluster.logs()[-6000:]
                )
            time.sleep(0.02)

    def wait_terminal(self, job_id: str, timeout_s: float = 90.0) -> models.JobDetails:
        details: list[models.JobDetails] = []

        def done() -> bool:
            details.append(self.job(job_id))
            return details[-1].state.terminal

        self.wait_for(f"job {job_id} to end", done, timeout_s)
        return details[-1]

    def source_records(self, job_id: str) -> int:
        return self.job(job_id).vertices[0].records_in

    def events(self, name: str) -> list[dict[str, object]]:
        """The JobManagers' log events called ``name``, in the order of their log files
        (each with ``log``, the file's name)."""
        found = []
        for path in sorted(self.cluster.log_dir.glob("jobmanager*.log")):
            for line in path.read_text().splitlines():
                if f'"event":"{name}"' in line:
                    found.append({**json.loads(line), "log": path.name})
        return found


@pytest.fixture
def cluster_factory(tmp_path: Path) -> Iterator[Callable[..., Harness]]:
    """Start local clusters; each is stopped when the test ends.

    A test should name this fixture after those its processes use (``etcd``,
    ``kubeconfig``): fixtures end in the reverse order, and a leader JobManager stopped
    after its HA store is gone takes seconds to stop (its lease release cannot reach the
    store; after 5 s it is killed)."""
    clusters: list[LocalCluster] = []

    def start(taskmanagers: int = 1, slots: int = 1, **kwargs: object) -> Harness:
        kwargs.setdefault("heartbeat_interval_ms", 200)
        kwargs.setdefault("heartbeat_timeout_ms", 5_000)
        # Job files: the repository's (tests/jobs, examples) and those a test writes.
        kwargs.setdefault("job_roots", [str(JOBS.parent.parent), str(tmp_path)])
        c = LocalCluster(
            tmp_path / f"cluster-{len(clusters)}",
            taskmanagers=taskmanagers,
            slots=slots,
            **kwargs,  # type: ignore[arg-type]
        )
        clusters.append(c)
        c.start()
        return Harness(c)

    yield start
    for c in clusters:
        c.stop()
