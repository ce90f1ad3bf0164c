"""Custom resources through their CRD's structural schema, as kube-apiserver admits them.

On every create, update and patch of a custom resource (the status subresource included) the
real API server prunes the fields its schema does not declare, fills in `default`s, checks
types, enums, bounds, lengths, patterns and `required`, and evaluates the schema's
`x-kubernetes-validations` CEL rules (transition rules with `oldSelf` only on updates;
`messageExpression`, `fieldPath` and `reason` honoured). `admit` does the same, with the real
server's messages (`spec.job.parallelism: Invalid value: 0: spec.job.parallelism in body
should be greater than or equal to 1`; a rule that fails to evaluate: `no such key:
savepoints evaluating rule: <message>`), so a spec or a rule that a real cluster refuses is
refused here too.

CEL is evaluated by the `common-expression-language` package (cel-rust): unlike cel-python it
raises on a missing intermediate key inside `has()` (`has(self.a.b)` without `a`), as cel-go
does, and it is ~15x faster. Kubernetes' CEL extension libraries (quantity, url, lists, regex
`find`, `lowerAscii`...) are not available: a rule using them fails to compile here.

Not emulated: defaults on read (only on write), metadata schemas of embedded resources,
`format` checks, cost budgets, validation ratcheting, x-kubernetes-list-type uniqueness.
"""

from __future__ import annotations

import copy
import functools
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import cel

Obj = dict[str, Any]

FIELD_VALIDATION = ("Ignore", "Warn", "Strict")
# The root fields every object keeps whatever its schema says (metadata is ObjectMeta's).
_ROOT_FIELDS = ("apiVersion", "kind", "metadata")


@dataclass(frozen=True)
class Cause:
    """One field error, as Kubernetes' field.Error renders it (`<field>: <message>`)."""

    field: str
    message: str
    reason: str = "FieldValueInvalid"


@dataclass
class Admission:
    """The outcome of admitting one object: its unknown fields (pruned) and its field errors."""

    unknown: list[str] = field(default_factory=list)
    causes: list[Cause] = field(default_factory=list)


def _go_value(value: object) -> str:
    """A value as field.Error prints it: strings quoted, numbers and booleans bare."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return json.dumps(value)


def _invalid(path: str, value: object, detail: str) -> Cause:
    return Cause(path, f"Invalid value: {_go_value(value)}: {detail}")


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _child(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _preserves(schema: Obj) -> bool:
    return bool(schema.get("x-kubernetes-preserve-unknown-fields"))


# ------------------------------------------------------------------------------- pruning


def prune(value: object, schema: Obj, path: str = "", root: bool = True) -> list[str]:
    """Drop, in place, the fields `schema` does not declare and the nulls of fields that are
    not nullable; returns the paths of the unknown fields (the real server's warnings)."""
    unknown: list[str] = []
    if isinstance(value, dict):
        props: Obj = schema.get("properties") or {}
        extra = schema.get("additionalProperties")
        for key in list(value):
            if root and key in _ROOT_FIELDS:
                continue
            sub = props.get(key, extra if isinstance(extra, dict) else None)
            if sub is None:
                if extra is True or _preserves(schema):
                    continue
                del value[key]
                unknown.append(_child(path, key))
                continue
            if value[key] is None and not sub.get("nullable"):
                del value[key]  # as the real server: null means absent (a default may fill it)
                continue
            unknown += prune(value[key], sub, _child(path, key), root=False)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            unknown += prune(item, schema["items"], f"{path}[{i}]", root=False)
    return unknown


# ------------------------------------------------------------------------------- defaulting


def default(value: object, schema: Obj) -> None:
    """Fill in `default`s in place, top-down: a defaulted object gets its own defaults too
    (apiextensions' structural defaulting algorithm)."""
    if isinstance(value, dict):
        props: Obj = schema.get("properties") or {}
        for key, sub in props.items():
            if "default" in sub and (
                key not in value or (value[key] is None and not sub.get("nullable"))
            ):
                value[key] = copy.deepcopy(sub["default"])
        extra = schema.get("additionalProperties")
        for key, item in value.items():
            sub = props.get(key, extra if isinstance(extra, dict) else None)
            if sub is not None:
                default(item, sub)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for item in value:
            default(item, schema["items"])


# ------------------------------------------------------------------------------- OpenAPI checks


def _scalar_causes(value: object, schema: Obj, path: str) -> Iterator[Cause]:
    where = f"{path} in body"
    if "enum" in schema and value not in schema["enum"]:
        supported = ", ".join(json.dumps(v) for v in schema["enum"])
        yield Cause(
            path,
            f"Unsupported value: {_go_value(value)}: supported values: {supported}",
            "FieldValueNotSupported",
        )
    if isinstance(value, int | float) and not isinstance(value, bool):
        low, high = schema.get("minimum"), schema.get("maximum")
        if low is not None:
            if schema.get("exclusiveMinimum") and value <= low:
                yield _invalid(path, value, f"{where} should be greater than {low}")
            elif value < low:
                yield _invalid(path, value, f"{where} should be greater than or equal to {low}")
        if high is not None:
            if schema.get("exclusiveMaximum") and value >= high:
                yield _invalid(path, value, f"{where} should be less than {high}")
            elif value > high:
                yield _invalid(path, value, f"{where} should be less than or equal to {high}")
    if isinstance(value, str):
        if "minLength" in schema and len(value) < schema["minLength"]:
            yield _invalid(
                path, value, f"{where} should be at least {schema['minLength']} chars long"
            )
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            yield _invalid(
                path, value, f"{where} should be at most {schema['maxLength']} chars long"
            )
        if "pattern" in schema and not re.search(schema["pattern"], value):
            yield _invalid(path, value, f"{where} should match '{schema['pattern']}'")


def check(value: object, schema: Obj, path: str = "") -> list[Cause]:
    """The OpenAPI v3 checks of a structural schema: type, enum, bounds, lengths, pattern,
    items, required (after pruning and defaulting)."""
    if value is None:
        if schema.get("nullable") or not path:
            return []
        return [
            Cause(
                path,
                'Invalid value: "null": '
                f'{path} in body must be of type {schema.get("type")}: "null"',
                "FieldValueTypeInvalid",
            )
        ]
    causes: list[Cause] = []
    want = schema.get("type")
    actual = _json_type(value)
    if schema.get("x-kubernetes-int-or-string"):
        if actual not in ("integer", "string"):
            want = "integer,string"
            causes.append(
                Cause(
                    path,
                    f'Invalid value: "{actual}": {path} in body must be of type {want}: "{actual}"',
                    "FieldValueTypeInvalid",
                )
            )
            return causes
    elif want and not (want == actual or (want == "number" and actual == "integer")):
        return [
            Cause(
                path,
                f'Invalid value: "{actual}": {path} in body must be of type {want}: "{actual}"',
                "FieldValueTypeInvalid",
            )
        ]
    causes += _scalar_causes(value, schema, path)
    if isinstance(value, list):
        where = f"{path} in body"
        if "minItems" in schema and len(value) < schema["minItems"]:
            causes.append(
                Cause(
                    path,
                    f"Invalid value: {len(value)}: {where} should have at least"
                    f" {schema['minItems']} items",
                )
            )
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            causes.append(
                Cause(
                    path,
                    f"Too many: {len(value)}: must have at most {schema['maxItems']} items",
                    "FieldValueTooMany",
                )
            )
        items = schema.get("items")
        if isinstance(items, dict):
            for i, item in enumerate(value):
                causes += check(item, items, f"{path}[{i}]")
    elif isinstance(value, dict):
        for name in schema.get("required") or []:
            if name not in value:
                causes.append(Cause(_child(path, name), "Required value", "FieldValueRequired"))
        props: Obj = schema.get("properties") or {}
        extra = schema.get("additionalProperties")
        for key, item in value.items():
            if not path and key in _ROOT_FIELDS:
                continue
            sub = props.get(key, extra if isinstance(extra, dict) else None)
            if sub is not None:
                causes += check(item, sub, _child(path, key))
    return causes


# ------------------------------------------------------------------------------- CEL


@functools.lru_cache(maxsize=512)
def compile_rule(expression: str) -> cel.Program:
    """A compiled CEL program; raises ValueError for an expression that does not parse."""
    return cel.compile(expression)


def rule_problems(schema: Obj, path: str = "openAPIV3Schema") -> list[Cause]:
    """Rules that do not compile (the real server refuses such a CRD)."""
    causes: list[Cause] = []
    for i, rule in enumerate(schema.get("x-kubernetes-validations") or []):
        for key in ("rule", "messageExpression"):
            if key in rule:
                try:
                    compile_rule(rule[key])
                except ValueError as e:
                    causes.append(
                        _invalid(
                            f"{path}.x-kubernetes-validations[{i}].{key}",
                            rule[key],
                            f"compilation failed: {e}",
                        )
                    )
    for key, sub in (schema.get("properties") or {}).items():
        causes += rule_problems(sub, f"{path}.properties[{key}]")
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            causes += rule_problems(schema[key], f"{path}.{key}")
    return causes


def _error_text(error: BaseException) -> str:
    """A CEL evaluation error in cel-go's words where they differ."""
    if isinstance(error, KeyError):
        return f"no such key: {error.args[0] if error.args else ''}"
    return str(error)


def _rule_text(rule: Obj) -> str:
    return str(rule.get("message") or rule["rule"]).strip()


def _rule_cause(path: str, schema: Obj, rule: Obj, message: str) -> Cause:
    where = path + str(rule.get("fieldPath") or "")
    reason = str(rule.get("reason") or "FieldValueInvalid")
    if reason == "FieldValueRequired":
        return Cause(where, f"Required value: {message}", reason)
    if reason == "FieldValueForbidden":
        return Cause(where, f"Forbidden: {message}", reason)
    if reason == "FieldValueDuplicate":
        return Cause(where, f"Duplicate value: {message}", reason)
    return _invalid(where, schema.get("type") or "object", message)


_NO_OLD = object()


def evaluate_rules(
    value: object, schema: Obj, old: object = _NO_OLD, path: str = ""
) -> list[Cause]:
    """Every `x-kubernetes-validations` rule of `schema` and its sub-schemas on `value`.

    `old` is the value at the same place before the update (absent on create, and for list
    items unless the list is a `map` list, whose items correlate by key, as in Kubernetes):
    a transition rule (one that reads `oldSelf`) runs only where `old` exists, unless it sets
    `optionalOldSelf`.
    """
    if value is None:
        return []
    causes: list[Cause] = []
    for rule in schema.get("x-kubernetes-validations") or []:
        program = compile_rule(rule["rule"])
        context: Obj = {"self": value}
        if "oldSelf" in program.variables():
            if rule.get("optionalOldSelf"):
                context["oldSelf"] = (
                    cel.OptionalValue.none() if old is _NO_OLD else cel.OptionalValue.of(old)
                )
            elif old is _NO_OLD:
                continue
            else:
                context["oldSelf"] = old
        try:
            result = program.execute(context)
        except Exception as e:  # every CEL runtime error becomes the rule's field error
            text = f"{_error_text(e)} evaluating rule: {_rule_text(rule)}"
            causes.append(_invalid(path, schema.get("type") or "object", text))
            continue
        if result is True:
            continue
        message = None
        if rule.get("messageExpression"):
            try:
                answer = compile_rule(rule["messageExpression"]).execute(context)
            except Exception:  # the real server falls back to message, as here
                answer = None
            if isinstance(answer, str) and answer.strip():
                message = answer
        if message is None:
            message = rule.get("message") or f"failed rule: {_rule_text(rule)}"
        causes.append(_rule_cause(path, schema, rule, str(message)))
    if isinstance(value, dict):
        props: Obj = schema.get("properties") or {}
        extra = schema.get("additionalProperties")
        for key, item in value.items():
            if not path and key in _ROOT_FIELDS:
                continue
            sub = props.get(key, extra if isinstance(extra, dict) else None)
            if sub is None:
                continue
            sub_old = old.get(key, _NO_OLD) if isinstance(old, dict) else _NO_OLD
            causes += evaluate_rules(item, sub, sub_old, _child(path, key))
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        items: Obj = schema["items"]
        keys = schema.get("x-kubernetes-list-map-keys") or []
        olds: dict[str, object] = {}
        if schema.get("x-kubernetes-list-type") == "map" and isinstance(old, list):
            olds = {_map_key(o, keys): o for o in old if isinstance(o, dict)}
        for i, item in enumerate(value):
            item_old = olds.get(_map_key(item, keys), _NO_OLD) if olds else _NO_OLD
            causes += evaluate_rules(item, items, item_old, f"{path}[{i}]")
    return causes


def _map_key(item: object, keys: list[str]) -> str:
    return json.dumps([item.get(k) for k in keys] if isinstance(item, dict) else None)


# ------------------------------------------------------------------------------- the whole


def admit(obj: Obj, schema: Obj, old: Obj | None = None) -> Admission:
    """Prune, default, check and evaluate the rules on `obj` (in place), as on a write;
    `old` is the stored object for an update."""
    outcome = Admission()
    outcome.unknown = prune(obj, schema)
    default(obj, schema)
    outcome.causes = check(obj, schema)
    outcome.causes += evaluate_rules(obj, schema, _NO_OLD if old is None else old)
    return outcome
