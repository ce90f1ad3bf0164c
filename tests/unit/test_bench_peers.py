"""``bench/peers.py``: streamjob runs and a peer that is not installed is skipped with how to
install it; the Flink job's Java source compiles against a Flink distribution when one is
given (``FLINK_HOME``) and ``javac`` exists."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def test_streamjob_runs_and_missing_peers_are_skipped(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "FLINK_HOME"}
    done = subprocess.run(
        [
            sys.executable,
            str(REPO / "bench" / "peers.py"),
            "--events=20000",
            "--keys=100",
            "--repeat=1",
            f"--bytewax-python={tmp_path / 'no-python'}",
            f"--workdir={tmp_path}",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    flink = [line for line in lines if line.startswith("Flink: skipped:")]
    bytewax = [line for line in lines if line.startswith("Bytewax: skipped:")]
    assert len(flink) == 1, done.stdout
    assert "uv pip install" in flink[0], flink
    assert "apache-flink" in flink[0], flink
    assert len(bytewax) == 1, done.stdout
    assert "cannot import bytewax" in bytewax[0], bytewax
    rows = [line for line in lines if line.startswith("| streamjob ")]
    assert len(rows) == 1, done.stdout
    assert rows[0].endswith("| yes |"), rows
    assert "streamjob / Flink: - (Flink skipped)" in done.stdout


def test_flink_job_compiles(tmp_path: Path) -> None:
    home = os.environ.get("FLINK_HOME")
    if not home or shutil.which("javac") is None:
        pytest.skip("needs FLINK_HOME (a Flink distribution, e.g. pyflink's) and javac")
    done = subprocess.run(
        [
            "javac",
            "-nowarn",
            "-cp",
            f"{home}/lib/*",
            "-d",
            str(tmp_path),
            str(REPO / "bench" / "peers" / "KeyedCount.java"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "KeyedCount.class").exists()
