"""HA on Kubernetes Leases and a ConfigMap, against the Kubernetes API emulator."""

from __future__ import annotations

import asyncio
import datetime
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest

from streamjob_runtime import config
from streamjob_runtime.ha import lease, services
from streamjob_runtime.jobmanager import dispatcher
from tests.conftest import Harness
from tests.ha import failover, stepdown
from tests.kube.server import KubeEmulator

CFG = services.HaConfig(services.HaKind.KUBERNETES, "t", 2_000, 1_500, 200, namespace="default")


@pytest.fixture(autouse=True)
def _kubeconfig_env(kubeconfig: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)


def pair(identity: str) -> tuple[lease.LeaseLeaderElector, lease.ConfigMapHaStore]:
    elector, store = lease.create(CFG, identity)
    assert isinstance(elector, lease.LeaseLeaderElector)
    assert isinstance(store, lease.ConfigMapHaStore)
    return elector, store


def test_two_contenders_racing_for_an_expired_lease_exactly_one_wins(kube: KubeEmulator) -> None:
    old = (datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=5)).strftime(
        "%Y-%m-%dT%H:%M:%S.%fZ"
    )
    kube.create({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": lease.lease_name(CFG), "namespace": "default"},
        "spec": {"holderIdentity": "ghost", "leaseDurationSeconds": 2, "acquireTime": old,
                 "renewTime": old, "leaseTransitions": 4},
    })  # fmt: skip

    async def race() -> list[bool]:
        (a, sa), (b, sb) = pair("a"), pair("b")
        # Each must first watch the record stay unrenewed for a lease duration.
        assert await a.try_acquire_or_renew() is False
        assert await b.try_acquire_or_renew() is False
        await asyncio.sleep(2.1)
        results = await asyncio.gather(a.try_acquire_or_renew(), b.try_acquire_or_renew())
        await sa.close()
        await sb.close()
        return list(results)

    results = asyncio.run(race())
    assert sorted(results) == [False, True]
    held = kube.get("coordination.k8s.io/v1", "leases", lease.lease_name(CFG), "default")
    assert held is not None
    winner = "a" if results[0] else "b"
    assert held["spec"]["holderIdentity"] == winner
    assert held["spec"]["leaseTransitions"] == 5


def test_a_held_lease_is_respected_and_renewal_keeps_it(kube: KubeEmulator) -> None:
    async def scenario() -> None:
        (a, sa), (b, sb) = pair("a"), pair("b")
        assert await a.try_acquire_or_renew() is True  # created: epoch 0
        assert a.epoch == 0
        for _ in range(5):
            await asyncio.sleep(0.5)
            assert await a.try_acquire_or_renew() is True
            assert await b.try_acquire_or_renew() is False
        await a.release()
        assert await b.try_acquire_or_renew() is True  # released: no need to wait
        assert b.epoch == 1
        await sa.close()
        await sb.close()

    asyncio.run(scenario())


def test_a_deposed_leaders_configmap_write_is_fenced(kube: KubeEmulator) -> None:
    async def scenario() -> None:
        (a, store_a), (b, store_b) = pair("a"), pair("b")
        assert await a.try_acquire_or_renew()
        await store_a.put_checkpoints(0, "job", services.CheckpointRecord(3, ()))
        # "a" pauses; "b" sees the lease unrenewed for its duration and takes over.
        assert not await b.try_acquire_or_renew()
        await asyncio.sleep(2.1)
        assert await b.try_acquire_or_renew()
        assert b.epoch == 1
        await store_b.publish_leader(1, services.LeaderInfo("b", 1, "127.0.0.1", 1, "http://b"))
        with pytest.raises(services.FencedError, match="no longer the leader"):
            await store_a.put_checkpoints(0, "job", services.CheckpointRecord(99, ()))
        assert (await store_b.checkpoints("job")).next_checkpoint_id == 3
        leader = await store_a.leader()
        assert leader is not None
        assert leader.identity == "b"
        await store_a.close()
        await store_b.close()

    asyncio.run(scenario())
    cm = kube.get("v1", "configmaps", lease.configmap_name(CFG), "default")
    assert cm is not None
    assert cm["metadata"]["annotations"][lease.EPOCH_ANNOTATION] == "1"


def test_a_leader_cut_off_from_the_api_server_steps_down_within_the_renew_deadline(
    kube: KubeEmulator,
) -> None:
    async def scenario() -> float:
        elector, store = pair("solo")

        def cut() -> None:
            kube.inject_error(503, path_contains="/leases", times=10_000)

        try:
            return await stepdown.seconds_to_step_down(elector, cut, lambda: None)
        finally:
            await store.close()

    after = asyncio.run(scenario())
    print(f"stepped down {after:.2f} s after losing the API server")
    assert after < CFG.lease_duration_ms / 1000  # before anyone else could take the lease


def test_the_leader_labels_its_pod_and_unlabels_the_previous_leader(kube: KubeEmulator) -> None:
    pods = (("jm-a", "true", "t"), ("jm-b", "false", "t"), ("other-job", "true", "other"))
    for name, label, cluster in pods:
        kube.create({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "default",
                         "labels": {lease.LEADER_LABEL: label, lease.CLUSTER_LABEL: cluster}},
            "spec": {"containers": [{"name": "jm", "image": "streamjob"}]},
        })  # fmt: skip
    cfg = services.HaConfig(
        services.HaKind.KUBERNETES, "t", 2_000, 1_500, 200, namespace="default", pod_name="jm-b"
    )

    async def scenario() -> None:
        _, store = lease.create(cfg, "b")
        await store.publish_leader(0, services.LeaderInfo("b", 0, "127.0.0.1", 1, "http://b"))
        await store.close()

    asyncio.run(scenario())
    got = {n: kube.get("v1", "pods", n, "default") for n in ("jm-a", "jm-b", "other-job")}
    labels = {n: (p or {})["metadata"]["labels"][lease.LEADER_LABEL] for n, p in got.items()}
    # Another HA cluster's leader in the same namespace keeps its label.
    assert labels == {"jm-a": "false", "jm-b": "true", "other-job": "true"}


def test_jobmanager_failover_on_kubernetes_leases_keeps_the_output_exact(
    kubeconfig: Path, cluster_factory: Callable[..., Harness], tmp_path: Path
) -> None:
    ha = ["--ha", "kubernetes", "--ha-namespace", "default", "--ha-cluster-id", "k8s",
          "--ha-lease-duration", "3000", "--ha-renew-deadline", "2000",
          "--ha-retry-period", "500"]  # fmt: skip
    h = cluster_factory(
        taskmanagers=2, jobmanagers=2, ha=ha, extra_env={"KUBECONFIG": str(kubeconfig)}
    )
    failover.kill_leader_mid_job(h, tmp_path / "out", 10_000)


def test_a_standby_takes_a_stale_leader_label_off_its_pod_then_is_ready_as_standby(
    kube: KubeEmulator, tmp_path: Path
) -> None:
    # A previous process in this pod led and left the label: a ready standby must not
    # keep it, or the Service would route to it.
    kube.create({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "jm-a", "namespace": "default",
                     "labels": {lease.LEADER_LABEL: "true", lease.CLUSTER_LABEL: "t"}},
        "spec": {"containers": [{"name": "jm", "image": "streamjob"}]},
    })  # fmt: skip
    cfg = services.HaConfig(
        services.HaKind.KUBERNETES, "t", 2_000, 1_500, 200, namespace="default", pod_name="jm-a"
    )

    async def scenario() -> tuple[dict[str, str], int, str]:
        holder, holder_store = pair("holder")  # another JobManager leads
        elected = asyncio.Event()

        async def on_elected(epoch: int) -> None:
            elected.set()

        async def on_revoked(reason: str) -> None:
            pass

        holding = asyncio.create_task(holder.run(on_elected, on_revoked))
        await asyncio.wait_for(elected.wait(), 10)
        jm = dispatcher.JobManager(config.ClusterConfig(str(tmp_path / "chk")), ha=cfg)
        await jm.start()
        try:
            async with aiohttp.ClientSession() as http:
                for _ in range(200):
                    async with http.get(f"{jm.rest_url}/readyz") as resp:
                        if resp.status == 200:
                            ready = await resp.json()
                            break
                    await asyncio.sleep(0.05)
                else:
                    raise AssertionError("the standby never became ready")
                async with http.get(f"{jm.rest_url}/overview") as resp:
                    overview = resp.status
            pod = kube.get("v1", "pods", "jm-a", "default") or {}
            return ready, overview, pod["metadata"]["labels"][lease.LEADER_LABEL]
        finally:
            await jm.stop()
            await holder.release()
            holding.cancel()
            await holder_store.close()

    ready, overview, label = asyncio.run(scenario())
    assert ready == {"status": "ready", "role": "standby"}
    assert overview == 503  # job requests are the leader's
    assert label == "false"


def test_the_configmap_keeps_the_newest_savepoint_request_outcomes(kube: KubeEmulator) -> None:
    async def scenario() -> list[services.TriggerRecord]:
        _, store = pair("a")
        for n in range(services.TRIGGERS_KEPT + 4):
            record = services.TriggerRecord(
                "j", f"{n:032x}", "stop", "COMPLETED", location=f"/sp/{n}", time_ms=1000 + n
            )
            await store.put_trigger(0, record)
        found = await store.triggers()
        await store.close()
        return found

    found = asyncio.run(scenario())
    assert [r.location for r in found] == [f"/sp/{n}" for n in range(4, services.TRIGGERS_KEPT + 4)]
