"""The e2e suite's hands on a kind cluster: the tools it needs, kubectl, helm, waiting.

Tools: ``docker`` (with a running engine) and ``kind`` from PATH; ``helm`` and
``kubectl`` from ``.tools/bin`` (``scripts/tools.sh`` fetches them), else from PATH.
Every command gets the suite's own kubeconfig, so the user's contexts are never touched.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

ROOT = Path(__file__).resolve().parents[1]
TOOLS = ROOT / ".tools" / "bin"
T = TypeVar("T")


def tool(name: str) -> str | None:
    """``.tools/bin/<name>`` when present, else ``name`` on PATH, else None."""
    local = TOOLS / name
    if local.is_file() and os.access(local, os.X_OK):
        return str(local)
    return shutil.which(name)


def missing_tools() -> str | None:
    """Why the suite cannot run here, or None when it can."""
    docker = tool("docker")
    if docker is None:
        return "docker is not installed: the e2e suite builds the image and runs kind in Docker"
    try:
        info = subprocess.run([docker, "info"], capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        return "no Docker engine answered `docker info` within 30 s: start Docker"
    if info.returncode != 0:
        reason = (info.stderr.strip().splitlines() or ["docker info failed"])[-1]
        return f"no Docker engine is running ({reason}): start Docker"
    if tool("kind") is None:
        return "kind is not installed: see https://kind.sigs.k8s.io/docs/user/quick-start/"
    for name in ("helm", "kubectl"):
        if tool(name) is None:
            return f"{name} is not installed: run `bash scripts/tools.sh` (puts it in .tools/bin)"
    return None


class CommandFailed(AssertionError):
    """A command exited non-zero (output included)."""


def run(
    command: Sequence[str],
    *,
    input: str | None = None,
    timeout: float = 300,
    check: bool = True,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        list(command),
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=None if env is None else {**os.environ, **env},
    )
    if check and done.returncode != 0:
        raise CommandFailed(
            f"{' '.join(command)} exited {done.returncode}:\n{done.stdout[-4000:]}"
            f"\n{done.stderr[-4000:]}"
        )
    return done


def wait_for(probe: Callable[[], T | None], what: str, timeout: float, interval: float = 2.0) -> T:
    """Poll ``probe`` until it returns something other than None/False; fail after ``timeout``.

    A command that fails inside ``probe`` (the API server busy, a pod not there yet) is
    retried; any other exception, a failed assertion included, ends the wait at once.
    """
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            value = probe()
        except CommandFailed as e:
            value, last = None, e
        if value is not None and value is not False:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out after {timeout:.0f} s waiting for {what}; last: {last}"
            )
        time.sleep(interval)


class Kube:
    """kubectl and helm against one cluster (its kubeconfig) and one namespace."""

    def __init__(self, kubeconfig: Path, namespace: str) -> None:
        self.kubeconfig = kubeconfig
        self.namespace = namespace
        kubectl, helm = tool("kubectl"), tool("helm")
        assert kubectl is not None
        assert helm is not None
        self._kubectl, self._helm = kubectl, helm

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> str:
        command = [self._kubectl, "--kubeconfig", str(self.kubeconfig), "-n", self.namespace]
        return run([*command, *args], input=input, check=check).stdout

    def helm(self, *args: str, timeout: float = 600) -> str:
        command = [self._helm, "--kubeconfig", str(self.kubeconfig), "-n", self.namespace]
        return run([*command, *args], timeout=timeout).stdout

    def get(self, *args: str) -> Any:
        return json.loads(self.kubectl("get", *args, "-o", "json"))

    def apply(self, *docs: dict[str, Any]) -> None:
        self.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(docs))

    def patch_spec(self, name: str, spec: dict[str, Any]) -> None:
        self.kubectl("patch", "streamjob", name, "--type", "merge", "-p",
                     json.dumps({"spec": spec}))  # fmt: skip

    def streamjob(self, name: str) -> dict[str, Any]:
        found: dict[str, Any] = self.get("streamjob", name)
        return found

    def status(self, name: str) -> dict[str, Any]:
        status: dict[str, Any] = self.streamjob(name).get("status", {})
        return status

    def pods(self, selector: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = self.get("pods", "-l", selector)["items"]
        return items

    def names(self, kinds: str, selector: str) -> list[str]:
        return self.kubectl("get", kinds, "-l", selector, "-o", "name").split()

    def diagnose(self) -> str:
        """What to look at when a test failed: objects, StreamJobs, Events, every pod's logs."""
        base = [self._kubectl, "--kubeconfig", str(self.kubeconfig), "-n", self.namespace]
        commands = [
            ["get", "streamjobs,deployments,pods,services,configmaps,leases,pvc", "-o", "wide"],
            ["describe", "streamjobs"],
            ["get", "streamjobs", "-o", "yaml"],
            ["get", "events", "--sort-by=.lastTimestamp"],
            ["describe", "pods"],
        ]
        pods = run([*base, "get", "pods", "-o", "name"], check=False, timeout=60).stdout.split()
        for pod in pods:
            commands.append(["logs", pod, "--all-containers", "--tail=300"])
            commands.append(["logs", pod, "--all-containers", "--tail=100", "--previous"])
        parts = []
        for args in commands:
            output = run([*base, *args], check=False, timeout=60)
            parts.append(f"$ kubectl {' '.join(args)}\n{output.stdout}{output.stderr}")
        return "\n".join(parts)
