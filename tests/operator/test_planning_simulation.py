"""Whole flows through plan(), pass by pass, against a small simulated world; with crashes.

The world is a sketch of Kubernetes plus one JobManager: Deployments become ready one
tick after they are applied, savepoints complete one tick after they are triggered
(a stop then finishes the job), running jobs complete a checkpoint per tick, and
deleting the JobManager loses its jobs (no HA). Acting executes a plan's actions in
order, writes trigger and job ids to status at once, and records the plan's status.

A crash stops acting before an action ("before"), or after an action took effect but
before its result was written ("during"); the next pass starts from the status as
stored. After any single crash the flow must end where it ends without one, and it
must never run two jobs at once, take a second upgrade savepoint, or submit the new
spec without its state. The JobManager of this world keeps savepoint requests by the
trigger id planning chose, as the real one does: a repeat starts nothing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import itertools
from typing import Any

import pytest

from streamjob_operator.api import models
from streamjob_operator.planning import actions, changes, observed, planner
from streamjob_runtime.api import models as rest
from tests.operator import test_planning

START = datetime.datetime(2026, 3, 1, 12, 0, 0, tzinfo=datetime.UTC)
TICK = datetime.timedelta(seconds=5)
META = observed.Meta("wordcount", "prod", "uid-1")
State = observed.DeploymentState
Lifecycle = models.LifecycleState

V1: dict[str, Any] = {
    "image": "streamjob:1",
    "job": {"entrypoint": "examples.wordcount"},
    "savepoints": {"directory": "/sp"},
    "stability": {"checkpoints": 2, "window": "20s", "timeout": "5m"},
}


def spec(**patch: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {k: dict(v) if isinstance(v, dict) else v for k, v in V1.items()}
    for key, value in patch.items():
        head, _, leaf = key.partition("__")
        raw.setdefault(head, {})[leaf] = value
    return raw


V2 = {**spec(), "image": "streamjob:2"}


@dataclasses.dataclass
class Job:
    jid: str
    image: str
    restored_from: str | None
    state: rest.JobStatus = rest.JobStatus.RUNNING
    checkpoints: int = 0
    start: datetime.datetime = START


@dataclasses.dataclass
class Request:
    jid: str
    stop: bool
    status: rest.SavepointStatus = rest.SavepointStatus.IN_PROGRESS
    location: str | None = None


class Crash(Exception):
    pass


# -- the JobManager's answers, as the REST API gives them ----------------------------------


def overview(job: Job) -> rest.JobOverview:
    start = int(job.start.timestamp() * 1000)
    return rest.JobOverview(
        jid=job.jid, name="wordcount", state=job.state, start_time=start, restarts=0
    )


def details(job: Job) -> rest.JobDetails:
    return rest.JobDetails(
        jid=job.jid,
        name="wordcount",
        state=job.state,
        start_time=int(job.start.timestamp() * 1000),
        end_time=None,
        duration_ms=0,
        restarts=0,
        attempt=1,
        restored_from=None,
        failure_cause=None,
        vertices=[],
    )


def statistics(job: Job, now: datetime.datetime) -> rest.CheckpointingStatistics:
    latest = None
    if job.checkpoints:
        latest = rest.CompletedCheckpointInfo(
            id=job.checkpoints,
            path=f"/checkpoints/{job.jid}/chk-{job.checkpoints}",
            trigger_timestamp=int(now.timestamp() * 1000),
            duration_ms=1.0,
            bytes=1,
            alignment_ms=0.0,
        )
    counts = rest.CheckpointCounts(completed=job.checkpoints, failed=0, in_progress=0)
    return rest.CheckpointingStatistics(counts=counts, latest_completed=latest, history=[])


@dataclasses.dataclass
class World:
    now: datetime.datetime = START
    status: models.StreamJobStatus = dataclasses.field(default_factory=models.StreamJobStatus)
    jm: State = State.ABSENT
    tm: State = State.ABSENT
    image: str | None = None
    jobs: dict[str, Job] = dataclasses.field(default_factory=dict)
    requests: dict[str, Request] = dataclasses.field(default_factory=dict)
    storage: set[str] = dataclasses.field(default_factory=set)
    submissions: list[tuple[str, str | None]] = dataclasses.field(default_factory=list)
    events: list[str] = dataclasses.field(default_factory=list)
    ids: itertools.count[int] = dataclasses.field(default_factory=itertools.count)
    passes: int = 0
    max_live_jobs: int = 0
    stops: int = 0  # stop-with-savepoint requests that started a savepoint

    # -- observing --------------------------------------------------------------------------

    def observe(self) -> observed.Observed:
        reachable = self.jm is State.READY
        job = self.jobs.get(self.status.job.id or "") if reachable else None
        pending = self.status.pendingSavepoint
        request = None
        if reachable and pending is not None and pending.triggerId in self.requests:
            r = self.requests[pending.triggerId]
            request = rest.SavepointInfo(
                request_id=pending.triggerId, status=r.status, location=r.location
            )
        history = {e.location for e in self.status.savepointHistory}
        return observed.Observed(
            meta=META,
            jobmanager=self.jm,
            taskmanager=self.tm,
            rest_reachable=reachable,
            jobs=tuple(overview(j) for j in self.jobs.values()) if reachable else (),
            job=None if job is None else details(job),
            checkpoints=None if job is None else statistics(job, self.now),
            savepoint=request,
            disposed=frozenset(history - self.storage),
        )

    # -- acting -----------------------------------------------------------------------------

    def act(self, plan: actions.Plan, crash: tuple[int, str] | None) -> None:
        """Take the plan's actions; ``crash`` = (action index, "before" or "during")."""
        job_id: str | None = None
        for index, action in enumerate(plan.actions):
            if crash == (index, "before"):
                raise Crash
            result = self.take(action)
            if crash == (index, "during"):
                raise Crash
            if isinstance(action, (actions.TriggerSavepoint, actions.StopWithSavepoint)):
                assert self.status.pendingSavepoint is not None
                assert self.status.pendingSavepoint.triggerId == result, "written before"
            if isinstance(action, actions.SubmitJob):
                job_id = result
                self.status.job.id = result
        final = plan.status.model_copy(deep=True)
        if job_id is not None:
            final.job.id = job_id
        self.status = final

    def take(self, action: actions.Action) -> str | None:
        match action:
            case actions.WriteStatus(status=s):
                self.status = s.model_copy(deep=True)
            case actions.ApplyChildren(job=job):
                if self.jm is State.ABSENT or self.image != job.spec.image:
                    self.jm = self.tm = State.PROGRESSING
                self.image = job.spec.image
            case actions.DeleteJobManager():
                self.jm = State.ABSENT
                self.jobs.clear()  # the JobManager's memory; no HA here
                self.requests.clear()
            case actions.DeleteTaskManager():
                self.tm = State.ABSENT
            case actions.SubmitJob(submission=sub):
                assert self.jm is State.READY
                jid = f"j{next(self.ids)}"
                assert self.image is not None
                self.jobs[jid] = Job(jid, self.image, sub.savepoint_path, start=self.now)
                self.submissions.append((self.image, sub.savepoint_path))
                return jid
            case (
                actions.TriggerSavepoint(job_id=jid, trigger_id=rid)
                | actions.StopWithSavepoint(job_id=jid, trigger_id=rid)
            ):
                stop = isinstance(action, actions.StopWithSavepoint)
                if rid in self.requests:  # a repeat: the request already started
                    assert (self.requests[rid].jid, self.requests[rid].stop) == (jid, stop)
                    return rid
                assert self.jobs[jid].state is rest.JobStatus.RUNNING
                assert not any(
                    r.status is rest.SavepointStatus.IN_PROGRESS for r in self.requests.values()
                ), "the JobManager takes one savepoint at a time"
                self.requests[rid] = Request(jid, stop)
                if stop:
                    self.stops += 1
                return rid
            case actions.CancelJob(job_id=jid):
                if jid in self.jobs and not self.jobs[jid].state.terminal:
                    self.jobs[jid].state = rest.JobStatus.CANCELED
            case actions.DisposeSavepoint(location=location):
                self.storage.discard(location)
            case actions.RecordEvent(reason=reason):
                self.events.append(reason)
            case _:
                pass
        return None

    # -- time -------------------------------------------------------------------------------

    def tick(self) -> None:
        self.now += TICK
        if self.jm is State.PROGRESSING:
            self.jm = State.READY
        if self.tm is State.PROGRESSING:
            self.tm = State.READY
        for rid, request in self.requests.items():
            if request.status is rest.SavepointStatus.IN_PROGRESS:
                request.status = rest.SavepointStatus.COMPLETED
                request.location = f"/sp/savepoint-{rid}"
                self.storage.add(request.location)
                if request.stop:
                    self.jobs[request.jid].state = rest.JobStatus.FINISHED
        for job in self.jobs.values():
            if job.state is rest.JobStatus.RUNNING and self.tm is State.READY:
                job.checkpoints += 1
        live = [j for j in self.jobs.values() if not j.state.terminal]
        self.max_live_jobs = max(self.max_live_jobs, len(live))

    def run(
        self, raw: dict[str, Any], passes: int, crash: tuple[int, int, str] | None = None
    ) -> None:
        for _ in range(passes):
            plan = planner.plan(self.observe(), raw, self.status, self.now)
            test_planning.check_write_ahead(plan)
            at = None if crash is None or crash[0] != self.passes else (crash[1], crash[2])
            self.passes += 1
            with contextlib.suppress(Crash):
                self.act(plan, at)
            self.tick()

    def live_jobs(self) -> list[Job]:
        return [j for j in self.jobs.values() if not j.state.terminal]


def lifecycle_of(world: World) -> Lifecycle:
    return world.status.lifecycleState


def deployed_stable() -> World:
    world = World()
    world.run(V1, passes=12)
    assert lifecycle_of(world) is Lifecycle.STABLE
    return world


def test_a_first_deployment_becomes_stable() -> None:
    world = deployed_stable()
    assert world.submissions == [("streamjob:1", None)]
    assert world.events[:2] == ["Deploying", "Deployed"]
    assert "Stable" in world.events


def test_a_savepoint_upgrade_runs_the_new_image_from_the_stop_savepoint() -> None:
    world = deployed_stable()
    world.run(V2, passes=16)
    assert lifecycle_of(world) is Lifecycle.STABLE
    (job,) = world.live_jobs()
    assert job.image == "streamjob:2"
    assert world.status.lastSavepoint is not None
    assert world.status.lastSavepoint.trigger == "upgrade"
    assert job.restored_from == world.status.lastSavepoint.location
    assert world.submissions[-1] == ("streamjob:2", job.restored_from)
    assert world.max_live_jobs == 1


def test_a_last_state_upgrade_cancels_and_restores_from_the_latest_checkpoint() -> None:
    world = deployed_stable()
    (old,) = world.live_jobs()
    last_state = {**V2, "job": {**V1["job"], "upgradeMode": "last-state"}}
    world.run(last_state, passes=16)
    assert lifecycle_of(world) is Lifecycle.STABLE
    assert old.state is rest.JobStatus.CANCELED
    (job,) = world.live_jobs()
    assert job.image == "streamjob:2"
    assert job.restored_from == f"/checkpoints/{old.jid}/chk-{old.checkpoints}"
    assert world.max_live_jobs == 1


def test_suspend_then_resume_restores_from_the_suspend_savepoint() -> None:
    world = deployed_stable()
    world.run(spec(job__state="suspended"), passes=8)
    assert lifecycle_of(world) is Lifecycle.SUSPENDED
    assert world.jm is State.ABSENT
    assert world.tm is State.ABSENT
    assert world.live_jobs() == []
    assert world.status.lastSavepoint is not None
    suspended_at = world.status.lastSavepoint.location
    world.run(spec(), passes=12)
    assert lifecycle_of(world) is Lifecycle.STABLE
    (job,) = world.live_jobs()
    assert job.restored_from == suspended_at


def test_an_unstable_upgrade_is_rolled_back_to_the_old_image_from_the_upgrade_savepoint() -> None:
    world = deployed_stable()
    bad = {**V2, "rollback": {"enabled": True}, "stability": {**V1["stability"], "timeout": "1m"}}
    world.run(bad, passes=6)
    upgrade_savepoint = world.status.reconciliation.restorePath
    assert upgrade_savepoint is not None
    for job in world.jobs.values():
        job.state = rest.JobStatus.RESTARTING  # the new version never settles
    world.run(bad, passes=14)
    assert lifecycle_of(world) is Lifecycle.ROLLED_BACK
    (job,) = world.live_jobs()
    assert job.image == "streamjob:1"
    assert job.restored_from == upgrade_savepoint
    assert world.status.reconciliation.lastReconciledSpec == changes.encode(
        models.StreamJobSpec.model_validate(bad)
    )


def _upgrade_plan_lengths() -> list[int]:
    world = deployed_stable()
    lengths = []
    for _ in range(16):
        plan = planner.plan(world.observe(), V2, world.status, world.now)
        lengths.append(len(plan.actions))
        world.passes += 1
        world.act(plan, None)
        world.tick()
    return lengths


CRASHES = [
    (p, a, mode)
    for p, n in enumerate(_upgrade_plan_lengths())
    for a in range(n)
    for mode in ("before", "during")
]


@pytest.mark.parametrize(("upgrade_pass", "action", "mode"), CRASHES)
def test_an_upgrade_survives_an_operator_crash_at_any_action(
    upgrade_pass: int, action: int, mode: str
) -> None:
    world = deployed_stable()
    crash = (world.passes + upgrade_pass, action, mode)
    world.run(V2, passes=30, crash=crash)
    # Safety, whatever happened: never two jobs, never the new spec from empty state.
    assert world.max_live_jobs <= 1
    assert all(path is not None for image, path in world.submissions if image == "streamjob:2")
    upgraded = [s for s in world.submissions if s[0] == "streamjob:2"]
    assert len(upgraded) <= 1, "the new job was submitted twice"
    # No gap: a stop sent by the operator that died is found again under its trigger id.
    assert lifecycle_of(world) is Lifecycle.STABLE, world.events
    assert "SavepointFailed" not in world.events
    assert world.stops == 1, "one stop-with-savepoint, whatever the crash"
    (job,) = world.live_jobs()
    assert job.image == "streamjob:2"
    assert world.status.lastSavepoint is not None
    assert world.status.lastSavepoint.trigger == "upgrade"
    assert job.restored_from == world.status.lastSavepoint.location
