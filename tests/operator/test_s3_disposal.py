"""The operator disposes of expired savepoints on S3 itself, under the roots it is given
(``--savepoint-bucket``), with credentials from its own environment: against a real S3
API (moto's server, in process)."""

from __future__ import annotations

import asyncio
import urllib.request
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from moto.server import ThreadedMotoServer

from streamjob_operator import __main__ as operator_main
from streamjob_operator.acting import actor, savepoints
from streamjob_operator.observing import resource
from streamjob_operator.planning import actions
from tests.kube import KubeEmulator, fixtures
from tests.operator.test_acting import NOW, streamjob  # noqa: F401  (a fixture)

BUCKET = "streamjob"
kube = fixtures.kube


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://{host}:{port}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    # moto keeps its buckets in process-wide state, which outlives a server: start empty.
    reset = urllib.request.Request(f"http://{host}:{port}/moto-api/reset", method="POST")
    urllib.request.urlopen(reset, timeout=30).close()
    client = boto3.client("s3", endpoint_url=f"http://{host}:{port}", region_name="us-east-1")
    client.create_bucket(Bucket=BUCKET)
    try:
        yield client
    finally:
        server.stop()


def put_savepoint(client: Any, key: str, metadata: bool = True) -> None:
    client.put_object(Bucket=BUCKET, Key=f"{key}/op-0", Body=b"state")
    client.put_object(Bucket=BUCKET, Key=f"{key}/sub/op-1", Body=b"state")
    if metadata:
        client.put_object(Bucket=BUCKET, Key=f"{key}/_metadata", Body=b"meta")


def keys(client: Any) -> list[str]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET)
    return sorted(o["Key"] for page in pages for o in page.get("Contents", []))


def test_a_savepoint_under_a_root_is_deleted_and_nothing_beside_it(s3: Any) -> None:
    put_savepoint(s3, "sp/savepoint-a")
    put_savepoint(s3, "sp/savepoint-a1")  # a sibling whose name starts alike
    put_savepoint(s3, "other/savepoint-b")
    put_savepoint(s3, "sp/notes", metadata=False)
    roots = (f"s3://{BUCKET}/sp",)
    before = keys(s3)

    def dispose(location: str) -> savepoints.Disposal:
        return savepoints.dispose(location, (), roots)

    assert dispose(f"s3://{BUCKET}/sp/savepoint-a") is savepoints.Disposal.DISPOSED
    assert keys(s3) == [k for k in before if not k.startswith("sp/savepoint-a/")]
    assert dispose(f"s3://{BUCKET}/sp/savepoint-a/_metadata") is savepoints.Disposal.GONE
    assert dispose(f"s3://{BUCKET}/sp/notes") is savepoints.Disposal.REFUSED
    outside = [
        f"s3://{BUCKET}/other/savepoint-b",  # not under the root
        f"s3://{BUCKET}/sp",  # the root itself
        f"s3://{BUCKET}/sp/../other/savepoint-b",  # escaping it
        f"s3://{BUCKET}/sp//savepoint-a1",
        "s3://elsewhere/sp/savepoint-a1",  # another bucket
    ]
    for location in outside:
        assert dispose(location) is savepoints.Disposal.NOT_MOUNTED, location
    assert savepoints.dispose(f"s3://{BUCKET}/sp/savepoint-a1", (), ()) is (
        savepoints.Disposal.NOT_MOUNTED
    )  # no roots given: the operator deletes nothing on S3
    assert keys(s3) == [k for k in before if not k.startswith("sp/savepoint-a/")]
    assert dispose(f"s3://{BUCKET}/sp/savepoint-a1") is savepoints.Disposal.DISPOSED
    assert dispose(f"s3://{BUCKET}/other/savepoint-b") is savepoints.Disposal.NOT_MOUNTED
    assert savepoints.dispose(f"s3://{BUCKET}/other/savepoint-b", (), (f"s3://{BUCKET}",)).freed
    assert keys(s3) == ["sp/notes/op-0", "sp/notes/sub/op-1"]


def test_a_store_that_fails_is_an_oserror_to_retry(
    s3: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    put_savepoint(s3, "sp/savepoint-a")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens
    with pytest.raises(OSError, match="listing s3://streamjob/sp/savepoint-a/ failed"):
        savepoints.dispose(f"s3://{BUCKET}/sp/savepoint-a", (), (f"s3://{BUCKET}/sp",))


def test_the_actor_disposes_under_its_roots_and_reports_the_rest(
    s3: Any,
    kube: KubeEmulator,
    streamjob: resource.StreamJobResource,  # noqa: F811
) -> None:
    put_savepoint(s3, "sp/savepoint-a")
    put_savepoint(s3, "other/savepoint-b")
    settings = actor.Settings(savepoint_buckets=(f"s3://{BUCKET}/sp",))
    locations = [f"s3://{BUCKET}/sp/savepoint-a", f"s3://{BUCKET}/other/savepoint-b"]

    async def main() -> actor.Outcome:
        async with fixtures.api_client(kube) as api:
            acting = actor.Actor(api, settings, clock=lambda: NOW)
            plan = actions.Plan(
                tuple(actions.DisposeSavepoint(loc) for loc in locations), streamjob.status
            )
            return await acting.act(streamjob, plan)

    outcome = asyncio.run(main())
    assert outcome.ok, outcome.error
    assert outcome.disposed == locations
    assert outcome.kept_files == [locations[1]]
    assert keys(s3) == ["other/savepoint-b/_metadata", "other/savepoint-b/op-0",
                        "other/savepoint-b/sub/op-1"]  # fmt: skip
    (event,) = kube.events_for("wordcount", reason="SavepointNotDisposed")
    assert "--savepoint-bucket" in event["message"]
    assert f"streamjob savepoint --dispose {locations[1]}" in event["message"]


def test_the_actor_disposes_in_the_store_the_jobs_options_name(
    s3: Any,
    monkeypatch: pytest.MonkeyPatch,
    kube: KubeEmulator,
    streamjob: resource.StreamJobResource,  # noqa: F811
) -> None:
    put_savepoint(s3, "sp/savepoint-a")
    endpoint = s3.meta.endpoint_url
    # The operator's environment names no reachable store: only the job's options do.
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    settings = actor.Settings(savepoint_buckets=(f"s3://{BUCKET}/sp",))
    location = f"s3://{BUCKET}/sp/savepoint-a"

    async def act(store: actions.ObjectStore) -> actor.Outcome:
        async with fixtures.api_client(kube) as api:
            acting = actor.Actor(api, settings, clock=lambda: NOW)
            plan = actions.Plan((actions.DisposeSavepoint(location, store),), streamjob.status)
            return await acting.act(streamjob, plan)

    failed = asyncio.run(act(actions.ObjectStore()))
    assert failed.disposed == []  # retried next pass
    (event,) = kube.events_for("wordcount", reason="SavepointDisposalFailed")
    assert "could not be deleted" in event["message"]
    assert keys(s3) == ["sp/savepoint-a/_metadata", "sp/savepoint-a/op-0",
                        "sp/savepoint-a/sub/op-1"]  # fmt: skip
    store = actions.ObjectStore(endpoint, "us-east-1", path_style_access=True)
    outcome = asyncio.run(act(store))
    assert outcome.ok, outcome.error
    assert outcome.disposed == [location]
    assert outcome.kept_files == []
    assert keys(s3) == []


def test_the_roots_are_checked_on_the_command_line() -> None:
    args = operator_main.parser().parse_args(
        ["--savepoint-bucket", "s3://b/savepoints/", "--savepoint-bucket", "s3://c"]
    )
    assert args.savepoint_bucket == ["s3://b/savepoints", "s3://c"]
    for bad in ("/data", "s3://b/../x", "s3:///x"):
        with pytest.raises(SystemExit):
            operator_main.parser().parse_args(["--savepoint-bucket", bad])
