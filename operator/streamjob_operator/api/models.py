"""StreamJob spec and status (pydantic): the CRD in ``crds/`` is generated from these.

Field names are the YAML names (camelCase, as Kubernetes resources spell them).
Descriptions become ``kubectl explain`` text; defaults, enums and bounds become
OpenAPI constraints; cross-field rules are CEL ``x-kubernetes-validations``.
"""

from __future__ import annotations

import enum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from streamjob_operator.api.durations import Duration

GROUP = "streamjob.dev"
VERSION = "v1alpha1"
KIND = "StreamJob"
PLURAL = "streamjobs"
SINGULAR = "streamjob"
SHORT_NAMES = ["sj"]


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class UpgradeMode(enum.StrEnum):
    SAVEPOINT = "savepoint"
    LAST_STATE = "last-state"
    STATELESS = "stateless"


class DesiredJobState(enum.StrEnum):
    RUNNING = "running"
    SUSPENDED = "suspended"


class CheckpointingMode(enum.StrEnum):
    EXACTLY_ONCE = "exactly-once"
    AT_LEAST_ONCE = "at-least-once"


class RestartStrategyType(enum.StrEnum):
    NONE = "none"
    FIXED_DELAY = "fixed-delay"
    FAILURE_RATE = "failure-rate"
    EXPONENTIAL_DELAY = "exponential-delay"


class UpgradeStrategyType(enum.StrEnum):
    RECREATE = "recreate"
    BLUE_GREEN = "blueGreen"


class JobSpec(_Spec):
    entrypoint: str = Field(
        min_length=1,
        description="The job: a module the image has (e.g. examples.clickstream) or a path to a"
        " .py file in the image, with a build(env) function.",
    )
    args: list[str] = Field(default_factory=list, description="Passed to the job as env.args.")
    parallelism: int = Field(default=1, ge=1, le=32768, description="Default parallelism.")
    maxParallelism: int = Field(
        default=128,
        ge=1,
        le=32768,
        description="Key groups: the upper bound of parallelism. Cannot change across a"
        " restore with state.",
    )
    upgradeMode: UpgradeMode = Field(
        default=UpgradeMode.SAVEPOINT,
        description="How a spec change reaches the running job: savepoint (stop with a"
        " savepoint, redeploy, restore from it), last-state (redeploy, restore from the latest"
        " checkpoint), stateless (redeploy from scratch).",
    )
    state: DesiredJobState = Field(
        default=DesiredJobState.RUNNING,
        description="running, or suspended: stop with a savepoint and remove the pods;"
        " running again restores from that savepoint.",
    )
    initialSavepointPath: str | None = Field(
        default=None, description="Start the first deployment from this savepoint."
    )
    allowNonRestoredState: bool = Field(
        default=False,
        description="Allow dropping savepoint state of operators the job no longer has.",
    )
    savepointTriggerNonce: int | None = Field(
        default=None, description="Change it to take a manual savepoint."
    )
    restartNonce: int | None = Field(
        default=None, description="Change it to restart the job from its latest state."
    )


class Resources(_Spec):
    cpu: str = Field(default="1", description="CPU request and limit, e.g. 500m or 2.")
    memory: str = Field(default="1Gi", description="Memory request and limit, e.g. 1Gi.")


class JobManagerSpec(_Spec):
    replicas: int = Field(
        default=1,
        ge=1,
        le=5,
        description="JobManagers; more than one runs a leader and standbys (needs"
        " highAvailability.enabled).",
    )
    resources: Resources = Field(
        default_factory=Resources, description="CPU and memory of each pod (request = limit)."
    )
    podTemplate: dict[str, Any] | None = Field(
        default=None,
        description="A Pod template merged into the JobManager pods (labels, tolerations,"
        " volumes, sidecars...).",
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
    )


class TaskManagerSpec(_Spec):
    replicas: int = Field(default=1, ge=1, description="TaskManager pods.")
    slots: int = Field(default=1, ge=1, le=64, description="Task slots per TaskManager.")
    resources: Resources = Field(
        default_factory=Resources, description="CPU and memory of each pod (request = limit)."
    )
    podTemplate: dict[str, Any] | None = Field(
        default=None,
        description="A Pod template merged into the TaskManager pods.",
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
    )


class CheckpointingSpec(_Spec):
    interval: Duration = Field(default="10s", description="Time between checkpoints.")
    mode: CheckpointingMode = Field(
        default=CheckpointingMode.EXACTLY_ONCE,
        description="exactly-once (barriers aligned: every record counted once after a"
        " restore) or at-least-once (no alignment: lower latency, replays may repeat records).",
    )
    storage: str = Field(
        default="/checkpoints",
        description="Checkpoint directory: a path on a mounted volume (every JobManager and"
        " TaskManager mounts it, e.g. a ReadWriteMany PVC via podTemplate) or an s3:// URL"
        " (credentials from the pods' environment, e.g. a Secret via podTemplate, or IRSA).",
    )
    retained: int = Field(default=3, ge=1, le=100, description="Completed checkpoints kept.")
    timeout: Duration = Field(default="10m", description="A checkpoint slower than this fails.")
    maxAge: Duration | None = Field(
        default=None,
        description="savepoint upgrades of a job that is not running fall back to the latest"
        " checkpoint only if it is younger than this (otherwise they stop and report).",
    )


class SavepointsSpec(_Spec):
    directory: str | None = Field(
        default=None,
        description="Where savepoints go: a path on a mounted volume (shared by every"
        " JobManager and TaskManager) or an s3:// URL.",
    )
    interval: Duration | None = Field(default=None, description="Periodic savepoints.")
    historyMaxCount: int = Field(default=5, ge=1, le=1000, description="Savepoints kept.")
    historyMaxAge: Duration | None = Field(
        default=None, description="Savepoints older than this are disposed."
    )


class RestartStrategySpec(_Spec):
    type: RestartStrategyType | None = Field(
        default=None,
        description="Default: fixed-delay with unlimited attempts (checkpointing is on).",
    )
    attempts: int | None = Field(default=None, ge=0, description="fixed-delay: restarts.")
    delay: Duration | None = Field(default=None, description="fixed-delay, failure-rate.")
    maxFailuresPerInterval: int | None = Field(
        default=None, ge=1, description="failure-rate: failures allowed per interval."
    )
    failureRateInterval: Duration | None = Field(
        default=None, description="failure-rate: the interval failures are counted over."
    )
    initialBackoff: Duration | None = Field(default=None, description="exponential-delay.")
    maxBackoff: Duration | None = Field(default=None, description="exponential-delay.")


class HighAvailabilitySpec(_Spec):
    enabled: bool = Field(default=False, description="Leader election on a Lease.")
    leaseDuration: Duration = Field(
        default="15s", description="How long a standby waits before taking an unrenewed lease."
    )
    renewDeadline: Duration = Field(
        default="10s",
        description="A leader that cannot renew for this long steps down (shorter than"
        " leaseDuration).",
    )
    retryPeriod: Duration = Field(
        default="2s", description="How often the leader renews and standbys retry."
    )


class UpgradeStrategySpec(_Spec):
    type: UpgradeStrategyType = Field(
        default=UpgradeStrategyType.RECREATE,
        description="recreate: replace the pods; blueGreen: bring the new version up next to"
        " the old one first.",
    )


class StabilitySpec(_Spec):
    checkpoints: int = Field(
        default=2, ge=0, description="Completed checkpoints after a deploy before STABLE."
    )
    window: Duration = Field(
        default="30s", description="...and no restart for this long after the deploy."
    )
    timeout: Duration = Field(
        default="5m", description="A deploy not stable by then is failed (or rolled back)."
    )


class RollbackSpec(_Spec):
    enabled: bool = Field(
        default=False,
        description="Roll a deploy that does not become stable back to the last stable spec,"
        " restoring from the savepoint taken for the upgrade.",
    )


class StreamJobSpec(_Spec):
    """The desired StreamJob: the image and job to run, its JobManager and TaskManager pods,
    checkpoints and savepoints, and how changes reach the running job (spec.job.upgradeMode,
    spec.upgradeStrategy). Every section but job may be left out: its fields have defaults."""

    image: str = Field(min_length=1, description="The streamjob image (with the job in it).")
    imagePullPolicy: str = Field(
        default="IfNotPresent",
        pattern="^(Always|IfNotPresent|Never)$",
        description="Always, IfNotPresent or Never, as for any container.",
    )
    job: JobSpec = Field(description="The job to run and how its state carries across changes.")
    jobManager: JobManagerSpec = Field(
        default_factory=JobManagerSpec, description="The JobManager pods."
    )
    taskManager: TaskManagerSpec = Field(
        default_factory=TaskManagerSpec, description="The TaskManager pods."
    )
    checkpointing: CheckpointingSpec = Field(
        default_factory=CheckpointingSpec, description="Periodic barrier checkpoints."
    )
    savepoints: SavepointsSpec = Field(
        default_factory=SavepointsSpec,
        description="Savepoints: where they go, periodic ones, and how many are kept.",
    )
    restartStrategy: RestartStrategySpec = Field(
        default_factory=RestartStrategySpec, description="What the job does after a failure."
    )
    highAvailability: HighAvailabilitySpec = Field(
        default_factory=HighAvailabilitySpec,
        description="JobManager leader election on a Kubernetes Lease (HA metadata in a"
        " ConfigMap).",
    )
    upgradeStrategy: UpgradeStrategySpec = Field(
        default_factory=UpgradeStrategySpec, description="How the pods are replaced."
    )
    stability: StabilitySpec = Field(
        default_factory=StabilitySpec, description="When a deploy counts as STABLE."
    )
    rollback: RollbackSpec = Field(
        default_factory=RollbackSpec, description="Rolling back a deploy that is not stable."
    )
    config: dict[str, str] = Field(
        default_factory=dict,
        description="Engine options, Flink-style (e.g. execution.batch-size: '2048').",
    )


# Cross-field rules, checked by the API server (CEL) and by planning alike.
SPEC_VALIDATIONS: list[dict[str, str]] = [
    {
        "rule": "self.jobManager.replicas == 1 || self.highAvailability.enabled",
        "message": "jobManager.replicas > 1 needs highAvailability.enabled: true",
    },
    {
        "rule": "self.job.upgradeMode != 'savepoint' || has(self.savepoints.directory)",
        "message": "upgradeMode savepoint needs savepoints.directory",
    },
    {
        "rule": "!has(self.savepoints.interval) || has(self.savepoints.directory)",
        "message": "savepoints.interval needs savepoints.directory",
    },
    {
        "rule": "self.job.parallelism <= self.job.maxParallelism",
        "message": "job.parallelism must not exceed job.maxParallelism",
    },
    {
        "rule": "self.job.parallelism <= self.taskManager.replicas * self.taskManager.slots",
        "message": "job.parallelism needs at least that many slots"
        " (taskManager.replicas x taskManager.slots)",
    },
]


class LifecycleState(enum.StrEnum):
    CREATED = "CREATED"
    DEPLOYED = "DEPLOYED"
    STABLE = "STABLE"
    UPGRADING = "UPGRADING"
    SUSPENDED = "SUSPENDED"
    FAILED = "FAILED"
    ROLLING_BACK = "ROLLING_BACK"
    ROLLED_BACK = "ROLLED_BACK"
    DELETING = "DELETING"


class ReconciliationState(enum.StrEnum):
    """Where the reconciliation of ``lastReconciledSpec`` stands (the Flink operator's names)."""

    DEPLOYED = "DEPLOYED"
    UPGRADING = "UPGRADING"
    ROLLING_BACK = "ROLLING_BACK"
    ROLLED_BACK = "ROLLED_BACK"
    DELETING = "DELETING"


class _Status(BaseModel):
    model_config = ConfigDict(extra="ignore")


class JobInfo(_Status):
    id: str | None = Field(default=None, description="The job's id on its JobManager.")
    state: str | None = Field(
        default=None, description="As the JobManager reports it: RUNNING, RESTARTING, FAILED..."
    )
    startTime: str | None = Field(default=None, description="When the job was submitted.")
    restarts: int = Field(default=0, description="Restarts since the job was submitted.")
    lastRestartTime: str | None = Field(
        default=None,
        description="When the operator first saw restarts grow (the stability window restarts"
        " from there).",
    )


class CheckpointInfo(_Status):
    id: int = Field(description="The checkpoint's id.")
    path: str = Field(description="Its directory (restorable with streamjob run -s).")
    time: str = Field(description="When it completed.")


class SavepointRecord(_Status):
    location: str = Field(description="The savepoint's directory.")
    time: str = Field(description="When it completed.")
    trigger: str = Field(description="manual, periodic, upgrade, suspend or delete")
    nonce: int | None = Field(
        default=None, description="The savepointTriggerNonce a manual savepoint answered."
    )


class PendingSavepoint(_Status):
    """A savepoint the operator triggered and has not seen finish (a write-ahead log entry)."""

    triggerId: str | None = Field(
        default=None,
        description="The request's trigger id, chosen by the operator and recorded before the"
        " request is sent (also the JobManager's request id).",
    )
    triggerType: str = Field(description="manual, periodic, upgrade, suspend or delete")
    triggerTime: str = Field(description="When the operator asked for it.")
    nonce: int | None = Field(
        default=None, description="The savepointTriggerNonce a manual savepoint answers."
    )
    jobId: str | None = Field(default=None, description="The job the savepoint is of.")


class Condition(_Status):
    type: str = Field(description="Ready, Progressing, Degraded, Stable or SpecValid.")
    status: str = Field(description="True, False or Unknown.")
    reason: str = Field(description="One CamelCase word, also the Event's reason.")
    message: str = Field(default="", description="What happened, for people.")
    lastTransitionTime: str = Field(description="When status last changed.")


class Reconciliation(_Status):
    lastReconciledSpec: str | None = Field(
        default=None, description="The spec the operator works towards (JSON), written first."
    )
    lastStableSpec: str | None = Field(default=None, description="The last spec seen STABLE.")
    step: str | None = Field(
        default=None, description="The destructive step in progress (a write-ahead log entry)."
    )
    observedGeneration: int | None = Field(
        default=None, description="The metadata.generation this status answers."
    )
    deployedAt: str | None = Field(
        default=None, description="When the current deployment's job was submitted."
    )
    state: ReconciliationState | None = Field(
        default=None,
        description="DEPLOYED, UPGRADING, ROLLING_BACK, ROLLED_BACK (the Flink operator's"
        " names) or DELETING.",
    )
    restorePath: str | None = Field(
        default=None,
        description="The savepoint or checkpoint the current deployment restores from, chosen"
        " and written before the old pods are deleted.",
    )
    stepStartedAt: str | None = Field(
        default=None,
        description="When the step in progress began (a step that waits is bounded from it).",
    )
    cancelRequested: str | None = Field(
        default=None,
        description="The job a stop step asked to cancel (last-state, stateless), written"
        " before the request: from then on its stop is under way.",
    )


class BlueGreenStatus(_Status):
    """Which colour runs the job, and the one being brought up or taken down (blueGreen)."""

    active: str | None = Field(
        default=None,
        description="blue or green: the colour whose cluster runs the job (during an upgrade,"
        " the old one until the new one is stable); null: the uncoloured cluster of recreate.",
    )
    next: str | None = Field(
        default=None,
        description="During a blue-green upgrade or its fallback: the other colour (blue or"
        " green), being brought up or taken down.",
    )
    fallback: bool = Field(
        default=False,
        description="The active colour runs the last stable spec, so a new colour that does"
        " not become stable can fall back to it (with rollback.enabled).",
    )
    previousJobs: list[str] | None = Field(
        default=None,
        description="During a submission: the jobs that JobManager listed before it (never"
        " adopted as the submitted job); null until recorded.",
    )


class JobManagerStatus(_Status):
    webUrl: str = Field(
        description="The JobManager's web UI (and REST API) inside the cluster; from outside:"
        " kubectl port-forward svc/<name>-jobmanager 8081, then http://localhost:8081/."
    )


class StreamJobStatus(_Status):
    """What the operator observed and where it stands (written by the operator only):
    lifecycle state, the job as last seen, checkpoints and savepoints, conditions, and the
    write-ahead log of the step under way."""

    lifecycleState: LifecycleState = Field(
        default=LifecycleState.CREATED,
        description="Where the StreamJob is in its life, derived from the rest of status.",
    )
    job: JobInfo = Field(default_factory=JobInfo, description="The running job, as last seen.")
    jobManager: JobManagerStatus | None = Field(
        default=None, description="The JobManager that runs the job (null before a submission)."
    )
    lastCheckpoint: CheckpointInfo | None = Field(
        default=None, description="The latest completed checkpoint seen."
    )
    lastSavepoint: SavepointRecord | None = Field(
        default=None, description="The latest completed savepoint."
    )
    savepointHistory: list[SavepointRecord] = Field(
        default_factory=list,
        description="Completed savepoints, oldest first; an entry leaves only once its files"
        " are disposed.",
    )
    pendingSavepoint: PendingSavepoint | None = Field(
        default=None, description="A savepoint under way (see its fields)."
    )
    lastPeriodicSavepointTime: str | None = Field(
        default=None, description="When the last periodic savepoint was triggered."
    )
    reconciliation: Reconciliation = Field(
        default_factory=Reconciliation,
        description="The operator's write-ahead log: what it works towards and the step it is at.",
    )
    blueGreen: BlueGreenStatus | None = Field(
        default=None,
        description="upgradeStrategy blueGreen: the active colour and the one under way.",
    )
    conditions: list[Condition] = Field(
        default_factory=list, description="Ready, Progressing, Degraded, Stable, SpecValid."
    )
    error: str | None = Field(
        default=None, description="Why the operator cannot go on, and what to fix."
    )
