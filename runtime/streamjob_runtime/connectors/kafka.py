"""Kafka connectors on confluent-kafka (librdkafka): a source of partitions and a sink.

**KafkaSource**: each topic partition is a split whose state is the next
offset to read, so a checkpoint holds every partition's offset and a restore
(at any parallelism) resumes after the last record the checkpoint covers.  A
subtask reads the partitions whose split index modulo the parallelism is its
index; the source operator keeps a watermark per partition (and idleness).
New partitions are found by a metadata request every
``partition_discovery_interval_s`` and start at the earliest offset.  On a
completed checkpoint the offsets are committed to the consumer group for
monitoring only: recovery never reads them.  Bounded mode stops every
partition at a stop offset (``"latest"``: the end offsets when the partition
was first assigned; a timestamp; or explicit offsets).

**KafkaSink**: ``delivery_guarantee`` ``none`` (produce, never wait),
``at-least-once`` (flush at every checkpoint barrier) or ``exactly-once``.

Exactly-once is a two-phase commit whose transactions are Kafka transactions,
shaped by what librdkafka can do: a transaction left open by a dead producer
can not be resumed (librdkafka has no API to take over a producer id and
epoch; ``init_transactions`` on the same ``transactional.id`` fences the old
producer and *aborts* its open transaction).  So the pre-commit at a barrier
keeps the checkpoint's records in the checkpoint (the committable: encoded
key/value pairs), and the commit, when the checkpoint completes, produces them
in one transaction of the subtask's producer together with a *commit marker*:
the offset ``checkpoint_id`` committed, inside the transaction
(``send_offsets_to_transaction``), for the group ``<transactional id>-commits``.
The marker commits atomically with the records, so a restore knows for each
restored committable whether its transaction committed (marker >=
checkpoint id) and produces it again only if not.  Fencing: the transactional
id is ``<prefix>-<subtask>`` (prefix per job and sink, default
``streamjob-<job id>-<uid>``); every new attempt's ``init_transactions`` fences
zombie producers of the same id by epoch and aborts what they left open, and
a restore initialises the ids of every former subtask (rescaling down
included) before it checks their markers.

Transaction timeout rule: ``transaction.timeout.ms`` (default here 15 min)
must exceed the time a transaction stays open, which with this scheme is the
time one commit takes to produce one checkpoint's records; the broker's
``transaction.max.timeout.ms`` must allow it.  Records become visible to
``read_committed`` readers when their checkpoint completes, as in Flink.  The
cost: a checkpoint holds the sink's records of one checkpoint interval.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import confluent_kafka as ck

from streamjob_runtime import logs
from streamjob_runtime.operators import source

log = logging.getLogger(__name__)

Format = Literal["bytes", "str", "json"]
StartingOffsets = Literal["earliest", "latest", "committed"] | int | dict[tuple[str, int], int]
StoppingOffsets = Literal["latest"] | int | dict[tuple[str, int], int] | None
DeliveryGuarantee = Literal["none", "at-least-once", "exactly-once"]

# A split index: topic position in ``topics`` times this, plus the partition.
_PARTITIONS_PER_TOPIC = 1 << 16
_LIBRDKAFKA_TIMEOUT_S = 30.0


def _decoder(fmt: Format | Callable[[bytes], Any]) -> Callable[[bytes | None], Any]:
    if callable(fmt):
        user = fmt
        return lambda b: None if b is None else user(b)
    if fmt == "bytes":
        return lambda b: b
    if fmt == "str":
        return lambda b: None if b is None else b.decode()
    if fmt == "json":
        return lambda b: None if b is None else json.loads(b)
    raise ValueError(f"kafka: unknown format {fmt!r}; use 'bytes', 'str', 'json' or a function")


def _encoder(fmt: Format | Callable[[Any], bytes]) -> Callable[[Any], bytes | None]:
    if callable(fmt):
        user = fmt
        return lambda v: None if v is None else user(v)
    if fmt == "bytes":
        return lambda v: v
    if fmt == "str":
        return lambda v: None if v is None else str(v).encode()
    if fmt == "json":
        return lambda v: None if v is None else json.dumps(v, separators=(",", ":")).encode()
    raise ValueError(f"kafka: unknown format {fmt!r}; use 'bytes', 'str', 'json' or a function")


@dataclass(frozen=True)
class KafkaRecord:
    """A consumed record (``as_record=True``): decoded key and value, timestamp in ms."""

    topic: str
    partition: int
    offset: int
    timestamp: int
    key: Any
    value: Any
    headers: list[tuple[str, bytes]] = field(default_factory=list)


def _known(offset: int | None) -> int:
    assert offset is not None, "offsets are resolved when a split is added"
    return offset


def record_timestamp(record: KafkaRecord) -> int:
    """Timestamp assigner for event time from Kafka record timestamps (``as_record=True``)."""
    return record.timestamp


@dataclass
class KafkaPartitionSplit:
    """One partition: ``offset`` is the next one to read (None: the source's starting offsets).

    ``stop_offset`` (bounded mode) is exclusive; None reads forever, -1 means
    "the end offset when first assigned", resolved by the reader.
    """

    index: int
    topic: str
    partition: int
    offset: int | None
    stop_offset: int | None = None


class KafkaSourceReader(source.SourceReader):
    def __init__(self, spec: KafkaSource, subtask_index: int, parallelism: int) -> None:
        self.spec = spec
        self.subtask_index = subtask_index
        self.parallelism = parallelism
        config = {
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "isolation.level": "read_committed",
            "group.id": spec.group_id or "streamjob-unused",
            **spec.properties,
            "bootstrap.servers": spec.bootstrap_servers,
        }
        self.consumer = ck.Consumer(config)
        self.splits: dict[int, KafkaPartitionSplit] = {}
        self._finished: list[int] = []  # finished, not yet reported
        self._taken: dict[int, list[ck.TopicPartition]] = {}  # checkpoint -> offsets
        self._next_discovery = time.monotonic() + (spec.partition_discovery_interval_s or 0)
        self._error_logged = 0.0
        self._decode_key = _decoder(spec.key_format)
        self._decode_value = _decoder(spec.value_format)

    def add_splits(self, splits: list[Any]) -> None:
        fresh = [
            KafkaPartitionSplit(s.index, s.topic, s.partition, s.offset, s.stop_offset)
            for s in splits
        ]
        self._resolve(fresh, self.spec.starting_offsets)
        assign = []
        for s in fresh:
            if s.stop_offset is not None and s.offset is not None and s.offset >= s.stop_offset:
                self._finished.append(s.index)
                continue
            self.splits[s.index] = s
            assign.append(ck.TopicPartition(s.topic, s.partition, _known(s.offset)))
        if assign:
            self.consumer.incremental_assign(assign)

    def _resolve(self, splits: list[KafkaPartitionSplit], starting: StartingOffsets) -> None:
        """Concrete start (and stop) offsets for splits without one, so snapshots hold numbers."""
        consumer, timeout = self.consumer, _LIBRDKAFKA_TIMEOUT_S
        todo = [s for s in splits if s.offset is None]
        if todo:
            tps = [ck.TopicPartition(s.topic, s.partition) for s in todo]
            if starting == "committed":
                committed = consumer.committed(tps, timeout=timeout)
                for s, tp in zip(todo, committed, strict=True):
                    s.offset = tp.offset if tp.offset >= 0 else self._low(s)
            elif isinstance(starting, int) and not isinstance(starting, bool):
                at = consumer.offsets_for_times(
                    [ck.TopicPartition(s.topic, s.partition, starting) for s in todo],
                    timeout=timeout,
                )
                for s, tp in zip(todo, at, strict=True):
                    s.offset = tp.offset if tp.offset >= 0 else self._high(s)
            elif isinstance(starting, dict):
                for s in todo:
                    explicit = starting.get((s.topic, s.partition))
                    s.offset = self._low(s) if explicit is None else explicit
            elif starting == "latest":
                for s in todo:
                    s.offset = self._high(s)
            else:
                for s in todo:
                    s.offset = self._low(s)
        stopping = self.spec.stopping_offsets
        for s in splits:
            if s.stop_offset is not None and s.stop_offset >= 0:
                continue
            if stopping is None:
                s.stop_offset = None
            elif stopping == "latest":
                s.stop_offset = self._high(s)
            elif isinstance(stopping, dict):
                s.stop_offset = stopping.get((s.topic, s.partition), self._high(s))
            else:
                [tp] = consumer.offsets_for_times(
                    [ck.TopicPartition(s.topic, s.partition, stopping)], timeout=timeout
                )
                s.stop_offset = tp.offset if tp.offset >= 0 else self._high(s)

    def _low(self, s: KafkaPartitionSplit) -> int:
        low, _ = self.consumer.get_watermark_offsets(
            ck.TopicPartition(s.topic, s.partition), timeout=_LIBRDKAFKA_TIMEOUT_S
        )
        return int(low)

    def _high(self, s: KafkaPartitionSplit) -> int:
        _, high = self.consumer.get_watermark_offsets(
            ck.TopicPartition(s.topic, s.partition), timeout=_LIBRDKAFKA_TIMEOUT_S
        )
        return int(high)

    def poll(self, max_records: int) -> list[source.SplitRecords] | None:
        if self.spec.partition_discovery_interval_s and time.monotonic() >= self._next_discovery:
            self._discover()
        out: dict[int, source.SplitRecords] = {}
        if self.splits:
            messages = self.consumer.consume(max_records, timeout=0)
            for m in messages:
                self._read(m, out)
            if self.spec.stopping_offsets is not None:
                self._check_stops(out)
        for index in self._finished:
            out.setdefault(index, source.SplitRecords(index, [])).finished = True
        self._finished = []
        if not out and not self.splits and self.spec.stopping_offsets is not None:
            return None
        return list(out.values())

    def _read(self, m: ck.Message, out: dict[int, source.SplitRecords]) -> None:
        error = m.error()
        if error is not None:
            if error.fatal():
                raise RuntimeError(f"kafka source: fatal consumer error {error}")
            now = time.monotonic()
            if now - self._error_logged > 10:  # broker outages: librdkafka retries
                self._error_logged = now
                logs.event(log, "kafka_source_error", logging.WARNING, error=str(error))
            return
        topic, partition, offset = m.topic(), m.partition(), m.offset()
        assert topic is not None
        assert partition is not None
        assert offset is not None
        index = self.spec.split_index(topic, partition)
        split = self.splits.get(index)
        if split is None or offset < (split.offset or 0):
            return  # a partition just unassigned, or a stale fetch
        if split.stop_offset is not None and offset >= split.stop_offset:
            return
        split.offset = offset + 1
        key, value = self._decode_key(m.key()), self._decode_value(m.value())
        if self.spec.as_record:
            _kind, ts = m.timestamp()
            raw = m.headers() or []
            pairs = raw.items() if isinstance(raw, dict) else raw
            headers = [(str(h), v.encode() if isinstance(v, str) else v or b"") for h, v in pairs]
            value = KafkaRecord(topic, partition, offset, ts, key, value, headers)
        part = out.get(index)
        if part is None:
            part = out[index] = source.SplitRecords(index, [])
        part.values.append(value)

    def _check_stops(self, out: dict[int, source.SplitRecords]) -> None:
        live = list(self.splits.values())
        # The position passes transaction markers, which are never delivered as records.
        positions = self.consumer.position([ck.TopicPartition(s.topic, s.partition) for s in live])
        done = []
        for s, tp in zip(live, positions, strict=True):
            assert s.stop_offset is not None
            position = max(s.offset or 0, tp.offset)
            if position >= s.stop_offset:
                s.offset = s.stop_offset
                done.append(s)
        for s in done:
            del self.splits[s.index]
            out.setdefault(s.index, source.SplitRecords(s.index, [])).finished = True
        if done:
            self.consumer.incremental_unassign(
                [ck.TopicPartition(s.topic, s.partition) for s in done]
            )

    def _discover(self) -> None:
        """Assign partitions of this subtask that no split covers yet (they start at earliest)."""
        interval = self.spec.partition_discovery_interval_s or 0
        self._next_discovery = time.monotonic() + interval
        try:
            found = self.spec.partitions(self.consumer)
        except ck.KafkaException as e:
            logs.event(log, "kafka_partition_discovery_failed", logging.WARNING, error=str(e))
            return
        new = [
            KafkaPartitionSplit(index, topic, partition, None)
            for index, topic, partition in found
            if index % self.parallelism == self.subtask_index and index not in self.splits
        ]
        if new:
            logs.event(log, "kafka_partitions_discovered", partitions=len(new))
            self._resolve(new, "earliest")
            for s in new:
                self.splits[s.index] = s
            self.consumer.incremental_assign(
                [ck.TopicPartition(s.topic, s.partition, _known(s.offset)) for s in new]
            )

    def snapshot(self) -> list[Any]:
        return [
            KafkaPartitionSplit(s.index, s.topic, s.partition, s.offset, s.stop_offset)
            for s in self.splits.values()
        ]

    def snapshot_state(self, checkpoint_id: int) -> list[Any]:
        splits = self.snapshot()
        if self.spec.commit_offsets_on_checkpoint and self.spec.group_id:
            self._taken[checkpoint_id] = [
                ck.TopicPartition(s.topic, s.partition, s.offset)
                for s in splits
                if s.offset is not None
            ]
        return splits

    def notify_checkpoint_complete(self, checkpoint_id: int) -> None:
        offsets = self._taken.pop(checkpoint_id, None)
        for older in [c for c in self._taken if c < checkpoint_id]:
            del self._taken[older]
        if offsets:
            try:
                self.consumer.commit(offsets=offsets, asynchronous=True)
            except ck.KafkaException as e:  # monitoring only: never fails the job
                logs.event(log, "kafka_offset_commit_failed", logging.WARNING, error=str(e))

    def backoff_s(self) -> float:
        return 0.005

    def close(self) -> None:
        self.consumer.close()


class KafkaSource(source.Source):
    """Reads topics (one split per partition) with offsets in checkpoints.

    ``starting_offsets``: ``"earliest"`` (default), ``"latest"``,
    ``"committed"`` (the group's offsets, earliest where none), a timestamp in
    ms (the first offset at or after it), or ``{(topic, partition): offset}``
    (earliest for partitions not named).  They apply to a fresh start only; a
    restore resumes at the checkpoint's offsets, and partitions found later
    start at earliest.  ``stopping_offsets`` makes the source bounded:
    ``"latest"``, a timestamp in ms, or ``{(topic, partition): offset}``
    (exclusive); partition discovery is off then.  Records are the decoded
    values, or :class:`KafkaRecord` with ``as_record=True`` (key, headers,
    timestamp; use :func:`record_timestamp` as the watermark strategy's
    timestamp assigner).  ``topics`` keep their order across restores (the
    split index is the topic's position times 65536 plus the partition).
    ``properties`` go to the librdkafka consumer (e.g. ``security.protocol``,
    ``sasl.*``); ``isolation.level`` defaults to ``read_committed``.
    """

    def __init__(
        self,
        bootstrap_servers: str,
        topics: str | list[str],
        *,
        group_id: str | None = None,
        starting_offsets: StartingOffsets = "earliest",
        stopping_offsets: StoppingOffsets = None,
        value_format: Format | Callable[[bytes], Any] = "bytes",
        key_format: Format | Callable[[bytes], Any] = "bytes",
        as_record: bool = False,
        partition_discovery_interval_s: float | None = 10.0,
        commit_offsets_on_checkpoint: bool = True,
        properties: dict[str, Any] | None = None,
    ) -> None:
        if not bootstrap_servers:
            raise ValueError("kafka source: bootstrap_servers is empty; give host:port[,...]")
        self.bootstrap_servers = bootstrap_servers
        self.topics = [topics] if isinstance(topics, str) else list(topics)
        if not self.topics:
            raise ValueError("kafka source: no topics given")
        if starting_offsets == "committed" and not group_id:
            raise ValueError("kafka source: starting_offsets='committed' needs a group_id")
        self.group_id = group_id
        self.starting_offsets = starting_offsets
        self.stopping_offsets = stopping_offsets
        self.value_format = value_format
        self.key_format = key_format
        _decoder(value_format), _decoder(key_format)  # bad formats fail at job build
        self.as_record = as_record
        bounded = stopping_offsets is not None
        self.partition_discovery_interval_s = None if bounded else partition_discovery_interval_s
        self.commit_offsets_on_checkpoint = commit_offsets_on_checkpoint
        self.properties = dict(properties or {})

    def split_index(self, topic: str, partition: int) -> int:
        return self.topics.index(topic) * _PARTITIONS_PER_TOPIC + partition

    def partitions(self, client: ck.Consumer | ck.Producer) -> list[tuple[int, str, int]]:
        """(split index, topic, partition) of every existing partition of the topics."""
        found = []
        for topic in self.topics:
            meta = client.list_topics(topic, timeout=_LIBRDKAFKA_TIMEOUT_S).topics.get(topic)
            if meta is None or meta.error is not None:
                continue  # not created yet: discovery picks it up later
            for partition in sorted(meta.partitions):
                found.append((self.split_index(topic, partition), topic, partition))
        return found

    def create_splits(self, parallelism: int) -> list[Any]:
        consumer = ck.Consumer(
            {**self.properties, "bootstrap.servers": self.bootstrap_servers, "group.id": "-"}
        )
        try:
            return [KafkaPartitionSplit(i, t, p, None) for i, t, p in self.partitions(consumer)]
        finally:
            consumer.close()

    def create_reader(self, subtask_index: int, parallelism: int) -> source.SourceReader:
        return KafkaSourceReader(self, subtask_index, parallelism)
