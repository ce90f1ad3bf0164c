"""The e2e suite's cluster: kind, the image built and loaded, the operator's chart installed.

Run it with ``make e2e`` (it is not part of the default test run: pytest's testpaths
is ``tests``). It needs Docker (a running engine) and kind, and skips saying which is
missing; helm and kubectl come from ``.tools/bin`` (``scripts/tools.sh``) or PATH.

The session creates a kind cluster with a unique name and its own kubeconfig, builds
the image as ``streamjob:e2e``, loads it into the cluster, installs
``charts/streamjob-operator`` with that image into the ``streamjob-e2e`` namespace and
deletes the cluster at the end (``STREAMJOB_E2E_KEEP=1`` keeps it, to look around;
its name and kubeconfig are printed). A failed test prints ``kubectl get``,
``describe`` and every pod's logs.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Generator, Iterator
from typing import Any

import pytest
import yaml

from e2e import cluster

NAMESPACE = "streamjob-e2e"
IMAGE = "streamjob:e2e"
RELEASE = "streamjob-operator"
READER = "streamjob-reader"
CLAIM = "streamjob-data"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reason = cluster.missing_tools()
    if reason is not None:
        skip = pytest.mark.skip(reason=f"e2e needs Docker and kind: {reason}")
        for item in items:
            item.add_marker(skip)


FAILED = pytest.StashKey[bool]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item,
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.failed:
        item.stash[FAILED] = True
    return report


@pytest.fixture(scope="session")
def kube(tmp_path_factory: pytest.TempPathFactory) -> Iterator[cluster.Kube]:
    kind, docker = cluster.tool("kind"), cluster.tool("docker")
    assert kind is not None
    assert docker is not None
    name = f"streamjob-e2e-{uuid.uuid4().hex[:6]}"
    kubeconfig = tmp_path_factory.mktemp("kind") / "kubeconfig"
    cluster.run([docker, "build", "-t", IMAGE, str(cluster.ROOT)], timeout=1800)
    cluster.run(
        [kind, "create", "cluster", "--name", name, "--kubeconfig", str(kubeconfig),
         "--wait", "180s"],
        timeout=600,
    )  # fmt: skip
    try:
        cluster.run([kind, "load", "docker-image", IMAGE, "--name", name], timeout=600)
        kube = cluster.Kube(kubeconfig, NAMESPACE)
        try:
            kube.helm(
                "install", RELEASE, str(cluster.ROOT / "charts" / "streamjob-operator"),
                "--create-namespace",
                "--set", "image.repository=streamjob",
                "--set", "image.tag=e2e",
                "--set", "image.pullPolicy=Never",
                "--wait", "--timeout", "5m",
            )  # fmt: skip
        except AssertionError:
            print(kube.diagnose())
            raise
        yield kube
    finally:
        if os.environ.get("STREAMJOB_E2E_KEEP") == "1":
            print(f"kept kind cluster {name}; KUBECONFIG={kubeconfig}")
        else:
            cluster.run(
                [kind, "delete", "cluster", "--name", name, "--kubeconfig", str(kubeconfig)],
                check=False,
                timeout=300,
            )


@pytest.fixture(autouse=True)
def diagnostics(request: pytest.FixtureRequest) -> Iterator[None]:
    """On failure, print what a person would look at (shown in pytest's report)."""
    yield
    if request.node.stash.get(FAILED, False) and "kube" in request.fixturenames:
        kube: cluster.Kube = request.getfixturevalue("kube")
        print(kube.diagnose())


def example(name: str) -> list[dict[str, Any]]:
    """An example manifest's objects, StreamJobs set to the e2e image (never pulled)."""
    docs = [d for d in yaml.safe_load_all((cluster.ROOT / "examples" / name).read_text()) if d]
    for doc in docs:
        if doc["kind"] == "StreamJob":
            doc["spec"]["image"] = IMAGE
            doc["spec"]["imagePullPolicy"] = "Never"
    return docs


@pytest.fixture(scope="session")
def reader(kube: cluster.Kube) -> str:
    """A pod that mounts the examples' volume at /data, to read the jobs' output.

    It is also the volume's first consumer, which binds it (kind's StorageClass waits
    for one).
    """
    kube.apply(*example("storage.yaml"))
    kube.apply(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": READER},
            "spec": {
                "securityContext": {
                    "runAsUser": 10001,
                    "runAsGroup": 10001,
                    "fsGroup": 10001,
                    "runAsNonRoot": True,
                },
                "containers": [
                    {
                        "name": "reader",
                        "image": IMAGE,
                        "imagePullPolicy": "Never",
                        "command": ["sleep", "infinity"],
                        "volumeMounts": [{"name": "data", "mountPath": "/data"}],
                    }
                ],
                "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": CLAIM}}],
            },
        }
    )
    kube.kubectl("wait", "--for=condition=Ready", f"pod/{READER}", "--timeout=180s")
    return READER


def committed_lines(kube: cluster.Kube, reader: str, directory: str) -> list[str]:
    """The committed output of a file sink directory on the volume (its part-* files)."""
    script = f"cat {directory}/part-* 2>/dev/null; true"
    return kube.kubectl("exec", reader, "--", "sh", "-c", script).splitlines()
