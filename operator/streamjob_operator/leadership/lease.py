"""Leader election among operator replicas on a ``coordination.k8s.io/v1`` Lease.

kopf's peering pauses an operator while a peer of higher priority runs, but it is not
leader election: two replicas started together both run. So the operator replicas
elect a leader on a Lease, with client-go's ``LeaderElector`` semantics:

- a candidate takes the Lease when nobody holds it (no holder, or the Lease is new) or
  when its holder has not renewed it for ``leaseDurationSeconds``, measured on the
  candidate's own monotonic clock from when it last saw the Lease's record change (so
  clocks of different nodes need not agree);
- every write is a compare-and-swap on ``resourceVersion``; ``leaseTransitions`` grows
  with each change of holder;
- the leader renews every ``retry_period``; one that has not renewed within
  ``renew_deadline`` stops leading, before ``lease_duration`` lets anyone else in
  (hence lease duration > renew deadline > retry period);
- on a clean shutdown the leader releases the Lease (holder cleared), so that a
  standby takes over at its next retry instead of after the lease duration.

:meth:`LeaseElector.run` campaigns, runs ``lead(stop)`` while it leads, and when the
Lease is lost sets ``stop``, waits ``stop_grace`` for ``lead`` to end, cancels it,
and campaigns again. The Lease is the operator's own, not a child of anything: its
name and namespace come from the command line (the Helm chart's Role grants
get/create/update on it).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import logging
import math
import time
from collections.abc import Callable, Coroutine
from typing import Any

import aiohttp
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from streamjob_operator.observing import kubeapi

log = logging.getLogger(__name__)

API_VERSION = "coordination.k8s.io/v1"
_ERRORS = (ApiException, aiohttp.ClientError, OSError, TimeoutError, asyncio.TimeoutError)

Lead = Callable[[asyncio.Event], Coroutine[Any, Any, None]]


@dataclasses.dataclass(frozen=True)
class Timings:
    """Seconds, with client-go's defaults."""

    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0

    def __post_init__(self) -> None:
        if not self.lease_duration > self.renew_deadline > self.retry_period > 0:
            raise ValueError(
                f"leader election needs lease duration ({self.lease_duration} s) > renew"
                f" deadline ({self.renew_deadline} s) > retry period ({self.retry_period} s) > 0"
            )


def _micro(moment: datetime.datetime) -> str:
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


class LeaseElector:
    def __init__(
        self,
        api: client.ApiClient,
        namespace: str,
        name: str,
        identity: str,
        timings: Timings | None = None,
        *,
        stop_grace: float = 5.0,
        on_change: Callable[[bool], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.api = api
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.timings = timings or Timings()
        self.stop_grace = stop_grace
        self.on_change = on_change
        self.clock = clock
        self.leading = False
        self.transitions: int | None = None  # leaseTransitions when we took it: our epoch
        self._observed: tuple[Any, ...] | None = None
        self._observed_at = 0.0
        self._resigned = False
        self._holding: asyncio.Task[None] | None = None

    @property
    def path(self) -> str:
        return kubeapi.path(API_VERSION, "leases", self.namespace, self.name)

    def _set_leading(self, leading: bool) -> None:
        if leading != self.leading:
            self.leading = leading
            log.info(
                "%s %s the Lease %s/%s",
                self.identity,
                "holds" if leading else "no longer holds",
                self.namespace,
                self.name,
            )
            if self.on_change is not None:
                self.on_change(leading)

    def _spec(self, transitions: int, acquired: str) -> dict[str, Any]:
        return {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": max(1, math.ceil(self.timings.lease_duration)),
            "acquireTime": acquired,
            "renewTime": _micro(_now()),
            "leaseTransitions": transitions,
        }

    async def try_acquire_or_renew(self) -> bool:
        """One round of client-go's ``tryAcquireOrRenew``: True while we hold the Lease."""
        lease = await kubeapi.get(self.api, self.path)
        if lease is None:
            body = {
                "apiVersion": API_VERSION,
                "kind": "Lease",
                "metadata": {"name": self.name, "namespace": self.namespace},
                "spec": self._spec(0, _micro(_now())),
            }
            try:
                await kubeapi.request(self.api, "POST", kubeapi.collection_of(body), body=body)
            except ApiException as e:
                if e.status == 409:
                    return False  # a rival created it first
                raise
            self.transitions = 0
            return True
        spec = lease.get("spec") or {}
        holder = spec.get("holderIdentity") or ""
        record = (
            holder,
            spec.get("renewTime"),
            spec.get("leaseTransitions"),
            spec.get("leaseDurationSeconds"),
        )
        now = self.clock()
        if record != self._observed:
            self._observed, self._observed_at = record, now
        duration = float(spec.get("leaseDurationSeconds") or self.timings.lease_duration)
        if holder and holder != self.identity and self._observed_at + duration > now:
            return False  # held, and renewed within its duration as far as we saw
        ours = holder == self.identity
        transitions = int(spec.get("leaseTransitions") or 0) + (0 if ours else 1)
        acquired = spec.get("acquireTime") if ours and spec.get("acquireTime") else None
        body = {
            "apiVersion": API_VERSION,
            "kind": "Lease",
            "metadata": {
                "name": self.name,
                "namespace": self.namespace,
                "resourceVersion": lease["metadata"]["resourceVersion"],
            },
            "spec": self._spec(transitions, acquired or _micro(_now())),
        }
        try:
            await kubeapi.request(self.api, "PUT", self.path, body=body)
        except ApiException as e:
            if e.status == 409:
                return False  # someone else wrote it between our read and our write
            raise
        self.transitions = transitions
        return True

    async def release(self) -> None:
        """Hand the Lease back (holder cleared) if we hold it; best effort."""
        with contextlib.suppress(*_ERRORS):
            async with asyncio.timeout(self.timings.retry_period):
                lease = await kubeapi.get(self.api, self.path)
                spec = (lease or {}).get("spec") or {}
                if lease is None or spec.get("holderIdentity") != self.identity:
                    return
                now = _micro(_now())
                body = {
                    "apiVersion": API_VERSION,
                    "kind": "Lease",
                    "metadata": {
                        "name": self.name,
                        "namespace": self.namespace,
                        "resourceVersion": lease["metadata"]["resourceVersion"],
                    },
                    "spec": {
                        "holderIdentity": "",
                        "leaseDurationSeconds": 1,
                        "acquireTime": now,
                        "renewTime": now,
                        "leaseTransitions": int(spec.get("leaseTransitions") or 0),
                    },
                }
                await kubeapi.request(self.api, "PUT", self.path, body=body)
                log.info("%s released the Lease %s/%s", self.identity, self.namespace, self.name)

    def resigned(self) -> bool:
        return self._resigned

    async def resign(self) -> None:
        """Stop leading now and hand the Lease back, for good: :meth:`run` sets its
        ``stop``, gives ``lead`` its grace, and returns without campaigning again.

        For a clean shutdown by a caller that has already stopped what ``lead`` does
        (the operator's passes), so that a standby takes over at its next retry while
        ``lead`` still winds down, instead of after it."""
        self._resigned = True
        if self._holding is not None:
            self._holding.cancel()
        was_leading = self.leading
        self._set_leading(False)
        if was_leading:
            await self.release()

    async def _attempt(self, budget: float) -> bool | None:
        """One try within ``budget`` seconds; None when the API server did not answer."""
        try:
            async with asyncio.timeout(max(0.05, budget)):
                return await self.try_acquire_or_renew()
        except _ERRORS as e:
            log.warning(
                "leader election: the Lease %s could not be read or written: %r", self.name, e
            )
            return None

    async def acquire(self) -> None:
        """Campaign until we hold the Lease."""
        while True:
            if await self._attempt(self.timings.retry_period):
                self._set_leading(True)
                return
            await asyncio.sleep(self.timings.retry_period)

    async def hold(self) -> None:
        """Renew every retry period; return once the Lease is lost or not renewed in time."""
        renewed = self.clock()
        while True:
            await asyncio.sleep(self.timings.retry_period)
            left = self.timings.renew_deadline - (self.clock() - renewed)
            held = await self._attempt(left)
            if held:
                renewed = self.clock()
            elif held is False or self.clock() - renewed >= self.timings.renew_deadline:
                self._set_leading(False)
                return

    async def run(self, lead: Lead, *, release_on_exit: bool = True) -> None:
        """Lead with ``lead(stop)`` whenever elected, forever (until cancelled, or until
        ``lead`` returns or raises on its own while leading: then that ends ``run``).

        On the way out (cancelled, or ``lead`` ended) the Lease is released, unless
        ``release_on_exit`` is off (a crash, as tests simulate it). After
        :meth:`resign` it returns once ``lead`` ended (or its grace is over).
        """
        try:
            while not self.resigned():
                await self.acquire()
                if self.resigned():  # resigned while campaigning
                    break
                stop = asyncio.Event()
                leader = asyncio.create_task(lead(stop), name=f"leading-{self.identity}")
                holder = asyncio.create_task(self.hold(), name=f"holding-{self.identity}")
                self._holding = holder
                try:
                    done, _ = await asyncio.wait(
                        {leader, holder}, return_when=asyncio.FIRST_COMPLETED
                    )
                    if leader in done:
                        holder.cancel()
                        leader.result()  # lead raised: propagate
                        return
                    stop.set()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(asyncio.shield(leader), self.stop_grace)
                finally:
                    for task in (leader, holder):
                        task.cancel()
                    await asyncio.gather(leader, holder, return_exceptions=True)
        finally:
            was_leading = self.leading
            self._set_leading(False)
            if release_on_exit and was_leading:
                await asyncio.shield(self.release())
