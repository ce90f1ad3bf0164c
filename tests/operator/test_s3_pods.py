"""The operator with a StreamJob's checkpoints and savepoints on S3 (moto's server) and no
shared volume for state: a last-state upgrade restores the old job's latest checkpoint
from S3 exactly, found through the Kubernetes HA metadata. The store's endpoint reaches
the pods only through the StreamJob's ``spec.config`` (``s3.endpoint``), not their
environment."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_exactly_once_recovery import assert_exact
from tests.kube import KubeEmulator, fixtures
from tests.kube.pods import PodRunner
from tests.operator import live, test_handlers
from tests.operator.test_lifecycle_pods import HA, create
from tests.operator.test_s3_disposal import BUCKET, keys, s3  # noqa: F401  (a fixture)

kube = fixtures.kube
pod_runner = fixtures.pod_runner


def test_a_last_state_upgrade_on_s3_restores_the_latest_checkpoint_exactly(
    s3: Any,  # noqa: F811 - the fixture
    monkeypatch: pytest.MonkeyPatch,
    kube: KubeEmulator,
    pod_runner: PodRunner,
    tmp_path: Path,
) -> None:
    endpoint = os.environ["AWS_ENDPOINT_URL"]
    monkeypatch.delenv("AWS_ENDPOINT_URL")  # the pods learn it from spec.config only

    def spec(rate: int) -> dict[str, Any]:
        body = live.spec(tmp_path, rate=rate)
        body["job"]["upgradeMode"] = "last-state"
        body["highAvailability"] = HA
        body["checkpointing"]["storage"] = f"s3://{BUCKET}/checkpoints"
        body["savepoints"]["directory"] = f"s3://{BUCKET}/savepoints"
        body["config"] = {"s3.endpoint": endpoint, "s3.path.style.access": "true"}
        return body

    with live.operator(kube, pod_runner):
        create(kube, spec(live.RATE))
        first = live.job_id(live.wait_stable(kube, "sum"))
        assert first is not None
        live.patch(kube, "sum", {"job": {"args": spec(live.FAST_RATE)["job"]["args"]}})
        status = live.wait_redeployed(kube, "sum", first, "the upgraded job")
        restored = status["reconciliation"]["restorePath"]
        # a checkpoint of the old job on S3, not a savepoint: its latest completed one
        prefix = f"s3://{BUCKET}/checkpoints/{first}/chk-"
        assert restored.startswith(prefix), restored
        completed = [k.split("/")[2] for k in keys(s3) if k.startswith(f"checkpoints/{first}/chk-")]
        completed = [c for c in completed if f"checkpoints/{first}/{c}/_metadata" in keys(s3)]
        assert restored.removeprefix(f"s3://{BUCKET}/checkpoints/{first}/") == max(
            completed, key=lambda n: int(n[4:])
        )
        assert status.get("lastSavepoint") is None
        live.wait_finished(kube, "sum")
        assert "SavepointCompleted" not in test_handlers.reasons(kube, "sum")
    # Nothing of the job's state went to the local disk (its output does: the file sink
    # on S3 has tests of its own).
    assert not (tmp_path / "checkpoints").exists()
    assert not (tmp_path / "savepoints").exists()
    assert_exact(tmp_path / "out", events=live.EVENTS)
