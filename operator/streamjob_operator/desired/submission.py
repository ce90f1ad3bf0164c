"""What the job is submitted with: Flink-style engine options, the ConfigMap, the JobSubmission.

The options reach the job only through the REST submission (``POST /jobs`` with its
``config`` map), as ``streamjob run -D key=value`` would pass them; the runtime reads no
file. The ConfigMap ``<streamjob>[-<colour>]-config`` holds the same options as a
record for people and tools (``kubectl get configmap ... -o yaml``): it is not mounted,
and changing it changes nothing.

Options are ``spec.config`` overlaid with those derived from typed spec fields
(``checkpointing``, ``restartStrategy``, ``job.maxParallelism``): the typed field
wins. :func:`shadowed_options` lists the ``spec.config`` keys that lose, for planning
to refuse or warn. Durations are milliseconds, as the runtime reads them.
"""

from __future__ import annotations

from typing import Any

from streamjob_operator.api import durations, models
from streamjob_operator.desired import metadata, target
from streamjob_runtime.api import models as rest


def _ms(duration: str) -> str:
    return str(durations.to_ms(duration))


def restart_options(strategy: models.RestartStrategySpec) -> dict[str, str]:
    """``restart-strategy.*`` for the fields that are set.

    ``delay`` belongs to failure-rate when that is the type, else to fixed-delay (also the
    runtime's default strategy when checkpointing is on).
    """
    kind = strategy.type
    options: dict[str, str] = {}
    if kind is not None:
        options["restart-strategy.type"] = kind.value
    if strategy.attempts is not None:
        options["restart-strategy.fixed-delay.attempts"] = str(strategy.attempts)
    if strategy.delay is not None:
        family = (
            "failure-rate" if kind is models.RestartStrategyType.FAILURE_RATE else "fixed-delay"
        )
        options[f"restart-strategy.{family}.delay"] = _ms(strategy.delay)
    if strategy.maxFailuresPerInterval is not None:
        options["restart-strategy.failure-rate.max-failures-per-interval"] = str(
            strategy.maxFailuresPerInterval
        )
    if strategy.failureRateInterval is not None:
        options["restart-strategy.failure-rate.failure-rate-interval"] = _ms(
            strategy.failureRateInterval
        )
    if strategy.initialBackoff is not None:
        options["restart-strategy.exponential-delay.initial-backoff"] = _ms(strategy.initialBackoff)
    if strategy.maxBackoff is not None:
        options["restart-strategy.exponential-delay.max-backoff"] = _ms(strategy.maxBackoff)
    return options


def typed_options(spec: models.StreamJobSpec) -> dict[str, str]:
    """The options the typed spec fields set."""
    checkpointing = spec.checkpointing
    return {
        "execution.checkpointing.interval": _ms(checkpointing.interval),
        "execution.checkpointing.mode": checkpointing.mode.value,
        "execution.checkpointing.timeout": _ms(checkpointing.timeout),
        "state.checkpoints.num-retained": str(checkpointing.retained),
        "pipeline.max-parallelism": str(spec.job.maxParallelism),
        **restart_options(spec.restartStrategy),
    }


def options(spec: models.StreamJobSpec) -> dict[str, str]:
    """Every option the job is submitted with, sorted by key."""
    return dict(sorted({**spec.config, **typed_options(spec)}.items()))


def shadowed_options(spec: models.StreamJobSpec) -> list[str]:
    """Keys of ``spec.config`` that a typed field overrides (with another value or not)."""
    return sorted(spec.config.keys() & typed_options(spec).keys())


def job_submission(job: target.StreamJob, where: target.DeploymentTarget) -> rest.JobSubmission:
    """The body of ``POST /jobs`` for this StreamJob, restoring from ``where.savepoint_path``."""
    spec = job.spec
    return rest.JobSubmission(
        entrypoint=spec.job.entrypoint,
        args=list(spec.job.args),
        parallelism=spec.job.parallelism,
        config=options(spec),
        savepoint_path=where.savepoint_path,
        allow_non_restored_state=spec.job.allowNonRestoredState,
    )


def configmap(job: target.StreamJob, where: target.DeploymentTarget) -> dict[str, Any]:
    """The record of the submitted options (not mounted; see the module doc)."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata.object_meta(job, where, metadata.Component.CONFIG),
        "data": options(job.spec),
    }
