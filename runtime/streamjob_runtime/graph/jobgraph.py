"""Transformations (what the DataStream API records) and the JobGraph built from them.

Forward edges between transformations of equal parallelism are chained into
one :class:`JobVertex`, which runs as one task per subtask.  Vertex ids are the
uid of the chain's head, so the JobManager and every TaskManager, each building
the graph from the same job file, agree on them.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec


class GraphError(ValueError):
    """The job's topology is invalid; the message says what to change in ``build``."""


class PartitionKind(enum.StrEnum):
    FORWARD = "forward"
    HASH = "hash"
    REBALANCE = "rebalance"


@dataclass(frozen=True)
class Partitioning:
    kind: PartitionKind
    key_selector: Callable[[Any], Any] | None = None


FORWARD = Partitioning(PartitionKind.FORWARD)
REBALANCE = Partitioning(PartitionKind.REBALANCE)


@dataclass(frozen=True)
class Edge:
    source: Transformation
    partitioning: Partitioning


@dataclass(eq=False)
class Transformation:
    id: int
    kind: str
    uid: str
    name: str
    factory: Callable[[], Any]
    inputs: list[Edge] = field(default_factory=list)
    parallelism: int | None = None
    uid_given: bool = False

    @property
    def is_source(self) -> bool:
        return not self.inputs


@dataclass(frozen=True)
class VertexEdge:
    upstream: str
    downstream: str
    partitioning: Partitioning


@dataclass(eq=False)
class JobVertex:
    id: str
    operators: list[Transformation]
    parallelism: int
    inputs: list[VertexEdge] = field(default_factory=list)
    outputs: list[VertexEdge] = field(default_factory=list)

    @property
    def is_source(self) -> bool:
        return self.operators[0].is_source


class VertexPlan(msgspec.Struct, frozen=True):
    """The wire form of a vertex: enough for a TaskManager to check its own graph."""

    id: str
    uids: list[str]
    parallelism: int
    inputs: list[tuple[str, str]]  # (upstream vertex id, partition kind)


@dataclass
class JobGraph:
    vertices: list[JobVertex]  # topological order
    max_parallelism: int

    def vertex(self, vertex_id: str) -> JobVertex:
        for v in self.vertices:
            if v.id == vertex_id:
                return v
        raise KeyError(vertex_id)

    def plan(self) -> list[VertexPlan]:
        return [
            VertexPlan(
                v.id,
                [t.uid for t in v.operators],
                v.parallelism,
                [(e.upstream, e.partitioning.kind.value) for e in v.inputs],
            )
            for v in self.vertices
        ]

    def operator_parallelism(self) -> dict[str, int]:
        return {t.uid: v.parallelism for v in self.vertices for t in v.operators}

    @property
    def slots_needed(self) -> int:
        return max(v.parallelism for v in self.vertices)


def build(
    transformations: list[Transformation], default_parallelism: int, max_parallelism: int
) -> JobGraph:
    """Chain transformations into vertices; raise :class:`GraphError` on a bad topology."""
    if not transformations:
        raise GraphError("the job defines no operators: build(env) must add a source and a sink")
    uids: dict[str, Transformation] = {}
    for t in transformations:
        if t.uid in uids:
            raise GraphError(
                f"operator uid {t.uid!r} is used twice ({uids[t.uid].name!r} and {t.name!r});"
                " give each operator a unique uid"
            )
        uids[t.uid] = t
    consumers: dict[int, list[Transformation]] = {t.id: [] for t in transformations}
    for t in transformations:
        for e in t.inputs:
            consumers[e.source.id].append(t)
    if not any(t.kind == "sink" for t in transformations):
        raise GraphError("the job has no sink: end each pipeline with .sink_to(sink)")
    for t in transformations:
        if not consumers[t.id] and t.kind != "sink":
            raise GraphError(
                f"the output of {t.name!r} (uid {t.uid!r}) goes nowhere; send it to a sink"
            )

    def parallelism(t: Transformation) -> int:
        p = t.parallelism or default_parallelism
        if p > max_parallelism:
            raise GraphError(
                f"{t.name!r} has parallelism {p} above max parallelism {max_parallelism}"
            )
        return p

    vertex_of: dict[int, JobVertex] = {}
    vertices: list[JobVertex] = []
    for t in sorted(transformations, key=lambda t: t.id):
        p = parallelism(t)
        if (
            len(t.inputs) == 1
            and t.inputs[0].partitioning.kind is PartitionKind.FORWARD
            and len(consumers[t.inputs[0].source.id]) == 1
            and vertex_of[t.inputs[0].source.id].parallelism == p
        ):
            vertex = vertex_of[t.inputs[0].source.id]
            vertex.operators.append(t)
            vertex_of[t.id] = vertex
            continue
        vertex = JobVertex(t.uid, [t], p)
        vertices.append(vertex)
        vertex_of[t.id] = vertex
        for e in t.inputs:
            upstream = vertex_of[e.source.id]
            part = e.partitioning
            if part.kind is PartitionKind.FORWARD and upstream.parallelism != p:
                part = REBALANCE  # as Flink: a forward edge cannot change parallelism
            edge = VertexEdge(upstream.id, vertex.id, part)
            vertex.inputs.append(edge)
            upstream.outputs.append(edge)
    return JobGraph(vertices, max_parallelism)
