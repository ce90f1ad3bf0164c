"""Blue-green flows through plan(), pass by pass, against a simulated world of clusters; crashes.

The world is a sketch of Kubernetes with one cluster per colour (and the uncoloured one
of ``recreate``), each with its own JobManager: Deployments become ready one tick after
they are applied and are gone one tick after they are deleted, a ready TaskManager
registers its slots (unless its image is "broken"), savepoints complete one tick
after they are triggered (a stop then finishes the job), running jobs complete a
checkpoint per tick (jobs of an "unstable" image restart instead), and deleting a
JobManager loses its jobs (no HA). Acting executes a plan's actions in order, sends
job actions to the cluster they name, writes job ids to status at once, and records
the plan's status.

A crash stops acting before an action ("before"), or after an action took effect but
before its result was written ("during"); the next pass starts from the status as
stored. After any single crash the flow must end where it ends without one; it must
never run two jobs at once, submit the new spec without its state, or submit it twice.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import itertools
from typing import Any

import pytest

from streamjob_operator.api import models
from streamjob_operator.desired import target
from streamjob_operator.planning import actions, bluegreen, observed, planner, steps
from streamjob_runtime.api import models as rest
from tests.operator import test_planning

START = datetime.datetime(2026, 3, 1, 12, 0, 0, tzinfo=datetime.UTC)
TICK = datetime.timedelta(seconds=5)
META = observed.Meta("wordcount", "prod", "uid-1")
State = observed.DeploymentState
Lifecycle = models.LifecycleState
Color = target.Color
Step = steps.Step
BLUE, GREEN = Color.BLUE, Color.GREEN

V1: dict[str, Any] = {
    "image": "streamjob:1",
    "job": {"entrypoint": "examples.wordcount", "parallelism": 2},
    "taskManager": {"replicas": 1, "slots": 2},
    "savepoints": {"directory": "/sp"},
    "stability": {"checkpoints": 2, "window": "20s", "timeout": "2m"},
    "upgradeStrategy": {"type": "blueGreen"},
}


def spec(base: dict[str, Any] | None = None, **patch: Any) -> dict[str, Any]:
    """``base`` (V1) with ``section__field=value`` or ``field=value`` patches."""
    raw: dict[str, Any] = {
        k: dict(v) if isinstance(v, dict) else v for k, v in (base or V1).items()
    }
    for key, value in patch.items():
        head, _, leaf = key.partition("__")
        if leaf:
            raw.setdefault(head, {})[leaf] = value
        else:
            raw[head] = value
    return raw


V2 = spec(image="streamjob:2")
V3 = spec(image="streamjob:3")
RECREATE = spec(upgradeStrategy={"type": "recreate"})


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


@dataclasses.dataclass
class Cluster:
    """One colour's Deployments and JobManager."""

    jm: State = State.ABSENT
    tm: State = State.ABSENT
    deleting: bool = False
    image: str | None = None
    slots: int = 0
    jobs: dict[str, Job] = dataclasses.field(default_factory=dict)
    requests: dict[str, Request] = dataclasses.field(default_factory=dict)

    @property
    def reachable(self) -> bool:
        return self.jm is State.READY and not self.deleting


class Crash(Exception):
    pass


@dataclasses.dataclass
class World:
    now: datetime.datetime = START
    status: models.StreamJobStatus = dataclasses.field(default_factory=models.StreamJobStatus)
    clusters: dict[Color | None, Cluster] = dataclasses.field(
        default_factory=lambda: {c: Cluster() for c in (None, BLUE, GREEN)}
    )
    storage: set[str] = dataclasses.field(default_factory=set)
    # (colour, image, restore path, whether that cluster was ready before the old job stopped)
    submissions: list[tuple[Color | None, str, str | None]] = dataclasses.field(
        default_factory=list
    )
    events: list[str] = dataclasses.field(default_factory=list)
    ids: itertools.count[int] = dataclasses.field(default_factory=itertools.count)
    passes: int = 0
    max_live_jobs: int = 0
    broken: set[str] = dataclasses.field(default_factory=set)  # images whose TMs never register
    unstable: set[str] = dataclasses.field(default_factory=set)  # images whose jobs restart
    deleted: bool = False
    finished: bool = False
    ha_deleted: list[Color | None] = dataclasses.field(default_factory=list)
    gap: list[int] = dataclasses.field(default_factory=list)  # passes between stop and submit
    stopped_at: int | None = None

    # -- observing --------------------------------------------------------------------------

    def view(self, color: Color | None) -> Cluster:
        return self.clusters[color]

    def observe(self) -> observed.Observed:
        here = bluegreen.job_target(self.status).color
        c = self.view(here)
        reachable = c.reachable
        job = c.jobs.get(self.status.job.id or "") if reachable else None
        pending = self.status.pendingSavepoint
        request = None
        if reachable and pending is not None and pending.triggerId in c.requests:
            r = c.requests[pending.triggerId]
            request = rest.SavepointInfo(
                request_id=pending.triggerId, status=r.status, location=r.location
            )
        history = {e.location for e in self.status.savepointHistory}
        other = None
        there = bluegreen.other_target(self.status)
        if there is not None:
            o = self.view(there.color)
            other = observed.Cluster(
                there.color,
                o.jm,
                o.tm,
                o.reachable,
                tuple(self.overview(j) for j in o.jobs.values()) if o.reachable else (),
                o.slots if o.reachable else None,
            )
        meta = META
        if self.deleted:
            meta = dataclasses.replace(META, deletion_timestamp=START)
        return observed.Observed(
            meta=meta,
            jobmanager=c.jm,
            taskmanager=c.tm,
            rest_reachable=reachable,
            jobs=tuple(self.overview(j) for j in c.jobs.values()) if reachable else (),
            job=None if job is None else self.details(job),
            checkpoints=None if job is None else self.statistics(job),
            savepoint=request,
            disposed=frozenset(history - self.storage),
            color=here,
            other=other,
        )

    def overview(self, job: Job) -> rest.JobOverview:
        start = int(job.start.timestamp() * 1000)
        return rest.JobOverview(
            jid=job.jid, name="wordcount", state=job.state, start_time=start, restarts=0
        )

    def details(self, job: Job) -> rest.JobDetails:
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

    def statistics(self, job: Job) -> rest.CheckpointingStatistics:
        latest = None
        if job.checkpoints:
            latest = rest.CompletedCheckpointInfo(
                id=job.checkpoints,
                path=f"/checkpoints/{job.jid}/chk-{job.checkpoints}",
                trigger_timestamp=int(self.now.timestamp() * 1000),
                duration_ms=1.0,
                bytes=1,
                alignment_ms=0.0,
            )
        counts = rest.CheckpointCounts(completed=job.checkpoints, failed=0, in_progress=0)
        return rest.CheckpointingStatistics(counts=counts, latest_completed=latest, history=[])

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
            if isinstance(action, actions.SubmitJob):
                job_id = result
                self.status.job.id = result
        final = plan.status.model_copy(deep=True)
        if job_id is not None:
            final.job.id = job_id
        self.status = final

    def remove(self, c: Cluster) -> None:
        if c.jm is not State.ABSENT or c.tm is not State.ABSENT:
            c.deleting = True
            c.jm = c.tm = State.PROGRESSING

    def take(self, action: actions.Action) -> str | None:
        match action:
            case actions.WriteStatus(status=s):
                self.status = s.model_copy(deep=True)
            case actions.ApplyChildren(job=job, where=where):
                c = self.view(where.color)
                assert not c.deleting, "applied while being deleted (acting refuses this)"
                if c.jm is State.ABSENT or c.image != job.spec.image:
                    c.jm = c.tm = State.PROGRESSING
                    c.slots = 0
                c.image = job.spec.image
            case actions.DeleteJobManager(where=where) | actions.DeleteTaskManager(where=where):
                self.remove(self.view(where.color))
            case actions.DeleteChildren(where=where):
                self.remove(self.view(where.color))
                self.ha_deleted.append(where.color)
            case actions.DeleteHaMetadata(where=where):
                self.ha_deleted.append(where.color)
            case actions.SubmitJob(submission=sub, where=where):
                c = self.view(where.color)
                assert c.reachable
                assert c.slots >= (sub.parallelism or 1), "submitted before the slots registered"
                jid = f"j{next(self.ids)}"
                assert c.image is not None
                c.jobs[jid] = Job(jid, c.image, sub.savepoint_path, start=self.now)
                self.submissions.append((where.color, c.image, sub.savepoint_path))
                if self.stopped_at is not None:
                    self.gap.append(self.passes - 1 - self.stopped_at)
                    self.stopped_at = None
                return jid
            case (
                actions.TriggerSavepoint(job_id=jid, trigger_id=rid, where=where)
                | actions.StopWithSavepoint(job_id=jid, trigger_id=rid, where=where)
            ):
                c = self.view(where.color)
                assert c.reachable
                stop = isinstance(action, actions.StopWithSavepoint)
                if rid in c.requests:  # a repeat: the request already started
                    return rid
                assert c.jobs[jid].state is rest.JobStatus.RUNNING
                c.requests[rid] = Request(jid, stop)
                return rid
            case actions.CancelJob(job_id=jid, where=where):
                c = self.view(where.color)
                if jid in c.jobs and not c.jobs[jid].state.terminal:
                    c.jobs[jid].state = rest.JobStatus.CANCELED
                    self.stopped_at = self.passes
            case actions.DisposeSavepoint(location=location):
                self.storage.discard(location)
            case actions.RecordEvent(reason=reason):
                self.events.append(reason)
            case actions.FinishDeletion():
                self.finished = True
            case _:
                pass
        return None

    # -- time -------------------------------------------------------------------------------

    def tick(self) -> None:
        self.now += TICK
        for c in self.clusters.values():
            if c.deleting:
                c.jm = c.tm = State.ABSENT
                c.deleting = False
                c.jobs.clear()  # the JobManager's memory; no HA here
                c.requests.clear()
                c.image = None
                c.slots = 0
                continue
            if c.jm is State.PROGRESSING:
                c.jm = State.READY
            if c.tm is State.PROGRESSING:
                c.tm = State.READY
            if c.tm is State.READY and c.image not in self.broken:
                c.slots = 2
            for rid, request in c.requests.items():
                if request.status is rest.SavepointStatus.IN_PROGRESS:
                    request.status = rest.SavepointStatus.COMPLETED
                    request.location = f"/sp/savepoint-{rid}"
                    self.storage.add(request.location)
                    if request.stop:
                        c.jobs[request.jid].state = rest.JobStatus.FINISHED
                        self.stopped_at = self.passes
            for job in c.jobs.values():
                if job.state is rest.JobStatus.RUNNING and job.image in self.unstable:
                    job.state = rest.JobStatus.RESTARTING
                elif job.state is rest.JobStatus.RUNNING and c.slots:
                    job.checkpoints += 1
        self.max_live_jobs = max(self.max_live_jobs, len(self.live_jobs()))

    def run(
        self, raw: dict[str, Any], passes: int, crash: tuple[int, int, str] | None = None
    ) -> None:
        for _ in range(passes):
            if self.finished:
                return
            plan = planner.plan(self.observe(), raw, self.status, self.now)
            test_planning.check_write_ahead(plan)
            at = None if crash is None or crash[0] != self.passes else (crash[1], crash[2])
            self.passes += 1
            with contextlib.suppress(Crash):
                self.act(plan, at)
            self.tick()

    def live_jobs(self) -> list[tuple[Color | None, Job]]:
        return [
            (color, j)
            for color, c in self.clusters.items()
            for j in c.jobs.values()
            if not j.state.terminal
        ]

    def deployed(self) -> set[Color | None]:
        return {color for color, c in self.clusters.items() if c.jm is not State.ABSENT}

    @property
    def bg(self) -> models.BlueGreenStatus:
        assert self.status.blueGreen is not None
        return self.status.blueGreen


def lifecycle_of(world: World) -> Lifecycle:
    return world.status.lifecycleState


def stable_on_blue(raw: dict[str, Any] | None = None) -> World:
    world = World()
    world.run(raw or V1, passes=12)
    assert lifecycle_of(world) is Lifecycle.STABLE, world.events
    return world


def upgrade_savepoint(world: World) -> str:
    last = world.status.lastSavepoint
    assert last is not None
    assert last.trigger == "upgrade"
    return last.location


# -- flows -----------------------------------------------------------------------------------


def test_a_first_blue_green_deployment_goes_to_blue() -> None:
    world = stable_on_blue()
    assert world.submissions == [(BLUE, "streamjob:1", None)]
    assert world.bg == models.BlueGreenStatus(active="blue")
    assert world.deployed() == {BLUE}
    assert "BlueGreenUnsupported" not in world.events


def test_an_upgrade_brings_green_up_warm_then_switches_from_the_stop_savepoint() -> None:
    world = stable_on_blue()
    ((_, old),) = world.live_jobs()
    world.run(V2, passes=1)
    # green comes up with no job; the old job still runs on blue
    assert world.status.reconciliation.step == Step.DEPLOY_NEXT
    assert old.state is rest.JobStatus.RUNNING
    assert world.clusters[GREEN].jobs == {}
    world.run(V2, passes=1)
    # green was warm (slots registered) when the stop-with-savepoint went to blue
    assert world.status.reconciliation.step == Step.STOP_ACTIVE
    assert world.clusters[GREEN].slots == 2
    assert world.clusters[GREEN].jobs == {}
    assert world.clusters[BLUE].jobs[old.jid].state is rest.JobStatus.FINISHED
    world.run(V2, passes=16)
    assert lifecycle_of(world) is Lifecycle.STABLE, world.events
    ((color, job),) = world.live_jobs()
    assert (color, job.image) == (GREEN, "streamjob:2")
    assert job.restored_from == upgrade_savepoint(world)
    assert world.submissions[-1] == (GREEN, "streamjob:2", job.restored_from)
    assert world.bg == models.BlueGreenStatus(active="green")
    assert world.deployed() == {GREEN}
    assert BLUE in world.ha_deleted
    assert world.max_live_jobs == 1
    # the submission follows the stop in the same pass: nothing is scheduled between
    assert world.gap == [0]
    assert world.events.index("Switched") > world.events.index("Stable")


def test_a_second_upgrade_goes_back_to_blue() -> None:
    world = stable_on_blue()
    world.run(V2, passes=20)
    world.run(V3, passes=20)
    assert lifecycle_of(world) is Lifecycle.STABLE
    ((color, job),) = world.live_jobs()
    assert (color, job.image) == (BLUE, "streamjob:3")
    assert world.bg.active == "blue"
    assert world.deployed() == {BLUE}


def test_a_last_state_upgrade_cancels_and_restores_green_from_the_latest_checkpoint() -> None:
    world = stable_on_blue(spec(job__upgradeMode="last-state"))
    ((_, old),) = world.live_jobs()
    world.run(spec(V2, job__upgradeMode="last-state"), passes=20)
    assert lifecycle_of(world) is Lifecycle.STABLE
    assert old.state is rest.JobStatus.CANCELED
    ((color, job),) = world.live_jobs()
    assert color is GREEN
    assert job.restored_from is not None
    assert job.restored_from.startswith(f"/checkpoints/{old.jid}/chk-")
    assert world.gap == [0]


def test_a_rescale_goes_blue_green_too() -> None:
    world = stable_on_blue()
    world.run(spec(job__parallelism=1), passes=20)
    assert lifecycle_of(world) is Lifecycle.STABLE
    ((color, _),) = world.live_jobs()
    assert color is GREEN
    assert world.submissions[-1][2] == upgrade_savepoint(world)


ROLLBACK = spec(V2, rollback={"enabled": True})


def test_an_unstable_green_falls_back_to_warm_blue_from_the_same_savepoint() -> None:
    world = stable_on_blue()
    world.unstable.add("streamjob:2")
    world.run(ROLLBACK, passes=40)
    assert lifecycle_of(world) is Lifecycle.ROLLED_BACK, world.events
    ((color, job),) = world.live_jobs()
    assert (color, job.image) == (BLUE, "streamjob:1")
    savepoint = upgrade_savepoint(world)
    assert job.restored_from == savepoint
    assert world.submissions[-2:] == [
        (GREEN, "streamjob:2", savepoint),
        (BLUE, "streamjob:1", savepoint),
    ]
    assert world.bg == models.BlueGreenStatus(active="blue")
    assert world.deployed() == {BLUE}
    assert world.max_live_jobs == 1
    assert "RollingBack" in world.events
    assert "RolledBack" in world.events
    # the failed spec is kept as reconciled: it is not tried again until it changes
    world.unstable.clear()
    world.run(ROLLBACK, passes=10)
    assert world.submissions[-1] == (BLUE, "streamjob:1", savepoint)


def test_an_unstable_green_without_rollback_stays_and_blue_goes() -> None:
    world = stable_on_blue()
    world.unstable.add("streamjob:2")
    world.run(V2, passes=40)
    assert lifecycle_of(world) is Lifecycle.FAILED
    assert world.status.error is not None
    assert "StabilityTimeout" in world.events
    assert world.bg == models.BlueGreenStatus(active="green")
    assert world.deployed() == {GREEN}
    ((color, job),) = world.live_jobs()
    assert (color, job.image) == (GREEN, "streamjob:2")


def test_a_green_that_never_registers_its_slots_is_removed_and_blue_never_stopped() -> None:
    world = stable_on_blue()
    ((_, old),) = world.live_jobs()
    world.broken.add("streamjob:2")
    world.run(ROLLBACK, passes=40)
    assert lifecycle_of(world) is Lifecycle.ROLLED_BACK, world.events
    assert world.live_jobs() == [(BLUE, old)]
    assert world.status.job.id == old.jid
    assert world.deployed() == {BLUE}
    assert len(world.submissions) == 1
    assert world.bg == models.BlueGreenStatus(active="blue")


def test_without_rollback_a_stuck_green_waits_with_blue_running_until_a_new_spec() -> None:
    world = stable_on_blue()
    ((_, old),) = world.live_jobs()
    world.broken.add("streamjob:2")
    world.run(V2, passes=40)
    assert lifecycle_of(world) is Lifecycle.FAILED
    assert world.status.error is not None
    assert "registered 0 of 2 slots" in world.status.error
    assert world.live_jobs() == [(BLUE, old)]
    assert world.status.reconciliation.step == Step.DEPLOY_NEXT
    world.run(V3, passes=25)  # retargets the warm-up
    assert "Retargeted" in world.events
    assert lifecycle_of(world) is Lifecycle.STABLE, world.events
    ((color, job),) = world.live_jobs()
    assert (color, job.image) == (GREEN, "streamjob:3")


def test_switching_from_recreate_brings_blue_up_next_to_the_uncoloured_cluster() -> None:
    world = stable_on_blue(RECREATE)
    assert world.deployed() == {None}
    assert world.status.blueGreen is None
    world.run(spec(RECREATE, upgradeStrategy={"type": "blueGreen"}), passes=3)
    # a strategy change alone redeploys nothing
    assert world.deployed() == {None}
    world.run(V2, passes=20)
    assert lifecycle_of(world) is Lifecycle.STABLE
    ((color, job),) = world.live_jobs()
    assert (color, job.image) == (BLUE, "streamjob:2")
    assert job.restored_from == upgrade_savepoint(world)
    assert world.deployed() == {BLUE}
    assert world.gap == [0]


def test_switching_to_recreate_replaces_the_colour_with_the_uncoloured_cluster() -> None:
    world = stable_on_blue()
    world.run(spec(RECREATE, image="streamjob:2"), passes=20)
    assert lifecycle_of(world) is Lifecycle.STABLE, world.events
    ((color, job),) = world.live_jobs()
    assert (color, job.image) == (None, "streamjob:2")
    assert job.restored_from == upgrade_savepoint(world)
    assert world.deployed() == {None}
    assert BLUE in world.ha_deleted
    assert world.status.blueGreen is None


def test_suspend_and_resume_stay_on_the_active_colour() -> None:
    world = stable_on_blue()
    world.run(V2, passes=20)
    world.run(spec(V2, job__state="suspended"), passes=8)
    assert lifecycle_of(world) is Lifecycle.SUSPENDED
    assert world.deployed() == set()
    assert world.live_jobs() == []
    last = world.status.lastSavepoint
    assert last is not None
    assert last.trigger == "suspend"
    world.run(V2, passes=14)
    assert lifecycle_of(world) is Lifecycle.STABLE
    ((color, job),) = world.live_jobs()
    assert color is GREEN
    assert job.restored_from == last.location


def test_deleting_during_an_upgrade_stops_the_job_where_it_runs_and_cleans_both_colours() -> None:
    world = stable_on_blue()
    world.run(V2, passes=6)
    assert world.status.reconciliation.step == Step.AWAIT_STABLE
    ((color, job),) = world.live_jobs()
    assert color is GREEN
    world.deleted = True
    world.run(V2, passes=6)
    assert world.finished
    assert job.state is rest.JobStatus.CANCELED
    assert {None, BLUE, GREEN} <= set(world.ha_deleted)


# -- crashes ---------------------------------------------------------------------------------


def _plan_lengths(world: World, raw: dict[str, Any], passes: int) -> list[int]:
    lengths = []
    for _ in range(passes):
        plan = planner.plan(world.observe(), raw, world.status, world.now)
        lengths.append(len(plan.actions))
        world.passes += 1
        world.act(plan, None)
        world.tick()
    return lengths


def _crashes(lengths: list[int]) -> list[tuple[int, int, str]]:
    return [
        (p, a, mode)
        for p, n in enumerate(lengths)
        for a in range(n)
        for mode in ("before", "during")
    ]


UPGRADE_CRASHES = _crashes(_plan_lengths(stable_on_blue(), V2, 16))


@pytest.mark.parametrize(("upgrade_pass", "action", "mode"), UPGRADE_CRASHES)
def test_a_blue_green_upgrade_survives_an_operator_crash_at_any_action(
    upgrade_pass: int, action: int, mode: str
) -> None:
    world = stable_on_blue()
    world.run(V2, passes=30, crash=(world.passes + upgrade_pass, action, mode))
    assert world.max_live_jobs <= 1
    upgraded = [s for s in world.submissions if s[1] == "streamjob:2"]
    assert len(upgraded) == 1, "the new job was submitted twice (or never)"
    assert lifecycle_of(world) is Lifecycle.STABLE, world.events
    ((color, job),) = world.live_jobs()
    assert (color, job.image) == (GREEN, "streamjob:2")
    assert job.restored_from == upgrade_savepoint(world)
    assert world.bg == models.BlueGreenStatus(active="green")
    assert world.deployed() == {GREEN}


def _unstable(world: World) -> World:
    world.unstable.add("streamjob:2")
    return world


FALLBACK_CRASHES = _crashes(_plan_lengths(_unstable(stable_on_blue()), ROLLBACK, 40))


@pytest.mark.parametrize(("upgrade_pass", "action", "mode"), FALLBACK_CRASHES)
def test_a_blue_green_fallback_survives_an_operator_crash_at_any_action(
    upgrade_pass: int, action: int, mode: str
) -> None:
    world = _unstable(stable_on_blue())
    world.run(ROLLBACK, passes=50, crash=(world.passes + upgrade_pass, action, mode))
    assert world.max_live_jobs <= 1
    assert lifecycle_of(world) is Lifecycle.ROLLED_BACK, world.events
    savepoint = upgrade_savepoint(world)
    ((color, job),) = world.live_jobs()
    assert (color, job.image, job.restored_from) == (BLUE, "streamjob:1", savepoint)
    assert [s for s in world.submissions if s[1] == "streamjob:2"] == [
        (GREEN, "streamjob:2", savepoint)
    ]
    assert world.submissions[-1] == (BLUE, "streamjob:1", savepoint)
    assert world.deployed() == {BLUE}
