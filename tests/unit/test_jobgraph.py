from __future__ import annotations

import pytest

from streamjob_runtime.connectors.files import FileSink
from streamjob_runtime.connectors.generator import GeneratorSource
from streamjob_runtime.datastream import StreamExecutionEnvironment
from streamjob_runtime.graph import jobgraph


def env(parallelism: int = 2) -> StreamExecutionEnvironment:
    return StreamExecutionEnvironment().set_parallelism(parallelism)


def test_forward_edges_of_equal_parallelism_are_chained() -> None:
    e = env()
    (
        e.from_source(GeneratorSource(lambda i: i, 10))
        .map(lambda x: x)
        .filter(bool)
        .key_by(lambda x: x % 3)
        .reduce(lambda a, b: a + b)
        .map(str)
        .sink_to(FileSink("/tmp/o"))
    )
    g = e.job_graph()
    assert [[t.kind for t in v.operators] for v in g.vertices] == [
        ["source", "map", "filter"],
        ["reduce", "map", "sink"],
    ]
    assert g.vertices[1].inputs[0].partitioning.kind is jobgraph.PartitionKind.HASH


def test_a_parallelism_change_breaks_the_chain_and_rebalances() -> None:
    e = env()
    e.from_source(GeneratorSource(lambda i: i, 10)).set_parallelism(1).map(str).sink_to(
        FileSink("/tmp/o")
    )
    g = e.job_graph()
    assert [v.parallelism for v in g.vertices] == [1, 2]
    assert g.vertices[1].inputs[0].partitioning.kind is jobgraph.PartitionKind.REBALANCE


def test_uids_are_derived_deterministically_or_given() -> None:
    def build() -> list[str]:
        e = env()
        (
            e.from_source(GeneratorSource(lambda i: i, 10))
            .map(str)
            .map(str)
            .uid("second")
            .sink_to(FileSink("/tmp/o"))
        )
        return [t.uid for t in e.transformations]

    assert build() == build() == ["source-1", "map-1", "second", "sink-1"]


def test_duplicate_uid_is_refused_naming_it() -> None:
    e = env()
    e.from_source(GeneratorSource(lambda i: i, 10)).uid("x").map(str).uid("x").sink_to(
        FileSink("/tmp/o")
    )
    with pytest.raises(jobgraph.GraphError, match="uid 'x' is used twice"):
        e.job_graph()


def test_a_dangling_stream_or_missing_sink_is_refused() -> None:
    e = env()
    e.from_source(GeneratorSource(lambda i: i, 10)).map(str)
    with pytest.raises(jobgraph.GraphError, match="no sink"):
        e.job_graph()
    e2 = env()
    src = e2.from_source(GeneratorSource(lambda i: i, 10))
    src.sink_to(FileSink("/tmp/o"))
    src.map(str)
    with pytest.raises(jobgraph.GraphError, match="goes nowhere"):
        e2.job_graph()


def test_a_fan_out_ends_the_chain_so_both_consumers_get_every_record() -> None:
    e = env()
    src = e.from_source(GeneratorSource(lambda i: i, 10))
    src.map(str).sink_to(FileSink("/tmp/a"))
    src.map(repr).sink_to(FileSink("/tmp/b"))
    g = e.job_graph()
    assert len(g.vertices) == 3
    assert len(g.vertices[0].outputs) == 2
