"""Change classification between the last reconciled spec and the new one."""

from __future__ import annotations

from typing import Any

import pytest

from streamjob_operator.api import models
from streamjob_operator.planning import changes

Kind = changes.ChangeKind
BASE: dict[str, Any] = {
    "image": "streamjob:1",
    "job": {"entrypoint": "examples.clickstream", "parallelism": 2},
    "taskManager": {"replicas": 2},
    "savepoints": {"directory": "/state/savepoints"},
}


def spec(**patch: Any) -> models.StreamJobSpec:
    raw: dict[str, Any] = {k: dict(v) if isinstance(v, dict) else v for k, v in BASE.items()}
    for dotted, value in patch.items():
        head, _, leaf = dotted.partition("__")
        if leaf:
            raw.setdefault(head, {})[leaf] = value
        else:
            raw[head] = value
    return models.StreamJobSpec.model_validate(raw)


@pytest.mark.parametrize(
    ("patch", "kind", "fields"),
    [
        ({}, Kind.NONE, ()),
        ({"stability": {"checkpoints": 5}}, Kind.IGNORE, ("stability.checkpoints",)),
        ({"rollback": {"enabled": True}}, Kind.IGNORE, ("rollback.enabled",)),
        ({"savepoints__historyMaxCount": 9}, Kind.IGNORE, ("savepoints.historyMaxCount",)),
        ({"job__upgradeMode": "last-state"}, Kind.IGNORE, ("job.upgradeMode",)),
        ({"job__savepointTriggerNonce": 1}, Kind.SAVEPOINT, ("job.savepointTriggerNonce",)),
        ({"job__restartNonce": 4}, Kind.RESTART, ("job.restartNonce",)),
        ({"job__parallelism": 4, "taskManager__replicas": 4}, Kind.SCALE,
         ("job.parallelism", "taskManager.replicas")),
        ({"image": "streamjob:2"}, Kind.UPGRADE, ("image",)),
        ({"job__args": ["--rate", "5"]}, Kind.UPGRADE, ("job.args",)),
        ({"config": {"execution.batch-size": "64"}}, Kind.UPGRADE,
         ("config.execution.batch-size",)),
        ({"taskManager__resources": {"cpu": "2"}}, Kind.UPGRADE, ("taskManager.resources.cpu",)),
        ({"jobManager__podTemplate": {"metadata": {"labels": {"a": "b"}}}}, Kind.UPGRADE,
         ("jobManager.podTemplate",)),
        ({"checkpointing": {"interval": "1m"}}, Kind.UPGRADE, ("checkpointing.interval",)),
        ({"job__parallelism": 4, "image": "streamjob:2"}, Kind.UPGRADE,
         ("image", "job.parallelism")),
        ({"job__state": "suspended"}, Kind.SUSPEND, ("job.state",)),
        ({"job__state": "suspended", "image": "streamjob:2"}, Kind.SUSPEND,
         ("image", "job.state")),
    ],
)  # fmt: skip
def test_changes_are_classified_by_their_costliest_field(
    patch: dict[str, Any], kind: Kind, fields: tuple[str, ...]
) -> None:
    change = changes.classify(spec(), spec(**patch))
    assert change.kind is kind
    assert change.fields == fields


def test_resuming_is_its_own_class() -> None:
    assert changes.classify(spec(job__state="suspended"), spec()).kind is Kind.RESUME


def test_a_nonce_set_back_to_null_triggers_nothing() -> None:
    old = spec(job__savepointTriggerNonce=3, job__restartNonce=3)
    assert changes.classify(old, spec()).kind is Kind.IGNORE


def test_a_first_deployment_is_an_upgrade_from_nothing() -> None:
    assert changes.classify(None, spec()) == changes.Change(Kind.UPGRADE)


def test_the_encoded_spec_round_trips_and_is_stable() -> None:
    s = spec(config={"b": "1", "a": "2"})
    assert changes.decode(changes.encode(s)) == s
    assert changes.encode(s) == changes.encode(changes.decode(changes.encode(s)))
