"""A stateful Kubernetes API server emulator for tests: an aiohttp app on its own event loop
in a background thread, speaking the REST and watch protocols of kube-apiserver.

    with KubeEmulator() as kube:
        kube.url          # http://127.0.0.1:<port>, no TLS; any bearer token is accepted
        kube.get("v1", "configmaps", "x", namespace="default")

See tests/kube/__init__.py for what is and is not emulated.
"""

from __future__ import annotations

import asyncio
import builtins
import concurrent.futures
import copy
import json
import logging
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from tests.kube import schema
from tests.kube.registry import CRDS, NAMESPACES, Obj, Registry, ResourceType
from tests.kube.selectors import (
    SelectorError,
    make_filter,
    parse_field_selector,
    parse_label_selector,
)
from tests.kube.store import (
    PATCH_TYPES,
    ApiError,
    DeleteOptions,
    Store,
    WatchEvent,
    bad_request,
)

T = TypeVar("T")
logger = logging.getLogger(__name__)

TRUE = ("true", "True", "1")
VERSION_INFO: Obj = {
    "major": "1",
    "minor": "30",
    "gitVersion": "v1.30.0-streamjob-emulator",
    "gitCommit": "0000000000000000000000000000000000000000",
    "gitTreeState": "clean",
    "buildDate": "2024-01-01T00:00:00Z",
    "goVersion": "go1.22.0",
    "compiler": "gc",
    "platform": "linux/amd64",
}


# kinds whose immediate deletion answers with the object rather than a Status
RETURN_DELETED_OBJECT = frozenset({("", "pods"), ("", "serviceaccounts")})


@dataclass(frozen=True)
class Target:
    rt: ResourceType
    namespace: str | None  # None: all namespaces, or a cluster-scoped resource
    name: str | None
    subresource: str | None


@dataclass(frozen=True)
class RequestRecord:
    method: str
    path: str
    query: str
    content_type: str
    status: int


@dataclass
class Fault:
    method: str | None
    path_contains: str
    status: int
    times: int
    reason: str
    message: str


@dataclass
class Hook:
    """``action`` runs once a matching request was served (its effect stored) and before
    its answer is sent: the client has not seen the answer when the action runs."""

    method: str | None
    path_contains: str
    when: Callable[[Any], bool] | None  # on the decoded JSON body (None without one)
    action: Callable[[], None]
    times: int


ServiceBackend = Callable[[str, str, str], "str | None"]
"""(namespace, service, port name or number) -> the base URL of an endpoint, or None."""


def _not_found_route() -> ApiError:
    return ApiError(404, "NotFound", "the server could not find the requested resource")


def _method_not_allowed(method: str) -> ApiError:
    return ApiError(405, "MethodNotAllowed", f"the server does not allow this method ({method})")


def _answer(body: Obj, warnings: list[str], status: int = 200) -> web.Response:
    """A JSON answer with one `Warning: 299 - "..."` header per warning, as kube-apiserver
    sends them (kubectl prints them as `Warning: ...`)."""
    headers = CIMultiDict[str]()
    for text in warnings:
        headers.add("Warning", f"299 - {json.dumps(text)}")
    return web.json_response(body, status=status, headers=headers)


def _present(rt: ResourceType, obj: Obj) -> Obj:
    """An object as served at a resource's version (no conversion between versions)."""
    if obj.get("apiVersion") == rt.api_version:
        return obj
    return {**obj, "apiVersion": rt.api_version}


class ApiServer:
    """The HTTP face of a Store. Runs entirely on one event loop."""

    def __init__(self, store: Store, bookmark_interval: float = 10.0) -> None:
        self.store = store
        self.registry: Registry = store.registry
        self.bookmark_interval = bookmark_interval
        self.closing = False
        self.watchers: set[asyncio.Event] = set()
        self.requests: deque[RequestRecord] = deque(maxlen=10_000)
        self.faults: list[Fault] = []
        self.hooks: list[Hook] = []
        self.service_backend: ServiceBackend | None = None
        self._proxy_session: aiohttp.ClientSession | None = None
        self.internal_errors: list[str] = []  # unexpected exceptions: emulator bugs
        self.address = ""
        self.drop_generation = 0  # bumped to end every open watch stream
        store.listeners.append(self._wake_watchers)
        self.app = web.Application(client_max_size=8 * 1024 * 1024)
        self.app.router.add_route("*", "/{tail:.*}", self.handle)

    def _wake_watchers(self) -> None:
        for wake in list(self.watchers):
            wake.set()

    def drop_watches(self) -> None:
        """Close every open watch stream (as an API server restart would)."""
        self.drop_generation += 1
        self._wake_watchers()

    # ------------------------------------------------------------------ entry point

    async def handle(self, request: web.Request) -> web.StreamResponse:
        status = 500
        try:
            response = await self._handle(request)
            status = response.status
            if status < 400:
                await self._run_hooks(request)
            return response
        except ApiError as e:
            status = e.code
            return web.json_response(e.status(), status=e.code)
        except Exception as e:  # an emulator bug: answer like the API server, and remember it
            logger.exception("kube emulator: %s %s failed", request.method, request.path_qs)
            self.internal_errors.append(f"{request.method} {request.path_qs}: {e!r}")
            error = ApiError(500, "InternalError", f"Internal error occurred: {e!r}")
            return web.json_response(error.status(), status=500)
        finally:
            self.requests.append(
                RequestRecord(
                    request.method,
                    request.path,
                    request.query_string,
                    request.headers.get("Content-Type", ""),
                    status,
                )
            )

    async def _run_hooks(self, request: web.Request) -> None:
        for hook in self.hooks:
            if hook.times <= 0 or hook.method not in (None, request.method):
                continue
            if hook.path_contains not in request.path_qs:
                continue
            if hook.when is not None:
                raw = await request.read()  # aiohttp keeps the body it read
                try:
                    body = json.loads(raw) if raw else None
                except ValueError:
                    body = None
                if not hook.when(body):
                    continue
            hook.times -= 1
            hook.action()

    async def _service_proxy(self, request: web.Request, parts: list[str]) -> web.StreamResponse:
        """``/api/v1/namespaces/<ns>/services/[<scheme>:]<name>[:<port>]/proxy/<path>``: the
        request forwarded to an endpoint of the Service (``service_backend``)."""
        namespace, target = parts[3], parts[5]
        pieces = target.split(":")
        if len(pieces) == 3:
            pieces = pieces[1:]  # a scheme: http only here
        name, port = pieces[0], pieces[1] if len(pieces) > 1 else ""
        services = self.registry.find("v1", "services")
        assert services is not None
        self.store.get(services, namespace, name)  # or 404
        backend = self.service_backend
        base = None
        if backend is not None:
            base = await asyncio.to_thread(backend, namespace, name, port)
        if base is None:
            raise ApiError(
                503, "ServiceUnavailable", f'no endpoints available for service "{name}"'
            )
        if self._proxy_session is None:
            self._proxy_session = aiohttp.ClientSession(auto_decompress=False)
        tail = "/" + "/".join(parts[7:])
        body = await request.read()
        # Unlike kube-apiserver, which authenticates the caller by Authorization and drops
        # it, the emulator (which authenticates nobody) passes it on: an operator process
        # can then reach JobManagers that want their job's bearer token through here.
        passed = ("content-type", "authorization")
        headers = {k: v for k, v in request.headers.items() if k.lower() in passed}
        try:
            async with self._proxy_session.request(
                request.method,
                base + tail,
                params=request.query,
                data=body or None,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=60),
                ssl=False,  # an https:// endpoint is not verified, as kube-apiserver does
            ) as upstream:
                content = await upstream.read()
                return web.Response(
                    body=content,
                    status=upstream.status,
                    content_type=upstream.content_type,
                )
        except (aiohttp.ClientError, OSError, TimeoutError) as e:
            raise ApiError(
                503, "ServiceUnavailable", f"error trying to reach service: {e!r}"
            ) from None

    async def close(self) -> None:
        if self._proxy_session is not None:
            await self._proxy_session.close()

    def _fault(self, request: web.Request) -> ApiError | None:
        for fault in self.faults:
            if fault.times <= 0:
                continue
            if (
                fault.method not in (None, request.method)
                or fault.path_contains not in request.path_qs
            ):
                continue
            fault.times -= 1
            return ApiError(fault.status, fault.reason, fault.message)
        return None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        fault = self._fault(request)
        if fault is not None:
            raise fault
        parts = [p for p in request.path.split("/") if p]
        if parts[:3] == ["api", "v1", "namespaces"] and (parts[4:5], parts[6:7]) == (
            ["services"],
            ["proxy"],
        ):
            return await self._service_proxy(request, parts)
        if request.method == "GET":
            document = self._discovery(parts)
            if document is not None:
                if isinstance(document, str):
                    return web.Response(text=document)
                return web.json_response(document)
        target = self._resolve(parts)
        query = request.query
        dry_run = self._dry_run(query.getall("dryRun", []))
        validation = query.get("fieldValidation") or "Warn"
        if validation not in schema.FIELD_VALIDATION:
            raise bad_request(
                f"fieldValidation must be one of {', '.join(schema.FIELD_VALIDATION)}, "
                f"not {validation!r}"
            )
        warnings: list[str] = []
        method = request.method
        rt, namespace, name = target.rt, target.namespace, target.name
        if name is None:
            if method == "GET":
                if query.get("watch", "") in TRUE:
                    return await self._watch(request, target)
                return web.json_response(self._list(target, query))
            if method == "POST":
                if namespace is None and rt.namespaced:
                    raise _method_not_allowed(method)
                body = await self._body(request)
                created = self.store.create(
                    rt, namespace or "", body, dry_run, validation, warnings
                )
                return _answer(_present(rt, created), warnings, status=201)
            if method == "DELETE":
                return web.json_response(await self._delete_collection(request, target, dry_run))
            raise _method_not_allowed(method)
        ns = namespace or ""
        if target.subresource is not None and (target.subresource != "status" or not rt.status):
            raise _not_found_route()
        if method == "GET":
            return web.json_response(_present(rt, self.store.get(rt, ns, name)))
        if method == "PUT":
            body = await self._body(request)
            obj = self.store.replace(
                rt, ns, name, body, target.subresource, dry_run, validation, warnings
            )
            return _answer(_present(rt, obj), warnings)
        if method == "PATCH":
            patch_type = request.content_type
            if patch_type == "application/strategic-merge-patch+json" and rt.custom:
                raise ApiError(
                    415,
                    "UnsupportedMediaType",
                    "strategic merge patch is not supported for custom resources: use "
                    "application/merge-patch+json or application/json-patch+json",
                )
            if patch_type not in PATCH_TYPES:
                raise ApiError(
                    415,
                    "UnsupportedMediaType",
                    f"the body of the request was in an unknown format - accepted media types "
                    f"include: {', '.join(PATCH_TYPES)}",
                )
            body = await self._body(request)
            obj = self.store.patch(
                rt, ns, name, patch_type, body, target.subresource, dry_run, validation, warnings
            )
            return _answer(_present(rt, obj), warnings)
        if method == "DELETE" and target.subresource is None:
            options, opt_dry_run = await self._delete_options(request)
            obj, gone = self.store.delete(rt, ns, name, options, dry_run or opt_dry_run)
            if not gone:
                # as kube-apiserver: 202 only when orphanDependents=false was asked explicitly
                accepted = options.orphan_dependents is False
                return web.json_response(_present(rt, obj), status=202 if accepted else 200)
            if rt.group_resource in RETURN_DELETED_OBJECT:
                return web.json_response(_present(rt, obj))
            return web.json_response(
                {
                    "kind": "Status",
                    "apiVersion": "v1",
                    "metadata": {},
                    "status": "Success",
                    "details": {
                        "name": name,
                        "group": rt.group,
                        "kind": rt.plural,
                        "uid": obj["metadata"]["uid"],
                    },
                }
            )
        raise _method_not_allowed(method)

    @staticmethod
    def _dry_run(values: list[str]) -> bool:
        if not values:
            return False
        if any(v != "All" for v in values):
            raise bad_request(f"unsupported dryRun value {values!r}: only All is supported")
        return True

    @staticmethod
    async def _body(request: web.Request) -> Any:
        raw = await request.read()
        try:
            return json.loads(raw)
        except ValueError as e:
            raise bad_request(f"the request body is not valid JSON: {e}") from e

    # ------------------------------------------------------------------ routing

    def _discovery(self, parts: list[str]) -> Obj | str | None:
        if parts in (["healthz"], ["livez"], ["readyz"]):
            return "ok"
        if parts == ["version"]:
            return VERSION_INFO
        if parts == ["api"]:
            return {
                "kind": "APIVersions",
                "versions": ["v1"],
                "serverAddressByClientCIDRs": [
                    {"clientCIDR": "0.0.0.0/0", "serverAddress": self.address}
                ],
            }
        if parts == ["api", "v1"]:
            return self.registry.resource_list("", "v1")
        if parts == ["apis"]:
            return self.registry.api_group_list()
        if len(parts) == 2 and parts[0] == "apis":
            return self.registry.api_group(parts[1])
        if len(parts) == 3 and parts[0] == "apis":
            return self.registry.resource_list(parts[1], parts[2])
        return None

    def _resolve(self, parts: list[str]) -> Target:
        if len(parts) >= 3 and parts[:2] == ["api", "v1"]:
            group, version, rest = "", "v1", parts[2:]
        elif len(parts) >= 4 and parts[0] == "apis":
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            raise _not_found_route()
        namespaced_path = (
            len(rest) >= 3
            and rest[0] == "namespaces"
            and not (group == "" and len(rest) == 3 and rest[2] in ("status", "finalize"))
        )
        if namespaced_path:
            rt = self.registry.get(group, version, rest[2])
            if rt is None or not rt.namespaced or len(rest) > 5:
                raise _not_found_route()
            tail = rest[3:]
            return Target(
                rt, rest[1], tail[0] if tail else None, tail[1] if len(tail) > 1 else None
            )
        rt = self.registry.get(group, version, rest[0])
        if rt is None or len(rest) > 3 or (rt.namespaced and len(rest) > 1):
            raise _not_found_route()
        tail = rest[1:]
        return Target(rt, None, tail[0] if tail else None, tail[1] if len(tail) > 1 else None)

    # ------------------------------------------------------------------ list, watch, delete

    def _filter(self, target: Target, query: Mapping[str, str]) -> Callable[[Obj], bool]:
        try:
            labels = parse_label_selector(query.get("labelSelector"))
            fields = parse_field_selector(query.get("fieldSelector"), target.rt.field_labels)
        except SelectorError as e:
            raise bad_request(str(e)) from e
        return make_filter(labels, fields)

    def _list(self, target: Target, query: Mapping[str, str]) -> Obj:
        rt = target.rt
        try:
            labels = parse_label_selector(query.get("labelSelector"))
            fields = parse_field_selector(query.get("fieldSelector"), rt.field_labels)
            limit = int(query["limit"]) if query.get("limit") else None
        except (SelectorError, ValueError) as e:
            raise bad_request(str(e)) from e
        items, token, remaining = self.store.select(
            rt, target.namespace, labels, fields, limit, query.get("continue")
        )
        metadata: Obj = {"resourceVersion": str(self.store.rv)}
        if token:
            metadata["continue"] = token
            metadata["remainingItemCount"] = remaining
        return {
            "kind": rt.list_kind,
            "apiVersion": rt.api_version,
            "metadata": metadata,
            "items": [_present(rt, obj) for obj in items],
        }

    async def _delete_options(self, request: web.Request) -> tuple[DeleteOptions, bool]:
        query = request.query
        body: Any = {}
        if request.can_read_body:
            raw = await request.read()
            if raw.strip():
                try:
                    body = json.loads(raw)
                except ValueError as e:
                    raise bad_request(f"the request body is not valid JSON: {e}") from e
        if not isinstance(body, dict):
            raise bad_request("DeleteOptions must be an object")
        propagation = body.get("propagationPolicy") or query.get("propagationPolicy")
        orphan = body.get("orphanDependents")
        if orphan is None and "orphanDependents" in query:
            orphan = query["orphanDependents"] in TRUE
        if propagation is None:
            propagation = "Orphan" if orphan else "Background"
        preconditions = body.get("preconditions") or {}
        dry_run = self._dry_run(list(body.get("dryRun") or []))
        return (
            DeleteOptions(
                propagation=propagation,
                orphan_dependents=orphan,
                uid=preconditions.get("uid"),
                resource_version=preconditions.get("resourceVersion"),
            ),
            dry_run,
        )

    async def _delete_collection(self, request: web.Request, target: Target, dry_run: bool) -> Obj:
        rt = target.rt
        matches = self._filter(target, request.query)
        options, opt_dry_run = await self._delete_options(request)
        items, _, _ = self.store.select(rt, target.namespace)
        deleted = []
        for obj in items:
            if not matches(obj):
                continue
            meta = obj["metadata"]
            try:
                gone, _ = self.store.delete(
                    rt, meta.get("namespace", ""), meta["name"], options, dry_run or opt_dry_run
                )
            except ApiError:
                continue
            deleted.append(_present(rt, gone))
        return {
            "kind": rt.list_kind,
            "apiVersion": rt.api_version,
            "metadata": {"resourceVersion": str(self.store.rv)},
            "items": deleted,
        }

    def _event_line(
        self, target: Target, event: WatchEvent, matches: Callable[[Obj], bool]
    ) -> bytes | None:
        rt = target.rt
        if event.group_resource != rt.group_resource:
            return None
        if target.namespace is not None and event.namespace != target.namespace:
            return None
        kind = event.type
        if kind == "MODIFIED" and event.old is not None:
            was, now = matches(event.old), matches(event.obj)
            if not was and not now:
                return None
            kind = "MODIFIED" if was and now else ("ADDED" if now else "DELETED")
        elif not matches(event.obj):
            return None
        return self._line(kind, _present(rt, event.obj))

    @staticmethod
    def _line(kind: str, obj: Obj) -> bytes:
        return (json.dumps({"type": kind, "object": obj}, separators=(",", ":")) + "\n").encode()

    async def _watch(self, request: web.Request, target: Target) -> web.StreamResponse:
        query = request.query
        rt = target.rt
        matches = self._filter(target, query)
        rv_param = query.get("resourceVersion", "")
        send_initial = query.get("sendInitialEvents", "") in TRUE
        bookmarks = query.get("allowWatchBookmarks", "") in TRUE
        try:
            timeout = float(query["timeoutSeconds"]) if query.get("timeoutSeconds") else None
            start = int(rv_param) if rv_param not in ("", "0") and not send_initial else None
        except ValueError as e:
            raise bad_request(str(e)) from e
        initial: list[bytes] = []
        if start is None:
            start = self.store.rv
            items, _, _ = self.store.select(rt, target.namespace)
            initial = [self._line("ADDED", _present(rt, o)) for o in items if matches(o)]
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        wake = asyncio.Event()
        self.watchers.add(wake)
        generation = self.drop_generation
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout if timeout is not None else None
        last_bookmark = loop.time()
        try:
            for line in initial:
                await response.write(line)
            if send_initial and bookmarks:
                await response.write(self._bookmark(rt, start, initial_end=True))
            last = start
            while not self.closing and generation == self.drop_generation:
                wake.clear()
                try:
                    events = self.store.events_since(last)
                except ApiError as e:
                    await response.write(self._line("ERROR", e.status()))
                    break
                for event in events:
                    last = event.rv
                    event_line = self._event_line(target, event, matches)
                    if event_line is not None:
                        await response.write(event_line)
                wait = min(1.0, self.bookmark_interval) if bookmarks else 1.0
                if deadline is not None:
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        break
                    wait = min(wait, remaining)
                if events:
                    continue
                # Nothing after `last` at the scan just made (no await since): every
                # resourceVersion up to now is seen. A bookmark may say so, and only so: a
                # write that lands while the wait below times out (wait_for yields to the
                # loop while it cancels) comes after this and is read by the next scan.
                scanned = max(last, self.store.rv)
                try:
                    await asyncio.wait_for(wake.wait(), wait)
                except TimeoutError:
                    transport = request.transport
                    if transport is None or transport.is_closing():
                        break
                    if bookmarks and loop.time() - last_bookmark >= self.bookmark_interval:
                        last = scanned
                        await response.write(self._bookmark(rt, last))
                        last_bookmark = loop.time()
            await response.write_eof()
        except (ConnectionResetError, ConnectionError, RuntimeError):
            pass  # the client went away
        finally:
            self.watchers.discard(wake)
        return response

    @staticmethod
    def _bookmark(rt: ResourceType, rv: int, initial_end: bool = False) -> bytes:
        metadata: Obj = {"resourceVersion": str(rv)}
        if initial_end:
            metadata["annotations"] = {"k8s.io/initial-events-end": "true"}
        return ApiServer._line(
            "BOOKMARK", {"kind": rt.kind, "apiVersion": rt.api_version, "metadata": metadata}
        )


class KubeEmulator:
    """The emulator on 127.0.0.1:<free port>, served from its own thread and event loop.

    The helper methods are thread-safe and act on the server's state directly, as an
    administrator with etcd access would; the clients under test should use `url`.
    """

    def __init__(
        self,
        *,
        history: int = 10_000,
        token: str = "emulator-token",
        bookmark_interval: float = 10.0,
    ) -> None:
        self.token = token
        self._store = Store(Registry(), history=history)
        self._server = ApiServer(self._store, bookmark_interval)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._changes = 0
        self._changed = threading.Condition()
        self._store.listeners.append(self._notify)
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> KubeEmulator:
        if self._thread is not None:
            raise RuntimeError("the emulator is already running")
        with socket.socket() as s:  # the port is known before the thread starts
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        loop = asyncio.new_event_loop()
        self._loop = loop
        started: concurrent.futures.Future[None] = concurrent.futures.Future()

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self._serve())
            except BaseException as e:
                started.set_exception(e)
                return
            started.set_result(None)
            loop.run_forever()

        self._thread = threading.Thread(target=run, name="kube-emulator", daemon=True)
        self._thread.start()
        started.result(timeout=10)
        return self

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()

        def defer(fn: Callable[[], None]) -> None:
            loop.call_soon(fn)

        self._store.defer = defer
        self._server.address = f"127.0.0.1:{self.port}"
        self._runner = web.AppRunner(self._server.app, shutdown_timeout=1.0, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def _shutdown(self) -> None:
        self._server.closing = True
        self._server._wake_watchers()
        if self._runner is not None:
            await self._runner.cleanup()
        await self._server.close()

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(timeout=15)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()
        self._loop = self._thread = None

    def __enter__(self) -> KubeEmulator:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ thread plumbing

    def _call(self, fn: Callable[[], T]) -> T:
        """Run fn on the server's loop (where the state lives) and return its result."""
        loop = self._loop
        if loop is None:
            return fn()  # not started: nothing else can touch the state
        if threading.current_thread() is self._thread:
            return fn()
        future: concurrent.futures.Future[T] = concurrent.futures.Future()

        def run() -> None:
            try:
                future.set_result(fn())
            except BaseException as e:
                future.set_exception(e)

        loop.call_soon_threadsafe(run)
        return future.result(timeout=30)

    def _notify(self) -> None:
        with self._changed:
            self._changes += 1
            self._changed.notify_all()

    def _type(self, api_version: str, resource: str) -> ResourceType:
        rt = self._store.registry.find(api_version, resource)
        if rt is None:
            raise KeyError(f"no resource {resource!r} is served in {api_version}")
        return rt

    # ------------------------------------------------------------------ helpers for tests

    @property
    def resource_version(self) -> int:
        """The current (global) resourceVersion."""
        return self._call(lambda: self._store.rv)

    def get(
        self, api_version: str, resource: str, name: str, namespace: str | None = None
    ) -> Obj | None:
        """An object (a copy) or None. `resource` is a plural, kind, singular or short name."""
        rt = self._type(api_version, resource)

        def fn() -> Obj | None:
            try:
                return copy.deepcopy(self._store.get(rt, namespace or "", name))
            except ApiError:
                return None

        return self._call(fn)

    def list(
        self,
        api_version: str,
        resource: str,
        namespace: str | None = None,
        label_selector: str | None = None,
    ) -> builtins.list[Obj]:
        rt = self._type(api_version, resource)
        labels = parse_label_selector(label_selector)
        return self._call(lambda: copy.deepcopy(self._store.select(rt, namespace, labels)[0]))

    def create(self, obj: Obj) -> Obj:
        """Create as a POST would; raises ApiError like the server answers."""
        rt = self._type(obj["apiVersion"], obj["kind"])
        namespace = obj.get("metadata", {}).get("namespace", "default") if rt.namespaced else ""
        return self._call(lambda: copy.deepcopy(self._store.create(rt, namespace, obj)))

    def put_object(self, obj: Obj) -> Obj:
        """Create or overwrite an object, status included, with no resourceVersion check
        (e.g. to play a controller: set a Deployment's status.readyReplicas)."""
        rt = self._type(obj["apiVersion"], obj["kind"])
        obj = copy.deepcopy(obj)
        if rt.namespaced:
            obj.setdefault("metadata", {}).setdefault("namespace", "default")
        return self._call(lambda: copy.deepcopy(self._store.force_put(rt, obj)))

    def patch(
        self,
        api_version: str,
        resource: str,
        name: str,
        patch: Obj,
        namespace: str | None = None,
        subresource: str | None = None,
    ) -> Obj:
        """A JSON merge patch, as a PATCH request would apply it."""
        rt = self._type(api_version, resource)
        return self._call(
            lambda: copy.deepcopy(
                self._store.patch(
                    rt, namespace or "", name, "application/merge-patch+json", patch, subresource
                )
            )
        )

    def delete(
        self,
        api_version: str,
        resource: str,
        name: str,
        namespace: str | None = None,
        propagation: str = "Background",
    ) -> bool:
        """Delete as a DELETE request would; True if the object is gone now (False: it waits
        for finalizers, or did not exist)."""
        rt = self._type(api_version, resource)

        def fn() -> bool:
            try:
                return self._store.delete(
                    rt, namespace or "", name, DeleteOptions(propagation=propagation)
                )[1]
            except ApiError:
                return False

        return self._call(fn)

    def apply_crd(self, crd: Obj) -> Obj:
        """Create (or overwrite) a CustomResourceDefinition: its resource is served at once."""
        return self.put_object(
            {"apiVersion": "apiextensions.k8s.io/v1", **crd, "kind": "CustomResourceDefinition"}
        )

    def events_for(
        self,
        name: str,
        namespace: str | None = None,
        kind: str | None = None,
        reason: str | None = None,
    ) -> builtins.list[Obj]:
        """The core/v1 Events about an object, oldest first."""

        def wanted(ev: Obj) -> bool:
            involved = ev.get("involvedObject") or {}
            return (
                involved.get("name") == name
                and (namespace is None or involved.get("namespace") in (namespace, None, ""))
                and (kind is None or involved.get("kind") == kind)
                and (reason is None or ev.get("reason") == reason)
            )

        events = [e for e in self.list("v1", "events") if wanted(e)]
        return sorted(events, key=lambda e: int(e["metadata"]["resourceVersion"]))

    def wait_for(
        self, condition: Callable[[], T], timeout: float = 10.0, what: str = "a condition"
    ) -> T:
        """Re-check `condition` whenever the state changes until it returns a truthy value."""
        deadline = time.monotonic() + timeout
        while True:
            with self._changed:
                seen = self._changes
            result = condition()
            if result:
                return result
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"timed out after {timeout} s waiting for {what}")
            with self._changed:
                # also wake periodically: the condition may depend on more than this state
                if self._changes == seen:
                    self._changed.wait(min(remaining, 0.5))

    def compact(self, up_to: int | None = None) -> None:
        """Forget the watch history up to a resourceVersion (default: all of it), so that
        watches from an older resourceVersion get 410 Gone."""
        self._call(lambda: self._store.compact(up_to))

    def drop_watches(self) -> None:
        """End every open watch stream, as when an API server restarts."""
        self._call(self._server.drop_watches)

    def watch_count(self) -> int:
        """How many watch streams are open now."""
        return self._call(lambda: len(self._server.watchers))

    @property
    def internal_errors(self) -> builtins.list[str]:
        """Requests that failed inside the emulator (its bugs); the fixture asserts none."""
        return self._call(lambda: list(self._server.internal_errors))

    @property
    def requests(self) -> builtins.list[RequestRecord]:
        """The requests served so far (the last 10 000), oldest first."""
        return self._call(lambda: list(self._server.requests))

    def inject_error(
        self,
        status: int,
        *,
        method: str | None = None,
        path_contains: str = "",
        times: int = 1,
        reason: str = "InternalError",
        message: str = "injected by the test",
    ) -> None:
        """Answer the next `times` matching requests with an error Status."""
        fault = Fault(method, path_contains, status, times, reason, message)
        self._call(lambda: self._server.faults.append(fault))

    def on_request(
        self,
        action: Callable[[], None],
        *,
        method: str | None = None,
        path_contains: str = "",
        when: Callable[[Any], bool] | None = None,
        times: int = 1,
    ) -> None:
        """Run ``action`` (on the emulator's thread) when the next ``times`` matching
        requests succeeded: after their effect is stored, before their answer is sent.
        ``when`` looks at the decoded JSON body. E.g. SIGKILL the client that sent it."""
        hook = Hook(method, path_contains, when, action, times)
        self._call(lambda: self._server.hooks.append(hook))

    def serve_services(self, backend: ServiceBackend | None) -> None:
        """Serve the API server's Service proxy
        (``/api/v1/namespaces/<ns>/services/<name>[:<port>]/proxy/...``, what ``kubectl
        proxy`` exposes) through ``backend``: (namespace, service, port) -> the base URL of
        an endpoint, or None (503). None: no Service proxy (503)."""
        self._call(lambda: setattr(self._server, "service_backend", backend))

    def write_kubeconfig(self, path: Path, namespace: str = "default") -> Path:
        """A kubeconfig for this emulator: plain HTTP and a bearer token. JSON is valid YAML."""
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "emulator", "cluster": {"server": self.url}}],
            "users": [{"name": "emulator", "user": {"token": self.token}}],
            "contexts": [
                {
                    "name": "emulator",
                    "context": {"cluster": "emulator", "user": "emulator", "namespace": namespace},
                }
            ],
            "current-context": "emulator",
        }
        path.write_text(json.dumps(config, indent=2))
        return path


__all__ = ["CRDS", "NAMESPACES", "ApiError", "KubeEmulator", "RequestRecord"]
