"""The chaos suite: the windowed + keyed-state job (``tests/jobs/chaos_window.py``) under
TaskManager SIGKILLs, JobManager leader SIGKILLs and SIGSTOPs on etcd HA, and rescaling
savepoint chains, each run's committed output checked against the job's exact model.

Shared by ``bench/chaos.py`` (``--runs N``, printed figures) and ``tests/chaos`` (a
quick configuration CI runs). Every random choice comes from one ``random.Random(seed)``
per scenario run; the seed is printed, so a failing run can be repeated (its timing, on
a shared machine, only approximately).

Scenarios (:data:`SCENARIOS`):

- ``taskmanagers``: parallelism ``p`` on ``p`` one-slot TaskManagers; 1-3 SIGKILLs of a
  random TaskManager (the cluster starts a replacement, as a Deployment would), some
  right after the job runs again, the others after a checkpoint of the new attempt.
- ``jobmanagers``: two JobManagers elected through a real etcd (leases 3 s / 2 s /
  0.5 s); the leader is SIGKILLed once and SIGSTOPped once for longer than its lease
  (then SIGCONT: it must log that it lost leadership, and change nothing), in random
  order.
- ``rescale``: a chain of stop-with-savepoint at ``p`` and restore at ``p'``
  (``chain`` parallelisms), the last job running to the end of its input.
- ``kafka``: Kafka -> key_by -> rolling count -> Kafka with the exactly-once sink
  (``tests/jobs/kafka_count.py``) on a fresh Tansu broker, its input produced at
  ``kafka_rate``: a stop-with-savepoint at ``p`` and restore at ``p'`` (two parallelisms of
  the chain), and 1-3 SIGKILLs of a TaskManager that runs the job, each in either job.
  Checked by :func:`check_kafka` (needs Tansu in ``.tools/bin``: ``scripts/tools.sh``).

The model (:func:`check`): window rows ``key window_start on_time late`` must hold each
(key, window)'s on-time count exactly once; ``key n`` lines must be ``1..n_k`` once
each; one final ``key total late`` row per key. Late events counted into a window
(``late_accepted``) also make a run inexact: watermarks are checkpointed with the splits
and the event-time operators, so a restored job drops exactly the late events a
failure-free run drops.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import random
import signal
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import aiohttp

from streamjob_runtime.api import client, models
from streamjob_runtime.connectors import files
from streamjob_runtime.local import LocalCluster
from tests import kafka
from tests.conftest import Harness
from tests.etcd import Etcd
from tests.jobs import chaos_window, keyed_sum

JOB = str(Path(chaos_window.__file__))
LEASE_MS = (3_000, 2_000, 500)
SCENARIOS = ("taskmanagers", "jobmanagers", "rescale", "kafka")
KAFKA_KEYS = 13


@dataclasses.dataclass
class Check:
    """One run's output against the model."""

    rows_checked: int = 0
    lost: int = 0  # expected rows absent
    duplicated: int = 0  # rows committed more than once
    wrong: int = 0  # rows whose values differ from the model (or that it does not have)
    late_accepted: int = 0  # late events counted into a window (never as on time)
    on_time_missing: int = 0  # on-time events the wrong window rows are short of
    on_time_extra: int = 0  # ...or over-count
    examples: list[str] = dataclasses.field(default_factory=list)
    # Kafka: marker reads that returned less than a commit already made (see stale_markers)
    stale_markers: int = 0

    @property
    def exact(self) -> bool:
        return self.lost == self.duplicated == self.wrong == self.late_accepted == 0

    def note(self, text: str) -> None:
        if len(self.examples) < 5:
            self.examples.append(text)


def check(out: Path, events: int) -> Check:
    """Compare the committed output under ``out`` with the model of ``events`` events."""
    result = Check()
    want_windows = chaos_window.expected_windows(events)
    got_windows: dict[tuple[int, int], list[int]] = defaultdict(list)
    for line in files.read_committed_lines(str(out / "windows")):
        key, start, on_time, late = (int(x) for x in line.split())
        result.late_accepted += late
        if on_time:
            got_windows[(key, start)].append(on_time)
    result.rows_checked += len(want_windows)
    for where, want in want_windows.items():
        got = got_windows.get(where, [])
        if not got:
            result.lost += 1
            result.note(f"window {where}: missing (want {want} on-time events)")
            continue
        result.duplicated += len(got) - 1
        if len(got) > 1:
            result.note(f"window {where}: {len(got)} rows {got}")
        if got[0] != want:
            result.wrong += 1
            result.on_time_missing += max(0, want - got[0])
            result.on_time_extra += max(0, got[0] - want)
            result.note(f"window {where}: {got[0]} on-time events, want {want}")
    for where, got in got_windows.items():
        if where not in want_windows:
            result.wrong += len(got)
            result.note(f"window {where}: not in the model ({got})")

    want_lines, want_finals = chaos_window.expected_counts(events)
    lines: Counter[tuple[int, int]] = Counter()
    finals: Counter[tuple[int, int, int]] = Counter()
    for line in files.read_committed_lines(str(out / "counts")):
        fields = tuple(int(x) for x in line.split())
        if len(fields) == 2:
            lines[(fields[0], fields[1])] += 1
        else:
            finals[(fields[0], fields[1], fields[2])] += 1
    result.rows_checked += sum(want_lines.values()) + sum(want_finals.values())
    _compare_rows(result, Counter(want_lines), Counter(lines))
    _compare_rows(result, Counter(want_finals), Counter(finals))
    return result


def _compare_rows(
    result: Check, want: Counter[tuple[int, ...]], got: Counter[tuple[int, ...]]
) -> None:
    for row, n in want.items():
        if got[row] == 0:
            result.lost += n
            result.note(f"row {row}: missing")
        elif got[row] > n:
            result.duplicated += got[row] - n
            result.note(f"row {row}: {got[row]} times")
    for row, n in got.items():
        if row not in want:
            result.wrong += n
            result.note(f"row {row}: not in the model")


def check_kafka(got: Counter[tuple[int, int]], copied: int, events: int, restarts: int) -> Check:
    """Compare the committed output of the Kafka scenario (``kafka.committed_output``: the
    records and the number of transactions several attempts wrote) with its model: the
    lines ``[k, 1] .. [k, n_k]`` once each.

    The reader keeps the highest attempt's copy of a transaction, so a transaction
    committed twice would not show as duplicated rows; the copies do. A failure cuts
    short at most one commit (a TaskManager runs one sink subtask, which commits one
    transaction at a time, and commits are not interrupted by cancellation), so copies
    beyond the job restarts count as duplicated."""
    result = Check()
    want = keyed_sum.expected(events, KAFKA_KEYS)
    result.rows_checked = sum(want.values())
    _compare_rows(result, Counter(want), Counter(got))
    if copied > restarts:
        result.duplicated += copied - restarts
        result.note(f"{copied} transactions written by several attempts; {restarts} restarts")
    return result


@dataclasses.dataclass
class Run:
    """What one scenario run did, and its check."""

    scenario: str
    seed: int
    events: int
    parallelisms: list[int]
    tm_kills: int = 0
    jm_kills: int = 0
    jm_stops: int = 0
    rescales: int = 0
    restarts: int = 0
    seconds: float = 0.0
    result: Check = dataclasses.field(default_factory=Check)
    error: str | None = None  # the run did not finish (the bench records it and goes on)

    @property
    def exact(self) -> bool:
        return self.error is None and self.result.exact

    def line(self) -> str:
        r = self.result
        faults = []
        if self.tm_kills:
            faults.append(f"{self.tm_kills} TaskManager SIGKILL(s)")
        if self.jm_kills:
            faults.append(f"{self.jm_kills} leader SIGKILL(s)")
        if self.jm_stops:
            faults.append(f"{self.jm_stops} leader SIGSTOP(s)")
        if self.rescales:
            faults.append(f"{self.rescales} savepoint restore(s)")
        chain = "->".join(str(p) for p in self.parallelisms)
        return (
            f"{self.scenario:<12} seed {self.seed:<10} p {chain:<9} {', '.join(faults) or '-'};"
            f" {r.rows_checked} rows checked: {r.lost} lost, {r.duplicated} duplicated,"
            f" {r.wrong} wrong, {r.late_accepted} late accepted ({self.seconds:.0f} s)"
            + (
                f"; wrong window rows: {r.on_time_missing} on-time events short,"
                f" {r.on_time_extra} over"
                if r.wrong
                else ""
            )
            + ("" if r.exact else f"  NOT EXACT: {'; '.join(r.examples)}")
            + ("" if self.error is None else f"  DID NOT FINISH: {self.error}")
        )


@dataclasses.dataclass(frozen=True)
class Config:
    """A scenario run's size. ``splits``: generator splits (None: the first parallelism,
    so a restore at the same parallelism gives each reader one split); ``chain``: the
    rescale chain's parallelisms (None: random, from ``parallelisms``)."""

    events: int = 30_000
    rate: float = 3_000.0
    parallelisms: tuple[int, ...] = (1, 2, 3)
    splits: int | None = None
    chain: tuple[int, ...] | None = None
    max_tm_kills: int = 3
    state_backend: str | None = None  # state.backend.type; None: the job's default
    kafka_rate: float = 1_000.0  # the kafka scenario's input, records/s (it has no splits)


def job_args(out: Path, config: Config) -> list[str]:
    args = [f"out={out}", f"events={config.events}", f"rate={config.rate}"]
    if config.splits is not None:
        args.append(f"splits={config.splits}")
    if config.state_backend is not None:
        args.append(f"backend={config.state_backend}")
    return args


def _cluster(
    workdir: Path, taskmanagers: int, ha: list[str] | None = None, log_level: str = "INFO"
) -> LocalCluster:
    return LocalCluster(
        workdir,
        taskmanagers=taskmanagers,
        heartbeat_interval_ms=200,
        heartbeat_timeout_ms=5_000,
        jobmanagers=2 if ha else 1,
        ha=ha or [],
        extra_env={"STREAMJOB_LOG_LEVEL": log_level},
    )


def stale_markers(log_text: str) -> list[str]:
    """Commit-marker reads of the Kafka sink that returned a checkpoint older than one
    a commit of the same transactional id had already completed (TaskManager DEBUG logs).

    The sink skips a restored commit whose checkpoint the marker shows committed; a
    broker that serves an older marker makes it commit that transaction a second time.
    Tansu does, when another producer's transaction is open on a partition that the
    committing transaction wrote (measured: 15 of 30 reads stale); Kafka makes the
    offsets of a committed transaction visible to every later read."""
    committed: dict[str, list[tuple[float, int]]] = defaultdict(list)
    reads: list[tuple[float, str, int]] = []
    for line in log_text.splitlines():
        if '"kafka_' not in line:
            continue
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if event.get("event") == "kafka_transaction_committed":
            committed[event["transactional_id"]].append((event["ts"], event["checkpoint_id"]))
        elif event.get("event") == "kafka_commit_marker_read":
            reads.append((event["ts"], event["transactional_id"], event["committed"]))
    stale = []
    for ts, tid, marker in reads:
        before = [cid for at, cid in committed[tid] if at < ts]
        if before and max(before) > marker:
            stale.append(f"{tid}: marker {marker} read after checkpoint {max(before)} committed")
    return stale


T = TypeVar("T")

# What a JobManager answers while leadership moves: refused, reset, a standby's 503, a
# new leader that has not recovered the job yet (404), a deposed one that still answers.
_IN_FLUX = (client.RestError, OSError, aiohttp.ClientError, asyncio.TimeoutError)


def _settled(read: Callable[[], T], timeout_s: float = 120.0) -> T:
    """``read()``, asked again while the JobManagers change leader (see ``_IN_FLUX``)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return read()
        except _IN_FLUX:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def _running_again(h: Harness, job: str, attempt: int) -> int:
    """Wait until ``job`` runs an attempt after ``attempt`` (or ends); its attempt."""
    found: list[models.JobDetails] = []

    def runs() -> bool:
        d = _settled(lambda: h.job(job))
        found.append(d)
        return d.state.terminal or (d.attempt > attempt and d.state is models.JobStatus.RUNNING)

    h.wait_for(f"job {job} to run again after attempt {attempt}", runs, timeout_s=120)
    return found[-1].attempt


def _a_checkpoint_later(h: Harness, job: str) -> None:
    """Wait for one more completed checkpoint than now (or the job's end)."""
    before = _settled(lambda: h.checkpoints(job)).counts.completed
    h.wait_for(
        f"a checkpoint of job {job}",
        lambda: (
            _settled(lambda: h.job(job)).state.terminal
            or _settled(lambda: h.checkpoints(job)).counts.completed > before
        ),
        timeout_s=120,
    )


def _finished_in_logs(h: Harness, job: str) -> bool:
    """Whether a JobManager logged ``job`` FINISHED. A leader elected after the job ended
    does not know it (a finished job leaves the HA metadata), so a leader killed right
    as its job finished leaves only its log to say so."""
    return any(
        '"event":"job_status_changed"' in line
        and f'"job_id":"{job}"' in line
        and json.loads(line).get("state") == models.JobStatus.FINISHED.value
        for line in h.cluster.logs().splitlines()
    )


def _finish(h: Harness, job: str, out: Path, run: Run) -> None:
    found: list[models.JobDetails | None] = []

    def ended() -> bool:
        try:
            found.append(_settled(lambda: h.job(job), timeout_s=10))
        except client.RestError as e:
            if e.status != 404 or not _finished_in_logs(h, job):
                raise
            found.append(None)
            return True
        details = found[-1]
        return details is not None and details.state.terminal

    h.wait_for(f"job {job} to end", ended, timeout_s=300)
    details = found[-1]
    if details is not None:
        assert details.state is models.JobStatus.FINISHED, details.failure_cause
        run.restarts += details.restarts
    run.result = check(out, run.events)


def run_taskmanagers(workdir: Path, seed: int, config: Config) -> Run:
    rng = random.Random(seed)
    p = rng.choice(config.parallelisms)
    run = Run("taskmanagers", seed, config.events, [p])
    out = workdir / "out"
    started = time.monotonic()
    with _cluster(workdir / "cluster", p) as cluster:
        h = Harness(cluster)
        job = h.submit(JOB, job_args(out, config), parallelism=p)
        attempt = 1
        for _ in range(rng.randint(1, config.max_tm_kills)):
            if rng.random() < 0.7:  # else: right after the restart, before a checkpoint
                _a_checkpoint_later(h, job)
            time.sleep(rng.uniform(0.0, 1.0))
            if h.job(job).state.terminal:
                break
            cluster.kill_taskmanager(rng.randrange(p))
            run.tm_kills += 1
            attempt = _running_again(h, job, attempt)
        _finish(h, job, out, run)
    run.seconds = time.monotonic() - started
    return run


def ha_args(etcd: Etcd, cluster_id: str) -> list[str]:
    duration, renew, retry = LEASE_MS
    return ["--ha", "etcd", "--ha-etcd-endpoints", etcd.endpoint, "--ha-cluster-id", cluster_id,
            "--ha-lease-duration", str(duration), "--ha-renew-deadline", str(renew),
            "--ha-retry-period", str(retry)]  # fmt: skip


def run_jobmanagers(workdir: Path, seed: int, config: Config, etcd: Etcd) -> Run:
    """The leader SIGKILLed once and SIGSTOPped once (longer than its lease), in a random
    order, each after a checkpoint under the current leader."""
    rng = random.Random(seed)
    p = rng.choice(config.parallelisms)
    run = Run("jobmanagers", seed, config.events, [p])
    out = workdir / "out"
    started = time.monotonic()
    faults = ["kill", "stop"]
    rng.shuffle(faults)
    with _cluster(workdir / "cluster", p, ha_args(etcd, f"chaos-{seed}")) as cluster:
        h = Harness(cluster)
        job = h.submit(JOB, job_args(out, config), parallelism=p)
        for fault in faults:
            _a_checkpoint_later(h, job)
            time.sleep(rng.uniform(0.0, 1.0))
            if _settled(lambda: h.job(job)).state.terminal:
                break
            leader = cluster.leader_index()
            pid = cluster.leader_pid()
            if fault == "kill":
                cluster.kill_jobmanager(leader)
                run.jm_kills += 1
            else:
                stopped = cluster.jms[leader].process
                cluster.kill_jobmanager(leader, signal.SIGSTOP)
                run.jm_stops += 1
                time.sleep(LEASE_MS[0] / 1000 + rng.uniform(1.0, 2.0))
                cluster.kill_jobmanager(leader, signal.SIGCONT)
                # Resumed, it must find its lease gone and step down (and exit).
                h.wait_for(
                    f"the stopped leader (pid {pid}) to step down",
                    lambda stopped=stopped: (  # type: ignore[misc]
                        '"event":"leadership_lost"' in stopped.log_path.read_text()
                    ),
                    60,
                )
            h.wait_for("a new leader", lambda pid=pid: cluster.leader_pid() != pid, 120)  # type: ignore[misc]
        _finish(h, job, out, run)
    run.seconds = time.monotonic() - started
    return run


def run_rescale(workdir: Path, seed: int, config: Config) -> Run:
    """Stop with a savepoint at p, restore at p' (the chain), the last job to the end."""
    rng = random.Random(seed)
    chain = list(config.chain or [rng.choice(config.parallelisms) for _ in range(3)])
    run = Run("rescale", seed, config.events, chain)
    out = workdir / "out"
    started = time.monotonic()
    with _cluster(workdir / "cluster", max(chain)) as cluster:
        h = Harness(cluster)
        savepoint: str | None = None
        for i, p in enumerate(chain):
            job = h.submit(JOB, job_args(out, config), parallelism=p, savepoint=savepoint)
            if i == len(chain) - 1:
                break
            _a_checkpoint_later(h, job)
            time.sleep(rng.uniform(0.2, 1.5))
            info = h.wait_savepoint(job, h.stop(job))
            assert info.status is models.SavepointStatus.COMPLETED, info.failure_cause
            assert info.location is not None
            savepoint = info.location
            run.rescales += 1
        _finish(h, job, out, run)
    run.seconds = time.monotonic() - started
    return run


def _kill_a_busy_taskmanager(h: Harness, rng: random.Random) -> None:
    """SIGKILL a random TaskManager that runs a task (one slot each, some may be idle)."""
    busy = {tm.pid for tm in h.taskmanagers().taskmanagers if tm.slots_free < tm.slots_total}
    indexes = [i for i, tm in enumerate(h.cluster.tms) if tm is not None and tm.popen.pid in busy]
    assert indexes, "no TaskManager runs a task"
    h.cluster.kill_taskmanager(rng.choice(indexes))


def run_kafka(workdir: Path, seed: int, config: Config) -> Run:
    """Kafka -> keyed count -> Kafka: stop with a savepoint at p, restore at p', and
    TaskManager kills in either job (see the module docstring)."""
    rng = random.Random(seed)
    chain = list(config.chain or [rng.choice(config.parallelisms) for _ in range(2)])[:2]
    events = config.events - config.events % 4  # 4 partitions, each read to events / 4
    run = Run("kafka", seed, events, chain)
    kills = [rng.randrange(len(chain)) for _ in range(rng.randint(1, config.max_tm_kills))]
    started = time.monotonic()
    broker = contextlib.contextmanager(kafka.start_tansu)(workdir)
    # DEBUG: the sink's commits and marker reads, for stale_markers
    with broker as tansu, _cluster(workdir / "cluster", max(chain), log_level="DEBUG") as cluster:
        h = Harness(cluster)
        kafka.create_topics(tansu)
        args = [f"bootstrap={tansu.bootstrap_servers}", f"stop={events // 4}"]
        savepoint: str | None = None
        for i, p in enumerate(chain):
            job = h.submit("kafka_count", args, parallelism=p, savepoint=savepoint)
            attempt = 1
            if i == 0:  # the input arrives while the jobs run (and fail, and rescale)
                _running_again(h, job, 0)
                kafka.produce_input(tansu, events, KAFKA_KEYS, config.kafka_rate)
            for _ in range(kills.count(i)):
                if rng.random() < 0.7:  # else: right after the restart, before a checkpoint
                    _a_checkpoint_later(h, job)
                time.sleep(rng.uniform(0.0, 1.0))
                if h.job(job).state.terminal:
                    break
                _kill_a_busy_taskmanager(h, rng)
                run.tm_kills += 1
                attempt = _running_again(h, job, attempt)
            if i == len(chain) - 1:
                break
            _a_checkpoint_later(h, job)
            time.sleep(rng.uniform(0.2, 1.0))
            if h.job(job).state.terminal:
                break  # the input ended first: no rescale this run
            info = h.wait_savepoint(job, h.stop(job))
            assert info.status is models.SavepointStatus.COMPLETED, info.failure_cause
            assert info.location is not None
            savepoint = info.location
            run.rescales += 1
            stopped = h.wait_terminal(job, timeout_s=120)
            assert stopped.state is models.JobStatus.FINISHED, stopped.failure_cause
            run.restarts += stopped.restarts
        details = h.wait_terminal(job, timeout_s=300)
        assert details.state is models.JobStatus.FINISHED, details.failure_cause
        run.restarts += details.restarts
        seen: list[str] = []
        got, copied = kafka.committed_output(tansu, seen)
        run.result = check_kafka(got, copied, events, run.restarts)
        if not run.result.exact:
            stale = stale_markers(cluster.logs())
            run.result.stale_markers = len(stale)
            for line in [*stale, *seen]:  # why, and which transactions several attempts wrote
                run.result.note(line)
    run.seconds = time.monotonic() - started
    return run


def run_one(
    scenario: str, workdir: Path, seed: int, config: Config, etcd: Callable[[], Etcd]
) -> Run:
    workdir.mkdir(parents=True, exist_ok=True)
    if scenario == "taskmanagers":
        return run_taskmanagers(workdir, seed, config)
    if scenario == "jobmanagers":
        return run_jobmanagers(workdir, seed, config, etcd())
    if scenario == "rescale":
        return run_rescale(workdir, seed, config)
    if scenario == "kafka":
        return run_kafka(workdir, seed, config)
    raise ValueError(f"unknown scenario {scenario!r}: choose from {', '.join(SCENARIOS)}")


def seeds(seed: int, runs: int) -> Iterator[tuple[int, str, int]]:
    """(run index, scenario, seed of that scenario run) for ``runs`` rounds of every
    scenario, all derived from ``seed``. The ``kafka`` scenario's seeds come from a
    stream of their own, so the others' are those they had before it existed."""
    rng = random.Random(seed)
    kafka_rng = random.Random(f"kafka-{seed}")
    for i in range(runs):
        for scenario in SCENARIOS:
            yield i, scenario, (kafka_rng if scenario == "kafka" else rng).randrange(2**31)
