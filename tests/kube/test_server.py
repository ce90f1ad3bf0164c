"""The Kubernetes API emulator, exercised through real clients: kubernetes_asyncio and kopf."""

from __future__ import annotations

import asyncio
import datetime
import json
import types
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import kopf
import pytest
from kubernetes_asyncio import client, watch
from kubernetes_asyncio.client.rest import ApiException
from kubernetes_asyncio.leaderelection import electionconfig, leaderelection
from kubernetes_asyncio.leaderelection.resourcelock.leaselock import LeaseLock

from tests.kube import KubeEmulator, server
from tests.kube.fixtures import (
    MERGE_PATCH,
    api_client,
    api_client_from_kubeconfig,
    as_body,
    crd,
    kopf_operator,
)

pytestmark = pytest.mark.timeout(60)

T = TypeVar("T")
Obj = dict[str, Any]
GROUP = "test.streamjob.dev"
MERGE = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"


def run(coro: Coroutine[Any, Any, T], timeout: float = 20.0) -> T:
    async def bounded() -> T:
        async with asyncio.timeout(timeout):
            return await coro

    return asyncio.run(bounded())


def error_of(e: ApiException) -> Obj:
    body: Obj = json.loads(e.body or b"{}")
    return body


async def expect_error(status: int, call: Awaitable[object]) -> Obj:
    with pytest.raises(ApiException) as info:
        await call
    assert info.value.status == status, info.value.body
    body = error_of(info.value)
    assert body["kind"] == "Status"
    assert body["code"] == status
    return body


def configmap(name: str, labels: dict[str, str] | None = None, **data: str) -> client.V1ConfigMap:
    return client.V1ConfigMap(metadata=client.V1ObjectMeta(name=name, labels=labels), data=data)


@asynccontextmanager
async def raw(kube: KubeEmulator) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(
        base_url=kube.url, headers={"Authorization": f"Bearer {kube.token}"}
    ) as session:
        yield session


async def read_events(response: aiohttp.ClientResponse, count: int) -> list[Obj]:
    events: list[Obj] = []
    async with asyncio.timeout(5):
        while len(events) < count:
            line = await response.content.readline()
            assert line, f"the stream ended after {events}"
            events.append(json.loads(line))
    return events


def summary(events: list[Obj]) -> list[tuple[str, str]]:
    return [(e["type"], e["object"]["metadata"]["name"]) for e in events]


def widget_crd(status: bool = True, plural: str = "widgets", kind: str = "Widget") -> Obj:
    return crd(GROUP, plural, kind, versions=("v1", "v1beta1"), status=status)


def widget(name: str, **spec: object) -> Obj:
    return {
        "apiVersion": f"{GROUP}/v1",
        "kind": "Widget",
        "metadata": {"name": name},
        "spec": spec,
        "status": {"phase": "ignored-on-create"},
    }


# ------------------------------------------------------------------------------- discovery


def test_discovery_lists_builtin_and_registered_resources(kube: KubeEmulator) -> None:
    async def main() -> None:
        async with api_client(kube) as api:
            versions = await client.CoreApi(api).get_api_versions()
            assert versions.versions == ["v1"]
            core = await client.CoreV1Api(api).get_api_resources()
            by_name = {r.name: r for r in core.resources}
            assert by_name["namespaces"].namespaced is False
            assert by_name["configmaps"].namespaced is True
            assert {"pods/status", "events", "services"} <= set(by_name)
            groups = await client.ApisApi(api).get_api_versions()
            names = {g.name for g in groups.groups}
            assert {"apps", "coordination.k8s.io", "apiextensions.k8s.io"} <= names
            assert GROUP not in names
            leases = await client.CoordinationV1Api(api).get_api_resources()
            assert [r.name for r in leases.resources] == ["leases"]

            await client.ApiextensionsV1Api(api).create_custom_resource_definition(
                as_body(widget_crd())
            )

            groups = await client.ApisApi(api).get_api_versions()
            group = next(g for g in groups.groups if g.name == GROUP)
            assert [v.version for v in group.versions] == ["v1", "v1beta1"]
            assert group.preferred_version.version == "v1"
        async with raw(kube) as http:
            async with http.get(f"/apis/{GROUP}/v1beta1") as r:
                resources = (await r.json())["resources"]
            assert [(x["name"], x["kind"], x["namespaced"]) for x in resources] == [
                ("widgets", "Widget", True),
                ("widgets/status", "Widget", True),
            ]
            async with http.get("/apis/apiextensions.k8s.io/v1") as r:
                assert (await r.json())["resources"][0]["name"] == "customresourcedefinitions"
            async with http.get("/apis/nothing.example/v1") as r:
                assert r.status == 404
            async with http.get("/version") as r:
                assert (await r.json())["major"] == "1"

    run(main())


# ------------------------------------------------------------------------------- CRUD


def test_configmap_crud(kube: KubeEmulator) -> None:
    async def main() -> None:
        async with api_client(kube) as api:
            core = client.CoreV1Api(api)
            created = await core.create_namespaced_config_map(
                "default", configmap("settings", {"app": "a"}, mode="fast")
            )
            assert created.metadata.uid
            assert created.metadata.creation_timestamp
            assert created.metadata.namespace == "default"
            rv = int(created.metadata.resource_version)
            assert rv == kube.resource_version

            read = await core.read_namespaced_config_map("settings", "default")
            assert read.data == {"mode": "fast"}
            assert read.metadata.resource_version == str(rv)

            listed = await core.list_namespaced_config_map("default")
            assert [c.metadata.name for c in listed.items] == ["settings"]
            assert listed.metadata.resource_version == str(rv)

            read.data["mode"] = "slow"
            replaced = await core.replace_namespaced_config_map("settings", "default", read)
            assert int(replaced.metadata.resource_version) > rv
            assert replaced.metadata.uid == created.metadata.uid

            # kubernetes_asyncio sends a dict patch as a strategic merge patch
            patched = await core.patch_namespaced_config_map(
                "settings", "default", {"metadata": {"labels": {"tier": "x"}}, "data": {"b": "2"}}
            )
            assert patched.metadata.labels == {"app": "a", "tier": "x"}
            assert patched.data == {"mode": "slow", "b": "2"}

            # a write that changes nothing does not make a new version
            same = await core.patch_namespaced_config_map("settings", "default", {"data": {}})
            assert same.metadata.resource_version == patched.metadata.resource_version

            body = await expect_error(
                409, core.create_namespaced_config_map("default", configmap("settings"))
            )
            assert body["reason"] == "AlreadyExists"
            body = await expect_error(
                404, core.create_namespaced_config_map("nowhere", configmap("x"))
            )
            assert body["message"] == 'namespaces "nowhere" not found'
            body = await expect_error(
                422, core.create_namespaced_config_map("default", configmap("Not_Valid"))
            )
            assert body["reason"] == "Invalid"
            await expect_error(
                422,
                core.create_namespaced_config_map("default", configmap("x", {"bad key!": "v"})),
            )

            await core.delete_namespaced_config_map("settings", "default")
            body = await expect_error(404, core.read_namespaced_config_map("settings", "default"))
            assert body["reason"] == "NotFound"
            assert body["details"] == {"name": "settings", "group": "", "kind": "configmaps"}
            await expect_error(404, core.delete_namespaced_config_map("settings", "default"))

            generated = await core.create_namespaced_config_map(
                "default", client.V1ConfigMap(metadata=client.V1ObjectMeta(generate_name="gen-"))
            )
            assert generated.metadata.name.startswith("gen-")
            assert len(generated.metadata.name) == len("gen-") + 5

    run(main())


def lease_body(name: str, holder: str) -> client.V1Lease:
    now = datetime.datetime.now(datetime.UTC)
    return client.V1Lease(
        metadata=client.V1ObjectMeta(name=name),
        spec=client.V1LeaseSpec(
            holder_identity=holder, lease_duration_seconds=15, acquire_time=now, renew_time=now
        ),
    )


def test_lease_crud(kube: KubeEmulator) -> None:
    async def main() -> None:
        async with api_client(kube) as api:
            coordination = client.CoordinationV1Api(api)
            created = await coordination.create_namespaced_lease("default", lease_body("l", "a"))
            assert created.spec.holder_identity == "a"
            assert created.spec.renew_time.tzinfo is not None
            stored = kube.get("coordination.k8s.io/v1", "leases", "l", "default")
            assert stored is not None
            assert stored["spec"]["leaseDurationSeconds"] == 15

            created.spec.holder_identity = "b"
            created.spec.lease_transitions = 1
            replaced = await coordination.replace_namespaced_lease("l", "default", created)
            assert replaced.spec.holder_identity == "b"
            read = await coordination.read_namespaced_lease("l", "default")
            assert read.spec.lease_transitions == 1

            patched = await coordination.patch_namespaced_lease(
                "l", "default", {"spec": {"holderIdentity": "c"}}
            )
            assert patched.spec.holder_identity == "c"
            leases = await coordination.list_namespaced_lease("default")
            assert [x.metadata.name for x in leases.items] == ["l"]

            bad = {"metadata": {"name": "t"}, "spec": {"renewTime": "yesterday"}}
            await expect_error(422, coordination.create_namespaced_lease("default", as_body(bad)))

            await coordination.delete_namespaced_lease("l", "default")
            await expect_error(404, coordination.read_namespaced_lease("l", "default"))

    run(main())


def test_stale_update_is_a_conflict(kube: KubeEmulator) -> None:
    async def main() -> None:
        async with api_client(kube) as api:
            core = client.CoreV1Api(api)
            first = await core.create_namespaced_config_map("default", configmap("c", v="1"))
            stale_rv = first.metadata.resource_version
            first.data["v"] = "2"
            await core.replace_namespaced_config_map("c", "default", first)

            first.data["v"] = "3"  # still carries the old resourceVersion
            first.metadata.resource_version = stale_rv
            body = await expect_error(
                409, core.replace_namespaced_config_map("c", "default", first)
            )
            assert body["reason"] == "Conflict"
            assert "the object has been modified" in body["message"]

            # a resourceVersion in a merge patch is a precondition too
            await expect_error(
                409,
                core.patch_namespaced_config_map(
                    "c",
                    "default",
                    {"metadata": {"resourceVersion": stale_rv}, "data": {"v": "4"}},
                ),
            )
            # and a JSON patch `test` of it fails with 422, as kopf expects
            await expect_error(
                422,
                core.patch_namespaced_config_map(
                    "c",
                    "default",
                    [
                        {"op": "test", "path": "/metadata/resourceVersion", "value": stale_rv},
                        {"op": "replace", "path": "/data/v", "value": "5"},
                    ],
                ),
            )
            current = await core.read_namespaced_config_map("c", "default")
            assert current.data == {"v": "2"}

            # without a resourceVersion, a built-in kind is updated unconditionally
            unconditional = configmap("c", v="6")
            replaced = await core.replace_namespaced_config_map("c", "default", unconditional)
            assert replaced.data == {"v": "6"}

    run(main())


def test_two_concurrent_lease_updaters_exactly_one_wins(kube: KubeEmulator) -> None:
    async def main() -> None:
        async with api_client(kube) as api_a, api_client(kube) as api_b:
            a, b = client.CoordinationV1Api(api_a), client.CoordinationV1Api(api_b)
            await a.create_namespaced_lease("default", lease_body("leader", "nobody"))
            for round_ in range(20):
                seen_a, seen_b = await asyncio.gather(
                    a.read_namespaced_lease("leader", "default"),
                    b.read_namespaced_lease("leader", "default"),
                )
                assert seen_a.metadata.resource_version == seen_b.metadata.resource_version
                seen_a.spec.holder_identity = f"a-{round_}"
                seen_b.spec.holder_identity = f"b-{round_}"
                results = await asyncio.gather(
                    a.replace_namespaced_lease("leader", "default", seen_a),
                    b.replace_namespaced_lease("leader", "default", seen_b),
                    return_exceptions=True,
                )
                won = [r for r in results if isinstance(r, client.V1Lease)]
                lost = [r for r in results if isinstance(r, ApiException)]
                assert (len(won), len(lost)) == (1, 1), results
                assert lost[0].status == 409
                final = await a.read_namespaced_lease("leader", "default")
                assert final.spec.holder_identity == won[0].spec.holder_identity

    run(main())


def test_leader_election_with_kubernetes_asyncio_elects_one(kube: KubeEmulator) -> None:
    leaders: list[str] = []

    async def candidate(identity: str, elected: asyncio.Event) -> None:
        async with api_client(kube) as api:
            lock = LeaseLock("election", "default", identity, api)

            async def started() -> None:
                leaders.append(identity)
                elected.set()
                await asyncio.Event().wait()  # lead until cancelled

            async def stopped() -> None:
                pass

            config = electionconfig.Config(lock, 15, 10, 1, started, stopped)
            await leaderelection.LeaderElection(config).run()

    async def main() -> None:
        elected = asyncio.Event()
        tasks = [asyncio.create_task(candidate(n, elected)) for n in ("one", "two")]
        await elected.wait()
        # both candidates have looked at the lease at least once more
        holder = await asyncio.to_thread(
            kube.wait_for,
            lambda: (
                (kube.get("coordination.k8s.io/v1", "leases", "election", "default") or {})
                .get("spec", {})
                .get("holderIdentity")
            ),
        )
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        assert leaders == [holder]

    run(main())


# ------------------------------------------------------------------------------- watches


def test_watch_resumes_from_a_resource_version_without_replay_or_loss(kube: KubeEmulator) -> None:
    async def main() -> None:
        async with api_client(kube) as api:
            core = client.CoreV1Api(api)
            await core.create_namespaced_config_map("default", configmap("before"))
            start = str(kube.resource_version)

            # no resourceVersion: the existing objects first, as ADDED
            w = watch.Watch()
            stream = w.stream(core.list_namespaced_config_map, "default")
            first = await anext(stream)
            assert (first["type"], first["object"].metadata.name) == ("ADDED", "before")
            w.stop()
            await w.close()

            # from a resourceVersion: exactly what happened after it, in order
            await core.create_namespaced_config_map("default", configmap("a"))
            await core.patch_namespaced_config_map("a", "default", {"data": {"x": "1"}})
            await core.create_namespaced_config_map("kube-system", configmap("elsewhere"))
            await core.delete_namespaced_config_map("before", "default")
            seen: list[tuple[str, str, str]] = []
            w = watch.Watch()
            async for event in w.stream(
                core.list_namespaced_config_map, "default", resource_version=start
            ):
                meta = event["object"].metadata
                seen.append((event["type"], meta.name, meta.resource_version))
                if len(seen) == 3:
                    w.stop()
            await w.close()
            assert [s[:2] for s in seen] == [
                ("ADDED", "a"),
                ("MODIFIED", "a"),
                ("DELETED", "before"),
            ]
            rvs = [int(s[2]) for s in seen]
            assert rvs == sorted(rvs)
            assert rvs[-1] == kube.resource_version

            # resume from the last one seen: nothing replayed, nothing lost
            resume_from = seen[-1][2]
            await core.create_namespaced_config_map("default", configmap("b"))
            await core.delete_namespaced_config_map("a", "default")
            more: list[tuple[str, str]] = []
            w = watch.Watch()
            async for event in w.stream(
                core.list_namespaced_config_map, "default", resource_version=resume_from
            ):
                more.append((event["type"], event["object"].metadata.name))
                if len(more) == 2:
                    w.stop()
            await w.close()
            assert more == [("ADDED", "b"), ("DELETED", "a")]

            # a live watch sees writes made while it is open, across namespaces too
            async with (
                raw(kube) as http,
                http.get(
                    "/api/v1/configmaps",
                    params={"watch": "true", "resourceVersion": str(kube.resource_version)},
                ) as r,
            ):
                assert r.status == 200
                await core.create_namespaced_config_map("kube-system", configmap("c"))
                await core.create_namespaced_config_map("default", configmap("d"))
                events = await read_events(r, 2)
            assert summary(events) == [("ADDED", "c"), ("ADDED", "d")]
            assert events[0]["object"]["kind"] == "ConfigMap"

    run(main())


def test_watch_from_an_expired_resource_version_is_410_gone(kube: KubeEmulator) -> None:
    async def main() -> None:
        async with api_client(kube) as api:
            core = client.CoreV1Api(api)
            await core.create_namespaced_config_map("default", configmap("a"))
            old = str(kube.resource_version)
            await core.patch_namespaced_config_map("a", "default", {"data": {"x": "1"}})
            kube.compact()

            async with (
                raw(kube) as http,
                http.get(
                    "/api/v1/namespaces/default/configmaps",
                    params={"watch": "1", "resourceVersion": old},
                ) as r,
            ):
                assert r.status == 200
                (event,) = await read_events(r, 1)
                assert await r.content.read() == b""  # and the stream ends
            assert event["type"] == "ERROR"
            assert event["object"]["code"] == 410
            assert event["object"]["reason"] == "Expired"

            w = watch.Watch()
            with pytest.raises(ApiException) as info:
                async for _ in w.stream(
                    core.list_namespaced_config_map,
                    "default",
                    resource_version=old,
                    timeout_seconds=5,
                ):
                    pass
            await w.close()
            assert info.value.status == 410

            # the current resourceVersion is still fine
            w = watch.Watch()
            current = str(kube.resource_version)
            stream = w.stream(core.list_namespaced_config_map, "default", resource_version=current)
            await core.create_namespaced_config_map("default", configmap("b"))
            event = await anext(stream)
            assert (event["type"], event["object"].metadata.name) == ("ADDED", "b")
            w.stop()
            await w.close()

    run(main())


def test_bounded_history_expires_old_resource_versions() -> None:
    with KubeEmulator(history=10) as kube:

        async def main() -> None:
            async with raw(kube) as http:
                for i in range(30):
                    async with http.post(
                        "/api/v1/namespaces/default/configmaps",
                        json={"metadata": {"name": f"c{i}"}},
                    ) as r:
                        assert r.status == 201
                async with http.get(
                    "/api/v1/namespaces/default/configmaps",
                    params={"watch": "true", "resourceVersion": "5"},
                ) as r:
                    (event,) = await read_events(r, 1)
                assert event["type"] == "ERROR"
                assert event["object"]["code"] == 410

        run(main())


def test_watch_selectors_timeout_bookmarks_and_initial_events(kube: KubeEmulator) -> None:
    async def main() -> None:
        async with raw(kube) as http:
            for name, app in (("x", "a"), ("y", "b")):
                body = {"metadata": {"name": name, "labels": {"app": app}}}
                async with http.post("/api/v1/namespaces/default/configmaps", json=body) as r:
                    assert r.status == 201
            rv = str(kube.resource_version)
            async with http.get(
                "/api/v1/namespaces/default/configmaps",
                params={"watch": "true", "labelSelector": "app=a", "resourceVersion": rv},
            ) as r:
                path = "/api/v1/namespaces/default/configmaps"
                patch = {"metadata": {"labels": {"app": "b"}}}
                headers = {"Content-Type": MERGE}
                async with http.patch(f"{path}/x", json=patch, headers=headers):
                    pass
                patch = {"metadata": {"labels": {"app": "a"}}}
                async with http.patch(f"{path}/y", json=patch, headers=headers):
                    pass
                events = await read_events(r, 2)
            # leaving the selection is a DELETED, entering it an ADDED
            assert summary(events) == [("DELETED", "x"), ("ADDED", "y")]

            async with http.get(
                "/api/v1/namespaces/default/configmaps",
                params={
                    "watch": "true",
                    "sendInitialEvents": "true",
                    "resourceVersionMatch": "NotOlderThan",
                    "allowWatchBookmarks": "true",
                    "fieldSelector": "metadata.name=y",
                    "timeoutSeconds": "1",
                },
            ) as r:
                events = await read_events(r, 2)
                assert await r.content.read() == b""  # ends after timeoutSeconds
            assert summary(events[:1]) == [("ADDED", "y")]
            assert events[1]["type"] == "BOOKMARK"
            assert events[1]["object"]["metadata"]["annotations"] == {
                "k8s.io/initial-events-end": "true"
            }
            assert events[1]["object"]["metadata"]["resourceVersion"] == str(kube.resource_version)

    run(main())


def test_idle_watches_get_bookmarks_to_resume_from() -> None:
    with KubeEmulator(bookmark_interval=0.1) as kube:

        async def main() -> None:
            async with raw(kube) as http:
                url = "/api/v1/namespaces/default/configmaps"
                params = {"watch": "true", "allowWatchBookmarks": "true"}
                async with http.post(
                    "/api/v1/namespaces/kube-system/configmaps",
                    json={"metadata": {"name": "elsewhere"}},
                ):
                    pass
                async with http.get(url, params=params) as r:
                    (bookmark,) = await read_events(r, 1)
                assert bookmark["type"] == "BOOKMARK"
                rv = bookmark["object"]["metadata"]["resourceVersion"]
                assert rv == str(kube.resource_version)
                async with http.post(url, json={"metadata": {"name": "after"}}):
                    pass
                async with http.get(url, params={**params, "resourceVersion": rv}) as r:
                    events = await read_events(r, 2)
                assert summary(events[:1]) == [("ADDED", "after")]
                assert events[1]["type"] == "BOOKMARK"

        run(main())


def test_a_write_landing_as_a_watch_wait_times_out_is_sent_and_no_bookmark_passes_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # asyncio.wait_for yields to the loop while it cancels a timed-out wait, so a write can
    # land between the timeout and the watch's handling of it. The watch must still send
    # its event, and no bookmark may claim its resourceVersion first: kopf resumes from
    # bookmarks, and such a lost event left a StreamJob's deletion waiting forever.
    # Here the write is made to land there, on the watch's first idle timeout.
    landed: list[int] = []

    with KubeEmulator(bookmark_interval=0.001) as kube:
        real_wait_for = asyncio.wait_for

        async def wait_for(waited: Awaitable[T], timeout: float | None) -> T:  # noqa: ASYNC109 (wait_for's own signature)
            try:
                return await real_wait_for(waited, timeout)
            except TimeoutError:
                if not landed:  # on the emulator's loop: the write is stored at once
                    created = kube.create(
                        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "late"}}
                    )
                    landed.append(int(created["metadata"]["resourceVersion"]))
                raise

        patched = types.SimpleNamespace(**{**vars(asyncio), "wait_for": wait_for})
        monkeypatch.setattr(server, "asyncio", patched)

        async def main() -> None:
            async with raw(kube) as http:
                url = "/api/v1/namespaces/default/configmaps"
                params = {"watch": "true", "allowWatchBookmarks": "true"}
                async with http.get(url, params=params) as r:
                    bookmarks: list[int] = []
                    try:
                        async with asyncio.timeout(3):
                            while True:
                                line = await r.content.readline()
                                assert line, "the stream ended"
                                event = json.loads(line)
                                rv = int(event["object"]["metadata"]["resourceVersion"])
                                if event["type"] != "BOOKMARK":
                                    break
                                bookmarks.append(rv)
                    except TimeoutError:
                        raise AssertionError(
                            f"the write at resourceVersion {landed} was never sent; bookmarks"
                            f" said {sorted(set(bookmarks))}"
                        ) from None
                assert (event["type"], event["object"]["metadata"]["name"]) == ("ADDED", "late")
                assert [rv] == landed
                assert all(b < rv for b in bookmarks), (bookmarks, rv)

        run(main())


def test_drop_watches_ends_streams(kube: KubeEmulator) -> None:
    async def main() -> None:
        async with (
            raw(kube) as http,
            http.get("/api/v1/namespaces", params={"watch": "true"}) as r,
        ):
            assert len(await read_events(r, 4)) == 4  # the four initial namespaces
            await asyncio.to_thread(kube.wait_for, lambda: kube.watch_count() == 1)
            await asyncio.to_thread(kube.drop_watches)
            async with asyncio.timeout(5):
                assert await r.content.read() == b""
        await asyncio.to_thread(kube.wait_for, lambda: kube.watch_count() == 0)

    run(main())


# ------------------------------------------------------------------------------- status, generation


def test_status_subresource_and_generation(kube: KubeEmulator) -> None:
    async def main() -> None:
        async with api_client(kube) as api:
            ext = client.ApiextensionsV1Api(api)
            await ext.create_custom_resource_definition(as_body(widget_crd()))
            custom = client.CustomObjectsApi(api)
            args = (GROUP, "v1", "default", "widgets")

            created = await custom.create_namespaced_custom_object(*args, widget("w", size=1))
            assert "status" not in created  # create ignores status
            assert created["metadata"]["generation"] == 1

            # the main resource ignores status; spec changes bump the generation
            patched = await custom.patch_namespaced_custom_object(
                *args, "w", {"spec": {"size": 2}, "status": {"phase": "x"}}, **MERGE_PATCH
            )
            assert patched["metadata"]["generation"] == 2
            assert "status" not in patched

            # without MERGE_PATCH, kubernetes_asyncio sends a dict as a JSON patch: 400, as in
            # Kubernetes; and custom resources do not take strategic merge patches
            await expect_error(
                400, custom.patch_namespaced_custom_object(*args, "w", {"spec": {"size": 3}})
            )
            smp: dict[str, Any] = {"_content_type": "application/strategic-merge-patch+json"}
            await expect_error(
                415, custom.patch_namespaced_custom_object(*args, "w", {"spec": {}}, **smp)
            )

            # metadata changes do not bump the generation
            patched = await custom.patch_namespaced_custom_object(
                *args, "w", {"metadata": {"labels": {"a": "b"}}}, **MERGE_PATCH
            )
            assert patched["metadata"]["generation"] == 2

            # /status changes only status, and not the generation
            status = await custom.patch_namespaced_custom_object_status(
                *args, "w", {"spec": {"size": 99}, "status": {"phase": "Running"}},
                **MERGE_PATCH,
            )  # fmt: skip
            assert status["status"] == {"phase": "Running"}
            assert status["spec"] == {"size": 2}
            assert status["metadata"]["generation"] == 2
            assert int(status["metadata"]["resourceVersion"]) > int(
                patched["metadata"]["resourceVersion"]
            )

            # PUT to /status, with a stale resourceVersion: conflict
            stale = dict(status, status={"phase": "Stale"})
            stale["metadata"] = dict(
                status["metadata"], resourceVersion=created["metadata"]["resourceVersion"]
            )
            await expect_error(
                409, custom.replace_namespaced_custom_object_status(*args, "w", stale)
            )
            fresh = await custom.get_namespaced_custom_object(*args, "w")
            fresh["status"] = {"phase": "Done"}
            fresh["spec"] = {"size": 1000}
            done = await custom.replace_namespaced_custom_object_status(*args, "w", fresh)
            assert done["status"] == {"phase": "Done"}
            assert done["spec"] == {"size": 2}

            # PUT to the main resource keeps the status, bumps generation on spec change
            done["spec"] = {"size": 3}
            done["status"] = {"phase": "overwritten?"}
            replaced = await custom.replace_namespaced_custom_object(*args, "w", done)
            assert replaced["status"] == {"phase": "Done"}
            assert replaced["metadata"]["generation"] == 3

            # custom resources need a resourceVersion on PUT
            del replaced["metadata"]["resourceVersion"]
            await expect_error(422, custom.replace_namespaced_custom_object(*args, "w", replaced))

            # served from every version, one storage
            other = await custom.get_namespaced_custom_object(
                GROUP, "v1beta1", "default", "widgets", "w"
            )
            assert other["apiVersion"] == f"{GROUP}/v1beta1"
            assert other["metadata"]["uid"] == created["metadata"]["uid"]

            # without a status subresource, status is part of the object and bumps generation
            await ext.create_custom_resource_definition(
                as_body(widget_crd(status=False, plural="gadgets", kind="Gadget"))
            )
            gargs = (GROUP, "v1", "default", "gadgets")
            gadget = {**widget("g", size=1), "kind": "Gadget"}
            g = await custom.create_namespaced_custom_object(*gargs, gadget)
            assert g["status"] == {"phase": "ignored-on-create"}
            g = await custom.patch_namespaced_custom_object(
                *gargs, "g", {"status": {"phase": "set"}}, **MERGE_PATCH
            )
            assert g["status"] == {"phase": "set"}
            assert g["metadata"]["generation"] == 2
            await expect_error(
                404,
                custom.patch_namespaced_custom_object_status(
                    *gargs, "g", {"status": {}}, **MERGE_PATCH
                ),
            )

            # built-in kinds: a Deployment's status through /status only
            apps = client.AppsV1Api(api)
            deployment = await apps.create_namespaced_deployment(
                "default", as_body(deployment_body("d"))
            )
            assert deployment.metadata.generation == 1
            assert deployment.spec.replicas == 1
            d = await apps.patch_namespaced_deployment_status(
                "d", "default", {"status": {"readyReplicas": 1, "observedGeneration": 1}}
            )
            assert d.status.ready_replicas == 1
            assert d.metadata.generation == 1
            d = await apps.patch_namespaced_deployment("d", "default", {"spec": {"replicas": 3}})
            assert d.metadata.generation == 2
            assert d.status.ready_replicas == 1
            await expect_error(
                422,
                apps.patch_namespaced_deployment(
                    "d", "default", {"spec": {"selector": {"matchLabels": {"app": "other"}}}}
                ),
            )

    run(main())


def deployment_body(name: str, labels: dict[str, str] | None = None) -> Obj:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": labels or {}},
        "spec": {
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "main", "image": "busybox"}]},
            },
        },
    }


def test_builtin_defaults_and_immutable_fields(kube: KubeEmulator) -> None:
    async def main() -> None:
        async with api_client(kube) as api:
            apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
            d = await apps.create_namespaced_deployment("default", as_body(deployment_body("d")))
            assert d.spec.strategy.type == "RollingUpdate"
            assert d.spec.revision_history_limit == 10
            pod = d.spec.template.spec
            assert (pod.restart_policy, pod.dns_policy) == ("Always", "ClusterFirst")
            assert pod.containers[0].image_pull_policy == "Always"  # busybox: no tag
            assert pod.containers[0].termination_message_path == "/dev/termination-log"

            # writing the un-defaulted desired state again changes nothing
            desired = deployment_body("d")
            desired["metadata"]["resourceVersion"] = d.metadata.resource_version
            same = await apps.replace_namespaced_deployment("d", "default", as_body(desired))
            assert same.metadata.resource_version == d.metadata.resource_version
            assert same.metadata.generation == 1

            service: Obj = {
                "metadata": {"name": "svc"},
                "spec": {"selector": {"app": "d"}, "ports": [{"port": 80}]},
            }
            svc = await core.create_namespaced_service("default", as_body(service))
            assert svc.spec.cluster_ip
            assert svc.spec.type == "ClusterIP"
            assert (svc.spec.ports[0].protocol, svc.spec.ports[0].target_port) == ("TCP", 80)
            # a PUT without clusterIP keeps the allocated one; changing it is refused
            replaced = await core.replace_namespaced_service("svc", "default", as_body(service))
            assert replaced.spec.cluster_ip == svc.spec.cluster_ip
            service["spec"]["clusterIP"] = "10.0.0.1"
            await expect_error(
                422, core.replace_namespaced_service("svc", "default", as_body(service))
            )

            rbac = client.RbacAuthorizationV1Api(api)
            binding = {
                "metadata": {"name": "b"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "r"},
                "subjects": [{"kind": "ServiceAccount", "name": "sa", "namespace": "default"}],
            }
            await rbac.create_namespaced_role_binding("default", as_body(binding))
            await expect_error(
                422,
                rbac.patch_namespaced_role_binding("b", "default", {"roleRef": {"name": "other"}}),
            )

    run(main())


# ------------------------------------------------------------------------------- dry run


def test_dry_run_validates_without_persisting(kube: KubeEmulator) -> None:
    async def main() -> None:
        async with api_client(kube) as api:
            core = client.CoreV1Api(api)
            rv = kube.resource_version
            preview = await core.create_namespaced_config_map(
                "default", configmap("dry", v="1"), dry_run="All"
            )
            assert preview.metadata.name == "dry"
            assert preview.metadata.uid
            await expect_error(404, core.read_namespaced_config_map("dry", "default"))
            await expect_error(
                422,
                core.create_namespaced_config_map("default", configmap("BAD"), dry_run="All"),
            )
            assert kube.resource_version == rv

            await core.create_namespaced_config_map("default", configmap("real", v="1"))
            rv = kube.resource_version
            preview = await core.patch_namespaced_config_map(
                "real", "default", {"data": {"v": "2"}}, dry_run="All"
            )
            assert preview.data == {"v": "2"}
            preview.data["v"] = "3"
            await core.replace_namespaced_config_map("real", "default", preview, dry_run="All")
            await core.delete_namespaced_config_map("real", "default", dry_run="All")
            current = await core.read_namespaced_config_map("real", "default")
            assert current.data == {"v": "1"}
            assert kube.resource_version == rv
            await expect_error(
                400, core.delete_namespaced_config_map("real", "default", dry_run="Some")
            )

    run(main())


# ------------------------------------------------------------------------------- selectors


def test_label_and_field_selectors(kube: KubeEmulator) -> None:
    async def main() -> None:
        async with api_client(kube) as api:
            core = client.CoreV1Api(api)
            for name, labels in (
                ("a1", {"app": "a", "tier": "web"}),
                ("a2", {"app": "a"}),
                ("b1", {"app": "b", "tier": "db"}),
                ("none", None),
            ):
                await core.create_namespaced_config_map("default", configmap(name, labels))
            await core.create_namespaced_config_map("kube-system", configmap("k", {"app": "a"}))

            async def names(selector: str, namespace: str | None = "default") -> list[str]:
                if namespace is None:
                    result = await core.list_config_map_for_all_namespaces(label_selector=selector)
                else:
                    result = await core.list_namespaced_config_map(
                        namespace, label_selector=selector
                    )
                return [c.metadata.name for c in result.items]

            assert await names("app=a") == ["a1", "a2"]
            assert await names("app==a,tier=web") == ["a1"]
            assert await names("app!=a") == ["b1", "none"]
            assert await names("app in (a, b)") == ["a1", "a2", "b1"]
            assert await names("app notin (a),tier") == ["b1"]
            assert await names("tier") == ["a1", "b1"]
            assert await names("!tier") == ["a2", "none"]
            assert await names("app in (a),!tier") == ["a2"]
            assert await names("") == ["a1", "a2", "b1", "none"]
            assert await names("app=a", None) == ["a1", "a2", "k"]

            by_field = await core.list_config_map_for_all_namespaces(
                field_selector="metadata.namespace=kube-system"
            )
            assert [c.metadata.name for c in by_field.items] == ["k"]
            by_field = await core.list_namespaced_config_map(
                "default", field_selector="metadata.name!=a1,metadata.name!=none"
            )
            assert [c.metadata.name for c in by_field.items] == ["a2", "b1"]

            await expect_error(
                400, core.list_namespaced_config_map("default", label_selector="a=(b")
            )
            body = await expect_error(
                400, core.list_namespaced_config_map("default", field_selector="data.x=1")
            )
            assert "field label not supported" in body["message"]

            page = await core.list_namespaced_config_map("default", limit=3)
            assert [c.metadata.name for c in page.items] == ["a1", "a2", "b1"]
            assert page.metadata.remaining_item_count == 1
            rest = await core.list_namespaced_config_map(
                "default", limit=3, _continue=page.metadata._continue
            )
            assert [c.metadata.name for c in rest.items] == ["none"]
            assert not rest.metadata._continue

            deleted = await core.delete_collection_namespaced_config_map(
                "default", label_selector="app=a"
            )
            assert deleted is not None
            assert await names("") == ["b1", "none"]

    run(main())


# ------------------------------------------------------------------------------- patches


def test_patch_formats(kube: KubeEmulator) -> None:
    async def main() -> None:
        async with api_client(kube) as api:
            apps = client.AppsV1Api(api)
            body = deployment_body("d")
            body["spec"]["template"]["spec"]["containers"] = [
                {"name": "main", "image": "a:1", "env": [{"name": "X", "value": "1"}]},
                {"name": "side", "image": "b:1", "ports": [{"containerPort": 80}]},
            ]
            await apps.create_namespaced_deployment("default", as_body(body))

            # strategic merge: containers by name, env by name, container ports by containerPort
            patch = {
                "spec": {
                    "template": {
                        "spec": {
                            "containers": [
                                {"name": "main", "env": [{"name": "Y", "value": "2"}]},
                                {"name": "side", "ports": [{"containerPort": 81}]},
                            ]
                        }
                    }
                }
            }
            d = await apps.patch_namespaced_deployment("d", "default", patch)
            main_c, side_c = d.spec.template.spec.containers
            assert main_c.image == "a:1"
            assert [(e.name, e.value) for e in main_c.env] == [("X", "1"), ("Y", "2")]
            assert [p.container_port for p in side_c.ports] == [80, 81]

            delete_side = {
                "spec": {
                    "template": {"spec": {"containers": [{"name": "side", "$patch": "delete"}]}}
                }
            }
            d = await apps.patch_namespaced_deployment("d", "default", delete_side)
            assert [c.name for c in d.spec.template.spec.containers] == ["main"]

            # a merge patch replaces lists
            merge = {
                "spec": {"template": {"spec": {"containers": [{"name": "only", "image": "c"}]}}}
            }
            d = await apps.patch_namespaced_deployment("d", "default", merge, **MERGE_PATCH)
            assert [c.name for c in d.spec.template.spec.containers] == ["only"]

            # a JSON patch
            ops = [
                {"op": "add", "path": "/metadata/labels/new", "value": "yes"},
                {"op": "copy", "from": "/metadata/labels/new", "path": "/metadata/labels/copy"},
                {"op": "move", "from": "/metadata/labels/copy", "path": "/metadata/labels/moved"},
                {"op": "replace", "path": "/spec/replicas", "value": 2},
                {"op": "test", "path": "/spec/replicas", "value": 2},
            ]
            d = await apps.patch_namespaced_deployment("d", "default", ops)
            assert d.metadata.labels == {"new": "yes", "moved": "yes"}
            assert d.spec.replicas == 2
            bad = [{"op": "remove", "path": "/metadata/labels/absent"}]
            await expect_error(422, apps.patch_namespaced_deployment("d", "default", bad))

        async with raw(kube) as http:
            url = "/apis/apps/v1/namespaces/default/deployments/d"
            headers = {"Content-Type": "application/apply-patch+yaml"}
            async with http.patch(url, data="{}", headers=headers) as r:
                assert r.status == 415
            async with http.patch(url, data="not json", headers={"Content-Type": MERGE}) as r:
                assert r.status == 400

    run(main())


def test_creating_with_a_resource_version_fails_as_in_kubernetes(kube: KubeEmulator) -> None:
    async def main() -> None:
        async with api_client(kube) as api:
            core = client.CoreV1Api(api)
            read = await core.create_namespaced_config_map("default", configmap("orig"))
            read.metadata.name = "copy"
            body = await expect_error(500, core.create_namespaced_config_map("default", read))
            assert "resourceVersion should not be set" in body["message"]

    run(main())


def test_pod_label_patches_and_pod_rules(kube: KubeEmulator) -> None:
    async def main() -> None:
        async with api_client(kube) as api:
            core = client.CoreV1Api(api)
            for name in ("p1", "p2"):
                pod = {
                    "metadata": {"name": name, "labels": {"app": "jm"}},
                    "spec": {"containers": [{"name": "main", "image": "img:1"}]},
                }
                created = await core.create_namespaced_pod("default", as_body(pod))
                assert created.status.phase == "Pending"
            await core.patch_namespaced_pod(
                "p1", "default", {"metadata": {"labels": {"leader": "true"}}}
            )
            leaders = await core.list_namespaced_pod("default", label_selector="app=jm,leader=true")
            assert [p.metadata.name for p in leaders.items] == ["p1"]
            await core.patch_namespaced_pod(
                "p1", "default", {"metadata": {"labels": {"leader": None}}}
            )
            leaders = await core.list_namespaced_pod("default", label_selector="leader")
            assert leaders.items == []

            kube.patch("v1", "pods", "p2", {"status": {"phase": "Running"}}, "default", "status")
            running = await core.list_namespaced_pod(
                "default", field_selector="status.phase=Running"
            )
            assert [p.metadata.name for p in running.items] == ["p2"]

            # only images (and a few fields) of a pod may change
            image = {"spec": {"containers": [{"name": "main", "image": "img:2"}]}}
            changed = await core.patch_namespaced_pod("p2", "default", image)
            assert changed.spec.containers[0].image == "img:2"
            env = {"spec": {"containers": [{"name": "main", "env": [{"name": "A", "value": "1"}]}]}}
            await expect_error(422, core.patch_namespaced_pod("p2", "default", env))
            await expect_error(
                422, core.create_namespaced_pod("default", as_body({"metadata": {"name": "x"}}))
            )

    run(main())


# ------------------------------------------------------------------------------- deletion


def test_finalizers_hold_deletion_until_removed(kube: KubeEmulator) -> None:
    async def main() -> None:
        async with api_client(kube) as api:
            core = client.CoreV1Api(api)
            body = configmap("held")
            body.metadata.finalizers = ["example.com/cleanup"]
            await core.create_namespaced_config_map("default", body)
            start = str(kube.resource_version)

            async with (
                raw(kube) as http,
                http.delete("/api/v1/namespaces/default/configmaps/held") as r,
            ):
                assert r.status == 200  # with the object, still there
                assert (await r.json())["metadata"]["deletionTimestamp"]
            held = await core.read_namespaced_config_map("held", "default")
            assert held.metadata.deletion_timestamp is not None
            assert held.metadata.finalizers == ["example.com/cleanup"]
            # deleting again changes nothing
            await core.delete_namespaced_config_map("held", "default")
            again = await core.read_namespaced_config_map("held", "default")
            assert again.metadata.resource_version == held.metadata.resource_version

            error = await expect_error(
                422,
                core.patch_namespaced_config_map(
                    "held", "default", {"metadata": {"finalizers": ["example.com/cleanup", "x/y"]}}
                ),
            )
            assert "no new finalizers" in error["message"]

            await core.patch_namespaced_config_map(
                "held", "default", [{"op": "remove", "path": "/metadata/finalizers/0"}]
            )
            await expect_error(404, core.read_namespaced_config_map("held", "default"))

            async with (
                raw(kube) as http,
                http.get(
                    "/api/v1/namespaces/default/configmaps",
                    params={"watch": "true", "resourceVersion": start},
                ) as r,
            ):
                events = await read_events(r, 2)
            assert summary(events) == [("MODIFIED", "held"), ("DELETED", "held")]
            assert events[0]["object"]["metadata"]["deletionTimestamp"]

    run(main())


def owner_ref(owner: Obj) -> Obj:
    return {
        "apiVersion": owner["apiVersion"],
        "kind": owner["kind"],
        "name": owner["metadata"]["name"],
        "uid": owner["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def owned_configmap(name: str, *owners: Obj, finalizers: list[str] | None = None) -> Any:
    meta: Obj = {"name": name, "ownerReferences": [owner_ref(o) for o in owners]}
    for ref in meta["ownerReferences"][1:]:
        ref["controller"] = False
    if finalizers:
        meta["finalizers"] = finalizers
    return as_body({"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta})


def test_owner_references_garbage_collection(kube: KubeEmulator) -> None:
    async def main() -> None:
        async with api_client(kube) as api:
            core, apps = client.CoreV1Api(api), client.AppsV1Api(api)
            custom = client.CustomObjectsApi(api)

            def cm_names() -> list[str]:
                return [c["metadata"]["name"] for c in kube.list("v1", "configmaps", "default")]

            async def make_owner(name: str) -> Obj:
                await apps.create_namespaced_deployment("default", as_body(deployment_body(name)))
                found: Obj = await custom.get_namespaced_custom_object(
                    "apps", "v1", "default", "deployments", name
                )
                return found

            # background (the default): dependents go after the owner, recursively
            owner = await make_owner("owner")
            await core.create_namespaced_config_map("default", owned_configmap("child", owner))
            child = kube.get("v1", "configmaps", "child", "default")
            assert child is not None
            await core.create_namespaced_config_map("default", owned_configmap("grandchild", child))
            await core.create_namespaced_config_map(
                "default", owned_configmap("held", owner, finalizers=["x.io/f"])
            )
            other = await make_owner("other")
            await core.create_namespaced_config_map(
                "default", owned_configmap("shared", owner, other)
            )
            await core.create_namespaced_config_map("default", configmap("unrelated"))

            await apps.delete_namespaced_deployment("owner", "default")
            await asyncio.to_thread(
                kube.wait_for, lambda: cm_names() == ["held", "shared", "unrelated"]
            )
            held = kube.get("v1", "configmaps", "held", "default")
            assert held is not None
            assert held["metadata"]["deletionTimestamp"]
            shared = kube.get("v1", "configmaps", "shared", "default")
            assert shared is not None
            assert [r["name"] for r in shared["metadata"]["ownerReferences"]] == ["other"]

            # orphan: dependents stay, without the reference
            await apps.delete_namespaced_deployment("other", "default", propagation_policy="Orphan")
            shared = kube.get("v1", "configmaps", "shared", "default")
            assert shared is not None
            assert "ownerReferences" not in shared["metadata"]

            # foreground: the owner waits for its dependents
            owner = await make_owner("fg")
            await core.create_namespaced_config_map(
                "default", owned_configmap("fg-child", owner, finalizers=["x.io/f"])
            )
            await apps.delete_namespaced_deployment(
                "fg", "default", propagation_policy="Foreground"
            )
            waiting = await apps.read_namespaced_deployment("fg", "default")
            assert "foregroundDeletion" in waiting.metadata.finalizers
            assert waiting.metadata.deletion_timestamp is not None
            # a dependent created meanwhile (by a controller that read the owner before its
            # deletion) is deleted too, as the collector does, or the owner would wait for ever
            await core.create_namespaced_config_map("default", owned_configmap("late", owner))
            await asyncio.to_thread(kube.wait_for, lambda: "late" not in cm_names())
            await core.patch_namespaced_config_map(
                "fg-child", "default", {"metadata": {"finalizers": None}}
            )
            await expect_error(404, apps.read_namespaced_deployment("fg", "default"))

            # a dependent whose owners are all absent is collected
            ghost = {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {"name": "ghost", "uid": "00000000-0000-0000-0000-000000000000"},
            }
            await core.create_namespaced_config_map("default", owned_configmap("orphan", ghost))
            await asyncio.to_thread(kube.wait_for, lambda: "orphan" not in cm_names())

    run(main())


def test_namespace_deletion_removes_its_content(kube: KubeEmulator) -> None:
    async def main() -> None:
        async with api_client(kube) as api:
            core = client.CoreV1Api(api)
            ns = await core.create_namespace(
                client.V1Namespace(metadata=client.V1ObjectMeta(name="team"))
            )
            assert ns.status.phase == "Active"
            await core.create_namespaced_config_map("team", configmap("a"))
            held = configmap("held")
            held.metadata.finalizers = ["x.io/f"]
            await core.create_namespaced_config_map("team", held)

            await core.delete_namespace("team")
            terminating = await core.read_namespace("team")
            assert terminating.status.phase == "Terminating"
            await expect_error(404, core.read_namespaced_config_map("a", "team"))
            body = await expect_error(
                403, core.create_namespaced_config_map("team", configmap("b"))
            )
            assert "being terminated" in body["message"]

            # (as a strategic merge patch, `finalizers: []` would change nothing: it is a set)
            await core.patch_namespaced_config_map(
                "held", "team", {"metadata": {"finalizers": []}}, **MERGE_PATCH
            )
            await expect_error(404, core.read_namespace("team"))

    run(main())


def test_crd_deletion_removes_instances_and_the_resource(kube: KubeEmulator) -> None:
    async def main() -> None:
        async with api_client(kube) as api:
            ext = client.ApiextensionsV1Api(api)
            custom = client.CustomObjectsApi(api)
            created = await ext.create_custom_resource_definition(as_body(widget_crd()))
            assert {c.type for c in created.status.conditions} == {"NamesAccepted", "Established"}
            same = await ext.replace_custom_resource_definition(f"widgets.{GROUP}", created)
            assert same.metadata.resource_version == created.metadata.resource_version
            args = (GROUP, "v1", "default", "widgets")
            await custom.create_namespaced_custom_object(*args, widget("w1"))
            body = widget("w2")
            body["metadata"]["finalizers"] = ["x.io/f"]
            await custom.create_namespaced_custom_object(*args, body)
            listed = await custom.list_cluster_custom_object(GROUP, "v1", "widgets")
            assert [w["metadata"]["name"] for w in listed["items"]] == ["w1", "w2"]

            await ext.delete_custom_resource_definition(f"widgets.{GROUP}")
            remaining = await custom.list_namespaced_custom_object(*args)
            assert [w["metadata"]["name"] for w in remaining["items"]] == ["w2"]
            await expect_error(405, custom.create_namespaced_custom_object(*args, widget("w3")))

            await custom.patch_namespaced_custom_object(
                *args, "w2", {"metadata": {"finalizers": []}}, **MERGE_PATCH
            )
            await expect_error(404, ext.read_custom_resource_definition(f"widgets.{GROUP}"))
            await expect_error(404, custom.list_namespaced_custom_object(*args))
            groups = await client.ApisApi(api).get_api_versions()
            assert GROUP not in {g.name for g in groups.groups}

    run(main())


# ------------------------------------------------------------------------------- plumbing


def test_kubeconfig_and_test_hooks(kube: KubeEmulator, kubeconfig: Path) -> None:
    async def main() -> None:
        api = await api_client_from_kubeconfig(kubeconfig)
        async with api:
            core = client.CoreV1Api(api)
            namespaces = await core.list_namespace()
            assert [n.metadata.name for n in namespaces.items] == [
                "default",
                "kube-node-lease",
                "kube-public",
                "kube-system",
            ]
            kube.inject_error(500, method="GET", path_contains="/namespaces/default", times=1)
            await expect_error(500, core.read_namespace("default"))
            assert (await core.read_namespace("default")).metadata.name == "default"

    run(main())
    assert any(
        r.method == "GET" and r.path == "/api/v1/namespaces/default" and r.status == 500
        for r in kube.requests
    )
    put = kube.put_object(deployment_body("d") | {"status": {"readyReplicas": 2}})
    assert put["status"] == {"readyReplicas": 2}
    assert (
        kube.patch("apps/v1", "deployment", "d", {"spec": {"replicas": 2}}, "default")["metadata"][
            "generation"
        ]
        == 2
    )
    assert kube.delete("apps/v1", "deployments", "d", "default") is True
    assert kube.get("apps/v1", "deployments", "d", "default") is None


def test_a_request_hook_runs_after_the_write_is_stored_and_before_the_answer(
    kube: KubeEmulator,
) -> None:
    seen: list[Obj | None] = []

    def action() -> None:  # runs on the emulator's thread, the answer not yet sent
        seen.append(kube.get("v1", "configmaps", "b", "default"))

    kube.on_request(
        action,
        method="POST",
        path_contains="/configmaps",
        when=lambda body: body["metadata"]["name"] == "b",
    )
    kube.create({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "b"}})
    kube.delete("v1", "configmaps", "b", "default")  # not through HTTP: no hook

    async def main() -> None:
        async with api_client(kube) as api:
            core = client.CoreV1Api(api)
            await core.create_namespaced_config_map("default", configmap("a"))
            await core.create_namespaced_config_map("default", configmap("b"))
            await expect_error(409, core.create_namespaced_config_map("default", configmap("b")))

    run(main())
    assert len(seen) == 1  # once: the name matched, the request succeeded, times=1
    stored = seen[0]
    assert stored is not None
    assert stored["metadata"]["name"] == "b"


def test_the_service_proxy_forwards_to_the_backends_endpoint_or_answers_503(
    kube: KubeEmulator,
) -> None:
    asked: list[tuple[str, str, str]] = []

    def backend(namespace: str, service: str, port: str) -> str | None:
        asked.append((namespace, service, port))
        return kube.url if port == "http" else None  # the emulator stands in for a pod

    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80}]},
    }
    kube.create(service)
    base = f"{kube.url}/api/v1/namespaces/default/services"

    async def get(url: str) -> tuple[int, Any]:
        async with aiohttp.ClientSession() as session, session.get(url) as resp:
            return resp.status, await resp.json()

    async def main() -> None:
        status, body = await get(f"{base}/web:http/proxy/version")
        assert (status, body["message"]) == (503, 'no endpoints available for service "web"')
        kube.serve_services(backend)
        status, body = await get(f"{base}/web:http/proxy/version")
        assert (status, body["gitVersion"]) == (200, "v1.30.0-streamjob-emulator")
        status, body = await get(f"{base}/http:web:http/proxy/api/v1/namespaces/nope")
        assert status == 404  # the endpoint's own answer, passed through
        assert body["reason"] == "NotFound"
        status, body = await get(f"{base}/web:80/proxy/version")
        assert status == 503
        status, body = await get(f"{base}/missing:http/proxy/version")
        assert status == 404
        kube.serve_services(None)
        status, body = await get(f"{base}/web:http/proxy/version")
        assert status == 503

    run(main())
    assert asked == [("default", "web", "http")] * 2 + [("default", "web", "80")]


# ------------------------------------------------------------------------------- kopf


@pytest.mark.parametrize("clusterwide", [True, False], ids=["clusterwide", "namespaced"])
def test_kopf_operator_reconciles_through_the_emulator(
    kube: KubeEmulator, clusterwide: bool
) -> None:
    kube.apply_crd(widget_crd())
    registry = kopf.OperatorRegistry()
    deleted: list[str] = []

    @kopf.on.create(GROUP, "v1", "widgets", id="created", registry=registry)
    def created(spec: kopf.Spec, patch: kopf.Patch, body: kopf.Body, **_: Any) -> dict[str, Any]:
        kopf.info(body, reason="Provisioned", message="the widget is ready")
        patch.status["phase"] = "Ready"
        patch.status["size"] = spec.get("size")
        return {"handled": True}

    @kopf.on.update(GROUP, "v1", "widgets", id="updated", registry=registry)
    def updated(spec: kopf.Spec, patch: kopf.Patch, meta: kopf.Meta, **_: Any) -> None:
        patch.status["size"] = spec.get("size")
        patch.status["observedGeneration"] = meta.get("generation")

    @kopf.on.delete(GROUP, "v1", "widgets", registry=registry)
    def removed(name: str, **_: Any) -> None:
        deleted.append(name)

    settings = kopf.OperatorSettings()
    settings.watching.server_timeout = 10
    namespaces = () if clusterwide else ["default"]
    with kopf_operator(kube, registry, settings=settings, namespaces=namespaces):
        kube.create({**widget("w1", size=3), "metadata": {"name": "w1", "namespace": "default"}})

        def status() -> Obj | None:
            obj = kube.get(f"{GROUP}/v1", "widgets", "w1", "default")
            return obj if obj and (obj.get("status") or {}).get("phase") == "Ready" else None

        obj = kube.wait_for(status, 20, "kopf to patch the status")
        assert obj is not None
        assert obj["status"]["size"] == 3
        assert obj["status"]["created"] == {"handled": True}
        assert obj["metadata"]["finalizers"] == ["kopf.zalando.org/KopfFinalizerMarker"]
        (event,) = kube.wait_for(
            lambda: kube.events_for("w1", "default", kind="Widget", reason="Provisioned"), 10
        )
        assert event["message"] == "the widget is ready"
        assert event["type"] == "Normal"
        assert event["involvedObject"]["uid"] == obj["metadata"]["uid"]

        kube.patch(f"{GROUP}/v1", "widgets", "w1", {"spec": {"size": 5}}, "default")
        kube.wait_for(
            lambda: (
                (kube.get(f"{GROUP}/v1", "widgets", "w1", "default") or {})
                .get("status", {})
                .get("observedGeneration")
                == 2
            ),
            20,
            "kopf to handle the update",
        )
        updated_obj = kube.get(f"{GROUP}/v1", "widgets", "w1", "default")
        assert updated_obj is not None
        assert updated_obj["status"]["size"] == 5

        assert kube.delete(f"{GROUP}/v1", "widgets", "w1", "default") is False  # kopf's finalizer
        kube.wait_for(
            lambda: kube.get(f"{GROUP}/v1", "widgets", "w1", "default") is None,
            20,
            "kopf to release its finalizer",
        )
        assert deleted == ["w1"]
    patches = [r for r in kube.requests if r.method == "PATCH"]
    assert any(r.path.endswith("/w1/status") and r.content_type == MERGE for r in patches)


def test_helpers_are_callable_from_async_code(kube: KubeEmulator) -> None:
    async def main() -> None:
        # the emulator runs on its own loop: blocking helpers from a test loop are fine
        kube.create({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}})
        result: Callable[[], Obj | None] = lambda: kube.get("v1", "cm", "x", "default")  # noqa: E731
        assert result() is not None

    run(main())
