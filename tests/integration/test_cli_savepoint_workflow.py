"""The seeds' savepoint workflow, end to end through the CLI against a local cluster."""

from __future__ import annotations

import collections
import json
import os
import re
import subprocess
import sys
from pathlib import Path

from streamjob_runtime.connectors import files

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "examples"))

import clickstream  # noqa: E402


def test_run_savepoint_cancel_restore_dispose(tmp_path: Path) -> None:
    env = {**os.environ, "STREAMJOB_HOME": str(tmp_path / "home")}

    def sj(*args: str, code: int = 0) -> str:
        result = subprocess.run(
            [sys.executable, "-m", "streamjob_runtime.cli", *args],
            capture_output=True, text=True, timeout=120, env=env,
        )  # fmt: skip
        assert result.returncode == code, f"{args}: {result.stdout}{result.stderr}"
        return result.stdout + result.stderr

    out = tmp_path / "out"
    job_file = str(ROOT / "examples" / "clickstream.py")
    sj("cluster", "start", "--taskmanagers", "2", "--workdir", str(tmp_path / "cluster"))
    try:
        submitted = sj("run", "-d", "-p", "2", job_file, str(out), "80000", "8000")
        job = re.search(r"job ([0-9a-f]{32}) submitted", submitted)
        assert job is not None
        job_id = job.group(1)
        assert job_id in sj("list")
        saved = sj("savepoint", job_id, str(tmp_path / "savepoints"))
        first = re.search(r"savepoint completed: (\S+)", saved)
        assert first is not None
        canceled = sj("cancel", "--savepoint", str(tmp_path / "savepoints"), job_id)
        last = re.search(r"cancel-with-savepoint completed: (\S+)", canceled)
        assert last is not None
        assert '"state": "CANCELED"' in sj("info", job_id)
        # Restore from the savepoint, on two TaskManagers again, and run to the end.
        restored = sj("run", "-p", "2", "--from-savepoint", last.group(1), job_file,
                      str(out), "80000", "200000")  # fmt: skip
        assert "FINISHED" in restored
        rows = [json.loads(line) for line in files.read_committed_lines(str(out))]
        got = collections.Counter({(r["user"], r["window_start"]): r["clicks"] for r in rows})
        assert len(got) == len(rows)
        assert got == clickstream.expected_counts(80_000)
        # Dispose: the first savepoint goes; a directory that is not a savepoint stays.
        assert "disposed" in sj("savepoint", "--dispose", first.group(1))
        assert not Path(first.group(1)).exists()
        refused = sj("savepoint", "--dispose", str(tmp_path / "savepoints"), code=2)
        assert "refusing to dispose" in refused
        assert "not a savepoint" in refused
        assert Path(last.group(1)).exists()
        sj("stop", "nonexistentjob", code=2)
        # Secure with no set-up: the CLI found the cluster's token and CA in its workdir.
        rest_url = json.loads((tmp_path / "home" / "cluster.json").read_text())["rest_url"]
        assert rest_url.startswith("https://127.0.0.1:")
        assert "not this JobManager's" in sj("list", "--token", "wrong", code=2)
        elsewhere = rest_url.replace("https://127.0.0.1", "localhost")  # not the known URL
        assert "--ca-file" in sj("list", "-m", elsewhere, code=4)  # an unknown CA
        env["STREAMJOB_CA_FILE"] = str(tmp_path / "cluster" / "tls" / "ca.crt")
        assert "needs a bearer token" in sj("list", "-m", elsewhere, code=2)
        env["STREAMJOB_TOKEN"] = (tmp_path / "cluster" / "rest-token").read_text().strip()
        assert job_id in sj("list", "-m", elsewhere)
        del env["STREAMJOB_CA_FILE"], env["STREAMJOB_TOKEN"]
    finally:
        sj("cluster", "stop")
    sj("list", code=4)
