"""The operator's Lease elector against the Kubernetes emulator: one leader, takeover after a
crash (lease duration) or a release (at once), stepping down when renewals fail."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any

import pytest
from kubernetes_asyncio import client

from streamjob_operator.api import crd
from streamjob_operator.leadership import lease
from tests.kube import KubeEmulator, fixtures
from tests.operator import test_observing
from tests.ports import free_port

kube = fixtures.kube
kubeconfig = fixtures.kubeconfig

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


async def leading(api: client.ApiClient, identity: str) -> Candidate:
    """A Candidate started alone, once it leads."""
    candidate = Candidate(api, identity)
    candidate.start()
    await until(lambda: candidate.elector.leading)
    return candidate


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


def test_a_resigned_leader_releases_before_its_lead_ends_and_does_not_campaign_again(
    kube: KubeEmulator,
) -> None:
    async def body(api: client.ApiClient) -> None:
        a = await leading(api, "a")
        await a.elector.resign()
        # released at once, while lead has not been told to stop yet
        assert holder(kube) == ("", 0)
        assert not a.elector.leading
        assert a.task is not None
        await asyncio.wait_for(a.task, 5)  # run returns once lead ended
        assert a.stopped_at is not None
        assert holder(kube) == ("", 0)  # and it did not take the Lease again

    run(kube, body)


def test_a_leader_that_cannot_renew_stops_leading_within_the_renew_deadline(
    kube: KubeEmulator,
) -> None:
    async def body(api: client.ApiClient) -> None:
        a = await leading(api, "a")
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
        a = await leading(api, "a")
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


# -- two operator processes -----------------------------------------------------------------


class OperatorProcess:
    """``python -m streamjob_operator`` against the emulator (through a kubeconfig)."""

    def __init__(
        self, kubeconfig: Path, identity: str, logs: Path, extra: Sequence[str] = ()
    ) -> None:
        self.identity = identity
        self.port = free_port()
        self.log_path = logs / f"operator-{identity}.log"
        env = {**os.environ, "KUBECONFIG": str(kubeconfig)}
        env.pop("KUBERNETES_SERVICE_HOST", None)
        command = [
            sys.executable, "-m", "streamjob_operator",
            "--namespace", NAMESPACE,
            "--identity", identity,
            "--lease-duration", "2", "--renew-deadline", "1.5", "--retry-period", "0.2",
            "--metrics-host", "127.0.0.1", "--metrics-port", str(self.port),
            "--progress-check-interval", "1s",
            *extra,
        ]  # fmt: skip
        with open(self.log_path, "wb") as log:
            self.popen = subprocess.Popen(
                command, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )

    def metrics(self) -> dict[str, float]:
        """The samples of /metrics (empty while the server is not up)."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=2) as r:
                text = r.read().decode()
        except OSError:
            return {}
        samples = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                key, _, value = line.rpartition(" ")
                samples[key] = float(value)
        return samples

    def health(self) -> dict[str, Any]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=2) as r:
                answer: dict[str, Any] = json.loads(r.read())
                return answer
        except OSError:
            return {}

    def reconciles(self) -> float:
        return sum(
            v
            for k, v in self.metrics().items()
            if k.startswith("streamjob_operator_reconciles_total")
        )

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
        self.popen.wait(10)

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]


def children_of(kube: KubeEmulator, name: str) -> Any:
    return kube.get("apps/v1", "deployments", f"{name}-jobmanager", NAMESPACE)


def test_of_two_operator_processes_only_the_leader_reconciles_and_the_other_takes_over(
    kube: KubeEmulator, kubeconfig: Path, tmp_path: Path
) -> None:
    kube.apply_crd(crd.build())
    first = OperatorProcess(kubeconfig, "first", tmp_path)
    second: OperatorProcess | None = None
    try:
        kube.wait_for(lambda: lease_holder(kube) == "first", timeout=30, what="first to lead")
        second = OperatorProcess(kubeconfig, "second", tmp_path)
        kube.wait_for(lambda: second is not None and second.metrics() != {}, timeout=30)
        kube.create(test_observing.streamjob_body("one"))
        kube.wait_for(lambda: children_of(kube, "one"), timeout=30, what="one's children")
        time.sleep(1.0)  # several timer ticks
        assert first.metrics()["streamjob_operator_leader"] == 1.0
        assert second.metrics()["streamjob_operator_leader"] == 0.0
        assert first.reconciles() > 0
        assert second.reconciles() == 0, second.logs()
        assert lease_holder(kube) == "first"

        first.popen.send_signal(signal.SIGKILL)  # no release: second waits out the lease
        kube.wait_for(lambda: lease_holder(kube) == "second", timeout=30, what="a takeover")
        kube.create(test_observing.streamjob_body("two"))
        kube.wait_for(lambda: children_of(kube, "two"), timeout=30, what="two's children")
        assert second.metrics()["streamjob_operator_leader"] == 1.0
        assert second.reconciles() > 0
        stored = kube.get("coordination.k8s.io/v1", "leases", "streamjob-operator", NAMESPACE)
        assert stored is not None
        assert stored["spec"]["leaseTransitions"] == 1

        second.popen.send_signal(signal.SIGTERM)  # a clean stop hands the Lease back
        assert second.popen.wait(30) == 0, second.logs()
        assert lease_holder(kube) == ""
    finally:
        first.stop()
        if second is not None:
            second.stop()


def lease_holder(kube: KubeEmulator) -> str | None:
    stored = kube.get("coordination.k8s.io/v1", "leases", "streamjob-operator", NAMESPACE)
    if stored is None:
        return None
    holder: str = stored["spec"].get("holderIdentity") or ""
    return holder


def test_an_operator_that_loses_the_lease_stops_reconciling_and_resumes_when_it_is_back(
    kube: KubeEmulator, kubeconfig: Path, tmp_path: Path
) -> None:
    kube.apply_crd(crd.build())
    only = OperatorProcess(kubeconfig, "only", tmp_path)
    try:
        kube.wait_for(lambda: only.health().get("leader") is True, timeout=30, what="leading")
        stored = kube.get("coordination.k8s.io/v1", "leases", "streamjob-operator", NAMESPACE)
        assert stored is not None
        # someone else holds it now, for 4 s, and never renews
        stored["spec"].update(holderIdentity="usurper", leaseDurationSeconds=4)
        kube.put_object(stored)
        kube.wait_for(lambda: only.health().get("leader") is False, timeout=10, what="stepped down")
        kube.create(test_observing.streamjob_body("during"))
        time.sleep(1.0)
        assert children_of(kube, "during") is None
        assert only.metrics()["streamjob_operator_leader"] == 0.0
        kube.wait_for(lambda: children_of(kube, "during"), timeout=30, what="reconciled again")
        assert lease_holder(kube) == "only"
        assert only.health() == {"status": "ok", "leader": True}
        assert only.logs().count("only leads: starting the handlers") == 2
    finally:
        only.stop()


def test_a_sigtermed_leader_hands_the_lease_back_and_a_standby_leads_well_within_its_duration(
    kube: KubeEmulator, kubeconfig: Path, tmp_path: Path
) -> None:
    """With a 30 s lease and 20 StreamJobs (a kopf timer each), SIGTERM of the leader: it
    stops its passes and releases the Lease before kopf winds down, so the standby leads
    at its next retry (0.2 s), not after 30 s; the leader exits 0 within a pod's 30 s
    grace period."""
    kube.apply_crd(crd.build())
    slow = ("--lease-duration", "30", "--renew-deadline", "20")
    first = OperatorProcess(kubeconfig, "first", tmp_path, slow)
    second: OperatorProcess | None = None
    try:
        kube.wait_for(lambda: lease_holder(kube) == "first", timeout=30, what="first to lead")
        names = [f"job-{i:02d}" for i in range(20)]
        for name in names:
            kube.create(test_observing.streamjob_body(name))
        kube.wait_for(
            lambda: all(children_of(kube, n) for n in names), timeout=60, what="the children"
        )
        second = OperatorProcess(kubeconfig, "second", tmp_path, slow)
        kube.wait_for(
            lambda: second is not None and second.health() != {}, timeout=60, what="a standby"
        )
        assert second.health()["leader"] is False

        terminated = time.monotonic()
        first.popen.send_signal(signal.SIGTERM)
        kube.wait_for(lambda: lease_holder(kube) == "second", timeout=40, what="a takeover")
        takeover = time.monotonic() - terminated
        assert first.popen.wait(30) == 0, first.logs()
        log = first.log_path.read_text(errors="replace")
        # in this order: passes stopped, Lease released, then kopf stopped
        stopping = log.index("first is stopping: no new passes")
        released = log.index("first released the Lease")
        handlers_stopped = log.index("first: the handlers stopped")
        assert stopping < released < handlers_stopped, log[-3000:]
        assert "did not exit in time" not in log
        assert "Traceback" not in log, log[-3000:]
        # well within the 30 s lease duration (the standby retries every 0.2 s; slack
        # for a loaded machine)
        assert takeover < 10, takeover
        stored = kube.get("coordination.k8s.io/v1", "leases", "streamjob-operator", NAMESPACE)
        assert stored is not None
        assert stored["spec"]["leaseTransitions"] == 1
        kube.create(test_observing.streamjob_body("after"))
        kube.wait_for(lambda: children_of(kube, "after"), timeout=30, what="second reconciles")
    finally:
        first.stop()
        if second is not None:
            second.stop()
