"""HA on Kubernetes: leader election on a ``coordination.k8s.io/v1`` Lease, metadata in a ConfigMap.

Election follows client-go's ``LeaderElector``: a candidate takes the Lease when
it is free or its holder has not renewed for ``leaseDurationSeconds`` (measured
on the candidate's own clock from when it last saw the record change, so clock
skew between nodes does not matter); every update is a compare-and-swap on
``resourceVersion``; ``leaseTransitions`` grows with each change of holder and is
the leader's epoch.  A leader that cannot renew within the renew deadline steps
down.

The HA metadata lives in the ConfigMap ``streamjob-<cluster id>-ha``.  Each write
is a compare-and-swap that also records the writer's epoch in the annotation
``streamjob.dev/leader-epoch`` and is refused when the annotation names a newer
epoch, so once a new leader has written, a deposed one cannot.

Permissions the JobManager's ServiceAccount needs in its namespace:
``leases``: get, create, update; ``configmaps``: get, create, update;
``pods``: list, patch (the leader labels its pod ``streamjob.dev/jobmanager-leader=true``
so a Service can select only the leader).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import os
import time
from collections.abc import Callable
from typing import Any

import msgspec
from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.exceptions import ApiException

from streamjob_runtime import logs
from streamjob_runtime.ha import services

log = logging.getLogger(__name__)

EPOCH_ANNOTATION = "streamjob.dev/leader-epoch"
LEADER_LABEL = "streamjob.dev/jobmanager-leader"
CLUSTER_LABEL = "streamjob.dev/cluster"

_K8S_ERRORS = (ApiException, OSError, TimeoutError, asyncio.TimeoutError)


class _Api:
    """One lazily created ApiClient (in-cluster config, else $KUBECONFIG)."""

    def __init__(self) -> None:
        self._client: client.ApiClient | None = None
        self._lock = asyncio.Lock()

    async def get(self) -> client.ApiClient:
        async with self._lock:
            if self._client is None:
                configuration = client.Configuration()
                if os.environ.get("KUBERNETES_SERVICE_HOST"):
                    config.load_incluster_config(  # type: ignore[no-untyped-call]
                        client_configuration=configuration
                    )
                else:
                    await config.load_kube_config(
                        config_file=os.environ.get("KUBECONFIG"),
                        client_configuration=configuration,
                    )
                self._client = client.ApiClient(configuration)
            return self._client

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _micro(ts: datetime.datetime) -> str:
    return ts.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def lease_name(cfg: services.HaConfig) -> str:
    return f"streamjob-{cfg.cluster_id}-leader"


def configmap_name(cfg: services.HaConfig) -> str:
    return f"streamjob-{cfg.cluster_id}-ha"


class LeaseLeaderElector:
    def __init__(self, cfg: services.HaConfig, api: _Api, identity: str) -> None:
        self.cfg = cfg
        self.api = api
        self.identity = identity
        self.name = lease_name(cfg)
        self.epoch: int | None = None
        self._observed: tuple[Any, ...] | None = None
        self._observed_at = 0.0

    async def _leases(self) -> client.CoordinationV1Api:
        return client.CoordinationV1Api(await self.api.get())

    def _spec(self, transitions: int, acquired: datetime.datetime) -> dict[str, Any]:
        return {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": max(1, round(self.cfg.lease_duration_ms / 1000)),
            "acquireTime": _micro(acquired),
            "renewTime": _micro(_now()),
            "leaseTransitions": transitions,
        }

    async def try_acquire_or_renew(self) -> bool:
        """One round of client-go's tryAcquireOrRenew; True while we hold the Lease."""
        leases = await self._leases()
        ns = self.cfg.namespace
        try:
            lease = await leases.read_namespaced_lease(self.name, ns)
        except ApiException as e:
            if e.status != 404:
                raise
            body: Any = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": self.name, "namespace": ns},
                "spec": self._spec(0, _now()),
            }
            try:
                await leases.create_namespaced_lease(ns, body)
            except ApiException as e2:
                if e2.status == 409:
                    return False  # a rival created it first
                raise
            self.epoch = 0
            return True
        spec = lease.spec
        record = (
            spec.holder_identity,
            spec.renew_time,
            spec.lease_transitions,
            spec.lease_duration_seconds,
        )
        if record != self._observed:
            self._observed, self._observed_at = record, time.monotonic()
        holder = spec.holder_identity or ""
        duration_s = spec.lease_duration_seconds or self.cfg.lease_duration_ms / 1000
        held_by_rival = holder and holder != self.identity
        if held_by_rival and self._observed_at + duration_s > time.monotonic():
            return False  # held, and renewed within its duration as far as we saw
        transitions = (spec.lease_transitions or 0) + (0 if holder == self.identity else 1)
        acquired = spec.acquire_time if holder == self.identity and spec.acquire_time else _now()
        body = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {
                "name": self.name,
                "namespace": ns,
                "resourceVersion": lease.metadata.resource_version,
            },
            "spec": self._spec(transitions, acquired),
        }
        try:
            await leases.replace_namespaced_lease(self.name, ns, body)
        except ApiException as e:
            if e.status == 409:
                return False  # someone else updated it between our read and write
            raise
        self.epoch = transitions
        return True

    async def run(self, on_elected: services.Elected, on_revoked: services.Revoked) -> None:
        retry = self.cfg.retry_period_ms / 1000
        while True:
            try:
                async with asyncio.timeout(retry):
                    if await self.try_acquire_or_renew():
                        break
            except _K8S_ERRORS as e:
                logs.event(log, "leader_election_retry", logging.WARNING, error=repr(e))
            await asyncio.sleep(retry)
        assert self.epoch is not None
        epoch = self.epoch
        logs.event(
            log,
            "leadership_granted",
            identity=self.identity,
            epoch=epoch,
            backend="kubernetes",
            lease=f"{self.cfg.namespace}/{self.name}",
        )
        await on_elected(epoch)
        deadline = self.cfg.renew_deadline_ms / 1000
        last_renewed = time.monotonic()
        while True:
            await asyncio.sleep(retry)
            left = deadline - (time.monotonic() - last_renewed)
            try:
                async with asyncio.timeout(max(0.05, left)):
                    held = await self.try_acquire_or_renew()
                if not held or self.epoch != epoch:
                    await on_revoked("another JobManager holds the Lease")
                    return
                last_renewed = time.monotonic()
            except _K8S_ERRORS as e:
                if time.monotonic() - last_renewed >= deadline:
                    await on_revoked(
                        f"could not renew the Lease within the renew deadline"
                        f" ({self.cfg.renew_deadline_ms} ms): {e!r}"
                    )
                    return

    async def release(self) -> None:
        """Hand the Lease back (holder cleared), as client-go's ReleaseOnCancel."""
        with contextlib.suppress(*_K8S_ERRORS):
            async with asyncio.timeout(self.cfg.retry_period_ms / 1000):
                leases = await self._leases()
                lease = await leases.read_namespaced_lease(self.name, self.cfg.namespace)
                if lease.spec.holder_identity != self.identity:
                    return
                body: Any = {
                    "apiVersion": "coordination.k8s.io/v1",
                    "kind": "Lease",
                    "metadata": {
                        "name": self.name,
                        "namespace": self.cfg.namespace,
                        "resourceVersion": lease.metadata.resource_version,
                    },
                    "spec": {
                        "holderIdentity": "",
                        "leaseDurationSeconds": 1,
                        "renewTime": _micro(_now()),
                        "acquireTime": _micro(_now()),
                        "leaseTransitions": lease.spec.lease_transitions or 0,
                    },
                }
                await leases.replace_namespaced_lease(self.name, self.cfg.namespace, body)


class ConfigMapHaStore:
    def __init__(self, cfg: services.HaConfig, api: _Api) -> None:
        self.cfg = cfg
        self.api = api
        self.name = configmap_name(cfg)

    async def _core(self) -> client.CoreV1Api:
        return client.CoreV1Api(await self.api.get())

    async def _read(self) -> Any | None:
        core = await self._core()
        try:
            return await core.read_namespaced_config_map(self.name, self.cfg.namespace)
        except ApiException as e:
            if e.status == 404:
                return None
            raise

    async def _fenced(self, epoch: int, mutate: Callable[[dict[str, str]], None]) -> None:
        """Compare-and-swap the ConfigMap, refusing if a newer epoch has written it."""
        core = await self._core()
        ns = self.cfg.namespace
        try:
            async with asyncio.timeout(self.cfg.renew_deadline_ms / 1000):
                while True:
                    cm = await self._read()
                    annotations = dict((cm.metadata.annotations or {}) if cm else {})
                    current = int(annotations.get(EPOCH_ANNOTATION, "-1"))
                    if current > epoch:
                        raise services.FencedError(
                            f"HA metadata write rejected: epoch {epoch} is no longer the"
                            f" leader's (the ConfigMap was written at epoch {current})"
                        )
                    data = dict((cm.data or {}) if cm else {})
                    mutate(data)
                    annotations[EPOCH_ANNOTATION] = str(epoch)
                    metadata: dict[str, Any] = {
                        "name": self.name,
                        "namespace": ns,
                        "annotations": annotations,
                        "labels": {CLUSTER_LABEL: self.cfg.cluster_id},
                    }
                    body: Any = {
                        "apiVersion": "v1",
                        "kind": "ConfigMap",
                        "metadata": metadata,
                        "data": data,
                    }
                    try:
                        if cm is None:
                            await core.create_namespaced_config_map(ns, body)
                        else:
                            metadata["resourceVersion"] = cm.metadata.resource_version
                            await core.replace_namespaced_config_map(self.name, ns, body)
                        return
                    except ApiException as e:
                        if e.status != 409:
                            raise
                        # a concurrent write: read again and re-check the epoch
        except services.FencedError:
            raise
        except _K8S_ERRORS as e:
            raise services.WriteOutcomeUnknown(f"HA metadata write failed: {e!r}") from None

    async def _get(self, key: str) -> str | None:
        cm = await self._read()
        return None if cm is None or not cm.data else cm.data.get(key)

    async def publish_leader(self, epoch: int, leader: services.LeaderInfo) -> None:
        def put(data: dict[str, str]) -> None:
            data["leader"] = services.encode(leader).decode()

        await self._fenced(epoch, put)
        await self._label_leader_pod()

    async def withdraw(self) -> None:
        """Set this pod's leader label to false (a pod that is gone has none)."""
        if not self.cfg.pod_name:
            return
        core = await self._core()
        labels = {LEADER_LABEL: "false", CLUSTER_LABEL: self.cfg.cluster_id}
        try:
            await core.patch_namespaced_pod(
                self.cfg.pod_name, self.cfg.namespace, {"metadata": {"labels": labels}}
            )
        except ApiException as e:
            if e.status != 404:
                raise

    async def _label_leader_pod(self) -> None:
        """Move the leader label to our pod, so a Service selects only the leader."""
        if not self.cfg.pod_name:
            return
        core = await self._core()
        ns = self.cfg.namespace
        with contextlib.suppress(*_K8S_ERRORS):
            # Only this HA cluster's pods: other jobs (or the other colour of a blue-green
            # upgrade) in the namespace have leaders of their own.
            others = await core.list_namespaced_pod(
                ns, label_selector=f"{LEADER_LABEL}=true,{CLUSTER_LABEL}={self.cfg.cluster_id}"
            )
            for pod in others.items:
                if pod.metadata.name != self.cfg.pod_name:
                    await core.patch_namespaced_pod(
                        pod.metadata.name, ns, {"metadata": {"labels": {LEADER_LABEL: "false"}}}
                    )
        try:
            labels = {LEADER_LABEL: "true", CLUSTER_LABEL: self.cfg.cluster_id}
            await core.patch_namespaced_pod(self.cfg.pod_name, ns, {"metadata": {"labels": labels}})
        except _K8S_ERRORS as e:
            logs.event(
                log, "leader_label_failed", logging.WARNING, pod=self.cfg.pod_name, error=repr(e)
            )

    async def leader(self) -> services.LeaderInfo | None:
        raw = await self._get("leader")
        if raw is None:
            return None
        info = msgspec.json.decode(raw, type=services.LeaderInfo)
        leases = client.CoordinationV1Api(await self.api.get())
        try:
            lease = await leases.read_namespaced_lease(lease_name(self.cfg), self.cfg.namespace)
        except ApiException:
            return None
        return info if lease.spec.holder_identity == info.identity else None

    async def put_job(self, epoch: int, job: services.JobRecord) -> None:
        def put(data: dict[str, str]) -> None:
            data[f"job.{job.job_id}"] = services.encode(job).decode()

        await self._fenced(epoch, put)

    async def remove_job(self, epoch: int, job_id: str) -> None:
        def remove(data: dict[str, str]) -> None:
            data.pop(f"job.{job_id}", None)
            data.pop(f"checkpoints.{job_id}", None)

        await self._fenced(epoch, remove)

    async def jobs(self) -> list[services.JobRecord]:
        cm = await self._read()
        data = (cm.data or {}) if cm else {}
        return [
            msgspec.json.decode(v, type=services.JobRecord)
            for k, v in sorted(data.items())
            if k.startswith("job.")
        ]

    async def put_checkpoints(
        self, epoch: int, job_id: str, record: services.CheckpointRecord
    ) -> None:
        def put(data: dict[str, str]) -> None:
            data[f"checkpoints.{job_id}"] = services.encode(record).decode()

        await self._fenced(epoch, put)

    async def checkpoints(self, job_id: str) -> services.CheckpointRecord:
        raw = await self._get(f"checkpoints.{job_id}")
        if raw is None:
            return services.CheckpointRecord()
        return msgspec.json.decode(raw, type=services.CheckpointRecord)

    async def put_trigger(self, epoch: int, record: services.TriggerRecord) -> None:
        def put(data: dict[str, str]) -> None:
            data[f"trigger.{record.request_id}"] = services.encode(record).decode()
            recorded = [
                msgspec.json.decode(v, type=services.TriggerRecord)
                for k, v in data.items()
                if k.startswith("trigger.")
            ]
            kept = {r.request_id for r in services.newest_triggers(recorded)}
            for r in recorded:
                if r.request_id not in kept:
                    data.pop(f"trigger.{r.request_id}", None)

        await self._fenced(epoch, put)

    async def triggers(self) -> list[services.TriggerRecord]:
        cm = await self._read()
        data = (cm.data or {}) if cm else {}
        found = [
            msgspec.json.decode(v, type=services.TriggerRecord)
            for k, v in data.items()
            if k.startswith("trigger.")
        ]
        return sorted(found, key=lambda r: (r.time_ms, r.request_id))

    async def close(self) -> None:
        await self.api.close()


def create(
    cfg: services.HaConfig, identity: str
) -> tuple[services.LeaderElector, services.HaStore]:
    api = _Api()
    return LeaseLeaderElector(cfg, api, identity), ConfigMapHaStore(cfg, api)
