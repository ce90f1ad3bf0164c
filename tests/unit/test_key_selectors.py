"""Key selectors of the form ``lambda e: e[k]`` / ``lambda e: e.name`` run as built-in getters."""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any, NamedTuple

import pytest

from streamjob_runtime import functions
from streamjob_runtime.connectors.files import FileSink
from streamjob_runtime.connectors.generator import GeneratorSource
from streamjob_runtime.datastream import StreamExecutionEnvironment


class Click(NamedTuple):
    user: str
    page: int


def second(e: Any) -> Any:
    return e[1]


SPECIALIZED: list[tuple[Callable[[Any], Any], Any, Any]] = [
    (lambda e: e[0], operator.itemgetter(0), (7, "x")),
    (second, operator.itemgetter(1), (7, "x")),
    (lambda e: e["user"], operator.itemgetter("user"), {"user": "u1"}),
    (lambda e: e[-1], operator.itemgetter(-1), [1, 2, 3]),
    (lambda e: e[(1, 2)], operator.itemgetter((1, 2)), {(1, 2): "t"}),
    (lambda e: e.user, operator.attrgetter("user"), Click("u2", 3)),
]


@pytest.mark.parametrize(("selector", "getter", "record"), SPECIALIZED)
def test_a_subscript_or_attribute_lambda_becomes_the_getter_with_the_same_result(
    selector: Callable[[Any], Any], getter: Any, record: Any
) -> None:
    fast = functions.specialize_key_selector(selector)
    assert type(fast) is type(getter)
    assert repr(fast) == repr(getter)
    assert fast(record) == selector(record)


def test_the_getter_raises_what_the_function_raises() -> None:
    cases: list[tuple[Callable[[Any], Any], Any]] = [
        (lambda e: e["user"], {"page": 1}),
        (lambda e: e[5], (1, 2)),
        (lambda e: e.user, object()),
        (lambda e: e[0], None),
    ]
    for selector, record in cases:
        fast = functions.specialize_key_selector(selector)
        assert fast is not selector
        errors = []
        for f in (selector, fast):
            try:
                f(record)
            except (KeyError, IndexError, AttributeError, TypeError) as e:
                errors.append((type(e), str(e)))
        assert len(errors) == 2
        assert errors[0] == errors[1]


def test_any_other_selector_is_kept_as_it_is() -> None:
    k = 1

    def two_args(e: Any, default: int = 0) -> Any:
        return e[0]

    def star(e: Any, *rest: Any) -> Any:
        return e[0]

    class Method:
        def key(self, e: Any) -> Any:
            return e[0]

    for selector in (
        lambda e: e[0] + 1,
        lambda e: e[k],  # a closure: k may change
        lambda e: (e[0], e[1]),
        lambda e: e,
        lambda e: str(e),
        two_args,
        star,
        Method().key,
        abs,
        operator.itemgetter(0),
    ):
        assert functions.specialize_key_selector(selector) is selector


def test_key_by_partitions_and_scopes_state_with_the_specialized_selector() -> None:
    env = StreamExecutionEnvironment()
    keyed = env.from_source(GeneratorSource(lambda i: (i, i), 10)).key_by(lambda e: e[0])
    keyed.reduce(lambda a, b: a).sink_to(FileSink("/nonexistent"))
    hashed = [e for v in env.job_graph().vertices for e in v.inputs if e.partitioning.key_selector]
    assert [repr(e.partitioning.key_selector) for e in hashed] == ["operator.itemgetter(0)"]
    assert repr(keyed.key_selector) == "operator.itemgetter(0)"
