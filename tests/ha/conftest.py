"""The Kubernetes API emulator's fixtures, for the Lease-based HA tests."""

from tests.kube.fixtures import kube, kubeconfig

__all__ = ["kube", "kubeconfig"]
