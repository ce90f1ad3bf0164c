"""The kinds the emulator serves: built-in resources plus those registered by CRD objects."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

Obj = dict[str, Any]

# How `metadata.name` is validated, as the real API server does per kind.
NAME_SUBDOMAIN = "subdomain"  # DNS-1123 subdomain: most kinds
NAME_LABEL = "label"  # DNS-1123 label: namespaces
NAME_DNS1035 = "dns1035"  # DNS-1035 label: services
NAME_PATH = "path"  # a path segment: RBAC kinds ("system:controller:foo" is valid)

VERBS = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]
SUB_VERBS = ["get", "patch", "update"]


@dataclass(frozen=True)
class ResourceType:
    """One served resource in one group/version."""

    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool
    singular: str = ""
    status: bool = False  # has a status subresource
    generation: bool = False  # tracks metadata.generation
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    custom: bool = False  # served from a CustomResourceDefinition
    field_labels: frozenset[str] = field(default_factory=frozenset)
    name_validation: str = NAME_SUBDOMAIN

    @property
    def api_version(self) -> str:
        return self.version if not self.group else f"{self.group}/{self.version}"

    @property
    def group_resource(self) -> tuple[str, str]:
        """The storage identity, shared by all versions of one resource."""
        return (self.group, self.plural)

    @property
    def list_kind(self) -> str:
        return f"{self.kind}List"

    @property
    def singular_name(self) -> str:
        return self.singular or self.kind.lower()

    @property
    def qualified(self) -> str:
        """`plural` or `plural.group`, as in error messages."""
        return self.plural if not self.group else f"{self.plural}.{self.group}"

    def discovery(self) -> list[Obj]:
        entry: Obj = {
            "name": self.plural,
            "singularName": self.singular_name,
            "namespaced": self.namespaced,
            "kind": self.kind,
            "verbs": list(VERBS),
        }
        if self.short_names:
            entry["shortNames"] = list(self.short_names)
        if self.categories:
            entry["categories"] = list(self.categories)
        entries = [entry]
        if self.status:
            entries.append(
                {
                    "name": f"{self.plural}/status",
                    "singularName": "",
                    "namespaced": self.namespaced,
                    "kind": self.kind,
                    "verbs": list(SUB_VERBS),
                }
            )
        return entries


EVENT_FIELDS = frozenset(
    {
        "involvedObject.kind",
        "involvedObject.namespace",
        "involvedObject.name",
        "involvedObject.uid",
        "involvedObject.apiVersion",
        "involvedObject.resourceVersion",
        "involvedObject.fieldPath",
        "reason",
        "reportingComponent",
        "source",
        "type",
    }
)
POD_FIELDS = frozenset(
    {
        "spec.nodeName",
        "spec.restartPolicy",
        "spec.schedulerName",
        "spec.serviceAccountName",
        "spec.hostNetwork",
        "status.phase",
        "status.podIP",
        "status.nominatedNodeName",
    }
)


def _builtin(
    group: str,
    version: str,
    plural: str,
    kind: str,
    namespaced: bool = True,
    **kwargs: Any,
) -> ResourceType:
    return ResourceType(group, version, plural, kind, namespaced, **kwargs)


BUILTINS: tuple[ResourceType, ...] = (
    _builtin(
        "",
        "v1",
        "namespaces",
        "Namespace",
        False,
        status=True,
        short_names=("ns",),
        field_labels=frozenset({"status.phase"}),
        name_validation=NAME_LABEL,
    ),
    _builtin("", "v1", "configmaps", "ConfigMap", short_names=("cm",)),
    _builtin("", "v1", "secrets", "Secret", field_labels=frozenset({"type"})),
    _builtin("", "v1", "serviceaccounts", "ServiceAccount", short_names=("sa",)),
    _builtin(
        "",
        "v1",
        "services",
        "Service",
        status=True,
        short_names=("svc",),
        categories=("all",),
        name_validation=NAME_DNS1035,
    ),
    _builtin("", "v1", "endpoints", "Endpoints", short_names=("ep",)),
    _builtin(
        "",
        "v1",
        "pods",
        "Pod",
        status=True,
        short_names=("po",),
        categories=("all",),
        field_labels=POD_FIELDS,
    ),
    _builtin(
        "",
        "v1",
        "persistentvolumeclaims",
        "PersistentVolumeClaim",
        status=True,
        short_names=("pvc",),
    ),
    _builtin("", "v1", "events", "Event", short_names=("ev",), field_labels=EVENT_FIELDS),
    _builtin("", "v1", "nodes", "Node", False, status=True, short_names=("no",)),
    _builtin(
        "apps",
        "v1",
        "deployments",
        "Deployment",
        status=True,
        generation=True,
        short_names=("deploy",),
        categories=("all",),
    ),
    _builtin(
        "apps",
        "v1",
        "statefulsets",
        "StatefulSet",
        status=True,
        generation=True,
        short_names=("sts",),
        categories=("all",),
    ),
    _builtin(
        "apps",
        "v1",
        "replicasets",
        "ReplicaSet",
        status=True,
        generation=True,
        short_names=("rs",),
        categories=("all",),
    ),
    _builtin(
        "apps",
        "v1",
        "daemonsets",
        "DaemonSet",
        status=True,
        generation=True,
        short_names=("ds",),
        categories=("all",),
    ),
    _builtin("batch", "v1", "jobs", "Job", status=True, generation=True, categories=("all",)),
    _builtin(
        "policy",
        "v1",
        "poddisruptionbudgets",
        "PodDisruptionBudget",
        status=True,
        generation=True,
        short_names=("pdb",),
    ),
    _builtin("coordination.k8s.io", "v1", "leases", "Lease"),
    _builtin(
        "networking.k8s.io",
        "v1",
        "networkpolicies",
        "NetworkPolicy",
        generation=True,
        short_names=("netpol",),
    ),
    _builtin("rbac.authorization.k8s.io", "v1", "roles", "Role", name_validation=NAME_PATH),
    _builtin(
        "rbac.authorization.k8s.io", "v1", "rolebindings", "RoleBinding", name_validation=NAME_PATH
    ),
    _builtin(
        "rbac.authorization.k8s.io",
        "v1",
        "clusterroles",
        "ClusterRole",
        False,
        name_validation=NAME_PATH,
    ),
    _builtin(
        "rbac.authorization.k8s.io",
        "v1",
        "clusterrolebindings",
        "ClusterRoleBinding",
        False,
        name_validation=NAME_PATH,
    ),
    _builtin(
        "apiextensions.k8s.io",
        "v1",
        "customresourcedefinitions",
        "CustomResourceDefinition",
        False,
        status=True,
        generation=True,
        short_names=("crd", "crds"),
    ),
)

CRDS = ("apiextensions.k8s.io", "customresourcedefinitions")
NAMESPACES = ("", "namespaces")


def crd_resource_types(crd: Obj) -> list[ResourceType]:
    """The served versions of a CustomResourceDefinition object (`apiextensions.k8s.io/v1`)."""
    spec = crd.get("spec") or {}
    names = spec.get("names") or {}
    result = []
    for version in spec.get("versions") or []:
        if not version.get("served", True):
            continue
        subresources = version.get("subresources") or spec.get("subresources") or {}
        result.append(
            ResourceType(
                group=spec["group"],
                version=version["name"],
                plural=names["plural"],
                kind=names["kind"],
                namespaced=spec.get("scope", "Namespaced") == "Namespaced",
                singular=names.get("singular") or names["kind"].lower(),
                status="status" in subresources,
                generation=True,
                short_names=tuple(names.get("shortNames") or ()),
                categories=tuple(names.get("categories") or ()),
                custom=True,
            )
        )
    return result


_KUBE_VERSION = re.compile(r"^v(\d+)(?:(alpha|beta)(\d+))?$")


def version_priority(version: str) -> tuple[int, int, int, str]:
    """Kubernetes' version priority: v2 > v1 > v1beta2 > v1beta1 > v1alpha1 > other."""
    m = _KUBE_VERSION.match(version)
    if not m:
        return (3, 0, 0, version)
    major, level, minor = int(m[1]), m[2], int(m[3] or 0)
    rank = {None: 0, "beta": 1, "alpha": 2}[level]
    return (rank, -major, -minor, "")


class Registry:
    """Served resources by group/version/plural, in registration order."""

    def __init__(self, types: Iterable[ResourceType] = BUILTINS) -> None:
        self._types: dict[tuple[str, str, str], ResourceType] = {}
        for rt in types:
            self.add(rt)

    def add(self, rt: ResourceType) -> None:
        self._types[(rt.group, rt.version, rt.plural)] = rt

    def remove_group_resource(self, group: str, plural: str) -> None:
        for key in [k for k in self._types if k[0] == group and k[2] == plural]:
            del self._types[key]

    def sync_crd(self, crd: Obj) -> None:
        """Serve exactly the versions a CRD object declares."""
        spec = crd.get("spec") or {}
        plural = (spec.get("names") or {}).get("plural", "")
        self.remove_group_resource(spec.get("group", ""), plural)
        for rt in crd_resource_types(crd):
            self.add(rt)

    def __iter__(self) -> Iterator[ResourceType]:
        return iter(list(self._types.values()))

    def get(self, group: str, version: str, plural: str) -> ResourceType | None:
        return self._types.get((group, version, plural))

    def find(self, api_version: str, name: str) -> ResourceType | None:
        """By apiVersion and plural, kind, singular or short name (for the test helpers)."""
        group, _, version = api_version.rpartition("/")
        lowered = name.lower()
        for rt in self:
            if (rt.group, rt.version) != (group, version):
                continue
            if lowered in (rt.plural, rt.kind.lower(), rt.singular_name, *rt.short_names):
                return rt
        return None

    def any_version(self, group: str, plural: str) -> ResourceType | None:
        for rt in self:
            if rt.group_resource == (group, plural):
                return rt
        return None

    def group_versions(self, group: str) -> list[str]:
        """The served versions of a group, the preferred (highest priority) first."""
        versions = {rt.version for rt in self if rt.group == group}
        return sorted(versions, key=version_priority)

    def groups(self) -> list[str]:
        groups: list[str] = []
        for rt in self:
            if rt.group and rt.group not in groups:
                groups.append(rt.group)
        return groups

    def resource_list(self, group: str, version: str) -> Obj | None:
        types = [rt for rt in self if (rt.group, rt.version) == (group, version)]
        if not types:
            return None
        return {
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": types[0].api_version,
            "resources": [entry for rt in types for entry in rt.discovery()],
        }

    def api_group(self, group: str) -> Obj | None:
        versions = self.group_versions(group)
        if not versions:
            return None
        entries = [{"groupVersion": f"{group}/{v}", "version": v} for v in versions]
        return {
            "kind": "APIGroup",
            "apiVersion": "v1",
            "name": group,
            "versions": entries,
            "preferredVersion": entries[0],
        }

    def api_group_list(self) -> Obj:
        groups = [self.api_group(g) for g in self.groups()]
        return {
            "kind": "APIGroupList",
            "apiVersion": "v1",
            "groups": [
                {k: v for k, v in g.items() if k not in ("kind", "apiVersion")} for g in groups if g
            ],
        }
