"""The operator's Lease elector against the Kubernetes emulator: one leader, takeover after a
crash (lease duration) or a release (at once), stepping down when renewals fail."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Coroutine
from typing import Any

import pytest
from kubernetes_asyncio import client

from streamjob_operator.leadership import lease
from tests.kube import KubeEmulator, fixtures

kube = fixtures.kube

NAMESPACE = "default"
FAST = lease.Timings(lease_duration=1.5, renew_deadline=1.0, retry_period=0.1)


class Candidate:
    """An elector whose ``lead`` records when it runs and when it is told to stop."""

    def __init__(self, api: client.ApiClient, identity: str) -> None:
        self.elector = lease.LeaseElector(
            api, NAMESPACE, "streamjob-operator", identity, FAST, stop_grace=1.0
        )
        self.leading_since: float | None = None
        self.stopped_at: float | None = None
        self.task: asyncio.Task[None] | None = None

    def led_since(self) -> float | None:
        return self.leading_since  # read through a call: mypy keeps no narrowing across awaits

    async def lead(self, stop: asyncio.Event) -> None:
        self.leading_since = time.monotonic()
        self.stopped_at = None
        await stop.wait()
        self.stopped_at = time.monotonic()

    def start(self, release_on_exit: bool = True) -> None:
        self.task = asyncio.create_task(
            self.elector.run(self.lead, release_on_exit=release_on_exit)
        )

    async def kill(self) -> None:
        assert self.task is not None
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


async def until(condition: Any, within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        await asyncio.sleep(0.02)


def run(kube: KubeEmulator, body: Any) -> None:
    async def main() -> None:
        async with fixtures.api_client(kube) as api:
            await asyncio.wait_for(body(api), 30)

    asyncio.run(main())


def holder(kube: KubeEmulator) -> tuple[str, int]:
    stored = kube.get("coordination.k8s.io/v1", "leases", "streamjob-operator", NAMESPACE)
    assert stored is not None
    spec = stored["spec"]
    return spec.get("holderIdentity") or "", spec["leaseTransitions"]


def test_one_of_two_candidates_leads_and_the_other_takes_over_after_it_crashes(
    kube: KubeEmulator,
) -> None:
    async def body(api: client.ApiClient) -> None:
        a, b = Candidate(api, "a"), Candidate(api, "b")
        a.start(release_on_exit=False)
        await until(lambda: a.elector.leading)
        b.start()
        await asyncio.sleep(FAST.lease_duration)  # several of b's retries
        assert a.leading_since is not None
        assert b.leading_since is None
        assert not b.elector.leading
        assert holder(kube) == ("a", 0)
        crashed = time.monotonic()
        await a.kill()  # no release: b must wait out the lease duration
        await until(lambda: b.elector.leading)
        took_over = b.led_since()
        assert took_over is not None
        assert took_over - crashed >= FAST.lease_duration - 0.2
        assert holder(kube) == ("b", 1)
        await b.kill()
        assert holder(kube)[0] == ""  # released on the way out

    run(kube, body)


def test_a_released_lease_is_taken_over_at_once(kube: KubeEmulator) -> None:
    async def body(api: client.ApiClient) -> None:
        a, b = Candidate(api, "a"), Candidate(api, "b")
        a.start()
        await until(lambda: a.elector.leading)
        b.start()
        await asyncio.sleep(0.3)
        released = time.monotonic()
        await a.kill()
        await until(lambda: b.elector.leading)
        took_over = b.led_since()
        assert took_over is not None
        assert took_over - released < FAST.lease_duration
        assert holder(kube) == ("b", 1)
        await b.kill()

    run(kube, body)


def test_a_leader_that_cannot_renew_stops_leading_within_the_renew_deadline(
    kube: KubeEmulator,
) -> None:
    async def body(api: client.ApiClient) -> None:
        a = Candidate(api, "a")
        a.start()
        await until(lambda: a.elector.leading)
        failing = time.monotonic()
        kube.inject_error(503, path_contains="/leases/streamjob-operator", times=1000)
        await until(lambda: a.stopped_at is not None)
        assert a.stopped_at is not None
        assert a.stopped_at - failing <= FAST.renew_deadline + FAST.retry_period + 0.3
        assert not a.elector.leading
        await a.kill()

    run(kube, body)


def test_a_leader_whose_lease_was_taken_stops_leading(kube: KubeEmulator) -> None:
    async def body(api: client.ApiClient) -> None:
        a = Candidate(api, "a")
        a.start()
        await until(lambda: a.elector.leading)
        stored = kube.get("coordination.k8s.io/v1", "leases", "streamjob-operator", NAMESPACE)
        assert stored is not None
        stored["spec"]["holderIdentity"] = "usurper"
        kube.put_object(stored)
        await until(lambda: a.stopped_at is not None)
        assert not a.elector.leading
        await a.kill()

    run(kube, body)


def test_lead_ending_on_its_own_ends_the_run_and_releases(kube: KubeEmulator) -> None:
    async def body(api: client.ApiClient) -> None:
        elector = lease.LeaseElector(api, NAMESPACE, "streamjob-operator", "a", FAST)
        changes: list[bool] = []
        elector.on_change = changes.append

        def lead(stop: asyncio.Event) -> Coroutine[Any, Any, None]:
            return asyncio.sleep(0.2)

        await elector.run(lead)
        assert changes == [True, False]
        assert holder(kube) == ("", 0)

    run(kube, body)


def test_timings_must_decrease() -> None:
    with pytest.raises(ValueError, match="lease duration"):
        lease.Timings(lease_duration=10, renew_deadline=10, retry_period=2)
