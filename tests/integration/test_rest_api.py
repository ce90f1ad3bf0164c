"""The REST contract: the typed client round-trips every endpoint; errors say what to fix."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp

from streamjob_runtime.api import client, models, openapi
from streamjob_runtime.local import LocalCluster
from tests.conftest import JOBS, Harness

ROOT = Path(__file__).resolve().parents[2]


async def until(what: str, predicate: Callable[[], Awaitable[bool]], timeout_s: float = 60) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        if await predicate():
            return
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def raw(
    cluster: LocalCluster,
    method: str,
    path: str,
    body: object = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, str]:
    """One request with the cluster's token (or ``headers``), verified by its CA."""
    if headers is None:
        headers = {"Authorization": f"Bearer {cluster.token}"}
    connector = aiohttp.TCPConnector(ssl=cluster.ssl_context() or True)
    async with aiohttp.ClientSession(connector=connector, headers=headers) as s:
        data = body if isinstance(body, str) else (json.dumps(body) if body is not None else None)
        async with s.request(method, cluster.rest_url + path, data=data) as resp:
            return resp.status, (await resp.json())["error"] if resp.status >= 400 else ""


async def _state(c: client.JobManagerClient, job: str, state: models.JobStatus) -> bool:
    return (await c.job(job)).state is state


async def _completed(c: client.JobManagerClient, job: str) -> bool:
    return (await c.checkpoints(job)).counts.completed >= 1


def test_the_typed_client_round_trips_every_endpoint(
    cluster_factory: Callable[..., Harness], tmp_path: Path
) -> None:
    h = cluster_factory(taskmanagers=2)
    out = tmp_path / "out"

    async def scenario() -> None:
        async with h.cluster.client() as c:
            assert await c.healthy()
            overview = await c.overview()
            assert overview.taskmanagers == 2
            assert overview.slots_total == 2
            job = await c.submit(
                models.JobSubmission(
                    entrypoint=str(JOBS / "keyed_sum.py"),
                    parallelism=2,
                    args=[f"out={out}", "events=-1", "rate=20000", "interval=100"],
                )
            )
            assert [j.jid for j in (await c.list_jobs()).jobs] == [job]
            await until("RUNNING", lambda: _state(c, job, models.JobStatus.RUNNING))
            await until("a checkpoint", lambda: _completed(c, job))
            details = await c.job(job)
            assert [v.parallelism for v in details.vertices] == [2, 2]
            assert [[e.id for e in v.inputs] for v in details.vertices] == [
                [],
                [details.vertices[0].id],
            ]
            assert details.vertices[1].inputs[0].ship_strategy == "hash"
            stats = await c.checkpoints(job)
            assert stats.latest_completed is not None
            assert stats.config is not None
            assert stats.config.interval_ms == 100
            assert stats.latest_restored is None
            first = stats.history[-1]
            assert sorted((s.vertex, s.subtask) for s in first.subtasks) == sorted(
                (v.id, i) for v in details.vertices for i in range(v.parallelism)
            )
            assert sum(s.bytes for s in first.subtasks) == first.bytes

            async def busy() -> bool:  # every vertex reports time spent in its operators
                return all(v.busy_ms > 0 for v in (await c.job(job)).vertices)

            await until("busy time", busy)
            tms = (await c.taskmanagers()).taskmanagers
            assert all(tm.memory_rss_bytes and tm.memory_rss_bytes > 1 << 20 for tm in tms)
            assert [tm.slots_total for tm in tms] == [1, 1]
            assert [tm.slots_free for tm in tms] == [0, 0]
            job_config = await c.job_config(job)
            assert job_config.entrypoint.endswith("keyed_sum.py")
            assert job_config.parallelism == 2
            assert (await c.savepoints(job)).requests == []
            assert stats.latest_completed.path.endswith(f"chk-{stats.latest_completed.id}")
            assert (await c.exceptions(job)).history == []
            request = await c.trigger_savepoint(job)
            info = await c.wait_savepoint(job, request)
            assert info.status is models.SavepointStatus.COMPLETED
            listed = (await c.savepoints(job)).requests
            assert [(r.request_id, r.operation, r.status) for r in listed] == [
                (request, "savepoint", models.SavepointStatus.COMPLETED)
            ]
            text = await c.metrics()
            assert f'streamjob_checkpoints_completed_total{{job_id="{job}"}}' in text
            assert "streamjob_records_in_total" in text
            assert "streamjob_last_checkpoint_duration_seconds" in text
            stop = await c.stop(job, str(tmp_path / "stops"), drain=False)
            stopped = await c.wait_savepoint(job, stop)
            assert stopped.location
            assert stopped.location.startswith(str(tmp_path / "stops"))
            await until("the stop", lambda: _state(c, job, models.JobStatus.FINISHED))
            assert (await c.job(job)).state is models.JobStatus.FINISHED
            again = await c.submit(
                models.JobSubmission(
                    entrypoint=str(JOBS / "keyed_sum.py"),
                    savepoint_path=stopped.location,
                    args=[f"out={out}", "events=-1", "rate=20000"],
                )
            )
            await until("RUNNING", lambda: _state(c, again, models.JobStatus.RUNNING))
            await c.cancel(again)
            await until("CANCELED", lambda: _state(c, again, models.JobStatus.CANCELED))
            assert await c.openapi() == openapi.document()

    asyncio.run(scenario())


def endless_job(h: Harness, tmp_path: Path) -> str:
    """A keyed_sum job that runs until stopped (no checkpoint in the test's time), running."""
    job = h.submit(
        "keyed_sum",
        [f"out={tmp_path / 'out'}", "events=-1", "rate=5000", "commit_delay=1.0", "interval=60000"],
    )
    h.wait_for("the job to run", lambda: h.job(job).state is models.JobStatus.RUNNING)
    return job


def test_rest_errors_have_the_right_status_and_say_what_to_fix(
    cluster_factory: Callable[..., Harness], tmp_path: Path
) -> None:
    h = cluster_factory()
    job = endless_job(h, tmp_path)

    async def checks() -> None:
        status, message = await raw(h.cluster, "GET", "/jobs/nope")
        assert status == 404
        assert "job nope not found" in message
        status, message = await raw(h.cluster, "POST", "/jobs/nope/savepoints", {})
        assert status == 404
        status, message = await raw(h.cluster, "GET", f"/jobs/{job}/savepoints/nope")
        assert status == 404
        assert "no savepoint request nope" in message
        status, message = await raw(h.cluster, "POST", "/jobs", {"entrypoint": 5})
        assert status == 400
        assert "entrypoint" in message
        status, message = await raw(h.cluster, "POST", "/jobs", "{not json")
        assert status == 400
        assert "invalid JobSubmission body" in message
        status, message = await raw(
            h.cluster, "POST", f"/jobs/{job}/savepoints", {"cancel_job": "x"}
        )
        assert status == 400
        assert "cancel_job" in message
        status, message = await raw(h.cluster, "PATCH", f"/jobs/{job}?mode=explode")
        assert status == 400
        assert "mode=cancel" in message
        # The sink's pre-commit holds the first savepoint open for a second.
        status, _ = await raw(h.cluster, "POST", f"/jobs/{job}/savepoints", {})
        assert status == 202
        status, message = await raw(h.cluster, "POST", f"/jobs/{job}/savepoints", {})
        assert status == 409
        assert "still in progress" in message
        status, message = await raw(h.cluster, "POST", f"/jobs/{job}/stop", {})
        assert status == 409
        status, _ = await raw(h.cluster, "PATCH", f"/jobs/{job}?mode=cancel")
        assert status == 202

    asyncio.run(checks())
    h.wait_terminal(job)

    async def after() -> None:
        status, message = await raw(h.cluster, "POST", f"/jobs/{job}/savepoints", {})
        assert status == 409
        assert "CANCELED" in message
        assert "RUNNING" in message
        status, message = await raw(h.cluster, "PATCH", f"/jobs/{job}?mode=cancel")
        assert status == 409
        assert "already ended" in message

    asyncio.run(after())


def test_a_savepoint_of_an_unknown_format_version_is_refused_clearly(
    cluster_factory: Callable[..., Harness], tmp_path: Path
) -> None:
    h = cluster_factory()
    out = tmp_path / "out"
    job = h.submit("keyed_sum", [f"out={out}", "events=-1", "rate=5000"])
    h.wait_for("the job to run", lambda: h.job(job).state is models.JobStatus.RUNNING)
    info = h.wait_savepoint(job, h.trigger_savepoint(job, cancel=True))
    assert info.location is not None
    meta = Path(info.location, "_metadata")
    meta.write_text(meta.read_text().replace('"version":1', '"version":7'))

    async def submit() -> tuple[int, str]:
        return await raw(
            h.cluster,
            "POST",
            "/jobs",
            {
                "entrypoint": str(JOBS / "keyed_sum.py"),
                "savepoint_path": info.location,
                "args": [f"out={out}"],
            },
        )

    status, message = asyncio.run(submit())
    assert status == 400
    assert "checksum" in message or "format version 7" in message


def test_the_committed_openapi_document_matches_the_models() -> None:
    committed = json.loads((ROOT / "docs" / "openapi.json").read_text())
    assert committed == json.loads(json.dumps(openapi.document())), (
        "docs/openapi.json is stale: regenerate it with"
        " `uv run python -m streamjob_runtime.api.openapi > docs/openapi.json`"
    )


def test_a_repeated_trigger_id_returns_the_savepoint_or_stop_already_started(
    cluster_factory: Callable[..., Harness], tmp_path: Path
) -> None:
    h = cluster_factory()
    job = endless_job(h, tmp_path)
    savepoints, stops = tmp_path / "savepoints", tmp_path / "stops"
    first, second = "0" * 31 + "1", "f" * 32

    async def scenario() -> None:
        async with h.cluster.client() as c:
            # The sink's pre-commit holds the savepoint open for a second: the repeat
            # comes while it is in progress, and is no "second savepoint" (no 409).
            assert await c.trigger_savepoint(job, str(savepoints), trigger_id=first) == first
            assert await c.trigger_savepoint(job, str(savepoints), trigger_id=first) == first
            info = await c.savepoint_status(job, first)
            assert info.status is models.SavepointStatus.IN_PROGRESS
            status, message = await raw(
                h.cluster, "POST", f"/jobs/{job}/stop", {"trigger_id": first}
            )
            assert (status, message) == (
                409,
                f"request {first} of job {job} is a savepoint, not a stop: choose a new trigger"
                " id for another operation",
            )
            done = await c.wait_savepoint(job, first)
            assert done.status is models.SavepointStatus.COMPLETED
            assert await c.trigger_savepoint(job, trigger_id=first) == first  # done: still it
            assert [p.name for p in savepoints.iterdir()] == [Path(str(done.location)).name]

            assert await c.stop(job, str(stops), trigger_id=second) == second
            stopped = await c.wait_savepoint(job, second)
            assert stopped.status is models.SavepointStatus.COMPLETED
            await until("the stop", lambda: _state(c, job, models.JobStatus.FINISHED))
            # The job ended: a repeat of the stop still finds it, a new request is refused.
            assert await c.stop(job, str(stops), trigger_id=second) == second
            assert await c.savepoint_status(job, second) == stopped
            assert [p.name for p in stops.iterdir()] == [Path(str(stopped.location)).name]
            status, message = await raw(
                h.cluster, "POST", f"/jobs/{job}/stop", {"trigger_id": "e" * 32}
            )
            assert status == 409
            assert "FINISHED" in message

            status, message = await raw(
                h.cluster, "POST", f"/jobs/{job}/savepoints", {"trigger_id": "NOT-HEX"}
            )
            assert status == 400
            assert message == (
                "invalid SavepointTriggerRequest body: trigger_id: Value error, 'NOT-HEX' is not"
                " a trigger id: give 32 lowercase hex digits (as uuid.uuid4().hex), or leave"
                " trigger_id out and the JobManager chooses one"
            )

    asyncio.run(scenario())
