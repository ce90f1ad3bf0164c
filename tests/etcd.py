"""A real etcd server for tests, on free ports, in a temporary data directory."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.ports import free_port


@dataclass
class Etcd:
    endpoint: str
    process: subprocess.Popen[bytes]

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)

    def is_raft_leader(self) -> bool:
        """Whether this member leads its cluster's raft (etcd's v3 JSON gateway)."""
        request = urllib.request.Request(
            f"http://{self.endpoint}/v3/maintenance/status", data=b"{}", method="POST"
        )
        with urllib.request.urlopen(request, timeout=5) as r:
            status = json.loads(r.read())
        return bool(status["leader"] == status["header"]["member_id"])


def start_etcd(data_dir: Path) -> Etcd:
    return start_etcd_cluster(data_dir, 1)[0]


def start_etcd_cluster(data_dir: Path, members: int) -> list[Etcd]:
    """``members`` etcd processes forming one cluster, each in ``data_dir``-<n>, healthy."""
    binary = shutil.which("etcd")
    if binary is None:
        pytest.skip("etcd is not installed (apt-get install etcd-server; .ci/run installs it)")
    names = ["test"] if members == 1 else [f"m{i}" for i in range(members)]
    ports = [(free_port(), free_port()) for _ in names]
    initial = ",".join(
        f"{name}=http://127.0.0.1:{peer}" for name, (_, peer) in zip(names, ports, strict=True)
    )
    started: list[tuple[Etcd, Path]] = []
    for i, (name, (client, peer)) in enumerate(zip(names, ports, strict=True)):
        member_dir = data_dir if members == 1 else data_dir.with_name(f"{data_dir.name}-{i}")
        log_path = member_dir.parent / ("etcd.log" if members == 1 else f"etcd-{i}.log")
        log = open(log_path, "wb")  # noqa: SIM115 - lives as long as etcd
        process = subprocess.Popen(
            [
                binary,
                "--name", name,
                "--data-dir", str(member_dir),
                "--listen-client-urls", f"http://127.0.0.1:{client}",
                "--advertise-client-urls", f"http://127.0.0.1:{client}",
                "--listen-peer-urls", f"http://127.0.0.1:{peer}",
                "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
                "--initial-cluster", initial,
                "--initial-cluster-state", "new",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        log.close()
        started.append((Etcd(f"127.0.0.1:{client}", process), log_path))
    deadline = time.monotonic() + 30
    for server, log_path in started:
        url = f"http://{server.endpoint}/health"
        while True:
            try:
                with urllib.request.urlopen(url, timeout=1) as r:
                    if b"true" in r.read():
                        break
            except OSError:
                pass
            if server.process.poll() is not None or time.monotonic() > deadline:
                for other, _ in started:
                    other.process.kill()
                raise RuntimeError(f"etcd did not start; see {log_path}")
            time.sleep(0.05)
    return [server for server, _ in started]


@pytest.fixture
def etcd(tmp_path: Path) -> Iterator[Etcd]:
    server = start_etcd(tmp_path / "etcd-data")
    yield server
    server.stop()


@pytest.fixture
def etcd_cluster(tmp_path: Path) -> Iterator[list[Etcd]]:
    """A real three-member etcd cluster."""
    servers = start_etcd_cluster(tmp_path / "etcd-data", 3)
    yield servers
    for server in servers:
        if server.process.poll() is None:
            server.stop()
