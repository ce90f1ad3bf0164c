"""etcd HA uses every endpoint of the cluster, not only the first (real etcd processes)."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from pathlib import Path

from streamjob_runtime.ha import etcd as ha_etcd
from streamjob_runtime.ha import services
from tests.conftest import Harness
from tests.etcd import Etcd
from tests.ha import failover
from tests.ha.test_etcd_failover import LEASE
from tests.ports import free_port


def config(cluster_id: str, endpoints: tuple[str, ...]) -> services.HaConfig:
    return services.HaConfig(
        services.HaKind.ETCD, cluster_id, 3_000, 2_000, 500, etcd_endpoints=endpoints
    )


def test_a_dead_first_endpoint_does_not_keep_a_jobmanager_from_leading(etcd: Etcd) -> None:
    dead = f"127.0.0.1:{free_port()}"  # nothing listens there
    cfg = config("dead-first", (dead, etcd.endpoint))

    async def scenario() -> None:
        client = ha_etcd.connect(cfg)
        elector = ha_etcd.EtcdLeaderElector(cfg, client, "jm-0")
        store = ha_etcd.EtcdHaStore(cfg, client)
        elected: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        async def on_elected(epoch: int) -> None:
            elected.set_result(epoch)

        async def on_revoked(reason: str) -> None:
            raise AssertionError(f"revoked: {reason}")

        run = asyncio.create_task(elector.run(on_elected, on_revoked))
        try:
            epoch = await asyncio.wait_for(elected, 20)
            await store.put_checkpoints(epoch, "job", services.CheckpointRecord(3, ()))
            assert (await store.checkpoints("job")).next_checkpoint_id == 3
        finally:
            run.cancel()
            await elector.release()
            await client.close()

    asyncio.run(scenario())


def test_a_leader_keeps_leading_when_the_etcd_member_it_talks_to_is_killed(
    etcd_cluster: list[Etcd],
) -> None:
    # The member the client talks to first is a raft follower: killing it leaves a quorum
    # with its leader, so the test is about the client's endpoints, not an etcd election.
    first = next(m for m in etcd_cluster if not m.is_raft_leader())
    others = [m for m in etcd_cluster if m is not first]
    cfg = config("member-killed", tuple(m.endpoint for m in [first, *others]))

    async def scenario() -> None:
        client = ha_etcd.connect(cfg)
        elector = ha_etcd.EtcdLeaderElector(cfg, client, "jm-0")
        store = ha_etcd.EtcdHaStore(cfg, client)
        elected: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        revoked: list[str] = []

        async def on_elected(epoch: int) -> None:
            elected.set_result(epoch)

        async def on_revoked(reason: str) -> None:
            revoked.append(reason)

        run = asyncio.create_task(elector.run(on_elected, on_revoked))
        try:
            epoch = await asyncio.wait_for(elected, 20)
            first.process.send_signal(signal.SIGKILL)
            first.process.wait(10)
            # Watch for longer than the lease (3 s): the leader keeps it only if its
            # renewals went through another member.
            await asyncio.sleep(4)
            assert not revoked, revoked
            assert not run.done()
            assert client.index != 0  # moved away from the killed first member
            await store.put_checkpoints(epoch, "job", services.CheckpointRecord(5, ()))
            assert (await store.checkpoints("job")).next_checkpoint_id == 5
        finally:
            run.cancel()
            await elector.release()
            await client.close()

    asyncio.run(scenario())


def test_jobmanagers_fail_over_with_a_dead_first_etcd_endpoint(
    etcd: Etcd, cluster_factory: Callable[..., Harness], tmp_path: Path
) -> None:
    endpoints = f"127.0.0.1:{free_port()},{etcd.endpoint}"
    ha = ["--ha", "etcd", "--ha-etcd-endpoints", endpoints, "--ha-cluster-id", "dead-first",
          *LEASE]  # fmt: skip
    h = cluster_factory(taskmanagers=2, jobmanagers=2, ha=ha)
    failover.kill_leader_mid_job(h, tmp_path / "out", 12_000)
