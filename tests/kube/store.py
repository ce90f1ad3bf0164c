"""The emulated API server's state and write semantics, independent of HTTP.

Everything here is synchronous and must run on the server's event loop thread: that makes
every request atomic, as if each were one etcd transaction.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import copy
import datetime
import json
import random
import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from tests.kube import patching, schema
from tests.kube.defaults import apply_defaults
from tests.kube.registry import (
    CRDS,
    NAME_DNS1035,
    NAME_LABEL,
    NAME_PATH,
    NAMESPACES,
    Obj,
    Registry,
    ResourceType,
    crd_resource_types,
)
from tests.kube.selectors import FieldRequirement, Requirement, fields_match, labels_match

GroupResource = tuple[str, str]
Key = tuple[str, str]  # (namespace or "", name)

CRD_CLEANUP_FINALIZER = "customresourcecleanup.apiextensions.k8s.io"
FOREGROUND = "foregroundDeletion"
ORPHAN = "orphan"

MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"
JSON_PATCH = "application/json-patch+json"
PATCH_TYPES = (MERGE_PATCH, STRATEGIC_MERGE_PATCH, JSON_PATCH)


def now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class ApiError(Exception):
    """An error answer, rendered as a `Status` object."""

    def __init__(self, code: int, reason: str, message: str, details: Obj | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details

    def status(self) -> Obj:
        body: Obj = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if self.details is not None:
            body["details"] = self.details
        return body


def _details(rt: ResourceType, name: str) -> Obj:
    return {"name": name, "group": rt.group, "kind": rt.plural}


def not_found(rt: ResourceType, name: str) -> ApiError:
    return ApiError(404, "NotFound", f'{rt.qualified} "{name}" not found', _details(rt, name))


def conflict(rt: ResourceType, name: str, why: str) -> ApiError:
    message = f'Operation cannot be fulfilled on {rt.qualified} "{name}": {why}'
    return ApiError(409, "Conflict", message, _details(rt, name))


STALE = (
    "the object has been modified; please apply your changes to the latest version and try again"
)


def bad_request(message: str) -> ApiError:
    return ApiError(400, "BadRequest", message)


def invalid(
    rt: ResourceType, name: str, causes: list[tuple[str, str]], reasons: list[str] | None = None
) -> ApiError:
    """422 Invalid; `reasons` are the causes' reasons (FieldValueInvalid unless given)."""
    text = "; ".join(f"{f}: {m}" for f, m in causes)
    reasons = reasons or ["FieldValueInvalid"] * len(causes)
    return ApiError(
        422,
        "Invalid",
        f'{rt.kind}.{rt.group or "core"} "{name}" is invalid: {text}'.replace(".core ", " "),
        {
            "name": name,
            "group": rt.group,
            "kind": rt.kind,
            "causes": [
                {"reason": r, "message": m, "field": f}
                for (f, m), r in zip(causes, reasons, strict=True)
            ],
        },
    )


@dataclass(frozen=True)
class WatchEvent:
    rv: int
    type: str  # ADDED, MODIFIED, DELETED
    group_resource: GroupResource
    namespace: str
    obj: Obj  # never mutated once logged
    old: Obj | None  # the previous state, for selector transitions


@dataclass(frozen=True)
class DeleteOptions:
    propagation: str = "Background"  # or "Foreground", "Orphan"
    orphan_dependents: bool | None = None  # the deprecated option, as given
    uid: str | None = None  # preconditions
    resource_version: str | None = None


# ---------------------------------------------------------------------------------- validation

_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_QUALIFIED_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_CONFIG_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")
_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$")


def _name_problem(rt: ResourceType, name: str) -> str | None:
    if rt.name_validation == NAME_PATH:
        if name in (".", "..") or "/" in name or "%" in name:
            return "may not contain '/' or '%' and may not be '.' or '..'"
        return None
    if rt.name_validation == NAME_LABEL:
        ok, limit = bool(_LABEL.match(name)), 63
    elif rt.name_validation == NAME_DNS1035:
        ok, limit = bool(_DNS1035.match(name)), 63
    else:
        ok, limit = bool(_SUBDOMAIN.match(name)), 253
    if not ok or len(name) > limit:
        return f"a lowercase RFC 1123 name of at most {limit} characters is required"
    return None


def _qualified_key_problem(key: object) -> str | None:
    if not isinstance(key, str):
        return "keys must be strings"
    prefix, _, name = key.rpartition("/")
    if prefix and (not _SUBDOMAIN.match(prefix) or len(prefix) > 253):
        return f"prefix part of {key!r} must be a DNS subdomain"
    if not _QUALIFIED_NAME.match(name) or len(name) > 63:
        return f"name part of {key!r} must be a qualified name of at most 63 characters"
    return None


def _validate_meta(rt: ResourceType, obj: Obj, causes: list[tuple[str, str]]) -> None:
    meta = obj["metadata"]
    problem = _name_problem(rt, meta["name"])
    if problem:
        causes.append(("metadata.name", f"Invalid value: {meta['name']!r}: {problem}"))
    labels = meta.get("labels")
    if labels is not None:
        if not isinstance(labels, dict):
            causes.append(("metadata.labels", "must be a map of strings"))
        else:
            for k, v in labels.items():
                problem = _qualified_key_problem(k)
                if problem:
                    causes.append(("metadata.labels", f"Invalid value: {k!r}: {problem}"))
                if not isinstance(v, str) or not _LABEL_VALUE.match(v) or len(v) > 63:
                    causes.append(
                        (f"metadata.labels.{k}", f"Invalid value: {v!r}: not a valid label value")
                    )
    annotations = meta.get("annotations")
    if annotations is not None and (
        not isinstance(annotations, dict)
        or not all(isinstance(v, str) for v in annotations.values())
    ):
        causes.append(("metadata.annotations", "must be a map of strings to strings"))
    elif annotations:
        for k in annotations:
            problem = _qualified_key_problem(k)
            if problem:
                causes.append(("metadata.annotations", f"Invalid value: {k!r}: {problem}"))
    finalizers = meta.get("finalizers")
    if finalizers is not None and (
        not isinstance(finalizers, list) or not all(isinstance(f, str) for f in finalizers)
    ):
        causes.append(("metadata.finalizers", "must be a list of strings"))
    refs = meta.get("ownerReferences")
    if refs is not None:
        if not isinstance(refs, list):
            causes.append(("metadata.ownerReferences", "must be a list"))
        else:
            for i, ref in enumerate(refs):
                for f in ("apiVersion", "kind", "name", "uid"):
                    if not isinstance(ref, dict) or not isinstance(ref.get(f), str) or not ref[f]:
                        causes.append((f"metadata.ownerReferences[{i}].{f}", "Required value"))
            if sum(1 for r in refs if isinstance(r, dict) and r.get("controller")) > 1:
                causes.append(
                    (
                        "metadata.ownerReferences",
                        "Only one reference can have Controller set to true",
                    )
                )


def _selector_matches(selector: Obj, labels: Obj) -> bool:
    match_labels = selector.get("matchLabels") or {}
    if any(labels.get(k) != v for k, v in match_labels.items()):
        return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr.get("key"), expr.get("operator"), expr.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and labels.get(key) in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def _validate_kind(rt: ResourceType, obj: Obj, causes: list[tuple[str, str]]) -> None:
    gr = rt.group_resource
    spec = obj.get("spec")
    if gr in (("", "configmaps"), ("", "secrets")):
        for field in ("data", "binaryData") if gr[1] == "configmaps" else ("data",):
            data = obj.get(field)
            if data is None:
                continue
            if not isinstance(data, dict):
                causes.append((field, "must be a map"))
                continue
            for k, v in data.items():
                if not _CONFIG_KEY.match(k) or len(k) > 253:
                    causes.append(
                        (f"{field}[{k}]", "a valid config key must consist of [-._a-zA-Z0-9]")
                    )
                if not isinstance(v, str):
                    causes.append((f"{field}[{k}]", "must be a string"))
                elif field != "data" or gr[1] == "secrets":
                    try:
                        base64.b64decode(v, validate=True)
                    except (binascii.Error, ValueError):
                        causes.append((f"{field}[{k}]", "must be base64-encoded"))
    elif gr == ("coordination.k8s.io", "leases") and spec is not None:
        if not isinstance(spec, dict):
            causes.append(("spec", "must be an object"))
            return
        for f in ("acquireTime", "renewTime"):
            v = spec.get(f)
            if v is not None and (not isinstance(v, str) or not _RFC3339.match(v)):
                causes.append((f"spec.{f}", f"Invalid value: {v!r}: must be an RFC 3339 time"))
        for f in ("leaseDurationSeconds", "leaseTransitions"):
            v = spec.get(f)
            if v is not None and (not isinstance(v, int) or isinstance(v, bool)):
                causes.append((f"spec.{f}", "must be an integer"))
        holder = spec.get("holderIdentity")
        if holder is not None and not isinstance(holder, str):
            causes.append(("spec.holderIdentity", "must be a string"))
    elif gr in (
        ("apps", "deployments"),
        ("apps", "statefulsets"),
        ("apps", "replicasets"),
        ("apps", "daemonsets"),
    ):
        if not isinstance(spec, dict):
            causes.append(("spec", "Required value"))
            return
        selector = spec.get("selector")
        template = spec.get("template") or {}
        labels = (template.get("metadata") or {}).get("labels") or {}
        if not isinstance(selector, dict) or not (
            selector.get("matchLabels") or selector.get("matchExpressions")
        ):
            causes.append(("spec.selector", "Required value"))
        elif not _selector_matches(selector, labels):
            causes.append(
                ("spec.template.metadata.labels", "`selector` does not match template `labels`")
            )
        containers = (template.get("spec") or {}).get("containers")
        if not isinstance(containers, list) or not containers:
            causes.append(("spec.template.spec.containers", "Required value"))
        else:
            for i, c in enumerate(containers):
                for f in ("name", "image"):
                    if not isinstance(c, dict) or not c.get(f):
                        causes.append((f"spec.template.spec.containers[{i}].{f}", "Required value"))
        replicas = spec.get("replicas")
        if replicas is not None and (not isinstance(replicas, int) or replicas < 0):
            causes.append(("spec.replicas", "must be a non-negative integer"))
    elif gr == ("", "pods"):
        containers = spec.get("containers") if isinstance(spec, dict) else None
        if not isinstance(containers, list) or not containers:
            causes.append(("spec.containers", "Required value"))
        else:
            for i, c in enumerate(containers):
                for f in ("name", "image"):
                    if not isinstance(c, dict) or not c.get(f):
                        causes.append((f"spec.containers[{i}].{f}", "Required value"))
    elif gr == ("", "services"):
        if not isinstance(spec, dict):
            causes.append(("spec", "Required value"))
            return
        ports = spec.get("ports") or []
        headless = (
            spec.get("type", "ClusterIP") == "ExternalName" or spec.get("clusterIP") == "None"
        )
        if not headless and not ports:
            causes.append(("spec.ports", "Required value"))
        for i, p in enumerate(ports):
            port = p.get("port") if isinstance(p, dict) else None
            if not isinstance(port, int) or not 0 < port < 65536:
                causes.append((f"spec.ports[{i}].port", "must be between 1 and 65535"))
            if len(ports) > 1 and not (isinstance(p, dict) and p.get("name")):
                causes.append((f"spec.ports[{i}].name", "Required value"))
        selector = spec.get("selector")
        if selector is not None and (
            not isinstance(selector, dict) or not all(isinstance(v, str) for v in selector.values())
        ):
            causes.append(("spec.selector", "must be a map of strings"))
    elif gr in (
        ("rbac.authorization.k8s.io", "rolebindings"),
        ("rbac.authorization.k8s.io", "clusterrolebindings"),
    ):
        ref = obj.get("roleRef")
        if not isinstance(ref, dict) or not all(ref.get(f) for f in ("apiGroup", "kind", "name")):
            causes.append(("roleRef", "Required value: apiGroup, kind and name"))
    elif gr == CRDS:
        _validate_crd(obj, causes)


def _validate_crd(obj: Obj, causes: list[tuple[str, str]]) -> None:
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        causes.append(("spec", "Required value"))
        return
    names = spec.get("names") or {}
    group, plural, kind = spec.get("group"), names.get("plural"), names.get("kind")
    if not group or not plural or not kind:
        causes.append(("spec", "group, names.plural and names.kind are required"))
        return
    if obj["metadata"]["name"] != f"{plural}.{group}":
        causes.append(
            ("metadata.name", f"must be spec.names.plural+'.'+spec.group: {plural}.{group}")
        )
    if spec.get("scope") not in ("Namespaced", "Cluster"):
        causes.append(("spec.scope", "Unsupported value: must be Namespaced or Cluster"))
    versions = spec.get("versions")
    if not isinstance(versions, list) or not versions:
        causes.append(("spec.versions", "Required value"))
    elif sum(1 for v in versions if v.get("storage")) != 1:
        causes.append(("spec.versions", "exactly one version must be the storage version"))
    else:
        for i, version in enumerate(versions):
            structural = (version.get("schema") or {}).get("openAPIV3Schema")
            if isinstance(structural, dict):
                path = f"spec.versions[{i}].schema.openAPIV3Schema"
                causes += [(c.field, c.message) for c in schema.rule_problems(structural, path)]


def validate(rt: ResourceType, obj: Obj) -> None:
    causes: list[tuple[str, str]] = []
    _validate_meta(rt, obj, causes)
    _validate_kind(rt, obj, causes)
    if causes:
        raise invalid(rt, obj["metadata"]["name"], causes)


def _immutable(rt: ResourceType, name: str, field: str) -> ApiError:
    return invalid(rt, name, [(field, "field is immutable")])


# ------------------------------------------------------------------------------------ the store


def _meta(obj: Obj) -> Obj:
    meta: Obj = obj["metadata"]
    return meta


def _pod_spec_mutable_part(spec: Obj) -> Obj:
    """A pod spec without the fields an update may change (images, deadline, tolerations)."""
    result = {k: v for k, v in spec.items() if k not in ("activeDeadlineSeconds", "tolerations")}
    for field in ("containers", "initContainers"):
        if isinstance(spec.get(field), list):
            result[field] = [
                {k: v for k, v in c.items() if k != "image"} if isinstance(c, dict) else c
                for c in spec[field]
            ]
    return result


def _spec_part(obj: Obj, with_status: bool) -> Obj:
    """What bumps metadata.generation when changed."""
    excluded = {"metadata", "apiVersion", "kind"} | ({"status"} if with_status else set())
    return {k: v for k, v in obj.items() if k not in excluded}


def _without_rv(obj: Obj) -> Obj:
    result = dict(obj)
    meta = dict(obj.get("metadata") or {})
    meta.pop("resourceVersion", None)
    result["metadata"] = meta
    return result


_NAME_CHARS = "bcdfghjklmnpqrstvwxz2456789"


class Store:
    def __init__(self, registry: Registry, history: int = 10_000) -> None:
        self.registry = registry
        self.history = history
        self.rv = 0
        self.compacted_rv = 0  # watches from before this resourceVersion get 410 Gone
        self.log: list[WatchEvent] = []
        self.objects: dict[GroupResource, dict[Key, Obj]] = {}
        self.by_uid: dict[str, tuple[GroupResource, Key]] = {}
        self.listeners: list[Callable[[], None]] = []
        self.defer: Callable[[Callable[[], None]], None] = lambda fn: fn()
        self._cluster_ips = 0
        for ns in ("default", "kube-system", "kube-public", "kube-node-lease"):
            self.create(self.type_of(NAMESPACES), "", {"metadata": {"name": ns}})

    # ------------------------------------------------------------------ lookups

    def type_of(self, gr: GroupResource) -> ResourceType:
        rt = self.registry.any_version(*gr)
        if rt is not None:
            return rt
        crd = self._bucket(CRDS).get(("", f"{gr[1]}.{gr[0]}"))
        if crd is None:
            raise KeyError(gr)
        return self._crd_instance_type(crd)  # a custom resource with no served version

    def _bucket(self, gr: GroupResource) -> dict[Key, Obj]:
        return self.objects.setdefault(gr, {})

    def _key(self, rt: ResourceType, namespace: str, name: str) -> Key:
        return (namespace if rt.namespaced else "", name)

    def get(self, rt: ResourceType, namespace: str, name: str) -> Obj:
        obj = self._bucket(rt.group_resource).get(self._key(rt, namespace, name))
        if obj is None:
            raise not_found(rt, name)
        return obj

    def all_objects(self) -> Iterator[tuple[GroupResource, Obj]]:
        for gr, bucket in list(self.objects.items()):
            for obj in list(bucket.values()):
                yield gr, obj

    def select(
        self,
        rt: ResourceType,
        namespace: str | None,
        labels: list[Requirement] | None = None,
        fields: list[FieldRequirement] | None = None,
        limit: int | None = None,
        continue_token: str | None = None,
    ) -> tuple[list[Obj], str, int | None]:
        """Matching objects sorted by namespace and name; the continue token; remaining count."""
        keys = sorted(self._bucket(rt.group_resource))
        if continue_token:
            try:
                start = tuple(json.loads(base64.urlsafe_b64decode(continue_token)))
            except (ValueError, TypeError) as e:
                raise bad_request(f"invalid continue token: {e}") from e
            keys = [k for k in keys if k > start]
        items = []
        for key in keys:
            obj = self._bucket(rt.group_resource)[key]
            if namespace and key[0] != namespace:
                continue
            if labels_match(labels or [], obj) and fields_match(fields or [], obj):
                items.append(obj)
        if limit and len(items) > limit:
            last = items[limit - 1]["metadata"]
            token = json.dumps([last.get("namespace", ""), last["name"]])
            return (
                items[:limit],
                base64.urlsafe_b64encode(token.encode()).decode(),
                len(items) - limit,
            )
        return items, "", None

    def namespace_phase(self, namespace: str) -> str | None:
        ns = self._bucket(NAMESPACES).get(("", namespace))
        if ns is None:
            return None
        return "Terminating" if _meta(ns).get("deletionTimestamp") else "Active"

    # ------------------------------------------------------------------ commits

    def _commit(self, rt: ResourceType, event: str, obj: Obj, old: Obj | None) -> Obj:
        """Give `obj` the next resourceVersion, store (or remove) it, and log the event."""
        self.rv += 1
        meta = _meta(obj)
        meta["resourceVersion"] = str(self.rv)
        gr = rt.group_resource
        key = self._key(rt, meta.get("namespace", ""), meta["name"])
        if event == "DELETED":
            self._bucket(gr).pop(key, None)
            self.by_uid.pop(meta["uid"], None)
        else:
            self._bucket(gr)[key] = obj
            self.by_uid[meta["uid"]] = (gr, key)
        self.log.append(WatchEvent(self.rv, event, gr, key[0], obj, old))
        if len(self.log) > self.history:
            drop = len(self.log) - self.history // 2
            self.compacted_rv = self.log[drop - 1].rv
            del self.log[:drop]
        for listener in list(self.listeners):
            listener()
        return obj

    def compact(self, up_to: int | None = None) -> None:
        """Forget the watch history up to a resourceVersion (all of it by default)."""
        up_to = self.rv if up_to is None else up_to
        self.compacted_rv = max(self.compacted_rv, up_to)
        self.log = [e for e in self.log if e.rv > self.compacted_rv]

    def events_since(self, rv: int) -> list[WatchEvent]:
        """The events after a resourceVersion; 410 Gone if some were forgotten."""
        if rv < self.compacted_rv:
            raise ApiError(
                410, "Expired", f"too old resource version: {rv} ({self.compacted_rv + 1})"
            )
        lo, hi = 0, len(self.log)
        while lo < hi:
            mid = (lo + hi) // 2
            if self.log[mid].rv <= rv:
                lo = mid + 1
            else:
                hi = mid
        return self.log[lo:]

    # ------------------------------------------------------------------ create

    def create(
        self,
        rt: ResourceType,
        namespace: str,
        body: object,
        dry_run: bool = False,
        field_validation: str = "Warn",
        warnings: list[str] | None = None,
    ) -> Obj:
        """POST; `field_validation` and `warnings` (appended to) as for `_admit`."""
        obj = self._accept_body(rt, namespace, body)
        meta = _meta(obj)
        if not meta.get("name"):
            prefix = meta.get("generateName")
            if not prefix or not isinstance(prefix, str):
                raise invalid(
                    rt, "", [("metadata.name", "Required value: name or generateName is required")]
                )
            while True:
                meta["name"] = prefix + "".join(random.choices(_NAME_CHARS, k=5))
                if self._key(rt, namespace, meta["name"]) not in self._bucket(rt.group_resource):
                    break
        name = meta["name"]
        if rt.namespaced:
            phase = self.namespace_phase(namespace)
            if phase is None:
                raise ApiError(
                    404,
                    "NotFound",
                    f'namespaces "{namespace}" not found',
                    {"name": namespace, "kind": "namespaces", "group": ""},
                )
            if phase == "Terminating":
                raise ApiError(
                    403,
                    "Forbidden",
                    f'{rt.qualified} "{name}" is forbidden: unable to create new content in '
                    f"namespace {namespace} because it is being terminated",
                    _details(rt, name),
                )
        if rt.custom:
            crd = self._bucket(CRDS).get(("", f"{rt.plural}.{rt.group}"))
            if crd is not None and _meta(crd).get("deletionTimestamp"):
                raise ApiError(
                    405,
                    "MethodNotAllowed",
                    "create not allowed while custom resource definition is terminating",
                    _details(rt, name),
                )
        apply_defaults(rt, obj)
        validate(rt, obj)
        if rt.status:
            obj.pop("status", None)
        self._admit(rt, obj, None, field_validation, warnings)
        if self._key(rt, namespace, name) in self._bucket(rt.group_resource):
            raise ApiError(
                409, "AlreadyExists", f'{rt.qualified} "{name}" already exists', _details(rt, name)
            )
        if meta.get("resourceVersion"):
            # as etcd storage answers: e.g. a client re-creating an object it read
            raise ApiError(
                500,
                "InternalError",
                "Internal error occurred: resourceVersion should not be set on objects to be "
                "created",
            )
        for f in ("resourceVersion", "deletionTimestamp", "deletionGracePeriodSeconds"):
            meta.pop(f, None)
        meta.pop("managedFields", None)
        meta.pop("selfLink", None)
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = now()
        if rt.generation:
            meta["generation"] = 1
        else:
            meta.pop("generation", None)
        self._defaults_on_create(rt, obj)
        if dry_run:
            return obj
        self._commit(rt, "ADDED", obj, None)
        if rt.group_resource == CRDS:
            self.registry.sync_crd(obj)
        self._check_owners_later(rt, obj)
        return obj

    def _accept_body(self, rt: ResourceType, namespace: str, body: object) -> Obj:
        if not isinstance(body, dict):
            raise bad_request("the request body must be a JSON object")
        obj = copy.deepcopy(body)
        kind = obj.get("kind")
        if kind is not None and kind != rt.kind:
            raise bad_request(
                f"the kind of the object ({kind}) does not match the resource ({rt.kind})"
            )
        api_version = obj.get("apiVersion")
        if api_version is not None and api_version.rpartition("/")[0] != rt.group:
            raise bad_request(
                f"the API version in the data ({api_version}) does not match the expected API "
                f"version ({rt.api_version})"
            )
        obj["kind"] = rt.kind
        obj["apiVersion"] = rt.api_version
        meta = obj.setdefault("metadata", {})
        if not isinstance(meta, dict):
            raise bad_request("metadata must be an object")
        if rt.namespaced:
            if meta.get("namespace") and meta["namespace"] != namespace:
                raise bad_request(
                    "the namespace of the provided object does not match the namespace sent on "
                    "the request"
                )
            meta["namespace"] = namespace
        else:
            meta.pop("namespace", None)
        return obj

    def _schema_of(self, rt: ResourceType) -> Obj | None:
        """The openAPIV3Schema of a custom resource's version, if its CRD has one."""
        crd = self._bucket(CRDS).get(("", f"{rt.plural}.{rt.group}"))
        for version in (crd or {}).get("spec", {}).get("versions") or []:
            if version.get("name") == rt.version:
                found = (version.get("schema") or {}).get("openAPIV3Schema")
                return found if isinstance(found, dict) else None
        return None

    def _admit(
        self,
        rt: ResourceType,
        obj: Obj,
        old: Obj | None,
        field_validation: str,
        warnings: list[str] | None,
    ) -> None:
        """A custom resource through its CRD's structural schema (tests.kube.schema): prune,
        default, check, CEL rules. Unknown fields: a warning (`Warn`, the server's default),
        nothing (`Ignore`) or 400 (`Strict`, kubectl's default); field errors: 422 Invalid."""
        if not rt.custom:
            return
        structural = self._schema_of(rt)
        if structural is None:
            return
        outcome = schema.admit(obj, structural, old)
        if outcome.unknown and field_validation == "Strict":
            fields = ", ".join(f'unknown field "{u}"' for u in outcome.unknown)
            raise bad_request(
                f'{rt.kind} in version "{rt.version}" cannot be handled as a {rt.kind}: '
                f"strict decoding error: {fields}"
            )
        if outcome.unknown and field_validation == "Warn" and warnings is not None:
            warnings += [f'unknown field "{u}"' for u in outcome.unknown]
        if outcome.causes:
            raise invalid(
                rt,
                _meta(obj).get("name", ""),
                [(c.field, c.message) for c in outcome.causes],
                [c.reason for c in outcome.causes],
            )

    def _defaults_on_create(self, rt: ResourceType, obj: Obj) -> None:
        gr = rt.group_resource
        spec = obj.get("spec")
        if gr == NAMESPACES:
            obj["spec"] = {"finalizers": ["kubernetes"]}
            obj["status"] = {"phase": "Active"}
        elif gr == ("", "secrets"):
            self._secret_string_data(obj)
            obj.setdefault("type", "Opaque")
        elif gr == ("", "pods"):
            obj["status"] = {"phase": "Pending"}
        elif gr == ("", "services") and isinstance(spec, dict):
            if spec.get("type") != "ExternalName" and not spec.get("clusterIP"):
                self._cluster_ips += 1
                n = self._cluster_ips
                spec["clusterIP"] = f"10.96.{n // 250}.{n % 250 + 1}"
                spec["clusterIPs"] = [spec["clusterIP"]]
        elif gr == CRDS:
            meta = _meta(obj)
            meta["finalizers"] = [
                *[f for f in meta.get("finalizers") or [] if f != CRD_CLEANUP_FINALIZER],
                CRD_CLEANUP_FINALIZER,
            ]
            obj["status"] = self._crd_status(obj)

    @staticmethod
    def _secret_string_data(obj: Obj) -> None:
        string_data = obj.pop("stringData", None)
        if isinstance(string_data, dict):
            data = obj.setdefault("data", {})
            for k, v in string_data.items():
                data[k] = base64.b64encode(str(v).encode()).decode()

    @staticmethod
    def _crd_status(crd: Obj) -> Obj:
        spec = crd["spec"]
        names = dict(spec["names"])
        names.setdefault("singular", names["kind"].lower())
        names.setdefault("listKind", f"{names['kind']}List")
        stamp = now()
        return {
            "acceptedNames": names,
            "conditions": [
                {
                    "type": t,
                    "status": "True",
                    "reason": reason,
                    "message": message,
                    "lastTransitionTime": stamp,
                }
                for t, reason, message in (
                    ("NamesAccepted", "NoConflicts", "no conflicts found"),
                    ("Established", "InitialNamesAccepted", "the initial names have been accepted"),
                )
            ],
            "storedVersions": [v["name"] for v in spec["versions"] if v.get("storage")],
        }

    # ------------------------------------------------------------------ update and patch

    def replace(
        self,
        rt: ResourceType,
        namespace: str,
        name: str,
        body: object,
        subresource: str | None = None,
        dry_run: bool = False,
        field_validation: str = "Warn",
        warnings: list[str] | None = None,
    ) -> Obj:
        old = self.get(rt, namespace, name)
        new = self._accept_body(rt, namespace, body)
        meta = _meta(new)
        if meta.get("name") != name:
            raise bad_request(
                f"the name of the object ({meta.get('name')}) does not match the name on the URL "
                f"({name})"
            )
        rv = meta.get("resourceVersion")
        if rv:
            if rv != _meta(old)["resourceVersion"]:
                raise conflict(rt, name, STALE)
        elif rt.custom:
            raise invalid(
                rt,
                name,
                [
                    (
                        "metadata.resourceVersion",
                        "Invalid value: 0x0: must be specified for an update",
                    )
                ],
            )
        prepared = self._prepare_update(rt, old, new, subresource)
        self._admit(rt, prepared, old, field_validation, warnings)
        return self._update(rt, old, prepared, dry_run)

    def patch(
        self,
        rt: ResourceType,
        namespace: str,
        name: str,
        patch_type: str,
        patch: object,
        subresource: str | None = None,
        dry_run: bool = False,
        field_validation: str = "Warn",
        warnings: list[str] | None = None,
    ) -> Obj:
        old = self.get(rt, namespace, name)
        try:
            if patch_type == JSON_PATCH:
                if not isinstance(patch, list):
                    raise bad_request("a JSON patch must be a list of operations")
                patched = patching.json_patch(old, patch)
            elif not isinstance(patch, dict):
                raise bad_request("a merge patch must be a JSON object")
            elif patch_type == STRATEGIC_MERGE_PATCH:
                patched = patching.strategic_merge_patch(old, patch)
            else:
                patched = patching.merge_patch(old, patch)
        except patching.PatchError as e:
            raise ApiError(422, "Invalid", str(e), _details(rt, name)) from e
        if not isinstance(patched, dict) or not isinstance(patched.get("metadata"), dict):
            raise ApiError(
                422, "Invalid", "the patched object is not an object", _details(rt, name)
            )
        meta = patched["metadata"]
        if meta.get("name") != name:
            raise bad_request("the name of the object cannot be changed by a patch")
        rv = meta.get("resourceVersion")
        if rv is not None and rv != _meta(old)["resourceVersion"]:
            raise conflict(rt, name, STALE)
        new = self._accept_body(rt, namespace, patched)
        prepared = self._prepare_update(rt, old, new, subresource)
        self._admit(rt, prepared, old, field_validation, warnings)
        return self._update(rt, old, prepared, dry_run)

    def _prepare_update(self, rt: ResourceType, old: Obj, new: Obj, subresource: str | None) -> Obj:
        name = _meta(old)["name"]
        if subresource == "status":
            result = copy.deepcopy(old)
            if "status" in new:
                result["status"] = new["status"]
            else:
                result.pop("status", None)
            return result
        if subresource is not None:
            raise ApiError(404, "NotFound", f"subresource {subresource} not found")
        old_meta, meta = _meta(old), _meta(new)
        for f in (
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "generation",
        ):
            if f in old_meta:
                meta[f] = old_meta[f]
            else:
                meta.pop(f, None)
        meta["resourceVersion"] = old_meta["resourceVersion"]
        meta.pop("managedFields", None)
        meta.pop("selfLink", None)
        if rt.status:
            if "status" in old:
                new["status"] = copy.deepcopy(old["status"])
            else:
                new.pop("status", None)
        if old_meta.get("deletionTimestamp"):
            added = set(meta.get("finalizers") or []) - set(old_meta.get("finalizers") or [])
            if added:
                raise invalid(
                    rt,
                    name,
                    [
                        (
                            "metadata.finalizers",
                            "Forbidden: no new finalizers can be added if the object is being "
                            "deleted",
                        )
                    ],
                )
        apply_defaults(rt, new)
        self._kind_update_rules(rt, old, new)
        validate(rt, new)
        if rt.generation and _spec_part(old, rt.status) != _spec_part(new, rt.status):
            meta["generation"] = old_meta.get("generation", 0) + 1
        return new

    def _kind_update_rules(self, rt: ResourceType, old: Obj, new: Obj) -> None:
        gr = rt.group_resource
        name = _meta(old)["name"]
        old_spec = old.get("spec") if isinstance(old.get("spec"), dict) else {}
        spec = new.get("spec")
        if gr == NAMESPACES:
            new["spec"] = copy.deepcopy(old.get("spec"))
        elif gr == ("", "services") and isinstance(spec, dict) and old_spec:
            for f in ("clusterIP", "clusterIPs"):
                if not spec.get(f) and old_spec.get(f):
                    spec[f] = copy.deepcopy(old_spec[f])
                elif spec.get(f) != old_spec.get(f):
                    raise _immutable(rt, name, f"spec.{f}")
        elif gr == ("", "pods") and isinstance(spec, dict) and old_spec:
            if _pod_spec_mutable_part(spec) != _pod_spec_mutable_part(old_spec):
                raise invalid(
                    rt,
                    name,
                    [
                        (
                            "spec",
                            "Forbidden: pod updates may not change fields other than "
                            "`spec.containers[*].image`, `spec.initContainers[*].image`, "
                            "`spec.activeDeadlineSeconds`, `spec.tolerations` (only additions to "
                            "existing tolerations)",
                        )
                    ],
                )
        elif gr[0] == "apps" and isinstance(spec, dict) and old_spec:
            if spec.get("selector") != old_spec.get("selector"):
                raise _immutable(rt, name, "spec.selector")
        elif gr in (
            ("rbac.authorization.k8s.io", "rolebindings"),
            ("rbac.authorization.k8s.io", "clusterrolebindings"),
        ):
            if new.get("roleRef") != old.get("roleRef"):
                raise invalid(rt, name, [("roleRef", "Invalid value: cannot change roleRef")])
        elif gr in (("", "configmaps"), ("", "secrets")):
            if gr[1] == "secrets":
                self._secret_string_data(new)
            if old.get("immutable"):
                for f in ("data", "binaryData", "immutable"):
                    if new.get(f) != old.get(f):
                        raise _immutable(rt, name, f)
        elif gr == CRDS and isinstance(spec, dict):
            old_plural = ((old_spec or {}).get("names") or {}).get("plural")
            if ((spec.get("names") or {}).get("plural"), spec.get("group")) != (
                old_plural,
                (old_spec or {}).get("group"),
            ):
                raise _immutable(rt, name, "spec.names.plural")
            if spec.get("scope") != (old_spec or {}).get("scope"):
                raise _immutable(rt, name, "spec.scope")
            if isinstance(spec.get("names"), dict) and isinstance(spec.get("versions"), list):
                status = self._crd_status(new)
                old_status = old.get("status") or {}
                status["conditions"] = old_status.get("conditions", status["conditions"])
                stored = list(old_status.get("storedVersions") or [])
                status["storedVersions"] = stored + [
                    v for v in status["storedVersions"] if v not in stored
                ]
                new["status"] = status

    def _update(self, rt: ResourceType, old: Obj, new: Obj, dry_run: bool) -> Obj:
        if _without_rv(old) == _without_rv(new):
            return old  # a no-op write changes nothing, not even the resourceVersion
        if dry_run:
            return new
        meta = _meta(new)
        if (
            meta.get("deletionTimestamp")
            and not meta.get("finalizers")
            and self._may_vanish(rt, new)
        ):
            self._remove(rt, new)
            return new
        self._commit(rt, "MODIFIED", new, old)
        if rt.group_resource == CRDS:
            self.registry.sync_crd(new)
        self._check_owners_later(rt, new)
        return new

    def force_put(self, rt: ResourceType, obj: Obj) -> Obj:
        """Test helper: create or overwrite, status included, with no preconditions."""
        meta = obj.get("metadata") or {}
        namespace = meta.get("namespace", "") if rt.namespaced else ""
        try:
            old = self.get(rt, namespace, meta.get("name", ""))
        except ApiError:
            fresh = copy.deepcopy(obj)
            fresh.get("metadata", {}).pop("resourceVersion", None)
            created = self.create(rt, namespace, fresh)
            if rt.status and "status" in obj:
                return self.force_put(rt, {**created, "status": obj["status"]})
            return created
        new = self._accept_body(rt, namespace, obj)
        new_meta = _meta(new)
        for f in ("uid", "creationTimestamp", "deletionTimestamp", "generation"):
            if f in _meta(old):
                new_meta[f] = _meta(old)[f]
        new_meta["resourceVersion"] = _meta(old)["resourceVersion"]
        apply_defaults(rt, new)
        validate(rt, new)
        self._admit(rt, new, old, "Warn", None)
        if rt.generation and _spec_part(old, rt.status) != _spec_part(new, rt.status):
            new_meta["generation"] = _meta(old).get("generation", 0) + 1
        return self._update(rt, old, new, False)

    # ------------------------------------------------------------------ delete

    def delete(
        self,
        rt: ResourceType,
        namespace: str,
        name: str,
        options: DeleteOptions = DeleteOptions(),
        dry_run: bool = False,
    ) -> tuple[Obj, bool]:
        """Delete or mark for deletion; returns the object and whether it is gone now."""
        old = self.get(rt, namespace, name)
        meta = _meta(old)
        if options.uid is not None and options.uid != meta["uid"]:
            raise conflict(
                rt,
                name,
                f"Precondition failed: UID in precondition: {options.uid}, UID in object meta: "
                f"{meta['uid']}",
            )
        if (
            options.resource_version is not None
            and options.resource_version != meta["resourceVersion"]
        ):
            raise conflict(
                rt,
                name,
                "Precondition failed: ResourceVersion in precondition: "
                f"{options.resource_version}, ResourceVersion in object meta: "
                f"{meta['resourceVersion']}",
            )
        if options.propagation not in ("Background", "Foreground", "Orphan"):
            raise bad_request(f"unsupported propagationPolicy {options.propagation!r}")
        if meta.get("deletionTimestamp"):
            return old, False
        finalizers = list(meta.get("finalizers") or [])
        if (
            options.propagation == "Foreground"
            and self._dependents(old)
            and FOREGROUND not in finalizers
        ):
            finalizers.append(FOREGROUND)
        pending = bool(finalizers) or not self._may_vanish(rt, old, deleting=True)
        if dry_run:
            if pending:
                preview = copy.deepcopy(old)
                _meta(preview)["deletionTimestamp"] = now()
                return preview, False
            return old, True
        if options.propagation == "Orphan":
            self._orphan_dependents(old)
        if not pending:
            self._remove(rt, copy.deepcopy(old))
            return old, True
        new = copy.deepcopy(old)
        new_meta = _meta(new)
        new_meta["deletionTimestamp"] = now()
        new_meta["deletionGracePeriodSeconds"] = 0
        new_meta["finalizers"] = finalizers
        if "generation" in new_meta:
            new_meta["generation"] += 1
        if rt.group_resource == NAMESPACES:
            new["status"] = {"phase": "Terminating"}
        self._commit(rt, "MODIFIED", new, old)
        if FOREGROUND in finalizers:
            for dep_rt, dep in self._dependents(new):
                self._delete_quietly(dep_rt, dep)
            self._maybe_finish_foreground(new_meta["uid"])
        if rt.group_resource == NAMESPACES:
            for gr, obj in self.all_objects():
                if _meta(obj).get("namespace") == name:
                    self._delete_quietly(self.type_of(gr), obj)
            self._maybe_finish_namespace(name)
        if rt.group_resource == CRDS:
            spec = new["spec"]
            for _, obj in list(self._instances(spec["group"], spec["names"]["plural"])):
                self._delete_quietly(self._crd_instance_type(new), obj)
            self._maybe_finish_crd(new)
        return new, False

    def _may_vanish(self, rt: ResourceType, obj: Obj, deleting: bool = False) -> bool:
        """Whether nothing but finalizers holds the object (namespaces wait to be emptied)."""
        if rt.group_resource == NAMESPACES:
            name = _meta(obj)["name"]
            return not deleting and not any(
                _meta(o).get("namespace") == name for _, o in self.all_objects()
            )
        return True

    def _delete_quietly(self, rt: ResourceType, obj: Obj) -> None:
        meta = _meta(obj)
        with contextlib.suppress(ApiError):  # already gone
            self.delete(rt, meta.get("namespace", ""), meta["name"])

    def _remove(self, rt: ResourceType, obj: Obj) -> None:
        """Remove for good: DELETED event, then garbage collection and waiting deletions."""
        meta = _meta(obj)
        old = self._bucket(rt.group_resource).get(
            self._key(rt, meta.get("namespace", ""), meta["name"])
        )
        self._commit(rt, "DELETED", obj, old)
        if rt.group_resource == CRDS:
            spec = obj["spec"]
            self.registry.remove_group_resource(spec["group"], spec["names"]["plural"])
            gr = (spec["group"], spec["names"]["plural"])
            self.objects.pop(gr, None)
        for dep_rt, dep in self._dependents(obj):
            self._collect(dep_rt, dep)
        for ref in meta.get("ownerReferences") or []:
            self._maybe_finish_foreground(ref.get("uid", ""))
        namespace = meta.get("namespace")
        if namespace:
            self._maybe_finish_namespace(namespace)
        if rt.custom:
            crd = self._bucket(CRDS).get(("", f"{rt.plural}.{rt.group}"))
            if crd is not None:
                self._maybe_finish_crd(crd)

    # ------------------------------------------------------------------ garbage collection

    def _owner_exists(self, dependent: Obj, uid: str) -> bool:
        where = self.by_uid.get(uid)
        if where is None:
            return False
        _, (owner_ns, _) = where
        return not owner_ns or owner_ns == _meta(dependent).get("namespace")

    def _dependents(self, owner: Obj) -> list[tuple[ResourceType, Obj]]:
        uid = _meta(owner)["uid"]
        owner_ns = _meta(owner).get("namespace")
        result = []
        for gr, obj in self.all_objects():
            meta = _meta(obj)
            if owner_ns and meta.get("namespace") != owner_ns:
                continue
            if any(r.get("uid") == uid for r in meta.get("ownerReferences") or []):
                result.append((self.type_of(gr), obj))
        return result

    def _collect(self, rt: ResourceType, dependent: Obj) -> None:
        """The garbage collector's decision on a dependent whose owner may be gone, or is
        being deleted in the foreground: as kube-controller-manager's collector, it deletes
        a dependent that appears while its owner waits for its dependents (a controller that
        read the owner before its deletion may still create one), else the owner would wait
        for ever."""
        meta = _meta(dependent)
        refs = meta.get("ownerReferences") or []
        alive = [r for r in refs if self._owner_exists(dependent, r.get("uid", ""))]
        if refs and len(alive) == len(refs):
            if not meta.get("deletionTimestamp") and any(
                self._deleting_dependents(r.get("uid", "")) for r in refs
            ):
                self._delete_quietly(rt, dependent)
            return
        if not refs:
            return
        if alive:
            new = copy.deepcopy(dependent)
            _meta(new)["ownerReferences"] = alive
            self._commit(rt, "MODIFIED", new, dependent)
        else:
            self._delete_quietly(rt, dependent)

    def _check_owners_later(self, rt: ResourceType, obj: Obj) -> None:
        if not _meta(obj).get("ownerReferences"):
            return
        namespace, name = _meta(obj).get("namespace", ""), _meta(obj)["name"]

        def check() -> None:
            current = self._bucket(rt.group_resource).get(self._key(rt, namespace, name))
            if current is not None:
                self._collect(self.type_of(rt.group_resource), current)

        self.defer(check)

    def _orphan_dependents(self, owner: Obj) -> None:
        uid = _meta(owner)["uid"]
        for rt, dep in self._dependents(owner):
            new = copy.deepcopy(dep)
            refs = [r for r in _meta(new)["ownerReferences"] if r.get("uid") != uid]
            if refs:
                _meta(new)["ownerReferences"] = refs
            else:
                del _meta(new)["ownerReferences"]
            self._commit(rt, "MODIFIED", new, dep)

    def _deleting_dependents(self, owner_uid: str) -> bool:
        """Whether the owner ``owner_uid`` is being deleted in the foreground."""
        where = self.by_uid.get(owner_uid)
        if where is None:
            return False
        gr, key = where
        meta = _meta(self._bucket(gr)[key])
        return bool(meta.get("deletionTimestamp")) and FOREGROUND in (meta.get("finalizers") or [])

    def _maybe_finish_foreground(self, owner_uid: str) -> None:
        where = self.by_uid.get(owner_uid)
        if where is None:
            return
        gr, key = where
        owner = self._bucket(gr)[key]
        meta = _meta(owner)
        if FOREGROUND not in (meta.get("finalizers") or []) or not meta.get("deletionTimestamp"):
            return
        if self._dependents(owner):
            return
        new = copy.deepcopy(owner)
        _meta(new)["finalizers"] = [f for f in meta["finalizers"] if f != FOREGROUND]
        self._update(self.type_of(gr), owner, new, False)

    def _maybe_finish_namespace(self, namespace: str) -> None:
        ns = self._bucket(NAMESPACES).get(("", namespace))
        if ns is None or not _meta(ns).get("deletionTimestamp") or _meta(ns).get("finalizers"):
            return
        if any(_meta(o).get("namespace") == namespace for _, o in self.all_objects()):
            return
        self._remove(self.type_of(NAMESPACES), copy.deepcopy(ns))

    def _instances(self, group: str, plural: str) -> list[tuple[Key, Obj]]:
        return list(self._bucket((group, plural)).items())

    def _crd_instance_type(self, crd: Obj) -> ResourceType:
        spec = crd["spec"]
        rt = self.registry.any_version(spec["group"], spec["names"]["plural"])
        if rt is not None:
            return rt
        # no version is served: still, the stored objects must go
        unserved = {**crd, "spec": {**spec, "versions": [{**spec["versions"][0], "served": True}]}}
        return crd_resource_types(unserved)[0]

    def _maybe_finish_crd(self, crd: Obj) -> None:
        meta = _meta(crd)
        if not meta.get("deletionTimestamp") or CRD_CLEANUP_FINALIZER not in (
            meta.get("finalizers") or []
        ):
            return
        spec = crd["spec"]
        if self._instances(spec["group"], spec["names"]["plural"]):
            return
        new = copy.deepcopy(crd)
        _meta(new)["finalizers"] = [f for f in meta["finalizers"] if f != CRD_CLEANUP_FINALIZER]
        self._update(self.type_of(CRDS), crd, new, False)
