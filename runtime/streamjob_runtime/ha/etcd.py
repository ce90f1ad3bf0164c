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
from typing import Any

import aetcd
import msgspec

from streamjob_runtime import logs
from streamjob_runtime.ha import services

log = logging.getLogger(__name__)

_ETCD_ERRORS = (aetcd.ClientError, OSError, TimeoutError)


class _Lost(Exception):
    pass


def connect(cfg: services.HaConfig) -> aetcd.Client:
    """A client for the first endpoint (etcd proxies requests within its cluster)."""
    host, _, port = cfg.etcd_endpoints[0].rpartition(":")
    return aetcd.Client(host=host, port=int(port), timeout=max(1, cfg.retry_period_ms // 1000))


def _prefix(cfg: services.HaConfig) -> str:
    return f"/streamjob/{cfg.cluster_id}/"


class EtcdLeaderElector:
    def __init__(self, cfg: services.HaConfig, client: aetcd.Client, identity: str) -> None:
        self.cfg = cfg
        self.client = client
        self.identity = identity
        self.key = (_prefix(cfg) + "leader").encode()
        self._lease: Any = None
        self._timeout = cfg.retry_period_ms / 1000

    async def _call(self, coro: Any, limit_s: float | None = None) -> Any:
        async with asyncio.timeout(limit_s or self._timeout):
            return await coro

    async def _campaign(self) -> int:
        retry = self.cfg.retry_period_ms / 1000
        ttl = math.ceil(self.cfg.lease_duration_ms / 1000)
        while True:
            try:
                if self._lease is not None:
                    # Keep the campaign's lease alive while a rival leads.
                    reply = await self._call(self.client.refresh_lease(self._lease.id))
                    if reply is None or reply.TTL <= 0:
                        self._lease = None
                if self._lease is None:
                    self._lease = await self._call(self.client.lease(ttl))
                tx = self.client.transactions
                won, _ = await self._call(
                    self.client.transaction(
                        compare=[tx.create(self.key) == 0],
                        success=[tx.put(self.key, self.identity.encode(), self._lease)],
                        failure=[],
                    )
                )
                if won:
                    current = await self._call(self.client.get(self.key))
                    if current is not None and current.value == self.identity.encode():
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
                reply = await self._call(self.client.refresh_lease(self._lease.id), left)
                if reply is None or reply.TTL <= 0:
                    raise _Lost("the lease expired")
                current = await self._call(self.client.get(self.key), left)
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
            with contextlib.suppress(*_ETCD_ERRORS):
                await self._call(self._lease.revoke())
            self._lease = None


class EtcdHaStore:
    def __init__(self, cfg: services.HaConfig, client: aetcd.Client) -> None:
        self.cfg = cfg
        self.client = client
        self.prefix = _prefix(cfg)
        self.leader_key = (self.prefix + "leader").encode()

    async def _fenced(self, epoch: int, key: str, value: bytes | None) -> None:
        tx = self.client.transactions
        op = tx.put(key.encode(), value) if value is not None else tx.delete(key.encode())
        try:
            async with asyncio.timeout(self.cfg.renew_deadline_ms / 1000):
                ok, _ = await self.client.transaction(
                    compare=[tx.create(self.leader_key) == epoch], success=[op], failure=[]
                )
        except _ETCD_ERRORS as e:
            raise services.FencedError(f"HA metadata write to etcd failed: {e!r}") from None
        if not ok:
            raise services.FencedError(
                f"HA metadata write rejected: epoch {epoch} is no longer the leader's"
            )

    async def _get(self, key: str) -> bytes | None:
        kv = await self.client.get(key.encode())
        return None if kv is None else bytes(kv.value)

    async def withdraw(self) -> None:
        """Nothing routes to an etcd JobManager by a mark of its own: nothing to undo."""

    async def publish_leader(self, epoch: int, leader: services.LeaderInfo) -> None:
        await self._fenced(epoch, self.prefix + "leader-info", services.encode(leader))

    async def leader(self) -> services.LeaderInfo | None:
        raw = await self._get(self.prefix + "leader-info")
        holder = await self.client.get(self.leader_key)
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
        result = await self.client.get_prefix(f"{self.prefix}jobs/".encode())
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
        result = await self.client.get_prefix(f"{self.prefix}triggers/".encode())
        found = [msgspec.json.decode(kv.value, type=services.TriggerRecord) for kv in result]
        return sorted(found, key=lambda r: (r.time_ms, r.request_id))

    async def close(self) -> None:
        await self.client.close()
