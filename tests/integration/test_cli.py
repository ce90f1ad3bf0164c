"""``streamjob run`` on the embedded local cluster."""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from streamjob_runtime.connectors import files

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "examples"))

import clickstream  # noqa: E402


def children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def test_run_executes_the_example_job_and_its_output_is_exact(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "streamjob_runtime.cli",
            "run",
            "--parallelism",
            "2",
            "--workdir",
            str(tmp_path / "wd"),
            str(ROOT / "examples" / "clickstream.py"),
            str(out),
            "30000",
            "200000",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "FINISHED" in result.stdout
    rows = [json.loads(line) for line in files.read_committed_lines(str(out))]
    got = collections.Counter({(r["user"], r["window_start"]): r["clicks"] for r in rows})
    assert len(rows) == len(got)
    assert got == clickstream.expected_counts(30_000)


def test_ctrl_c_cancels_the_job_and_stops_every_process(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "streamjob_runtime.cli",
            "run",
            "-p",
            "2",
            "--workdir",
            str(tmp_path / "wd"),
            str(ROOT / "examples" / "clickstream.py"),
            str(tmp_path / "out"),
            "100000000",
            "1000",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        if "RUNNING" in line:
            break
    cluster = children_of(proc.pid)
    assert len(cluster) == 3  # a JobManager and two TaskManagers
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 130, stdout + stderr
    assert "cancelling the job" in stdout
    deadline = time.monotonic() + 10
    while any(Path(f"/proc/{pid}").exists() for pid in cluster):
        assert time.monotonic() < deadline, "cluster processes outlived the CLI"
        time.sleep(0.05)
    log = (tmp_path / "wd" / "logs" / "jobmanager.log").read_text()
    assert '"state":"CANCELED"' in log


def test_version() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "streamjob_runtime.cli", "--version"],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ},
    ).stdout
    assert out.startswith("streamjob ")


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ("s3.endpoint=minio:9000", "s3.endpoint='minio:9000' is not an endpoint URL: write http"),
        ("s3.path.style.access=yes", "s3.path.style.access='yes' is invalid: expected true or"),
        ("s3.secret-key=abc", "option s3.secret-key is not accepted"),
    ],
)
def test_run_refuses_a_bad_s3_option_with_what_to_write(
    tmp_path: Path, option: str, message: str
) -> None:
    job = Path(__file__).parent.parent / "jobs" / "keyed_sum.py"
    result = subprocess.run(
        [sys.executable, "-m", "streamjob_runtime.cli", "run", "--workdir", str(tmp_path),
         "-D", option, str(job), f"out={tmp_path / 'out'}"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def _ready(path: Path, process: subprocess.Popen[str], timeout_s: float = 60) -> dict[str, int]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.exists():
            ready: dict[str, int] = json.loads(path.read_text())
            return ready
        assert process.poll() is None, process.communicate()
        time.sleep(0.05)
    raise AssertionError("the JobManager did not write its ready file")


def test_a_jobmanager_bound_to_every_interface_answers_on_localhost_and_advertises_its_host(
    tmp_path: Path,
) -> None:
    """As in a JobManager pod: it advertises the pod IP (here 127.0.0.2) and listens on
    0.0.0.0, so ``streamjob list -m localhost:PORT`` inside the pod reaches it."""
    ready_file = tmp_path / "ready.json"
    jm = subprocess.Popen(
        [sys.executable, "-m", "streamjob_runtime.cli", "jobmanager",
         "--host", "127.0.0.2", "--bind-host", "0.0.0.0", "--rpc-port", "0", "--rest-port", "0",
         "--checkpoint-dir", str(tmp_path / "cp"), "--ready-file", str(ready_file),
         "--insecure"],  # what is bound is the point here, not TLS (test_security.py)
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        port = _ready(ready_file, jm)["rest_port"]
        for address in (f"http://localhost:{port}", f"http://127.0.0.2:{port}"):
            listed = subprocess.run(
                [sys.executable, "-m", "streamjob_runtime.cli", "list", "-m", address],
                capture_output=True, text=True, timeout=60,
            )  # fmt: skip
            assert listed.returncode == 0, (address, listed.stdout + listed.stderr)
    finally:
        jm.send_signal(signal.SIGTERM)
        jm.communicate(timeout=30)
    assert jm.returncode == 0
