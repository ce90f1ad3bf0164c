"""Security checks that need no cluster: framing limits, _metadata paths, allowed roots."""

from __future__ import annotations

import asyncio
import os
import ssl
import struct
from pathlib import Path

import pytest

from streamjob_runtime import jobfile, local, security
from streamjob_runtime.checkpoint import metadata
from streamjob_runtime.rpc import framing, messages


def test_a_frame_over_the_limit_is_refused_from_its_header() -> None:
    async def read(data: bytes, limit: int) -> bytes:
        reader = asyncio.StreamReader()
        reader.feed_data(data)  # no payload follows: refusing must not wait for it
        return await framing.read_frame(reader, limit)

    header = struct.pack(">I", framing.MAX_HELLO + 1)
    with pytest.raises(framing.FrameError, match="exceeds the 65536 byte limit"):
        asyncio.run(read(header, framing.MAX_HELLO))
    assert asyncio.run(read(framing.frame(b"hello"), framing.MAX_HELLO)) == b"hello"
    assert framing.MAX_FRAME < 1 << 30


def _write_metadata(directory: Path, name: str) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    handle = messages.StateHandle("sum", 0, name, 4, 0, 127, True, False)
    meta = metadata.CheckpointMetadata(
        version=metadata.FORMAT_VERSION,
        job_id="j",
        checkpoint_id=1,
        timestamp=0,
        kind="savepoint",
        operators={"sum": metadata.OperatorState(1, 128, [handle])},
    )
    metadata.write(directory, meta)


@pytest.mark.parametrize(
    "name", ["../evil.state", "a/../../evil.state", "/etc/evil.state", "..\\evil.state", ""]
)
def test_metadata_naming_a_file_outside_its_directory_is_corrupt(tmp_path: Path, name: str) -> None:
    (tmp_path / "evil.state").write_bytes(b"data")
    _write_metadata(tmp_path / "sp", name)
    with pytest.raises(metadata.CorruptCheckpointError, match="not a relative path inside"):
        metadata.read(tmp_path / "sp")


def test_metadata_naming_files_inside_its_directory_reads(tmp_path: Path) -> None:
    _write_metadata(tmp_path / "sp", "sub/ok.state")
    (tmp_path / "sp" / "sub").mkdir()
    (tmp_path / "sp" / "sub" / "ok.state").write_bytes(b"data")
    assert metadata.read(tmp_path / "sp").checkpoint_id == 1


def test_a_local_cluster_allows_the_installed_examples_by_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Installed (the image), local.EXAMPLES points into site-packages' parent, where no
    # examples are: the JobManager's default roots, where the image copies them, must count.
    installed, missing = tmp_path / "opt-examples", tmp_path / "opt-jobs"
    installed.mkdir()
    monkeypatch.setattr(local, "EXAMPLES", tmp_path / "site-packages" / "examples")
    monkeypatch.setattr(security, "DEFAULT_JOB_ROOTS", (str(missing), str(installed)))
    cluster = local.LocalCluster(tmp_path / "work")
    assert cluster.job_roots == [os.getcwd(), str(installed)]
    custom = local.LocalCluster(tmp_path / "work", job_roots=[str(missing)])
    assert custom.job_roots == [str(missing)]


def test_job_files_load_only_from_the_job_roots(tmp_path: Path) -> None:
    root, outside = tmp_path / "jobs", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (outside / "job.py").write_text("def build(env): pass\n")
    jobfile.check_allowed(str(root / "job.py"), [str(root)])
    jobfile.check_allowed(str(root / "deep" / "job.py"), [str(root)])
    jobfile.check_allowed(str(outside / "job.py"), None)  # no roots: anywhere
    jobfile.check_allowed("examples.clickstream", [])  # module names: code on the node
    for path in (outside / "job.py", root / ".." / "outside" / "job.py", Path("/etc/x.py")):
        with pytest.raises(jobfile.EntrypointNotAllowed, match="outside the allowed job roots"):
            jobfile.check_allowed(str(path), [str(root)])
    os.symlink(outside / "job.py", root / "link.py")  # a link out of the root is out
    with pytest.raises(jobfile.EntrypointNotAllowed):
        jobfile.check_allowed(str(root / "link.py"), [str(root)])
    with pytest.raises(jobfile.JobFileError, match=r"neither a \.py path nor a module name"):
        jobfile.check_allowed("os; rm", [str(root)])
    # A root's sibling that shares its prefix is not inside it.
    with pytest.raises(jobfile.EntrypointNotAllowed):
        jobfile.check_allowed(str(tmp_path / "jobs-evil" / "job.py"), [str(root)])


def test_storage_paths_stay_inside_the_storage_roots(tmp_path: Path) -> None:
    settings = security.Settings(storage_roots=(str(tmp_path / "a"),))
    settings.check_storage(tmp_path / "a" / "savepoints", "target")
    with pytest.raises(security.StorageNotAllowed, match="--storage-roots"):
        settings.check_storage(tmp_path / "a" / ".." / "b", "target")
    security.Settings().check_storage("/anywhere", "target")


def test_s3_locations_stay_inside_s3_storage_roots(tmp_path: Path) -> None:
    roots = security.split_roots(f"{tmp_path}:s3://bucket/prefix:s3://whole")
    assert roots == (str(tmp_path), "s3://bucket/prefix", "s3://whole")
    settings = security.Settings(storage_roots=roots)
    for admitted in (
        "s3://bucket/prefix",
        "s3://bucket/prefix/",
        "s3://bucket/prefix/savepoints/sp-1",
        "s3://bucket//prefix/sp",
        "s3://whole/anything",
        tmp_path / "sp",
        f"file://{tmp_path}/sp",
    ):
        settings.check_storage(admitted, "target")
    for refused in (
        "s3://bucket/prefix-evil/sp",  # a sibling sharing the prefix's name
        "s3://bucket/other",
        "s3://bucket",
        "s3://other-bucket/prefix/sp",
        "s3://bucket/prefix/../other",  # some S3-compatible stores resolve ..
        "s3://bucket/prefix/./sp",
        "gs://bucket/prefix/sp",  # same bucket and key, another store
    ):
        with pytest.raises(security.StorageNotAllowed, match="--storage-roots"):
            settings.check_storage(refused, "target")


def test_a_local_root_never_admits_a_url_nor_a_url_root_a_local_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A relative "s3://..." would resolve under the current directory: never a local path.
    monkeypatch.chdir(tmp_path)
    local = security.Settings(storage_roots=(str(tmp_path), "/"))
    with pytest.raises(security.StorageNotAllowed):
        local.check_storage("s3://bucket/sp", "target")
    remote = security.Settings(storage_roots=("s3://bucket",))
    for path in (tmp_path / "s3:" / "bucket" / "sp", "s3:/bucket/sp", "/bucket/sp", "bucket/sp"):
        with pytest.raises(security.StorageNotAllowed):
            remote.check_storage(path, "target")


def test_the_credentials_authenticate_both_ends_and_nothing_else(tmp_path: Path) -> None:
    files = security.TlsFiles.load(security.write_credentials(tmp_path / "job"))
    other = security.TlsFiles.load(security.write_credentials(tmp_path / "other"))
    assert oct((files.key).stat().st_mode & 0o777) == "0o600"

    async def handshake(client: ssl.SSLContext) -> bytes:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(await reader.readexactly(2))
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=files.server_context())
        port = server.sockets[0].getsockname()[1]
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client)
            writer.write(b"ok")
            try:
                return await reader.read()
            finally:
                writer.close()
        finally:
            server.close()

    assert asyncio.run(handshake(files.client_context())) == b"ok"
    with pytest.raises(ssl.SSLError):  # the other CA does not vouch for the server
        asyncio.run(handshake(other.client_context()))
    (tmp_path / "job" / "tls.key").unlink()
    with pytest.raises(security.SecurityError, match=r"lacks tls\.key"):
        security.TlsFiles.load(tmp_path / "job")
