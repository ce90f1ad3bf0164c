"""HA on etcd (outside Kubernetes): election on a lease-bound key, fenced transactions.

Keys under ``/streamjob/<cluster id>/``: ``leader`` (the election key, bound to
the leader's lease; its create revision is the leader's epoch), ``leader-info``,
``jobs/<job id>`` and ``checkpoints/<job id>``.  Every metadata write is a
transaction that succeeds only while ``leader`` still has the writer's create
revision, so a deposed leader's write fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import aetcd
import msgspec

from streamjob_runtime import logs
from streamjob_runtime.ha import services

log = logging.getLogger(__name__)

_ETCD_ERRORS = (aetcd.ClientError, OSError, TimeoutError)
_T = TypeVar("_T")


class _Lost(Exception):
    pass


class EtcdCluster:
    """Every endpoint of one etcd cluster, reached through one gRPC client at a time.

    A call goes to the current endpoint; on a connection error or a timeout it
    moves on to the next endpoint (round robin) and tries again, each endpoint
    once per call, within the call's time limit (split evenly between the
    endpoints left). Losing one member of a three-member cluster therefore costs
    one failed try, not the leadership. Leases and the leader key live in the
    cluster, not in a member, so they survive the move.
    """

    def __init__(self, endpoints: tuple[str, ...], rpc_timeout_s: int) -> None:
        if not endpoints:
            raise ValueError("etcd HA needs at least one endpoint")
        self.endpoints = endpoints
        self.rpc_timeout_s = rpc_timeout_s
        self.index = 0
        self.client = self._client_for(0)

    def _client_for(self, index: int) -> aetcd.Client:
        host, _, port = self.endpoints[index].rpartition(":")
        return aetcd.Client(host=host, port=int(port), timeout=self.rpc_timeout_s)

    @property
    def transactions(self) -> Any:
        return self.client.transactions

    async def call(self, fn: Callable[[aetcd.Client], Awaitable[_T]], limit_s: float) -> _T:
        """``fn(client)`` on the current endpoint, then on the next ones while they fail."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limit_s
        tries = len(self.endpoints)
        for attempt in range(tries):
            client = self.client
            share = (deadline - loop.time()) / (tries - attempt)
            try:
                async with asyncio.timeout(max(share, 0.001)):
                    return await fn(client)
            except _ETCD_ERRORS as e:
                if attempt == tries - 1:
                    raise
                await self._next_endpoint(client, e)
        raise AssertionError("unreachable")  # the loop returns or raises

    async def _next_endpoint(self, failed: aetcd.Client, error: BaseException) -> None:
        if failed is not self.client:
            return  # a concurrent call already moved on
        previous = self.endpoints[self.index]
        self.index = (self.index + 1) % len(self.endpoints)
        self.client = self._client_for(self.index)
        logs.event(
            log,
            "etcd_endpoint_changed",
            logging.WARNING,
            previous=previous,
            endpoint=self.endpoints[self.index],
            error=repr(error),
        )
        with contextlib.suppress(*_ETCD_ERRORS):
            await failed.close()

    async def close(self) -> None:
        with contextlib.suppress(*_ETCD_ERRORS):
            await self.client.close()


def connect(cfg: services.HaConfig) -> EtcdCluster:
    """A client of every endpoint in ``cfg`` (see :class:`EtcdCluster`)."""
    return EtcdCluster(cfg.etcd_endpoints, max(1, cfg.retry_period_ms // 1000))


def _prefix(cfg: services.HaConfig) -> str:
    return f"/streamjob/{cfg.cluster_id}/"


class EtcdLeaderElector:
    def __init__(self, cfg: services.HaConfig, client: EtcdCluster, identity: str) -> None:
        self.cfg = cfg
        self.client = client
        self.identity = identity
        self.key = (_prefix(cfg) + "leader").encode()
        self._lease: int | None = None  # the lease id (leases belong to the cluster)
        self._timeout = cfg.retry_period_ms / 1000

    async def _call(
        self, fn: Callable[[aetcd.Client], Awaitable[Any]], limit_s: float | None = None
    ) -> Any:
        return await self.client.call(fn, limit_s or self._timeout)

    async def _refresh(self, lease_id: int, limit_s: float | None = None) -> Any:
        return await self._call(lambda c: c.refresh_lease(lease_id), limit_s)

    async def _create_key(self, lease_id: int) -> None:
        """Create the leader key bound to ``lease_id`` unless it exists."""
        tx = self.client.transactions
        await self._call(
            lambda c: c.transaction(
                compare=[tx.create(self.key) == 0],
                success=[tx.put(self.key, self.identity.encode(), lease_id)],
                failure=[],
            )
        )

    async def _campaign(self) -> int:
        retry = self.cfg.retry_period_ms / 1000
        ttl = math.ceil(self.cfg.lease_duration_ms / 1000)
        while True:
            try:
                if self._lease is not None:
                    # Keep the campaign's lease alive while a rival leads.
                    reply = await self._refresh(self._lease)
                    if reply is None or reply.TTL <= 0:
                        self._lease = None
                if self._lease is None:
                    granted = await self._call(lambda c: c.lease(ttl))
                    self._lease = int(granted.id)
                lease_id = self._lease
                await self._create_key(lease_id)
                # Whether this try or an earlier one whose answer was lost (a member
                # that failed mid-call) created the key: it is ours if bound to our lease.
                current = await self._call(lambda c: c.get(self.key))
                if (
                    current is not None
                    and current.value == self.identity.encode()
                    and current.lease == lease_id
                ):
                    return int(current.create_revision)
            except _ETCD_ERRORS as e:
                logs.event(log, "leader_election_retry", logging.WARNING, error=repr(e))
                self._lease = None
            await asyncio.sleep(retry)

    async def run(self, on_elected: services.Elected, on_revoked: services.Revoked) -> None:
        epoch = await self._campaign()
        logs.event(log, "leadership_granted", identity=self.identity, epoch=epoch, backend="etcd")
        await on_elected(epoch)
        retry = self.cfg.retry_period_ms / 1000
        deadline = self.cfg.renew_deadline_ms / 1000
        last_renewed = time.monotonic()
        while True:
            await asyncio.sleep(retry)
            try:
                left = max(0.05, deadline - (time.monotonic() - last_renewed))
                assert self._lease is not None
                reply = await self._refresh(self._lease, left)
                if reply is None or reply.TTL <= 0:
                    raise _Lost("the lease expired")
                left = max(0.05, deadline - (time.monotonic() - last_renewed))
                current = await self._call(lambda c: c.get(self.key), left)
                if current is None or current.create_revision != epoch:
                    raise _Lost("another JobManager holds the leader key")
                last_renewed = time.monotonic()
            except _Lost as e:
                await on_revoked(str(e))
                return
            except _ETCD_ERRORS as e:
                if time.monotonic() - last_renewed >= deadline:
                    await on_revoked(
                        f"could not renew the lease within the renew deadline"
                        f" ({self.cfg.renew_deadline_ms} ms): {e!r}"
                    )
                    return

    async def release(self) -> None:
        if self._lease is not None:
            lease_id = self._lease
            with contextlib.suppress(*_ETCD_ERRORS):
                await self._call(lambda c: c.revoke_lease(lease_id))
            self._lease = None


class EtcdHaStore:
    def __init__(self, cfg: services.HaConfig, client: EtcdCluster) -> None:
        self.cfg = cfg
        self.client = client
        self.prefix = _prefix(cfg)
        self.leader_key = (self.prefix + "leader").encode()
        self._limit_s = cfg.renew_deadline_ms / 1000

    async def _read(self, fn: Callable[[aetcd.Client], Awaitable[_T]]) -> _T:
        return await self.client.call(fn, self._limit_s)

    async def _fenced(self, epoch: int, key: str, value: bytes | None) -> None:
        tx = self.client.transactions
        op = tx.put(key.encode(), value) if value is not None else tx.delete(key.encode())
        try:
            # Safe to repeat on another endpoint: the same put or delete, fenced the same way.
            ok, _ = await self.client.call(
                lambda c: c.transaction(
                    compare=[tx.create(self.leader_key) == epoch], success=[op], failure=[]
                ),
                self._limit_s,
            )
        except _ETCD_ERRORS as e:
            raise services.WriteOutcomeUnknown(f"HA metadata write to etcd failed: {e!r}") from None
        if not ok:
            raise services.FencedError(
                f"HA metadata write rejected: epoch {epoch} is no longer the leader's"
            )

    async def _get(self, key: str) -> bytes | None:
        kv = await self._read(lambda c: c.get(key.encode()))
        return None if kv is None else bytes(kv.value)

    async def withdraw(self) -> None:
        """Nothing routes to an etcd JobManager by a mark of its own: nothing to undo."""

    async def publish_leader(self, epoch: int, leader: services.LeaderInfo) -> None:
        await self._fenced(epoch, self.prefix + "leader-info", services.encode(leader))

    async def leader(self) -> services.LeaderInfo | None:
        raw = await self._get(self.prefix + "leader-info")
        holder = await self._read(lambda c: c.get(self.leader_key))
        if raw is None or holder is None:
            return None
        info = msgspec.json.decode(raw, type=services.LeaderInfo)
        return info if info.epoch == holder.create_revision else None

    async def put_job(self, epoch: int, job: services.JobRecord) -> None:
        await self._fenced(epoch, f"{self.prefix}jobs/{job.job_id}", services.encode(job))

    async def remove_job(self, epoch: int, job_id: str) -> None:
        await self._fenced(epoch, f"{self.prefix}jobs/{job_id}", None)
        await self._fenced(epoch, f"{self.prefix}checkpoints/{job_id}", None)

    async def jobs(self) -> list[services.JobRecord]:
        result = await self._read(lambda c: c.get_prefix(f"{self.prefix}jobs/".encode()))
        return [msgspec.json.decode(kv.value, type=services.JobRecord) for kv in result]

    async def put_checkpoints(
        self, epoch: int, job_id: str, record: services.CheckpointRecord
    ) -> None:
        await self._fenced(epoch, f"{self.prefix}checkpoints/{job_id}", services.encode(record))

    async def checkpoints(self, job_id: str) -> services.CheckpointRecord:
        raw = await self._get(f"{self.prefix}checkpoints/{job_id}")
        if raw is None:
            return services.CheckpointRecord()
        return msgspec.json.decode(raw, type=services.CheckpointRecord)

    async def put_trigger(self, epoch: int, record: services.TriggerRecord) -> None:
        key = f"{self.prefix}triggers/{record.request_id}"
        await self._fenced(epoch, key, services.encode(record))
        kept = {r.request_id for r in services.newest_triggers(await self.triggers())}
        for old in await self.triggers():
            if old.request_id not in kept:
                await self._fenced(epoch, f"{self.prefix}triggers/{old.request_id}", None)

    async def triggers(self) -> list[services.TriggerRecord]:
        result = await self._read(lambda c: c.get_prefix(f"{self.prefix}triggers/".encode()))
        found = [msgspec.json.decode(kv.value, type=services.TriggerRecord) for kv in result]
        return sorted(found, key=lambda r: (r.time_ms, r.request_id))

    async def close(self) -> None:
        await self.client.close()
