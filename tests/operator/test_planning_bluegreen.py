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
from streamjob_operator.planning import actions, bluegreen, changes, observed, planner, steps
from streamjob_runtime.api import models as rest
from tests.operator import test_planning
from tests.operator import test_planning_simulation as simulation
from tests.operator.test_planning_simulation import (  # the world's pieces
    META,
    START,
    TICK,
    Crash,
    Job,
    Request,
)

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
    removed: list[Color | None] = dataclasses.field(default_factory=list)  # every child
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
                tuple(simulation.overview(j) for j in o.jobs.values()) if o.reachable else (),
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
            jobs=tuple(simulation.overview(j) for j in c.jobs.values()) if reachable else (),
            job=None if job is None else simulation.details(job),
            checkpoints=None if job is None else simulation.statistics(job, self.now),
            savepoint=request,
            disposed=frozenset(history - self.storage),
            color=here,
            other=other,
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
                self.removed.append(where.color)
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


@pytest.mark.parametrize(
    ("before", "after", "gone", "runs"),
    [
        (V2, spec(V2, upgradeStrategy={"type": "recreate"}), GREEN, None),
        (spec(V2, upgradeStrategy={"type": "recreate"}), V2, None, BLUE),
    ],
    ids=["blue-green to recreate", "recreate to blue-green"],
)
def test_a_strategy_switched_while_suspended_removes_the_old_cluster_on_resume(
    before: dict[str, Any], after: dict[str, Any], gone: Color | None, runs: Color | None
) -> None:
    world = stable_on_blue()
    if gone is GREEN:
        world.run(V2, passes=20)  # green runs the job
    else:
        world.run(before, passes=20)  # the uncoloured cluster runs the job
    assert world.deployed() == {gone}
    world.run(spec(before, job__state="suspended"), passes=8)
    assert lifecycle_of(world) is Lifecycle.SUSPENDED
    world.run(spec(after, job__state="suspended"), passes=3)
    assert world.deployed() == set()
    removed = len(world.removed)
    world.run(after, passes=14)
    assert lifecycle_of(world) is Lifecycle.STABLE, world.events
    assert world.removed[removed:] == [gone]
    ((color, job),) = world.live_jobs()
    assert color is runs
    last = world.status.lastSavepoint
    assert last is not None
    assert (last.trigger, job.restored_from) == ("suspend", last.location)
    assert world.deployed() == {runs}


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


# -- tables: one pass of a blue-green step, observation and status in, plan out ---------------

NOW = test_planning.NOW
UP = "/sp/savepoint-up"  # the upgrade's restore path
ROLLBACK_V2 = ROLLBACK  # V2 with rollback.enabled


def ago(**delta: float) -> datetime.datetime:
    return NOW - datetime.timedelta(**delta)


def colour(where: target.DeploymentTarget) -> str:
    return bluegreen.name(where.color)


def rendered(plan: actions.Plan) -> list[str]:
    """test_planning.summary with the cluster of each action (and the applied image)."""
    out: list[str] = []
    for a in plan.actions:
        match a:
            case actions.ApplyChildren(job=job, where=w):
                out.append(f"apply {colour(w)} {job.spec.image} {w.savepoint_path or '-'}")
            case actions.DeleteChildren(where=w):
                out.append(f"remove {colour(w)}")
            case actions.DeleteHaMetadata(where=w):
                out.append(f"delete ha {colour(w)}")
            case actions.DeleteJobManager(where=w) | actions.DeleteTaskManager(where=w):
                (which,) = test_planning.summary(actions.Plan((a,), plan.status))
                out.append(f"{which} {colour(w)}")
            case actions.SubmitJob(submission=sub, where=w):
                out.append(f"submit {colour(w)} {sub.savepoint_path or '-'}")
            case actions.CancelJob(job_id=jid, where=w):
                out.append(f"cancel {jid} {colour(w)}")
            case actions.StopWithSavepoint(job_id=jid, where=w):
                out.append(f"stop {jid} {colour(w)}")
            case _:
                out.extend(test_planning.summary(actions.Plan((a,), plan.status)))
    return out


def bg_status(
    reconciled: dict[str, Any],
    step: Step | None,
    *,
    state: models.ReconciliationState = models.ReconciliationState.UPGRADING,
    active: str = "blue",
    upcoming: str | None = "green",
    fallback: bool = True,
    stable: dict[str, Any] = V1,
    job_id: str | None = "j1",
    job_state: str | None = "RUNNING",
    deployed: datetime.datetime | None = None,
    restore: str | None = UP,
    pending: models.PendingSavepoint | None = None,
    previous_jobs: list[str] | None = None,
    checkpoint: tuple[int, str, datetime.datetime] | None = None,
) -> models.StreamJobStatus:
    """A status of a blue-green upgrade of ``stable`` to ``reconciled`` at ``step``."""
    result = test_planning.status(
        reconciled,
        state=state,
        step=step,
        job_id=job_id,
        job_state=job_state,
        deployed=deployed or ago(seconds=30),
        restore=restore,
        pending=pending,
        last_checkpoint=checkpoint,
        stable_spec=changes.encode(models.StreamJobSpec.model_validate(stable)),
    )
    result.blueGreen = models.BlueGreenStatus(
        active=active, next=upcoming, fallback=fallback, previousJobs=previous_jobs
    )
    return result


def cluster(
    color: Color,
    jm: State = State.READY,
    tm: State = State.READY,
    jobs: tuple[rest.JobOverview, ...] = (),
    slots: int | None = 2,
) -> observed.Cluster:
    reachable = jm is State.READY
    return observed.Cluster(
        color, jm, tm, reachable, jobs if reachable else (), slots if reachable else None
    )


def sees(
    here: Color,
    job: rest.JobDetails | None = None,
    *,
    other: observed.Cluster | None = None,
    jm: State = State.READY,
    **fields: Any,
) -> observed.Observed:
    """The cluster of ``status.job`` (``here``) and the other colour's."""
    reachable = jm is State.READY
    if not reachable:
        fields.setdefault("jobs", ())
    return test_planning.seen(
        job, reachable=reachable, jm=jm, tm=jm, color=here, other=other, **fields
    )


FINISHED_J1 = (test_planning.overview("j1", rest.JobStatus.FINISHED),)
WARM_GREEN = cluster(GREEN)
WARM_BLUE_J1_DONE = cluster(BLUE, jobs=FINISHED_J1)
LAST_STATE_V2 = spec(V2, job__upgradeMode="last-state")
LAST_STATE_V3 = spec(V3, job__upgradeMode="last-state")


@dataclasses.dataclass
class Case:
    id: str
    seen: observed.Observed
    status: models.StreamJobStatus
    spec: dict[str, Any]
    expected: list[str]
    step: Step | None
    reconciled: dict[str, Any] | None = None  # lastReconciledSpec after the pass
    error: str | None = None  # a fragment of status.error; "" checks there is none
    bg: models.BlueGreenStatus | None = None


CASES = [
    # -- a new spec during stop-active ---------------------------------------------------------
    Case(
        "a new spec while the old job still runs at stop-active (its stop-with-savepoint"
        " failed) warms the next colour up again with it, and stops nothing this pass",
        sees(BLUE, test_planning.details("j1"), other=WARM_GREEN),
        bg_status(V2, Step.STOP_ACTIVE),
        V3,
        ["event Retargeted", "write deploy-next", "apply green streamjob:3 -"],
        Step.DEPLOY_NEXT,
        reconciled=V3,
    ),
    Case(
        "a new spec at stop-active with the stop-with-savepoint in flight waits for the end"
        " of this upgrade",
        sees(
            BLUE,
            test_planning.details("j1"),
            other=WARM_GREEN,
            savepoint=test_planning.savepoint(rest.SavepointStatus.IN_PROGRESS),
        ),
        bg_status(
            V2,
            Step.STOP_ACTIVE,
            pending=test_planning.pending("upgrade", at=ago(seconds=5)),
            restore=None,
        ),
        V3,
        [],
        Step.STOP_ACTIVE,
        reconciled=V2,
    ),
    Case(
        "a new spec at stop-active once the old job is cancelling (last-state) waits for the"
        " end of this upgrade, and the cancel is sent again",
        sees(BLUE, test_planning.details("j1", rest.JobStatus.CANCELLING), other=WARM_GREEN),
        bg_status(
            LAST_STATE_V2,
            Step.STOP_ACTIVE,
            restore=None,
            checkpoint=(4, "/checkpoints/j1/chk-4", ago(seconds=10)),
        ),
        LAST_STATE_V3,
        ["write stop-active", "cancel j1 blue"],
        Step.STOP_ACTIVE,
        reconciled=LAST_STATE_V2,
    ),
    Case(
        "a new spec in the pass the stop-with-savepoint completes is not submitted to a"
        " colour applied with the spec before: the old target goes on",
        sees(
            BLUE,
            test_planning.details("j1", rest.JobStatus.FINISHED),
            other=WARM_GREEN,
            savepoint=test_planning.savepoint(rest.SavepointStatus.COMPLETED, UP),
        ),
        bg_status(
            V2,
            Step.STOP_ACTIVE,
            pending=test_planning.pending("upgrade", at=ago(seconds=5)),
            restore=None,
        ),
        V3,
        ["event SavepointCompleted", "write submit-next", "submit green /sp/savepoint-up"],
        Step.SUBMIT_NEXT,
        reconciled=V2,
    ),
    # -- await-stable: a job the new colour's JobManager does not know -------------------------
    Case(
        "a job the next colour's JobManager no longer knows at await-stable falls back: the"
        " last stable spec is resubmitted to the warm old colour from the same savepoint",
        sees(GREEN, None, jobs=(), other=WARM_BLUE_J1_DONE),
        bg_status(ROLLBACK_V2, Step.AWAIT_STABLE, job_id="j2"),
        ROLLBACK_V2,
        ["event RollingBack", "write submit-active", "submit blue /sp/savepoint-up"],
        Step.SUBMIT_ACTIVE,
        error="",
    ),
    Case(
        "a job the next colour's JobManager no longer knows at await-stable, without"
        " rollback, fails the upgrade and removes the old colour",
        sees(GREEN, None, jobs=(), other=WARM_BLUE_J1_DONE),
        bg_status(V2, Step.AWAIT_STABLE, job_id="j2"),
        V2,
        ["event StabilityTimeout", "write remove-previous", "remove blue"],
        Step.REMOVE_PREVIOUS,
        error="its JobManager does not know job j2 (rollback.enabled is off)",
    ),
    # -- submit-next: its timeout, and a JobManager gone mid-submit -----------------------------
    Case(
        "a submission that does not happen within stability.timeout of the old job's stop"
        " falls back to the old colour from the same savepoint",
        sees(GREEN, None, jm=State.PROGRESSING, other=WARM_BLUE_J1_DONE),
        bg_status(
            ROLLBACK_V2, Step.SUBMIT_NEXT, job_id=None, job_state=None, deployed=ago(minutes=3)
        ),
        ROLLBACK_V2,
        ["event RollingBack", "write submit-active", "submit blue /sp/savepoint-up"],
        Step.SUBMIT_ACTIVE,
    ),
    Case(
        "a submission that does not happen within stability.timeout, without rollback,"
        " keeps waiting for the next colour's JobManager",
        sees(GREEN, None, jm=State.PROGRESSING, other=WARM_BLUE_J1_DONE),
        bg_status(V2, Step.SUBMIT_NEXT, job_id=None, job_state=None, deployed=ago(minutes=3)),
        V2,
        ["write submit-next"],
        Step.SUBMIT_NEXT,
    ),
    Case(
        "a submission before its deadline with the JobManager not answering yet waits",
        sees(GREEN, None, jm=State.PROGRESSING, other=WARM_BLUE_J1_DONE),
        bg_status(ROLLBACK_V2, Step.SUBMIT_NEXT, job_id=None, job_state=None),
        ROLLBACK_V2,
        ["write submit-next"],
        Step.SUBMIT_NEXT,
    ),
    Case(
        "the next colour's JobManager gone mid-submit is applied again with the new spec and"
        " the restore path",
        sees(GREEN, None, jm=State.ABSENT, other=WARM_BLUE_J1_DONE),
        bg_status(ROLLBACK_V2, Step.SUBMIT_NEXT, job_id=None, job_state=None),
        ROLLBACK_V2,
        ["write submit-next", "apply green streamjob:2 /sp/savepoint-up"],
        Step.SUBMIT_NEXT,
    ),
    Case(
        "the old colour's JobManager gone mid-resubmit (falling back) is applied again with"
        " the last stable spec",
        sees(BLUE, None, jm=State.ABSENT, other=cluster(GREEN)),
        bg_status(
            ROLLBACK_V2,
            Step.SUBMIT_ACTIVE,
            state=models.ReconciliationState.ROLLING_BACK,
            job_id=None,
            job_state=None,
        ),
        ROLLBACK_V2,
        ["write submit-active", "apply blue streamjob:1 /sp/savepoint-up"],
        Step.SUBMIT_ACTIVE,
    ),
    # -- the old colour was not on the stable spec: rollback in place ---------------------------
    Case(
        "a failed new colour whose old colour did not run the last stable spec cannot fall"
        " back: the old colour goes, and the new one rolls back in place once active",
        sees(
            GREEN,
            test_planning.details("j2", rest.JobStatus.FAILED, failure="boom"),
            other=WARM_BLUE_J1_DONE,
        ),
        bg_status(ROLLBACK_V2, Step.AWAIT_STABLE, job_id="j2", fallback=False),
        ROLLBACK_V2,
        ["event NotStable", "write remove-previous", "remove blue"],
        Step.REMOVE_PREVIOUS,
        error="",
    ),
    Case(
        "once the new colour is active, the failed job rolls back in place on it: the"
        " recreate steps on green, to the last stable spec from the upgrade's savepoint",
        sees(GREEN, test_planning.details("j2", rest.JobStatus.FAILED, failure="boom")),
        bg_status(
            ROLLBACK_V2,
            None,
            state=models.ReconciliationState.DEPLOYED,
            active="green",
            upcoming=None,
            fallback=False,
            job_id="j2",
            job_state="FAILED",
        ),
        ROLLBACK_V2,
        [
            "event RollingBack",
            "write delete-deployments",
            "delete taskmanager green",
            "delete jobmanager green",
            "delete ha green",
        ],
        Step.DELETE_DEPLOYMENTS,
        bg=models.BlueGreenStatus(active="green"),
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_blue_green_step(case: Case) -> None:
    plan = planner.plan(case.seen, case.spec, case.status, NOW)
    test_planning.check_write_ahead(plan)
    assert rendered(plan) == case.expected
    r = plan.status.reconciliation
    assert r.step == case.step
    if case.reconciled is not None:
        expected = models.StreamJobSpec.model_validate(case.reconciled)
        assert r.lastReconciledSpec == changes.encode(expected)
    if case.error == "":
        assert plan.status.error is None
    elif case.error is not None:
        assert plan.status.error is not None
        assert case.error in plan.status.error
    if case.bg is not None:
        assert plan.status.blueGreen == case.bg
    # the same observation gives the same plan, and status is not modified
    assert planner.plan(case.seen, case.spec, case.status, NOW) == plan
