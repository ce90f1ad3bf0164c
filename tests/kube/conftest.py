"""Makes the emulator's fixtures available to the tests in this directory."""

from tests.kube.fixtures import kube, kubeconfig

__all__ = ["kube", "kubeconfig"]
