"""Pytest fixtures and client helpers for the Kubernetes API emulator.

Use them from a conftest.py next to your tests (tests/kube/conftest.py does this):

    from tests.kube.fixtures import kube, kubeconfig

    __all__ = ["kube", "kubeconfig"]

then, in a test:

    def test_something(kube: KubeEmulator, kubeconfig: Path) -> None:
        async def main() -> None:
            async with api_client(kube) as api:                 # or:
            # async with await api_client_from_kubeconfig(kubeconfig) as api:
                cm = await client.CoreV1Api(api).read_namespaced_config_map("x", "default")
        asyncio.run(main())
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes_asyncio import client, config

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
