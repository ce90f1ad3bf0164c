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
a restore initialises the id of every former subtask (every checkpoint names
each subtask's id, with an empty committable when it had no records; rescaling
down included) before it checks their markers.  Not covered: ids of subtasks
of a parallelism the restored checkpoint never had (a job scaled up after
that checkpoint, then restored from it) may keep an open transaction until
its timeout.

Transaction timeout rule: ``transaction.timeout.ms`` (default here 15 min)
must exceed the time a transaction stays open, which with this scheme is the
time one commit takes to produce one checkpoint's records (Flink's rule,
"above the longest checkpoint interval plus recovery", applies to schemes
that keep a transaction open across a checkpoint; it is met here by far);
the brokers' ``transaction.max.timeout.ms`` must allow it.  Records become visible to
``read_committed`` readers when their checkpoint completes, as in Flink.  The
cost: a checkpoint holds the sink's records of one checkpoint interval.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import confluent_kafka as ck
import msgspec

from streamjob_runtime import logs
from streamjob_runtime.operators import base, sink, source

log = logging.getLogger(__name__)

Format = Literal["bytes", "str", "json"]
StartingOffsets = Literal["earliest", "latest", "committed"] | int | dict[tuple[str, int], int]
StoppingOffsets = Literal["latest"] | int | dict[tuple[str, int], int] | None
DeliveryGuarantee = Literal["none", "at-least-once", "exactly-once"]

# A split index: topic position in ``topics`` times this, plus the partition.
_PARTITIONS_PER_TOPIC = 1 << 16
_LIBRDKAFKA_TIMEOUT_S = 30.0
_DISCOVERY_TIMEOUT_S = 10.0


def _decoder(fmt: Format | Callable[[bytes], Any]) -> Callable[[bytes | None], Any]:
    if callable(fmt):
        user = fmt
        return lambda b: None if b is None else user(b)
    if fmt == "bytes":
        return lambda b: b
    if fmt == "str":
        return lambda b: None if b is None else b.decode()
    if fmt == "json":
        decode = msgspec.json.decode
        return lambda b: None if b is None else decode(b)
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
        encode = msgspec.json.Encoder().encode
        return lambda v: None if v is None else encode(v)
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

    A partition found by discovery starts at ``OFFSET_BEGINNING`` (-2, the
    earliest offset still in the log) until its first record.

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
            # A restored offset the log no longer has (retention, a recreated topic): read
            # what it has rather than skip to its end (librdkafka's default), as Flink.
            "auto.offset.reset": "earliest",
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
        self._discovery: threading.Thread | None = None
        self._found: list[tuple[int, str, int]] | None = None  # set by the discovery thread
        self._decode_key = _decoder(spec.key_format)
        self._topic_base = {t: i * _PARTITIONS_PER_TOPIC for i, t in enumerate(spec.topics)}
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
        found, self._found = self._found, None
        if found is not None:
            self._assign_discovered(found)
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
        index = self._topic_base[topic] + partition
        split = self.splits.get(index)
        if split is None:
            return  # a partition just unassigned
        # No check against split.offset: after an out-of-range reset offsets go back.
        if split.stop_offset is not None and offset >= split.stop_offset:
            return
        split.offset = offset + 1
        value = self._decode_value(m.value())
        if self.spec.as_record:
            key = self._decode_key(m.key())
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
        """Start a metadata request in a thread (a poll never waits for the broker)."""
        interval = self.spec.partition_discovery_interval_s or 0
        self._next_discovery = time.monotonic() + interval
        if self._discovery is not None and self._discovery.is_alive():
            return
        self._discovery = threading.Thread(
            target=self._list_partitions, name="kafka-partition-discovery", daemon=True
        )
        self._discovery.start()

    def _list_partitions(self) -> None:
        try:
            self._found = self.spec.partitions(self.consumer, timeout_s=_DISCOVERY_TIMEOUT_S)
        except ck.KafkaException as e:
            logs.event(log, "kafka_partition_discovery_failed", logging.WARNING, error=str(e))

    def _assign_discovered(self, found: list[tuple[int, str, int]]) -> None:
        """Assign partitions of this subtask that no split covers yet, from the earliest offset."""
        new = [
            KafkaPartitionSplit(index, topic, partition, ck.OFFSET_BEGINNING)
            for index, topic, partition in found
            if index % self.parallelism == self.subtask_index and index not in self.splits
        ]
        if new:
            logs.event(log, "kafka_partitions_discovered", partitions=len(new))
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
                if s.offset is not None and s.offset >= 0
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
        if self._discovery is not None:
            self._discovery.join()
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

    def partitions(
        self, client: ck.Consumer, timeout_s: float = _LIBRDKAFKA_TIMEOUT_S
    ) -> list[tuple[int, str, int]]:
        """(split index, topic, partition) of every existing partition of the topics."""
        found = []
        for topic in self.topics:
            meta = client.list_topics(topic, timeout=timeout_s).topics.get(topic)
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
            found = self.partitions(consumer)
        finally:
            consumer.close()
        if self.stopping_offsets is not None:
            missing = sorted(set(self.topics) - {t for _, t, _ in found})
            if missing:
                # A bounded source does not discover: it would finish at once, reading nothing.
                raise RuntimeError(
                    f"kafka source: topics {missing} do not exist at {self.bootstrap_servers};"
                    " a bounded source reads the partitions that exist when it starts:"
                    " create the topics first"
                )
        return [KafkaPartitionSplit(i, t, p, None) for i, t, p in found]

    def create_reader(self, subtask_index: int, parallelism: int) -> source.SourceReader:
        return KafkaSourceReader(self, subtask_index, parallelism)


@dataclass(frozen=True)
class KafkaCommittable:
    """One checkpoint's records of one sink subtask, committed in one transaction of its id."""

    transactional_id: str
    checkpoint_id: int
    records: list[tuple[str, bytes | None, bytes | None]]  # (topic, key, value)


class _DeliveryErrors:
    """Collects asynchronous delivery failures so a flush can raise them."""

    def __init__(self) -> None:
        self.first: ck.KafkaError | None = None

    def __call__(self, error: ck.KafkaError | None, _message: ck.Message) -> None:
        if error is not None and self.first is None:
            self.first = error

    def raise_first(self) -> None:
        if self.first is not None:
            error, self.first = self.first, None
            raise RuntimeError(f"kafka sink: a record was not delivered: {error}")


class KafkaSinkWriter(sink.SinkWriter):
    def __init__(self, spec: KafkaSink, ctx: base.OperatorContext) -> None:
        self.spec = spec
        self.ctx = ctx
        self.errors = _DeliveryErrors()
        self.transactional = spec.delivery_guarantee == "exactly-once"
        self.transactional_id = f"{spec.prefix(ctx)}-{ctx.subtask_index}"
        self.buffer: list[tuple[str, bytes | None, bytes | None]] = []
        self._markers: dict[str, int] = {}  # transactional id -> last committed checkpoint
        if self.transactional:
            # Fences zombies of this id (earlier attempts) and aborts what they left open.
            self.producer = spec.transactional_producer(self.transactional_id)
        else:
            self.producer = ck.Producer(spec.producer_config())
        self._encode_key = _encoder(spec.key_format)
        self._encode_value = _encoder(spec.value_format)

    def _encode(self, value: Any) -> tuple[str, bytes | None, bytes | None]:
        spec = self.spec
        topic = spec.topic if isinstance(spec.topic, str) else spec.topic(value)
        key = None if spec.key_selector is None else self._encode_key(spec.key_selector(value))
        payload = value if spec.value_selector is None else spec.value_selector(value)
        return topic, key, self._encode_value(payload)

    def write(self, values: list[Any]) -> None:
        encode = self._encode
        if self.transactional:
            self.buffer.extend(map(encode, values))
            return
        for value in values:
            topic, key, payload = encode(value)
            _produce(self.producer, topic, key, payload, self.errors)
        self.producer.poll(0)
        self.errors.raise_first()

    def prepare_commit(self, checkpoint_id: int) -> list[Any]:
        if self.transactional:
            # Also when empty: every checkpoint then names every subtask's transactional
            # id, so a restore (at any parallelism) fences each of them.
            records, self.buffer = self.buffer, []
            return [KafkaCommittable(self.transactional_id, checkpoint_id, records)]
        if self.spec.delivery_guarantee == "at-least-once":
            remaining = self.producer.flush(self.spec.flush_timeout_s)
            self.errors.raise_first()
            if remaining:
                raise RuntimeError(
                    f"kafka sink: {remaining} records not acknowledged within"
                    f" {self.spec.flush_timeout_s} s at checkpoint {checkpoint_id};"
                    " the checkpoint fails (is the cluster reachable?)"
                )
        return []

    def commit(self, committables: list[Any]) -> None:
        """Commit each committable's transaction unless its commit marker says it was."""
        by_id: dict[str, list[KafkaCommittable]] = {}
        for c in committables:
            by_id.setdefault(c.transactional_id, []).append(c)
        for tid, mine in by_id.items():
            if tid == self.transactional_id:
                if any(c.records for c in mine):
                    self._commit_with(self.producer, tid, mine)
                continue
            # A former subtask's (restore, rescaled): its id fences that subtask's zombies.
            producer = self.spec.transactional_producer(tid)
            try:
                self._commit_with(producer, tid, mine)
            finally:
                producer.flush(0)

    def _commit_with(self, producer: ck.Producer, tid: str, mine: list[KafkaCommittable]) -> None:
        spec, timeout = self.spec, self.spec.flush_timeout_s
        group = ck.Consumer(spec.marker_consumer_config(tid))
        try:
            done = self._markers.get(tid)
            if done is None:
                [tp] = group.committed([ck.TopicPartition(spec.marker_topic, 0)], timeout=timeout)
                done = self._markers[tid] = tp.offset  # -1001 when none
                # With the commits below, what a check of exactly-once needs to tell a broker
                # that served an old marker from a commit made twice.
                logs.event(
                    log,
                    "kafka_commit_marker_read",
                    logging.DEBUG,
                    transactional_id=tid,
                    committed=done,
                )
            for c in sorted(mine, key=lambda c: c.checkpoint_id):
                if c.checkpoint_id <= done or not c.records:
                    continue  # committed before a failure: producing it again would duplicate
                producer.begin_transaction()
                try:
                    headers = self._stamp(tid, c.checkpoint_id)
                    for topic, key, value in c.records:
                        _produce(producer, topic, key, value, self.errors, headers)
                    marker = ck.TopicPartition(spec.marker_topic, 0, c.checkpoint_id)
                    producer.send_offsets_to_transaction(
                        [marker], group.consumer_group_metadata(), timeout
                    )
                    producer.commit_transaction(timeout)
                except BaseException:
                    with contextlib.suppress(ck.KafkaException):
                        producer.abort_transaction(timeout)
                    raise
                self.errors.raise_first()
                done = self._markers[tid] = c.checkpoint_id
                logs.event(
                    log,
                    "kafka_transaction_committed",
                    logging.DEBUG,
                    transactional_id=tid,
                    checkpoint_id=c.checkpoint_id,
                )
        finally:
            group.close()

    def _stamp(self, tid: str, checkpoint_id: int) -> list[tuple[str, str | bytes | None]] | None:
        name = self.spec.transaction_header
        if name is None:
            return None
        return [(name, f"{tid}:{checkpoint_id}:{self.ctx.attempt}".encode())]

    def close(self) -> None:
        if not self.transactional:
            # none / at-least-once: deliver what is buffered (end of a bounded job).
            self.producer.flush(self.spec.flush_timeout_s)
        # exactly-once: buffered records belong to no checkpoint; a restore replays them.


def _produce(
    producer: ck.Producer,
    topic: str,
    key: bytes | None,
    value: bytes | None,
    errors: _DeliveryErrors,
    headers: list[tuple[str, str | bytes | None]] | None = None,
) -> None:
    while True:
        try:
            producer.produce(topic, value, key, on_delivery=errors, headers=headers)
            return
        except BufferError:  # the local queue is full: let librdkafka send
            producer.poll(0.05)


class KafkaSink(sink.Sink):
    """Writes records to Kafka with ``delivery_guarantee`` none, at-least-once or exactly-once.

    ``topic``: a name, or a function of the record (exactly-once then needs
    ``commit_marker_topic``, an existing topic whose partition 0 carries the
    commit markers' offsets).  ``key_selector`` / ``value_selector`` pick the
    key (None: no key, librdkafka spreads the records) and the value from a
    record; ``key_format`` / ``value_format`` encode them (``bytes``, ``str``,
    ``json`` or a function to bytes).  ``transactional_id_prefix`` (default
    ``streamjob-<job id>-<uid>``) must be unique per job and sink in the
    cluster; ``transaction_timeout_ms`` must be at most the broker's
    ``transaction.max.timeout.ms`` and exceed the time one commit takes.
    ``properties`` go to the librdkafka producer (e.g. ``security.protocol``,
    ``sasl.*``).  ``transaction_header`` (exactly-once): a header of that name
    on every record, ``<transactional id>:<checkpoint id>:<attempt>``, for
    lineage (and for tests on brokers that do not hide aborted records: the
    committed copy of a transaction is the one of the highest attempt).  See
    the module docstring for the exactly-once protocol.
    """

    def __init__(
        self,
        bootstrap_servers: str,
        topic: str | Callable[[Any], str],
        *,
        delivery_guarantee: DeliveryGuarantee = "at-least-once",
        key_selector: Callable[[Any], Any] | None = None,
        value_selector: Callable[[Any], Any] | None = None,
        key_format: Format | Callable[[Any], bytes] = "str",
        value_format: Format | Callable[[Any], bytes] = "json",
        transactional_id_prefix: str | None = None,
        commit_marker_topic: str | None = None,
        transaction_timeout_ms: int = 900_000,
        flush_timeout_s: float = 60.0,
        transaction_header: str | None = None,
        properties: dict[str, Any] | None = None,
    ) -> None:
        if not bootstrap_servers:
            raise ValueError("kafka sink: bootstrap_servers is empty; give host:port[,...]")
        if delivery_guarantee not in ("none", "at-least-once", "exactly-once"):
            raise ValueError(
                f"kafka sink: delivery_guarantee {delivery_guarantee!r} is not one of"
                " 'none', 'at-least-once', 'exactly-once'"
            )
        marker = commit_marker_topic or (topic if isinstance(topic, str) else None)
        if delivery_guarantee == "exactly-once" and marker is None:
            raise ValueError(
                "kafka sink: exactly-once with a topic function needs commit_marker_topic"
                " (an existing topic; its partition 0 carries the commit markers)"
            )
        _encoder(key_format), _encoder(value_format)  # bad formats fail at job build
        self.bootstrap_servers = bootstrap_servers
        self.topic = topic
        self.delivery_guarantee = delivery_guarantee
        self.key_selector = key_selector
        self.value_selector = value_selector
        self.key_format = key_format
        self.value_format = value_format
        self.transactional_id_prefix = transactional_id_prefix
        self.marker_topic = marker or ""
        self.transaction_timeout_ms = transaction_timeout_ms
        self.flush_timeout_s = flush_timeout_s
        self.transaction_header = transaction_header
        self.properties = dict(properties or {})

    def prefix(self, ctx: base.OperatorContext) -> str:
        return self.transactional_id_prefix or f"streamjob-{ctx.job_id}-{ctx.uid}"

    def producer_config(self) -> dict[str, Any]:
        config: dict[str, Any] = {"linger.ms": 5, **self.properties}
        config["bootstrap.servers"] = self.bootstrap_servers
        if self.delivery_guarantee != "none":
            config.setdefault("enable.idempotence", True)
        return config

    def transactional_producer(self, transactional_id: str) -> ck.Producer:
        """A producer of ``transactional_id``, initialised: older producers of the id are fenced."""
        producer = ck.Producer(
            {
                **self.producer_config(),
                "transactional.id": transactional_id,
                "transaction.timeout.ms": self.transaction_timeout_ms,
            }
        )
        producer.init_transactions(self.flush_timeout_s)
        return producer

    def marker_consumer_config(self, transactional_id: str) -> dict[str, Any]:
        return {
            **self.properties,
            "bootstrap.servers": self.bootstrap_servers,
            "group.id": f"{transactional_id}-commits",
            "enable.auto.commit": False,
        }

    def create_writer(self, ctx: base.OperatorContext) -> sink.SinkWriter:
        return KafkaSinkWriter(self, ctx)
