"""Label and field selectors, parsed as the real API server parses them."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

Obj = dict[str, Any]


class SelectorError(ValueError):
    """An unparsable or unsupported selector (the server answers 400 Bad Request)."""


_KEY = re.compile(r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


@dataclass(frozen=True)
class Requirement:
    key: str
    op: str  # "=", "!=", "in", "notin", "exists", "!"
    values: frozenset[str]

    def matches(self, labels: Mapping[str, str]) -> bool:
        if self.op == "exists":
            return self.key in labels
        if self.op == "!":
            return self.key not in labels
        if self.op in ("=", "in"):
            return self.key in labels and labels[self.key] in self.values
        # "!=" and "notin" match objects without the label, as in Kubernetes.
        return labels.get(self.key) not in self.values


def _split_top_level(text: str) -> list[str]:
    """Split on commas outside parentheses."""
    parts: list[str] = []
    depth = 0
    current = ""
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth < 0:
                raise SelectorError(f"unbalanced parenthesis in {text!r}")
        if ch == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += ch
    if depth:
        raise SelectorError(f"unbalanced parenthesis in {text!r}")
    parts.append(current)
    return parts


def _check_key(key: str) -> str:
    if not _KEY.match(key) or len(key.rpartition("/")[2]) > 63:
        raise SelectorError(f"invalid label key {key!r}")
    return key


def _check_value(value: str) -> str:
    if not _VALUE.match(value) or len(value) > 63:
        raise SelectorError(f"invalid label value {value!r}")
    return value


_SET_OP = re.compile(r"^(?P<key>[^\s!=()]+)\s+(?P<op>in|notin)\s*\((?P<values>[^()]*)\)$")


def parse_label_selector(text: str | None) -> list[Requirement]:
    """`a=b,c!=d,e in (f,g),h notin (i),j,!k`; an empty selector matches everything."""
    if not text or not text.strip():
        return []
    requirements = []
    for raw in _split_top_level(text):
        part = raw.strip()
        if not part:
            raise SelectorError(f"empty requirement in {text!r}")
        m = _SET_OP.match(part)
        if m:
            values = frozenset(_check_value(v.strip()) for v in m["values"].split(","))
            requirements.append(Requirement(_check_key(m["key"]), m["op"], values))
        elif part.startswith("!"):
            requirements.append(Requirement(_check_key(part[1:].strip()), "!", frozenset()))
        elif "!=" in part:
            key, _, value = part.partition("!=")
            requirements.append(
                Requirement(_check_key(key.strip()), "!=", frozenset({_check_value(value.strip())}))
            )
        elif "=" in part:
            key, _, value = part.partition("==") if "==" in part else part.partition("=")
            requirements.append(
                Requirement(_check_key(key.strip()), "=", frozenset({_check_value(value.strip())}))
            )
        else:
            requirements.append(Requirement(_check_key(part), "exists", frozenset()))
    return requirements


def labels_match(requirements: list[Requirement], obj: Obj) -> bool:
    labels = (obj.get("metadata") or {}).get("labels") or {}
    return all(r.matches(labels) for r in requirements)


@dataclass(frozen=True)
class FieldRequirement:
    path: str
    equal: bool
    value: str

    def matches(self, obj: Obj) -> bool:
        actual = field_value(obj, self.path)
        return (actual == self.value) == self.equal


def field_value(obj: Obj, path: str) -> str:
    current: Any = obj
    for part in path.split("."):
        current = current.get(part) if isinstance(current, dict) else None
    if current is None:
        return ""
    if isinstance(current, bool):
        return "true" if current else "false"
    if isinstance(current, dict):  # e.g. an event's `source`: its component
        return str(current.get("component", ""))
    return str(current)


def parse_field_selector(text: str | None, supported: frozenset[str]) -> list[FieldRequirement]:
    """`metadata.name=x,metadata.namespace!=y`; other fields only where the kind supports them."""
    if not text or not text.strip():
        return []
    requirements = []
    for raw in text.split(","):
        part = raw.strip()
        if "!=" in part:
            path, _, value = part.partition("!=")
            equal = False
        elif "==" in part:
            path, _, value = part.partition("==")
            equal = True
        elif "=" in part:
            path, _, value = part.partition("=")
            equal = True
        else:
            raise SelectorError(f"invalid field selector requirement {part!r}")
        path = path.strip()
        if path not in supported and path not in ("metadata.name", "metadata.namespace"):
            raise SelectorError(f'field label not supported: "{path}"')
        requirements.append(FieldRequirement(path, equal, value.strip()))
    return requirements


def fields_match(requirements: list[FieldRequirement], obj: Obj) -> bool:
    return all(r.matches(obj) for r in requirements)


def make_filter(labels: list[Requirement], fields: list[FieldRequirement]) -> Callable[[Obj], bool]:
    return lambda obj: labels_match(labels, obj) and fields_match(fields, obj)
