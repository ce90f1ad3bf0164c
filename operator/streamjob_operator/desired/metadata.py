"""Names, labels and owner references shared by every child object.

Names are DNS-1035 labels of at most 63 characters, so each one is valid for every
kind (a Service needs exactly that) and fits in a label value. A StreamJob name may be
up to 253 characters and contain dots: a base that does not fit, or is not a valid
label as it is, is lowercased, has other characters replaced by ``-``, is cut, and
ends with ``-`` and the first 8 hex digits of the SHA-256 of the original base, so
distinct StreamJobs keep distinct names and the same StreamJob always gets the same
ones. The component part (``-jobmanager``...) is kept whole after the cut.
"""

from __future__ import annotations

import enum
import hashlib
import re
from typing import Any

from streamjob_operator.api import models
from streamjob_operator.desired import target

Manifest = dict[str, Any]

MAX_NAME = 63
_DNS_LABEL = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
_LABEL_VALUE = re.compile(r"([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?")
_HASH_LEN = 8

NAME_LABEL = "app.kubernetes.io/name"
INSTANCE_LABEL = "app.kubernetes.io/instance"
COMPONENT_LABEL = "app.kubernetes.io/component"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
# The runtime's names (streamjob_runtime.ha.lease): the leader labels its own pod, and
# scopes its HA ConfigMap with the cluster label. A test keeps them equal.
CLUSTER_LABEL = "streamjob.dev/cluster"
LEADER_LABEL = "streamjob.dev/jobmanager-leader"

APP = "streamjob"
MANAGER = "streamjob-operator"


class Component(enum.StrEnum):
    JOBMANAGER = "jobmanager"
    TASKMANAGER = "taskmanager"
    CONFIG = "config"
    CREDENTIALS = "credentials"  # the job's CA, certificate and REST token Secrets


def _digest(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()[:_HASH_LEN]


def bounded(raw: str, limit: int = MAX_NAME) -> str:
    """``raw`` as a DNS-1035 label of at most ``limit`` characters (see the module doc)."""
    if len(raw) <= limit and _DNS_LABEL.fullmatch(raw):
        return raw
    cleaned = re.sub(r"[^a-z0-9-]", "-", raw.lower())
    if not cleaned[:1].isalpha():
        cleaned = f"sj-{cleaned}"
    head = cleaned[: limit - _HASH_LEN - 1].rstrip("-")
    return f"{head}-{_digest(raw)}"


def label_value(raw: str) -> str:
    """``raw`` as a label value (at most 63 characters), cut and hashed when too long."""
    if len(raw) <= MAX_NAME and _LABEL_VALUE.fullmatch(raw):
        return raw
    cleaned = re.sub(r"[^A-Za-z0-9_.-]", "-", raw)
    head = cleaned[: MAX_NAME - _HASH_LEN - 1].strip("-_.")
    return f"{head}-{_digest(raw)}" if head else _digest(raw)


def _base(job: target.StreamJob, where: target.DeploymentTarget) -> str:
    return f"{job.name}{where.suffix}"


def cluster_id(job: target.StreamJob, where: target.DeploymentTarget) -> str:
    """The HA cluster id, also the value of the ``streamjob.dev/cluster`` label.

    Each colour is its own cluster: the StreamJob's name plus the colour suffix.
    """
    return bounded(_base(job, where))


def name(job: target.StreamJob, where: target.DeploymentTarget, component: Component) -> str:
    """``<streamjob>[-<colour>]-<component>``, bounded to 63 characters.

    The JobManager's Deployment, Service, ServiceAccount, Role and RoleBinding share
    one name (they are different kinds); likewise the TaskManager's.
    """
    tail = f"-{component.value}"
    return bounded(_base(job, where), MAX_NAME - len(tail)) + tail


def selector_labels(
    job: target.StreamJob, where: target.DeploymentTarget, component: Component
) -> dict[str, str]:
    """The labels selectors use: stable for the life of a colour (selectors are immutable)."""
    return {
        NAME_LABEL: APP,
        INSTANCE_LABEL: label_value(job.name),
        COMPONENT_LABEL: component.value,
        CLUSTER_LABEL: cluster_id(job, where),
    }


def labels(
    job: target.StreamJob, where: target.DeploymentTarget, component: Component
) -> dict[str, str]:
    return {**selector_labels(job, where, component), MANAGED_BY_LABEL: MANAGER}


def owner_reference(job: target.StreamJob) -> dict[str, Any]:
    """The StreamJob as controlling owner: deleting it deletes the child (foreground-safe)."""
    return {
        "apiVersion": f"{models.GROUP}/{models.VERSION}",
        "kind": models.KIND,
        "name": job.name,
        "uid": job.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def object_meta(
    job: target.StreamJob, where: target.DeploymentTarget, component: Component
) -> dict[str, Any]:
    return {
        "name": name(job, where, component),
        "namespace": job.namespace,
        "labels": labels(job, where, component),
        "ownerReferences": [owner_reference(job)],
    }
