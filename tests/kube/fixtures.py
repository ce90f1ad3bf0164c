"""Pytest fixtures and client helpers for the Kubernetes API emulator.

Use the fixtures from a conftest.py next to your tests (tests/kube/conftest.py does this):

    from tests.kube.fixtures import kube, kubeconfig

    __all__ = ["kube", "kubeconfig"]

then, in a test (the emulator runs on its own thread: use any event loop you like):

    def test_something(kube: KubeEmulator, kubeconfig: Path) -> None:
        async def main() -> None:
            async with api_client(kube) as api:  # or: await api_client_from_kubeconfig(kubeconfig)
                core = client.CoreV1Api(api)
                await core.create_namespaced_config_map("default", body)
                await client.CustomObjectsApi(api).patch_namespaced_custom_object(
                    group, version, namespace, plural, name, {"spec": ...}, **MERGE_PATCH
                )
        asyncio.run(main())
        assert kube.get("v1", "configmaps", "x", namespace="default") is not None

and a kopf operator against it:

    registry = kopf.OperatorRegistry()

    @kopf.on.create("streamjob.dev", "v1alpha1", "streamjobs", registry=registry)
    def create(**_: Any) -> None: ...

    kube.apply_crd(crd("streamjob.dev", "streamjobs", "StreamJob", versions=("v1alpha1",)))
    with kopf_operator(kube, registry, namespaces=["default"]):
        kube.create({...})
        kube.wait_for(lambda: ..., timeout=20)

and the pods of streamjob Deployments as local processes (tests.kube.pods): the
`pod_runner` fixture, or `with PodRunner(kube, log_dir) as runner:`.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import kopf
import pytest
from kubernetes_asyncio import client, config

from tests.kube.pods import PodRunner
from tests.kube.server import KubeEmulator


@pytest.fixture
def kube() -> Iterator[KubeEmulator]:
    """A running emulator, fresh for each test."""
    emulator = KubeEmulator()
    with emulator:
        yield emulator
        assert not emulator.internal_errors, "the emulator failed internally (a bug in it)"


@pytest.fixture
def kubeconfig(kube: KubeEmulator, tmp_path: Path) -> Path:
    """A kubeconfig file pointing at the `kube` emulator (plain HTTP, a bearer token)."""
    return kube.write_kubeconfig(tmp_path / "kubeconfig")


@pytest.fixture
def pod_runner(kube: KubeEmulator, tmp_path: Path) -> Iterator[PodRunner]:
    """The pods of streamjob Deployments in `kube` (every namespace) run as local processes,
    logging under tmp_path/pods (tests.kube.pods)."""
    with PodRunner(kube, tmp_path / "pods") as runner:
        yield runner


# kubernetes_asyncio sends a dict patch body to a custom object as application/json-patch+json
# (a built-in's as a strategic merge patch); to send a JSON merge patch, add these keyword
# arguments. They are spelt as a ** dict because the library's stubs omit `_content_type`.
MERGE_PATCH: dict[str, Any] = {"_content_type": "application/merge-patch+json"}


def as_body(obj: dict[str, Any]) -> Any:
    """A plain dict as a request body: kubernetes_asyncio accepts them, its stubs want models."""
    return obj


def client_configuration(kube: KubeEmulator) -> client.Configuration:
    """A kubernetes_asyncio Configuration for the emulator, without a kubeconfig file."""
    configuration = client.Configuration(host=kube.url)
    configuration.api_key = {"BearerToken": kube.token}
    configuration.api_key_prefix = {"BearerToken": "Bearer"}
    return configuration


def api_client(kube: KubeEmulator) -> client.ApiClient:
    """A kubernetes_asyncio ApiClient for the emulator; create it inside a running loop and
    close it (`async with api_client(kube) as api:`)."""
    return client.ApiClient(configuration=client_configuration(kube))


async def api_client_from_kubeconfig(path: Path) -> client.ApiClient:
    """A kubernetes_asyncio ApiClient configured the usual way, from a kubeconfig file."""
    configuration: Any = client.Configuration()
    await config.load_kube_config(config_file=str(path), client_configuration=configuration)
    return client.ApiClient(configuration=configuration)


def crd(
    group: str,
    plural: str,
    kind: str,
    *,
    versions: tuple[str, ...] = ("v1",),
    namespaced: bool = True,
    status: bool = True,
    short_names: tuple[str, ...] = (),
) -> dict[str, Any]:
    """A minimal CustomResourceDefinition object (the first version is the storage version)."""
    subresources: dict[str, Any] = {"status": {}} if status else {}
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{group}"},
        "spec": {
            "group": group,
            "scope": "Namespaced" if namespaced else "Cluster",
            "names": {
                "plural": plural,
                "singular": kind.lower(),
                "kind": kind,
                "listKind": f"{kind}List",
                "shortNames": list(short_names),
            },
            "versions": [
                {
                    "name": v,
                    "served": True,
                    "storage": i == 0,
                    "subresources": subresources,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "x-kubernetes-preserve-unknown-fields": True,
                        }
                    },
                }
                for i, v in enumerate(versions)
            ],
        },
    }


def kopf_login(kube: KubeEmulator) -> kopf.ConnectionInfo:
    """What a kopf login handler returns for the emulator:

    @kopf.on.login(registry=registry)
    def login(**_: Any) -> kopf.ConnectionInfo:
        return kopf_login(kube)
    """
    return kopf.ConnectionInfo(server=kube.url, token=kube.token, scheme="Bearer")


@contextmanager
def kopf_operator(
    kube: KubeEmulator,
    registry: kopf.OperatorRegistry,
    *,
    settings: kopf.OperatorSettings | None = None,
    namespaces: Collection[str] = (),
    login: bool = True,
    startup_timeout: float = 15.0,
    stop_timeout: float = 20.0,
) -> Iterator[None]:
    """Run kopf.operator() for `registry` in its own thread and event loop until the block
    ends; clusterwide unless `namespaces` are given. Standalone (no peering). With `login`,
    a login handler for the emulator is added to the registry. Raises if kopf fails or does
    not stop."""
    if login:

        @kopf.on.login(registry=registry)
        def login(**_: Any) -> kopf.ConnectionInfo:
            return kopf_login(kube)

    if settings is None:
        settings = kopf.OperatorSettings()
    settings.peering.standalone = True
    stop_flag, ready_flag = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            asyncio.run(
                kopf.operator(
                    registry=registry,
                    settings=settings,
                    clusterwide=not namespaces,
                    namespaces=namespaces,
                    standalone=True,
                    stop_flag=stop_flag,
                    ready_flag=ready_flag,
                )
            )
        except BaseException as e:  # raised in the test's thread below
            errors.append(e)

    thread = threading.Thread(target=run, name="kopf-operator", daemon=True)
    thread.start()
    try:
        if not ready_flag.wait(startup_timeout) and not errors:
            raise AssertionError(f"kopf was not ready within {startup_timeout} s")
        if errors:
            raise AssertionError("kopf failed to start") from errors[0]
        yield
    finally:
        stop_flag.set()
        thread.join(stop_timeout)
    if thread.is_alive():
        raise AssertionError(f"kopf did not stop within {stop_timeout} s")
    if errors:
        raise AssertionError("kopf failed") from errors[0]
