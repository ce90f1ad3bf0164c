"""Channel state: the in-flight data an unaligned checkpoint stores (Flink's ``ChannelState``).

In an unaligned checkpoint a task takes its snapshot before the barrier has
arrived on every input channel.  The records of channel ``c`` that arrive after
the snapshot and before ``c``'s barrier are in no operator's state yet; they
are the channel's state.  The task records them (pickled, in order) as they
arrive, stores them with its state files as ``<head uid>-<subtask>.channels``,
and a restored task replays them into the same input channels before any new
input (the upstream restarts after its barrier, so each record counts once).

What is stored per channel: batches (``"b"``) and watermarks (``"w"``), in
arrival order; not barriers nor end-of-input (``"e"``: a restored upstream that
had ended sends it again).

Restore at another parallelism (or with the upstream at another parallelism):

* channels of a keyed (``hash``) edge: every record goes to the new subtask
  that owns its key group, whichever former subtask stored it;
* channels of other edges (``forward``, ``rebalance``): all the data former
  subtask ``s`` stored goes to new subtask ``s mod parallelism``;
* the data of former upstream subtask ``u`` enters the channel of upstream
  subtask ``u mod (new upstream parallelism)`` of the same edge;
* watermarks are dropped (the restored upstream emits its own again): the
  channel they described may now carry other channels' data.

With unchanged parallelism every channel's data returns to the same channel of
the same subtask, watermarks included.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from typing import Any

from streamjob_runtime.graph import jobgraph, keygroups
from streamjob_runtime.rpc import messages

Element = tuple[Any, ...]
SUFFIX = ".channels"
_VERSION = 1


class ChannelStateError(ValueError):
    """Channel state that this job graph cannot take; the message says why."""


@dataclass(frozen=True)
class InputEdge:
    """One input edge of a task: its channels are ``offset .. offset + parallelism - 1``
    of the task's input gate, one per upstream subtask."""

    upstream: str  # the upstream vertex id
    parallelism: int  # of the upstream vertex
    offset: int
    partitioning: jobgraph.Partitioning


def input_edges(graph: jobgraph.JobGraph, vertex: jobgraph.JobVertex) -> list[InputEdge]:
    """The input edges of ``vertex`` in gate order (the order its channels are numbered)."""
    edges, offset = [], 0
    for e in vertex.inputs:
        p = graph.vertex(e.upstream).parallelism
        edges.append(InputEdge(e.upstream, p, offset, e.partitioning))
        offset += p
    return edges


def channel_source(edges: list[InputEdge], channel: int) -> tuple[InputEdge, int]:
    """The edge of gate channel ``channel`` and the upstream subtask that feeds it."""
    for e in edges:
        if e.offset <= channel < e.offset + e.parallelism:
            return e, channel - e.offset
    raise IndexError(f"channel {channel} is not one of {edges}")


def encode_element(element: Element) -> bytes:
    return pickle.dumps(element, protocol=5)


# One stored channel: (upstream vertex, upstream subtask, upstream parallelism, elements).
StoredChannel = tuple[str, int, int, list[bytes]]


def encode(channels: list[StoredChannel]) -> bytes:
    return pickle.dumps((_VERSION, channels), protocol=5)


def decode(data: bytes) -> list[StoredChannel]:
    version, channels = pickle.loads(data)
    if version != _VERSION:
        raise ChannelStateError(
            f"channel state of format {version!r}; this streamjob reads format {_VERSION}:"
            " restore with the release that wrote the checkpoint"
        )
    result: list[StoredChannel] = channels
    return result


def handles_to_read(
    restore: messages.RestoreSpec, head_uid: str, subtask: int, parallelism: int
) -> list[messages.StateHandle]:
    """The channel-state files new subtask ``subtask`` reads: its own former file when the
    parallelism is unchanged, otherwise every former subtask's (keyed data may be ours)."""
    entry = restore.operators.get(head_uid)
    if entry is None:
        return []
    former_parallelism, handles = entry
    mine = [h for h in handles if h.has_channel_state]
    if former_parallelism == parallelism:
        mine = [h for h in mine if h.subtask == subtask]
    return sorted(mine, key=lambda h: h.subtask)


def redistribute(
    stored: list[tuple[int, list[StoredChannel]]],
    edges: list[InputEdge],
    subtask: int,
    parallelism: int,
    former_parallelism: int,
    max_parallelism: int,
) -> dict[int, list[Element]]:
    """The elements new subtask ``subtask`` replays, per gate channel, in order.

    ``stored``: (former subtask, its stored channels) for each file read.  Pure:
    the rules are the module's.  :class:`ChannelStateError` for data of an
    upstream vertex that is no input of this task any more.
    """
    by_upstream = {e.upstream: e for e in edges}
    mine = keygroups.KeyGroupRange.for_subtask(subtask, max_parallelism, parallelism)
    out: dict[int, list[Element]] = {}
    for former, channels in sorted(stored, key=lambda s: s[0]):
        for upstream, upstream_subtask, upstream_parallelism, elements in channels:
            edge = by_upstream.get(upstream)
            if edge is None:
                raise ChannelStateError(
                    f"the checkpoint holds in-flight data (unaligned checkpoint) sent by"
                    f" vertex {upstream!r}, which is no input of this task in the new job"
                    f" graph; restore a changed job graph from a savepoint (always aligned)"
                )
            unchanged = (
                former_parallelism == parallelism and upstream_parallelism == edge.parallelism
            )
            keyed = edge.partitioning.kind is jobgraph.PartitionKind.HASH and not unchanged
            if not keyed and former % parallelism != subtask:
                continue
            if unchanged and former != subtask:
                continue
            target = out.setdefault(edge.offset + upstream_subtask % edge.parallelism, [])
            for raw in elements:
                element: Element = pickle.loads(raw)
                if element[0] == "w":
                    if unchanged:
                        target.append(element)
                    continue
                if not keyed:
                    target.append(element)
                    continue
                selector = edge.partitioning.key_selector
                assert selector is not None
                _, values, timestamps = element
                take = [
                    mine.contains(keygroups.key_group(selector(v), max_parallelism)) for v in values
                ]
                if not any(take):
                    continue
                kept = [v for v, t in zip(values, take, strict=True) if t]
                kept_ts = (
                    None
                    if timestamps is None
                    else [ts for ts, t in zip(timestamps, take, strict=True) if t]
                )
                target.append(("b", kept, kept_ts))
    return out
