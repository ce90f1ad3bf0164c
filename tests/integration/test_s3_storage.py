"""Checkpoints and savepoints on S3: a real S3 API (moto's server) between real processes.

Every S3 request goes through :class:`RefusingProxy`, a plain HTTP proxy in
front of moto that can refuse writes (403, as a store with a revoked write
permission does), to inject storage failures over the wire.
"""

from __future__ import annotations

import asyncio
import http.client
import http.server
import itertools
import json
import os
import socket
import subprocess
import sys
import threading
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto.server import ThreadedMotoServer

from streamjob_runtime import config
from streamjob_runtime.api import models
from streamjob_runtime.checkpoint import metadata, savepoint, store
from streamjob_runtime.connectors import files, s3files
from streamjob_runtime.operators import base
from streamjob_runtime.rpc import messages
from streamjob_runtime.state import objectstore, storage
from tests.conftest import Harness
from tests.etcd import Etcd
from tests.ha.test_etcd_failover import events, ha_args
from tests.integration import test_heap_incremental
from tests.integration.test_exactly_once_recovery import EVENTS, KEYS, args, assert_exact, committed
from tests.integration.test_failure_detection import restore_past_a_damaged_checkpoint
from tests.integration.test_rest_api import raw
from tests.jobs import keyed_sum
from tests.kube import fixtures

BUCKET = "streamjob"
kube, kubeconfig = fixtures.kube, fixtures.kubeconfig

REFUSAL = (
    b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>AccessDenied</Code>'
    b"<Message>writes refused by the test</Message></Error>"
)


class RefusingProxy(http.server.ThreadingHTTPServer):
    """Forwards every request to ``upstream``; refuses PUT and POST while ``refuse`` is set
    (those of keys ending in ``refuse_suffix`` only, when it is set)."""

    daemon_threads = True

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.refuse = threading.Event()
        self.refuse_suffix = ""  # refuse only the keys ending so ("": every write)
        self.refuse_methods: tuple[str, ...] = ("PUT", "POST")
        self.refused = 0
        # Part uploads of keys under hold_prefix wait for ``release`` (then fail) while
        # ``hold`` is set: a writer stuck midway through a multipart upload.
        self.hold = threading.Event()
        self.hold_prefix = ""
        self.held = threading.Event()  # a part upload is being held
        self.release = threading.Event()
        self.puts: Counter[str] = Counter()  # whole-object PUTs, by key
        super().__init__(("127.0.0.1", 0), _ProxyHandler)


class _ProxyHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: RefusingProxy

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _forward(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        server = self.server
        path, _, query = self.path.partition("?")
        if self.command == "PUT" and "partNumber=" not in query:
            server.puts[urllib.parse.unquote(path.removeprefix(f"/{BUCKET}/"))] += 1
        if (
            server.hold.is_set()
            and "partNumber=" in query
            and path.startswith(f"/{BUCKET}/{server.hold_prefix}")
        ):
            server.held.set()
            server.release.wait(120)
            self.send_response(503)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        refused = self.server.refuse.is_set() and self.command in self.server.refuse_methods
        if refused and self.path.split("?")[0].endswith(self.server.refuse_suffix):
            self.server.refused += 1
            self.send_response(403)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(REFUSAL)))
            self.end_headers()
            self.wfile.write(REFUSAL)
            return
        conn = http.client.HTTPConnection(*self.server.upstream, timeout=30)
        try:
            # The body is read already: no "Expect: 100-continue" handshake upstream.
            dropped = ("connection", "expect")
            headers = {k: v for k, v in self.headers.items() if k.lower() not in dropped}
            conn.request(self.command, self.path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
        finally:
            conn.close()
        self.send_response(resp.status)
        for k, v in resp.getheaders():
            if k.lower() not in (
                "content-length",
                "connection",
                "transfer-encoding",
                "server",
                "date",
            ):
                self.send_header(k, v)
        # A HEAD answer has no body but the object's length (which size checks read).
        length = resp.getheader("Content-Length") if self.command == "HEAD" else None
        self.send_header("Content-Length", length or str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward


@dataclass
class S3:
    proxy: RefusingProxy
    client: Any  # a boto3 S3 client, straight to moto

    def url(self, prefix: str) -> str:
        return f"s3://{BUCKET}/{prefix}"

    def keys(self, prefix: str) -> list[str]:
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
        return [o["Key"] for page in pages for o in page.get("Contents", [])]


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[S3]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    proxy = RefusingProxy(server.get_host_and_port())
    thread = threading.Thread(target=proxy.serve_forever, daemon=True)
    thread.start()
    host, port = server.get_host_and_port()
    # The environment reaches the JobManager and TaskManager processes too.
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{proxy.server_address[1]}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    objectstore.reset()
    # moto keeps its buckets in process-wide state, which outlives a server: start empty.
    reset = urllib.request.Request(f"http://{host}:{port}/moto-api/reset", method="POST")
    urllib.request.urlopen(reset, timeout=30).close()
    client = boto3.client("s3", endpoint_url=f"http://{host}:{port}", region_name="us-east-1")
    client.create_bucket(Bucket=BUCKET)
    try:
        yield S3(proxy, client)
    finally:
        objectstore.reset()
        proxy.shutdown()
        proxy.server_close()
        server.stop()


def test_metadata_is_written_once_only_with_a_conditional_put(s3: S3) -> None:
    target = storage.location(s3.url("cp/job/chk-1"))
    assert isinstance(target, objectstore.ObjectPath)
    meta = metadata.CheckpointMetadata(metadata.FORMAT_VERSION, "job", 1, 0, "checkpoint", {})
    metadata.write(target, meta)
    with pytest.raises(FileExistsError, match="another writer"):
        metadata.write(target, meta)
    assert metadata.read(target) == meta
    assert storage.checkpoint_ids(s3.url("cp/job")) == [1]
    assert storage.names(target) == ["_metadata"]


@pytest.mark.parametrize("name", ["../evil.state", "a/../../evil.state", "/evil.state"])
def test_an_s3_savepoint_naming_a_state_object_outside_its_prefix_is_refused(
    s3: S3, name: str
) -> None:
    s3.client.put_object(Bucket=BUCKET, Key="sp/evil.state", Body=b"data")
    s3.client.put_object(Bucket=BUCKET, Key="sp/savepoint-1/evil.state", Body=b"data")
    handle = messages.StateHandle("sum", 0, name, 4, 0, 127, True, False)
    ops = {"sum": metadata.OperatorState(1, 128, [handle])}
    meta = metadata.CheckpointMetadata(metadata.FORMAT_VERSION, "j", 1, 0, "savepoint", ops)
    metadata.write(storage.location(s3.url("sp/savepoint-1")), meta)
    with pytest.raises(savepoint.SavepointError, match="not a relative path inside its directory"):
        savepoint.resolve(s3.url("sp/savepoint-1"))


def test_a_bad_url_is_a_clear_error() -> None:
    with pytest.raises(storage.StorageError, match="unsupported scheme 'gs'"):
        storage.location("gs://bucket/x")
    with pytest.raises(storage.StorageError, match="names no bucket"):
        storage.location("s3:///x")
    assert storage.location("file:///tmp/x") == Path("/tmp/x")


def test_checkpoints_on_s3_survive_a_killed_taskmanager_with_the_exact_output(
    s3: S3, cluster_factory: Callable[..., Harness], tmp_path: Path
) -> None:
    h = cluster_factory(taskmanagers=2, checkpoint_dir=s3.url("checkpoints"))
    out = tmp_path / "out"
    job = h.submit("keyed_sum", args(out, rate=4000), parallelism=2)
    h.wait_for("2 completed checkpoints", lambda: h.checkpoints(job).counts.completed >= 2)
    h.cluster.kill_taskmanager(1)
    details = h.wait_terminal(job)
    assert details.state is models.JobStatus.FINISHED, details.failure_cause
    assert details.restarts >= 1
    assert details.restored_from is not None
    assert_exact(out)
    keys = s3.keys(f"checkpoints/{job}/")
    assert any(k.endswith(".state") for k in keys), keys

    def completed_prefixes() -> list[str]:
        return [k for k in s3.keys(f"checkpoints/{job}/") if k.endswith("/_metadata")]

    # Retention (1 checkpoint) deletes the older ones by prefix, in the background.
    h.wait_for("retention on S3", lambda: len(completed_prefixes()) == 1)
    assert not (tmp_path / "cluster-0" / "checkpoints").exists()


def test_stop_with_savepoint_to_s3_restores_at_another_parallelism_and_disposes(
    s3: S3, cluster_factory: Callable[..., Harness]
) -> None:
    # Every path on S3: checkpoints, savepoints and the exactly-once sink's output.
    h = cluster_factory(
        taskmanagers=2, checkpoint_dir=s3.url("checkpoints"), savepoint_dir=s3.url("savepoints")
    )
    out = s3.url("output")
    # Slow enough that the stop lands mid-job even when the sink's first S3 call (loading
    # s3fs and botocore) holds the sink back for seconds on a loaded machine.
    job_args = [f"out={out}", f"events={EVENTS}", f"keys={KEYS}", "rate=4000"]
    job = h.submit("keyed_sum", job_args, parallelism=1)
    h.wait_for("12000 source records", lambda: h.source_records(job) >= 12_000)

    async def outside_the_roots() -> None:
        # The storage roots are the cluster's s3:// checkpoint and savepoint prefixes.
        for target in (s3.url("elsewhere"), s3.url("savepoints-evil"), "s3://other/savepoints"):
            status, message = await raw(
                h.cluster, "POST", f"/jobs/{job}/savepoints", {"target_directory": target}
            )
            assert status == 403, target
            assert "outside the allowed storage roots" in message

    asyncio.run(outside_the_roots())
    info = h.wait_savepoint(job, h.stop(job))
    assert info.status is models.SavepointStatus.COMPLETED, info.failure_cause
    location = info.location
    assert location is not None
    assert location.startswith(f"s3://{BUCKET}/savepoints/savepoint-")
    assert h.wait_terminal(job).state is models.JobStatus.FINISHED
    restored = h.submit("keyed_sum", job_args, parallelism=2, savepoint=location)
    details = h.wait_terminal(restored)
    assert details.state is models.JobStatus.FINISHED, details.failure_cause
    assert details.restored_from is not None
    got, want = committed_on_s3(out), keyed_sum.expected(EVENTS, KEYS)
    assert not want - got, f"{sum((want - got).values())} lines missing"
    assert not got - want, f"{sum((got - want).values())} lines extra (duplicates)"
    # The metadata names its files relatively: the savepoint is portable.
    prefix = location.removeprefix(f"s3://{BUCKET}/")
    body = json.loads(s3.client.get_object(Bucket=BUCKET, Key=f"{prefix}/_metadata")["Body"].read())
    files = [h["file"] for op in body["body"]["operators"].values() for h in op["handles"]]
    assert files
    assert all("/" not in f for f in files)
    disposed = subprocess.run(
        [sys.executable, "-m", "streamjob_runtime.cli", "savepoint", "--dispose", location],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert disposed.returncode == 0, disposed.stderr
    assert s3.keys(prefix + "/") == []


def test_dispose_refuses_an_s3_prefix_that_is_not_a_savepoint(s3: S3) -> None:
    s3.client.put_object(Bucket=BUCKET, Key="data/precious.txt", Body=b"keep me")
    with pytest.raises(savepoint.SavepointError, match="not a savepoint"):
        savepoint.dispose(s3.url("data"))
    assert s3.keys("data/") == ["data/precious.txt"]


def test_dispose_reaches_the_store_the_jobs_s3_options_name(
    s3: S3, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The environment names no reachable store: only -D s3.endpoint leads to it.
    endpoint = f"http://127.0.0.1:{s3.proxy.server_address[1]}"
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    meta = metadata.CheckpointMetadata(metadata.FORMAT_VERSION, "j", 3, 0, "savepoint", {})
    s3.client.put_object(Bucket=BUCKET, Key="sp/savepoint-1/_metadata", Body=metadata.encode(meta))
    location = s3.url("sp/savepoint-1")

    def dispose(*options: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "streamjob_runtime.cli", "savepoint", "--dispose"]
        return subprocess.run(
            [*command, location, *options], capture_output=True, text=True, timeout=60
        )

    refused = dispose("-D", "parallelism.default=2")
    assert refused.returncode != 0
    assert "takes only s3.* options, not parallelism.default" in refused.stderr
    bad = dispose("-D", "s3.endpoint=minio:9000")
    assert "s3.endpoint='minio:9000' is not an endpoint URL" in bad.stderr
    unreachable = dispose()
    assert unreachable.returncode != 0
    assert "nothing was deleted. Check where the store is" in unreachable.stderr
    assert "Traceback" not in unreachable.stderr
    assert s3.keys("sp/") == ["sp/savepoint-1/_metadata"]
    done = dispose("-D", f"s3.endpoint={endpoint}", "-D", "s3.path.style.access=true")
    assert done.returncode == 0, done.stderr
    assert f"savepoint {location} disposed" in done.stdout
    assert s3.keys("sp/") == []


def test_checkpoints_fail_while_s3_refuses_writes_and_the_job_loses_nothing(
    s3: S3, cluster_factory: Callable[..., Harness], tmp_path: Path
) -> None:
    h = cluster_factory(taskmanagers=1, checkpoint_dir=s3.url("checkpoints"))
    out = tmp_path / "out"
    job = h.submit("keyed_sum", args(out, rate=4000, interval=200, tolerable=1000), parallelism=1)
    h.wait_for("a completed checkpoint", lambda: h.checkpoints(job).counts.completed >= 1)
    s3.proxy.refuse.set()
    try:
        h.wait_for("2 failed checkpoints", lambda: h.checkpoints(job).counts.failed >= 2)
    finally:
        s3.proxy.refuse.clear()
    assert s3.proxy.refused > 0
    completed = h.checkpoints(job).counts.completed
    h.wait_for(
        "a checkpoint after the outage",
        lambda: h.checkpoints(job).counts.completed > completed or h.job(job).state.terminal,
    )
    details = h.wait_terminal(job)
    assert details.state is models.JobStatus.FINISHED, details.failure_cause
    assert details.restarts == 0
    assert_exact(out)


def test_a_missing_state_object_on_restore_falls_back_to_the_previous_checkpoint(
    s3: S3, cluster_factory: Callable[..., Harness], tmp_path: Path
) -> None:
    h = cluster_factory(checkpoint_dir=s3.url("checkpoints"))
    out = tmp_path / "out"

    def remove_a_state_object(job: str, checkpoint_id: int) -> None:
        newest = f"checkpoints/{job}/chk-{checkpoint_id}/"
        state_keys = [k for k in s3.keys(newest) if k.endswith(".state")]
        assert state_keys
        s3.client.delete_object(Bucket=BUCKET, Key=state_keys[0])

    job, reason = restore_past_a_damaged_checkpoint(h, out, remove_a_state_object)
    assert "missing" in reason
    details = h.wait_terminal(job)
    assert details.state is models.JobStatus.FINISHED, details.failure_cause
    # Going back past a committed checkpoint repeats its output (as with local storage),
    # but never loses any: the state was restored, not started empty.
    missing = keyed_sum.expected(60_000, KEYS) - committed(out)
    assert not missing, f"{sum(missing.values())} lines missing"


def test_an_unreachable_store_fails_as_an_oserror_that_names_the_object(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The coordinator turns an OSError from the _metadata write into a failed checkpoint;
    # botocore's connection errors are not OSErrors, so the storage layer converts them.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    objectstore.reset()
    target = storage.location(f"s3://{BUCKET}/cp/job/chk-1")
    meta = metadata.CheckpointMetadata(metadata.FORMAT_VERSION, "job", 1, 0, "checkpoint", {})
    try:
        with pytest.raises(OSError, match=f"s3://{BUCKET}/cp/job/chk-1/_metadata"):
            metadata.write(target, meta)
        with pytest.raises(OSError, match="reading"):
            storage.read_bytes(target / "x.state")
    finally:
        objectstore.reset()


def test_a_killed_leader_jobmanager_is_replaced_and_restores_from_s3_through_the_ha_records(
    s3: S3, etcd: Etcd, cluster_factory: Callable[..., Harness], tmp_path: Path
) -> None:
    h = cluster_factory(
        taskmanagers=2, jobmanagers=2, ha=ha_args(etcd), checkpoint_dir=s3.url("checkpoints")
    )
    out = tmp_path / "out"
    job = h.submit("keyed_sum", args(out, rate=4000), parallelism=2)
    h.wait_for("a checkpoint", lambda: h.checkpoints(job).counts.completed >= 1)
    leader = h.cluster.leader_pid()
    h.cluster.kill_jobmanager(h.cluster.leader_index())
    h.wait_for("a new leader", lambda: h.cluster.leader_pid() != leader)
    details = h.wait_terminal(job, timeout_s=120)
    assert details.state is models.JobStatus.FINISHED, details.failure_cause
    assert_exact(out)
    # The new leader found the checkpoint through the HA record, which names it on S3.
    restored = [e for e in events(h, "restoring_from_checkpoint") if e.get("job_id") == job]
    assert restored, "the new leader restored nothing"
    assert str(restored[-1]["path"]).startswith(s3.url(f"checkpoints/{job}/chk-"))


def test_checkpoints_whose_metadata_put_is_refused_fail_and_leave_no_objects(
    s3: S3, cluster_factory: Callable[..., Harness], tmp_path: Path
) -> None:
    # State files go up, the _metadata PUT is refused: partial checkpoints, which must
    # count as failed, never be restored (a TaskManager is killed meanwhile), and be
    # deleted (by the abort, or by retention once a newer checkpoint completes).
    h = cluster_factory(taskmanagers=1, checkpoint_dir=s3.url("checkpoints"))
    out = tmp_path / "out"
    job = h.submit("keyed_sum", args(out, rate=4000, interval=200, tolerable=1000))
    h.wait_for("a completed checkpoint", lambda: h.checkpoints(job).counts.completed >= 1)
    s3.proxy.refuse_suffix = "/_metadata"
    s3.proxy.refuse.set()
    try:
        h.wait_for("2 failed checkpoints", lambda: h.checkpoints(job).counts.failed >= 2)
        history = h.checkpoints(job).history
        h.cluster.kill_taskmanager(0)
        h.wait_for("the restore", lambda: h.job(job).restored_from is not None)
    finally:
        s3.proxy.refuse.clear()
    partial = {c.id for c in history if "_metadata failed" in (c.failure or "")}
    assert partial, history
    assert h.job(job).restored_from not in partial
    details = h.wait_terminal(job)
    assert details.state is models.JobStatus.FINISHED, details.failure_cause
    assert details.restarts >= 1
    assert_exact(out)

    def left() -> set[int]:
        prefixes = {k.split("/")[2] for k in s3.keys(f"checkpoints/{job}/")}
        return {cid for cid in partial if f"chk-{cid}" in prefixes}

    # The partial checkpoints' state files are deleted by prefix.
    h.wait_for("the partial checkpoints' objects to go", lambda: not left())


def test_a_restore_while_s3_is_unreadable_fails_the_attempt_and_retries_until_it_can_read(
    s3: S3, cluster_factory: Callable[..., Harness], tmp_path: Path
) -> None:
    h = cluster_factory(taskmanagers=1, checkpoint_dir=s3.url("checkpoints"))
    out = tmp_path / "out"
    job = h.submit("keyed_sum", args(out, rate=4000, restart="fixed:100:200"))
    h.wait_for("a completed checkpoint", lambda: h.checkpoints(job).counts.completed >= 1)
    s3.proxy.refuse_methods = ("GET", "HEAD", "PUT", "POST", "DELETE")
    s3.proxy.refuse.set()
    try:
        h.cluster.kill_taskmanager(0)

        def unreadable() -> bool:
            causes = [e.cause for e in h.exceptions(job).history]
            return any("reading the checkpoints failed" in c for c in causes)

        h.wait_for("an attempt failed on the unreadable store", unreadable)
    finally:
        s3.proxy.refuse.clear()
    details = h.wait_terminal(job)
    assert details.state is models.JobStatus.FINISHED, details.failure_cause
    assert details.restored_from is not None
    assert_exact(out)


def test_the_jobmanager_refuses_a_checkpoint_url_it_cannot_use(tmp_path: Path) -> None:
    started = subprocess.run(
        [sys.executable, "-m", "streamjob_runtime.cli", "jobmanager",
         "--checkpoint-dir", "gs://bucket/checkpoints", "--ready-file", str(tmp_path / "r")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert started.returncode != 0
    assert "--checkpoint-dir: 'gs://bucket/checkpoints' has the unsupported scheme 'gs'" in (
        started.stderr
    )
    assert "Traceback" not in started.stderr


def committed_on_s3(url: str) -> Counter[tuple[int, int]]:
    rows = (line.split() for line in files.read_committed_lines(url))
    return Counter((int(k), int(s)) for k, s in rows)


def test_the_exactly_once_file_sink_on_s3_survives_a_killed_taskmanager_with_the_exact_output(
    s3: S3, cluster_factory: Callable[..., Harness], tmp_path: Path
) -> None:
    h = cluster_factory(taskmanagers=2, checkpoint_dir=s3.url("checkpoints"))
    out = s3.url("output")
    job_args = [f"out={out}", f"events={EVENTS}", f"keys={KEYS}", "rate=4000"]
    job = h.submit("keyed_sum", job_args, parallelism=2)
    h.wait_for("2 completed checkpoints", lambda: h.checkpoints(job).counts.completed >= 2)
    h.cluster.kill_taskmanager(1)
    details = h.wait_terminal(job)
    assert details.state is models.JobStatus.FINISHED, details.failure_cause
    assert details.restarts >= 1
    got, want = committed_on_s3(out), keyed_sum.expected(EVENTS, KEYS)
    assert not want - got, f"{sum((want - got).values())} lines missing"
    assert not got - want, f"{sum((got - want).values())} lines extra (duplicates)"
    names = [k.rpartition("/")[2] for k in s3.keys("output/")]
    assert names
    assert all(n.startswith("part-") and n.endswith(".jsonl") for n in names), names
    # No upload is left in progress: every one was completed or aborted.
    uploads = s3.client.list_multipart_uploads(Bucket=BUCKET, Prefix="output/")
    assert uploads.get("Uploads", []) == []


def sink_writer(attempt: int, subtask: int = 0) -> s3files.S3FileSinkWriter:
    ctx = base.OperatorContext("sink", subtask, 2, 128, attempt, "0123456789abcdef")
    target = storage.location(f"s3://{BUCKET}/out")
    assert isinstance(target, objectstore.ObjectPath)
    return s3files.S3FileSinkWriter(target, lambda v: str(v).encode(), ctx)


def test_s3_sink_uploads_are_invisible_until_committed_and_a_restore_commits_them_once(
    s3: S3,
) -> None:
    crashed = sink_writer(attempt=1, subtask=1)
    crashed.write(list(range(3)))
    [pre_committed] = crashed.prepare_commit(7)  # the checkpoint holds this; then a crash
    assert s3.keys("out/") == []
    restored = sink_writer(attempt=2, subtask=1)
    restored.commit([pre_committed])  # the restore finishes the restored commit
    restored.commit([pre_committed])  # a second restore of the same checkpoint: no-op
    assert files.read_committed_lines(f"s3://{BUCKET}/out") == ["0", "1", "2"]
    assert s3.keys("out/") == ["out/part-sink-01234567-1-a1-c7.jsonl"]


def test_s3_sink_aborts_the_uploads_of_earlier_attempts_that_no_checkpoint_kept(s3: S3) -> None:
    kept_writer, lost_writer = sink_writer(attempt=1, subtask=0), sink_writer(attempt=1, subtask=1)
    kept_writer.write([1])
    lost_writer.write([2])
    [kept] = kept_writer.prepare_commit(3)
    [lost] = lost_writer.prepare_commit(4)  # checkpoint 4 never completed
    current = sink_writer(attempt=2)
    current.write([3])
    [ongoing] = current.prepare_commit(5)
    sink_writer(attempt=2).discard_staged([kept], None)
    left = s3.client.list_multipart_uploads(Bucket=BUCKET, Prefix="out/").get("Uploads", [])
    assert sorted(u["UploadId"] for u in left) == sorted([kept.upload_id, ongoing.upload_id])
    with pytest.raises(RuntimeError, match="can no longer be completed"):
        sink_writer(attempt=2).commit([lost])


def test_the_jobs_s3_options_reach_the_jobmanager_the_taskmanagers_and_the_file_sink(
    s3: S3, cluster_factory: Callable[..., Harness], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Only the job's s3.* options name the store: no process finds it in its environment.
    endpoint = os.environ["AWS_ENDPOINT_URL"]
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    options = {
        "s3.endpoint": endpoint,
        "s3.region": "us-east-1",
        "s3.path.style.access": "true",
        "s3.credentials.provider": "environment",
    }
    h = cluster_factory(taskmanagers=2, checkpoint_dir=s3.url("checkpoints"))
    out = s3.url("output")
    job_args = [f"out={out}", f"events={EVENTS}", f"keys={KEYS}", "rate=4000"]
    job = h.submit("keyed_sum", job_args, parallelism=2, options=options)
    h.wait_for("2 completed checkpoints", lambda: h.checkpoints(job).counts.completed >= 2)
    h.cluster.kill_taskmanager(1)
    details = h.wait_terminal(job)
    assert details.state is models.JobStatus.FINISHED, details.failure_cause
    assert details.restarts >= 1
    assert details.restored_from is not None
    lines = files.read_committed_lines(out, config.S3Config(endpoint=endpoint))
    got = Counter((int(k), int(n)) for k, n in (line.split() for line in lines))
    want = keyed_sum.expected(EVENTS, KEYS)
    assert not want - got, f"{sum((want - got).values())} lines missing"
    assert not got - want, f"{sum((got - want).values())} lines extra (duplicates)"
    assert any(k.endswith("/_metadata") for k in s3.keys(f"checkpoints/{job}/"))


def test_a_bad_s3_option_is_refused_at_submission(
    s3: S3, cluster_factory: Callable[..., Harness]
) -> None:
    h = cluster_factory(checkpoint_dir=s3.url("checkpoints"))
    # The REST client's error (a RuntimeError) carries the JobManager's message.
    with pytest.raises(RuntimeError, match=r"s3.endpoint='minio:9000' is not an endpoint URL"):
        h.submit("keyed_sum", ["out=/tmp/unused"], options={"s3.endpoint": "minio:9000"})
    assert s3.keys("checkpoints/") == []


@pytest.mark.parametrize(
    ("provider", "missing"),
    [
        ("environment", "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY are not set"),
        ("web-identity", "AWS_ROLE_ARN and AWS_WEB_IDENTITY_TOKEN_FILE are not set"),
    ],
)
def test_a_credentials_provider_without_its_source_fails_naming_what_to_set(
    monkeypatch: pytest.MonkeyPatch, provider: str, missing: str
) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ROLE_ARN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("AWS_WEB_IDENTITY_TOKEN_FILE", raising=False)
    options = config.S3Config(
        endpoint="http://127.0.0.1:9", credentials_provider=config.S3CredentialsProvider(provider)
    )
    target = storage.location(f"s3://{BUCKET}/cp/x.state", options)
    try:
        with pytest.raises(OSError, match=f"s3.credentials.provider is {provider} but {missing}"):
            storage.write_file(target, b"state")
    finally:
        objectstore.reset()


def uploads_in_progress(s3: S3, prefix: str) -> list[str]:
    found = s3.client.list_multipart_uploads(Bucket=BUCKET, Prefix=prefix).get("Uploads", [])
    return [str(u["Key"]) for u in found]


def test_a_taskmanager_killed_midway_through_a_multipart_state_upload_leaves_no_upload(
    s3: S3, cluster_factory: Callable[..., Harness], tmp_path: Path
) -> None:
    h = cluster_factory(taskmanagers=1, checkpoint_dir=s3.url("checkpoints"))
    out = tmp_path / "out"
    # 97 keys x 200 kB of state: a 19 MB state file, a multipart upload of 3 parts.
    job = h.submit("keyed_sum", args(out, rate=4000, interval=500, ballast=200_000))
    h.wait_for("a completed checkpoint", lambda: h.checkpoints(job).counts.completed >= 1)
    s3.proxy.hold_prefix = f"checkpoints/{job}/chk-"
    s3.proxy.hold.set()
    try:
        h.wait_for("a state upload midway", s3.proxy.held.is_set)
        stuck = uploads_in_progress(s3, f"checkpoints/{job}/")
        assert stuck
        assert all(k.endswith(".state") for k in stuck), stuck
        h.cluster.kill_taskmanager(0)  # SIGKILL, its upload half done
        h.wait_for("the restore", lambda: h.job(job).restored_from is not None)
    finally:
        s3.proxy.hold.clear()
        s3.proxy.release.set()
    details = h.wait_terminal(job)
    assert details.state is models.JobStatus.FINISHED, details.failure_cause
    assert_exact(out)
    h.wait_for(
        "the abandoned upload to be aborted",
        lambda: uploads_in_progress(s3, f"checkpoints/{job}/") == [],
    )


def test_a_completed_checkpoint_aborts_the_uploads_left_under_older_checkpoints(s3: S3) -> None:
    job_dir = storage.location(s3.url("cp/job"))
    for key in ("cp/job/chk-1/a-0.state", "cp/job/chk-3/a-0.state", "cp/job/shared/db/1.sst"):
        s3.client.create_multipart_upload(Bucket=BUCKET, Key=key)
    checkpoints = store.CompletedCheckpointStore(job_dir, retained=1)
    checkpoints.add(store.CompletedCheckpoint(2, 0, job_dir / "chk-2", 0.0, 0, 0.0))

    def left() -> list[str]:
        return sorted(uploads_in_progress(s3, "cp/job/"))

    # chk-1 was subsumed by 2; 3 may be in flight; shared files belong to no one checkpoint.
    pause = threading.Event()  # never set: a timed wait between polls of the condition
    for _ in range(300):
        if left() == ["cp/job/chk-3/a-0.state", "cp/job/shared/db/1.sst"]:
            break
        pause.wait(0.1)
    assert left() == ["cp/job/chk-3/a-0.state", "cp/job/shared/db/1.sst"]
    checkpoints.abort_abandoned_uploads()  # a restore: nothing is in flight
    assert left() == []


def shared_references(s3: S3, job: str) -> dict[int, set[str]]:
    """The shared files each checkpoint on S3 references (its sidecars), by checkpoint id."""
    refs: dict[int, set[str]] = {}
    for key in s3.keys(f"checkpoints/{job}/chk-"):
        if key.endswith(".shared"):
            checkpoint_id = int(key.split("/")[2].removeprefix("chk-"))
            try:
                body = s3.client.get_object(Bucket=BUCKET, Key=key)["Body"].read().decode()
            except s3.client.exceptions.NoSuchKey:
                continue  # discarded by retention since the listing
            refs.setdefault(checkpoint_id, set()).update(body.split())
    return refs


def test_incremental_rocksdb_checkpoints_on_s3_upload_each_file_once_and_restore_exactly(
    s3: S3, cluster_factory: Callable[..., Harness], tmp_path: Path
) -> None:
    h = cluster_factory(taskmanagers=1, checkpoint_dir=s3.url("checkpoints"))
    out, events = tmp_path / "out", 80_000
    localdir = tmp_path / "rocks"
    job_args = args(out, events=events, rate=6000, backend="rocksdb", localdir=localdir, retained=3)
    job = h.submit("keyed_sum", job_args)
    prefix = f"checkpoints/{job}/shared/"

    def stored() -> set[str]:
        return {k.removeprefix(prefix) for k in s3.keys(prefix)}

    def uploaded() -> dict[str, int]:
        return {k.removeprefix(prefix): n for k, n in s3.proxy.puts.items() if k.startswith(prefix)}

    def deleted_and_kept() -> bool:
        # Files only discarded checkpoints referenced are deleted (RocksDB compacted them
        # away); every file a retained checkpoint references stays.
        referenced = set().union(*shared_references(s3, job).values())
        assert referenced <= stored(), "a referenced shared file was deleted"
        return bool(set(uploaded()) - stored())

    h.wait_for("unreferenced shared files to be deleted", deleted_and_kept)
    refs = shared_references(s3, job)
    ids = sorted(refs)
    assert len(ids) >= 2, refs
    # A checkpoint references the files of the one before it again instead of uploading
    # them: each shared object was PUT once, so a newer checkpoint PUT only its new files.
    # (Between two checkpoints RocksDB may have compacted every file into new ones.)
    assert any(refs[a] & refs[b] for a, b in itertools.pairwise(ids)), "no file was reused"
    assert set(uploaded().values()) == {1}, "a shared file was uploaded twice"
    h.cluster.kill_taskmanager(0)  # SIGKILL
    h.wait_for("the restore", lambda: h.job(job).restored_from is not None)
    # An incremental checkpoint: its state was rebuilt from shared files downloaded from S3.
    assert h.job(job).restored_from in shared_references(s3, job)
    details = h.wait_terminal(job)
    assert details.state is models.JobStatus.FINISHED, details.failure_cause
    assert details.restarts >= 1
    assert_exact(out, events)


def test_incremental_hashmap_checkpoints_on_s3_restore_their_shared_tables_exactly(
    s3: S3, cluster_factory: Callable[..., Harness], tmp_path: Path
) -> None:
    """The timer table goes to ``shared/`` once; a SIGKILLed TaskManager's restore downloads it."""
    h = cluster_factory(taskmanagers=1, checkpoint_dir=s3.url("checkpoints"))
    out = tmp_path / "out"
    job = h.submit("keyed_timers", test_heap_incremental.args(out), parallelism=1)
    h.wait_for("a checkpoint referencing a shared table", lambda: bool(shared_references(s3, job)))
    assert h.source_records(job) < test_heap_incremental.EVENTS, "the job ended before the kill"
    h.cluster.kill_taskmanager(0)  # SIGKILL
    h.wait_for("the restore", lambda: h.job(job).restored_from is not None)
    details = h.wait_terminal(job)
    assert details.state is models.JobStatus.FINISHED, details.failure_cause
    assert details.restarts >= 1
    test_heap_incremental.assert_exact(out)


def test_jobmanager_failover_on_kubernetes_leases_restores_from_s3_with_no_shared_volume(
    s3: S3, cluster_factory: Callable[..., Harness], tmp_path: Path, kubeconfig: Path
) -> None:
    ha = ["--ha", "kubernetes", "--ha-namespace", "default", "--ha-cluster-id", "s3",
          "--ha-lease-duration", "3000", "--ha-renew-deadline", "2000",
          "--ha-retry-period", "500"]  # fmt: skip
    h = cluster_factory(
        taskmanagers=2,
        jobmanagers=2,
        ha=ha,
        extra_env={"KUBECONFIG": str(kubeconfig)},
        checkpoint_dir=s3.url("checkpoints"),
        savepoint_dir=s3.url("savepoints"),
    )
    out = s3.url("output")  # the exactly-once sink on S3 too: no file is shared
    job_args = [f"out={out}", f"events={EVENTS}", f"keys={KEYS}", "rate=4000"]
    job = h.submit("keyed_sum", job_args, parallelism=2)
    h.wait_for("a checkpoint", lambda: h.checkpoints(job).counts.completed >= 1)
    leader = h.cluster.leader_pid()
    h.cluster.kill_jobmanager(h.cluster.leader_index())  # SIGKILL
    h.wait_for("a new leader", lambda: h.cluster.leader_pid() != leader)
    details = h.wait_terminal(job, timeout_s=120)
    assert details.state is models.JobStatus.FINISHED, details.failure_cause
    got, want = committed_on_s3(out), keyed_sum.expected(EVENTS, KEYS)
    assert not want - got, f"{sum((want - got).values())} lines missing"
    assert not got - want, f"{sum((got - want).values())} lines extra (duplicates)"
    # The new leader found the checkpoint through the HA ConfigMap, which names it on S3.
    restored = [e for e in events(h, "restoring_from_checkpoint") if e.get("job_id") == job]
    assert restored, "the new leader restored nothing"
    assert str(restored[-1]["path"]).startswith(s3.url(f"checkpoints/{job}/chk-"))
    local = [p for p in tmp_path.rglob("*") if p.name.startswith("chk-") or p.suffix == ".jsonl"]
    assert local == [], "state or output on the local disk"


@pytest.mark.parametrize(
    ("provider", "key_id"), [("profile", "AKIDPROFILE"), ("environment", "AKIDENV")]
)
def test_the_credentials_provider_option_picks_the_one_source_it_names(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, provider: str, key_id: str
) -> None:
    credentials = tmp_path / "credentials"
    credentials.write_text("[dev]\naws_access_key_id = AKIDPROFILE\naws_secret_access_key = s\n")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(credentials))
    monkeypatch.setenv("AWS_PROFILE", "dev")  # ignored by the environment provider
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDENV")  # ignored by the profile provider
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    options = config.S3Config(
        endpoint="http://127.0.0.1:9",
        credentials_provider=config.S3CredentialsProvider(provider),
        profile="dev" if provider == "profile" else None,
    )
    try:
        session = objectstore.filesystem(options).session  # the session s3fs signs with
        found = asyncio.run(session.get_credentials())
        assert found.access_key == key_id
    finally:
        objectstore.reset()
