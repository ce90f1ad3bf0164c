"""Security: nobody outside a job can run code in it, steer it or read its data.

Each attack is made for real against a running local cluster: forged frames on the
TaskManagers' data ports and the JobManager's RPC port (plain TCP, a certificate of
another CA, no certificate), an oversized frame, REST calls without or with a wrong
token, a job file and directories outside the allowed roots, a ``_metadata`` naming
``../`` files.  A marker file proves nothing was unpickled or imported.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import pickle
import ssl
import struct
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import aiohttp
import msgspec
import pytest

from streamjob_runtime import security
from streamjob_runtime.api import models
from streamjob_runtime.checkpoint import metadata
from streamjob_runtime.local import LocalCluster
from streamjob_runtime.rpc import framing, messages
from tests.conftest import JOBS, Harness
from tests.integration.test_rest_api import raw


class _CreatesMarker:
    """Unpickling this creates ``path``: the proof that a payload was unpickled."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (str(self.path), "w"))


def _events(cluster: LocalCluster, name: str) -> list[dict[str, object]]:
    found = []
    for line in cluster.logs().splitlines():
        if f'"event":"{name}"' in line:
            found.append(json.loads(line))
    return found


def _data_ports(cluster: LocalCluster) -> list[int]:
    return [int(str(e["data_port"])) for e in _events(cluster, "taskmanager_started")]


async def _send_plain(port: int, payload: bytes, wait_s: float = 20.0) -> bytes:
    """Send ``payload`` over plain TCP; return what comes back until the peer closes.

    Times out (the test fails) if the peer keeps the connection open."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(payload)
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        try:
            async with asyncio.timeout(wait_s):
                return await reader.read()
        except ConnectionError:
            return b""
    finally:
        writer.close()


async def _send_tls(port: int, context: ssl.SSLContext, payload: bytes) -> str:
    """Send ``payload`` over TLS with ``context``; return how the server ended it."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
    except (ssl.SSLError, ConnectionError) as e:
        return f"handshake refused: {e}"
    try:
        writer.write(payload)
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            await writer.drain()
        try:
            async with asyncio.timeout(20):
                data = await reader.read()
        except (ssl.SSLError, ConnectionError) as e:
            return f"refused: {e}"
        assert data == b"", f"the server answered a peer without a valid certificate: {data!r}"
        return "closed"
    finally:
        writer.close()


def _foreign_client(tmp_path: Path, with_certificate: bool) -> ssl.SSLContext:
    """A TLS client with a certificate of another CA (or none) that trusts any server."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if with_certificate:
        other = security.write_credentials(tmp_path / "other-ca")
        ctx.load_cert_chain(other / security.CERT_FILE, other / security.KEY_FILE)
    return ctx


def _running(h: Harness, tmp_path: Path, parallelism: int = 2) -> str:
    job = h.submit(
        "keyed_sum",
        [f"out={tmp_path / 'out'}", "events=-1", "rate=2000", "interval=60000"],
        parallelism=parallelism,
    )
    h.wait_for("the job to run", lambda: h.job(job).state is models.JobStatus.RUNNING)
    return job


def test_a_forged_pickle_on_the_data_port_is_refused_before_anything_is_unpickled(
    cluster_factory: Callable[..., Harness], tmp_path: Path
) -> None:
    h = cluster_factory(taskmanagers=2)
    job = _running(h, tmp_path)
    details = h.job(job)
    marker = tmp_path / "pwned"
    bomb = framing.frame(pickle.dumps(_CreatesMarker(marker)))
    # Hellos naming every input channel of every vertex of the running attempt: what
    # the REST API tells anyone, and all the old data port wanted before unpickling.
    hellos = [
        framing.frame(messages.encode(messages.DataHello(job, details.attempt, v.id, s, c)))
        for v in details.vertices
        for s in range(v.parallelism)
        for c in range(2)
    ]
    ports = _data_ports(h.cluster)
    assert len(ports) == 2

    async def attack() -> list[str]:
        outcomes = []
        for port in ports:
            for hello in hellos:
                reply = await _send_plain(port, hello + bomb)
                assert reply == b"" or reply[0] == 0x15, reply  # nothing, or a TLS alert
            for with_certificate in (True, False):
                context = _foreign_client(tmp_path, with_certificate)
                outcomes.append(await _send_tls(port, context, hellos[-1] + bomb))
        return outcomes

    asyncio.run(attack())
    assert not marker.exists(), "a TaskManager unpickled a payload from an unauthenticated peer"
    after = h.job(job)
    assert (after.state, after.restarts) == (models.JobStatus.RUNNING, 0)


def test_the_rpc_port_refuses_a_peer_without_a_certificate_of_the_job_ca(
    cluster_factory: Callable[..., Harness], tmp_path: Path
) -> None:
    h = cluster_factory()
    rpc_port = h.cluster.jms[0].rpc_port
    marker = tmp_path / "pwned"
    register = messages.RegisterTaskManager("tm-forged", "127.0.0.1", 1, 8, 1)
    forged = framing.frame(messages.encode(register)) + framing.frame(
        pickle.dumps(_CreatesMarker(marker))
    )

    async def attack() -> tuple[bytes, list[str]]:
        reply = await _send_plain(rpc_port, forged)
        outcomes = [
            await _send_tls(rpc_port, _foreign_client(tmp_path, certificate), forged)
            for certificate in (True, False)
        ]
        return reply, outcomes

    reply, _ = asyncio.run(attack())
    # The old JobManager answered a forged registration with Registered (msgpack) and
    # offered the forged slots to jobs; now the TLS layer ends it (at most an alert).
    assert reply == b"" or reply[0] == 0x15, reply
    assert not marker.exists()

    async def overview() -> models.ClusterOverview:
        async with h.cluster.client() as c:
            return await c.overview()

    assert asyncio.run(overview()).taskmanagers == 1
    assert not any(
        e.get("tm_id") == "tm-forged" for e in _events(h.cluster, "taskmanager_registered")
    )


def test_an_oversized_first_frame_is_refused_from_its_header(
    cluster_factory: Callable[..., Harness],
) -> None:
    """Without TLS (--insecure) the first frame may announce at most 64 KiB: a header
    announcing (just under) 1 GiB ends the connection at once, instead of making the
    process wait for and buffer it.  With TLS the bytes never reach the framing."""
    secure = cluster_factory()
    insecure = cluster_factory(insecure=True)
    header = struct.pack(">I", (1 << 30) - 1) + b"x" * 100

    async def attack() -> None:
        for cluster in (secure.cluster, insecure.cluster):
            for port in (cluster.jms[0].rpc_port, *_data_ports(cluster)):
                reply = await _send_plain(port, header, wait_s=10)
                assert reply == b"" or reply[0] == 0x15, reply

    asyncio.run(attack())


def test_rest_needs_the_token_and_metrics_and_health_are_on_their_own_plain_port(
    cluster_factory: Callable[..., Harness],
) -> None:
    h = cluster_factory()
    cluster = h.cluster

    async def checks() -> None:
        status, message = await raw(cluster, "GET", "/jobs", headers={})
        assert status == 401
        assert "needs a bearer token" in message
        assert "STREAMJOB_TOKEN" in message
        for path in ("/overview", "/metrics", "/healthz", "/openapi.json"):
            assert (await raw(cluster, "GET", path, headers={}))[0] == 401, path
        status, message = await raw(
            cluster, "POST", "/jobs", {"entrypoint": "x"}, headers={"Authorization": "Basic x"}
        )
        assert status == 401
        status, message = await raw(
            cluster, "GET", "/jobs", headers={"Authorization": "Bearer not-the-token"}
        )
        assert status == 403
        assert "not this JobManager's" in message
        assert (await raw(cluster, "GET", "/jobs"))[0] == 200
        # Plain HTTP to the REST port gets no answer: it speaks TLS.
        plain = cluster.rest_url.replace("https://", "http://")
        async with aiohttp.ClientSession() as s:
            with pytest.raises(aiohttp.ClientError):
                async with s.get(plain + "/jobs") as resp:
                    await resp.read()
            metrics = cluster.jms[0].metrics_url
            for path in ("/metrics", "/healthz", "/readyz"):
                async with s.get(metrics + path) as resp:
                    assert resp.status == 200, path
            async with s.get(metrics + "/jobs") as resp:
                assert resp.status == 404  # nothing else on the unauthenticated port
            # A TaskManager's metrics port: ready once registered with the JobManager.
            (started,) = _events(cluster, "taskmanager_started")
            tm = f"http://127.0.0.1:{started['metrics_port']}"
            async with s.get(tm + "/readyz") as resp:
                assert resp.status == 200
            async with s.get(tm + "/healthz") as resp:
                assert resp.status == 200
            async with s.get(tm + "/metrics") as resp:
                assert "streamjob_taskmanager_registered 1" in await resp.text()
            async with s.get(tm + "/jobs") as resp:
                assert resp.status == 404

    asyncio.run(checks())


def test_job_files_and_savepoint_directories_outside_the_allowed_roots_are_refused(
    cluster_factory: Callable[..., Harness], tmp_path: Path
) -> None:
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    h = cluster_factory(taskmanagers=1, job_roots=[str(JOBS)], storage_roots=[str(allowed)])
    outside = tmp_path / "outside"
    outside.mkdir()
    marker = tmp_path / "imported"
    evil = outside / "job.py"
    evil.write_text(f"open({str(marker)!r}, 'w')\n\ndef build(env):\n    pass\n")
    sneaky = JOBS / ".." / ".." / "outside-link.py"  # '..' out of the root

    async def checks() -> str:
        status, message = await raw(h.cluster, "POST", "/jobs", {"entrypoint": str(evil)})
        assert status == 403
        assert "outside the allowed job roots" in message
        assert "--job-roots" in message
        status, _ = await raw(h.cluster, "POST", "/jobs", {"entrypoint": str(sneaky)})
        assert status == 403
        status, message = await raw(h.cluster, "POST", "/jobs", {"entrypoint": "os; import x"})
        assert status == 400
        # A module name is allowed: code already on the node.
        status, _ = await raw(
            h.cluster,
            "POST",
            "/jobs",
            {
                "entrypoint": "tests.jobs.keyed_sum",
                "args": [f"out={allowed / 'out'}", "events=-1", "rate=2000", "interval=60000"],
            },
        )
        assert status == 202
        async with h.cluster.client() as c:
            (job,) = [j.jid for j in (await c.list_jobs()).jobs]
        return job

    job = asyncio.run(checks())
    assert not marker.exists(), "a job file outside the roots was imported"
    h.wait_for("the job to run", lambda: h.job(job).state is models.JobStatus.RUNNING)

    async def directories() -> None:
        for path in (f"/jobs/{job}/savepoints", f"/jobs/{job}/stop"):
            status, message = await raw(
                h.cluster, "POST", path, {"target_directory": str(tmp_path / "elsewhere")}
            )
            assert status == 403, path
            assert "outside the allowed storage roots" in message
            assert "--storage-roots" in message
        status, message = await raw(
            h.cluster,
            "POST",
            "/jobs",
            {"entrypoint": "tests.jobs.keyed_sum", "savepoint_path": str(outside)},
        )
        assert status == 403
        assert "restore path" in message

    asyncio.run(directories())
    assert not (tmp_path / "elsewhere").exists()
    h.cancel(job)


def test_a_metadata_naming_files_outside_its_savepoint_is_refused(
    cluster_factory: Callable[..., Harness], tmp_path: Path
) -> None:
    h = cluster_factory()
    marker = tmp_path / "pwned"
    savepoint = tmp_path / "savepoints" / "savepoint-forged"
    savepoint.mkdir(parents=True)
    state = pickle.dumps(_CreatesMarker(marker))
    (tmp_path / "savepoints" / "evil.state").write_bytes(state)
    handle = messages.StateHandle("sum", 0, "../evil.state", len(state), 0, 127, True, False)
    meta = metadata.CheckpointMetadata(
        version=metadata.FORMAT_VERSION,
        job_id="forged",
        checkpoint_id=1,
        timestamp=0,
        kind="savepoint",
        operators={"sum": metadata.OperatorState(1, 128, [handle])},
    )
    metadata.write(savepoint, meta)

    async def submit() -> tuple[int, str]:
        return await raw(
            h.cluster,
            "POST",
            "/jobs",
            {
                "entrypoint": str(JOBS / "keyed_sum.py"),
                "savepoint_path": str(savepoint),
                "args": [f"out={tmp_path / 'out'}"],
            },
        )

    status, message = asyncio.run(submit())
    assert status == 400
    assert "'../evil.state'" in message
    assert "not a relative path inside its directory" in message
    assert not marker.exists()
    assert msgspec.json.decode((savepoint / "_metadata").read_bytes())  # left as it was


def test_processes_refuse_to_start_without_tls_unless_told_insecure(tmp_path: Path) -> None:
    def start(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "streamjob_runtime.cli", *args],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip

    jm = start("jobmanager", "--checkpoint-dir", str(tmp_path / "c"))
    assert jm.returncode != 0
    assert "give --tls-dir DIR (or STREAMJOB_TLS_DIR)" in jm.stderr
    assert "--insecure" in jm.stderr
    tm = start("taskmanager", "--jobmanager", "127.0.0.1:1")
    assert tm.returncode != 0
    assert "give --tls-dir DIR" in tm.stderr
    tls = security.write_credentials(tmp_path / "tls")
    jm = start("jobmanager", "--checkpoint-dir", str(tmp_path / "c"), "--tls-dir", str(tls))
    assert jm.returncode != 0
    assert "give --rest-token-file FILE" in jm.stderr
    (tls / "tls.crt").unlink()
    jm = start("jobmanager", "--checkpoint-dir", str(tmp_path / "c"), "--tls-dir", str(tls))
    assert "lacks tls.crt" in jm.stderr
