"""Kafka brokers for tests: librdkafka's mock cluster (in process) and Tansu (a process).

The mock cluster lives as long as the client that created it
(``test.mock.num.brokers``); its brokers are in that client's metadata.  It
auto-creates topics with 4 partitions on first produce and does not implement
CreateTopics or transactions' isolation.  Tansu is a Kafka-protocol broker
(``scripts/tools.sh`` fetches it into ``.tools/bin``): topics, groups,
transactions with transactional offsets and producer fencing work;
``read_committed`` does not hide aborted records.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from pathlib import Path

import confluent_kafka as ck
import pytest
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from tests.ports import free_port

ROOT = Path(__file__).resolve().parent.parent
TANSU = ROOT / ".tools" / "bin" / "tansu"


@dataclass
class MockCluster:
    owner: ck.Producer
    bootstrap_servers: str

    def produce(self, topic: str, values: list[tuple[int, bytes, int]]) -> None:
        """``(partition, value, timestamp ms)`` each, key ``b"k<partition>"``."""
        producer = ck.Producer({"bootstrap.servers": self.bootstrap_servers})
        for partition, value, ts in values:
            producer.produce(
                topic, value, key=b"k%d" % partition, partition=partition, timestamp=ts
            )
        assert producer.flush(30) == 0


@pytest.fixture
def mock_cluster() -> Iterator[MockCluster]:
    owner = ck.Producer({"test.mock.num.brokers": 3, "log_level": 3})
    brokers = owner.list_topics(timeout=30).brokers.values()
    yield MockCluster(owner, ",".join(f"{b.host}:{b.port}" for b in brokers))
    owner.flush(5)


def tansu_binary() -> Path | None:
    found = TANSU if TANSU.is_file() else None
    if found is None and shutil.which("tansu"):
        found = Path(str(shutil.which("tansu")))
    return found


@dataclass
class Tansu:
    process: subprocess.Popen[bytes]
    bootstrap_servers: str
    listen_port: int

    def create_topic(self, name: str, partitions: int) -> None:
        client = AdminClient({"bootstrap.servers": self.bootstrap_servers})
        for future in client.create_topics([NewTopic(name, partitions, 1)]).values():
            future.result(timeout=30)


def start_tansu(tmp_path: Path, advertised_port: int | None = None) -> Generator[Tansu]:
    """A fresh Tansu on a free port (advertising ``advertised_port``, e.g. a proxy's)."""
    binary = tansu_binary()
    if binary is None:
        if os.environ.get("STREAMJOB_REQUIRE_TOOLS"):
            pytest.fail("tansu is missing from .tools/bin: run scripts/tools.sh")
        pytest.skip("tansu is missing (run scripts/tools.sh to fetch it into .tools/bin)")
    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    advertised = f"tcp://127.0.0.1:{advertised_port or port}"
    log = (tmp_path / "tansu.log").open("wb")
    process = subprocess.Popen(
        [
            *(str(binary), "broker", "--listener-url", url),
            *("--advertised-listener-url", advertised, "--storage-engine", "memory://tansu/"),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"tansu did not start: see {tmp_path / 'tansu.log'}") from None
            time.sleep(0.05)
    try:
        yield Tansu(process, f"127.0.0.1:{advertised_port or port}", port)
    finally:
        process.kill()
        process.wait()
        log.close()


@pytest.fixture
def tansu(tmp_path: Path) -> Iterator[Tansu]:
    yield from start_tansu(tmp_path)


class Outage:
    """A TCP proxy in front of a broker that can cut every connection and refuse new ones.

    Tansu advertises the proxy's address, so all client traffic (metadata
    included) goes through it: ``down()`` is a broker outage as clients see it.
    """

    def __init__(self) -> None:
        self.target_port = 0  # set once the broker behind it listens
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.port = int(self.listener.getsockname()[1])
        self.up = True
        self.sockets: list[socket.socket] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if not self.up:
                client.close()
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                client.close()
                continue
            with self.lock:
                self.sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, target: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                target.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, target):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def down(self) -> None:
        self.up = False
        with self.lock:
            sockets, self.sockets = self.sockets, []
        for s in sockets:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def restore(self) -> None:
        self.up = True

    def close(self) -> None:
        self.down()
        self.listener.close()


def create_topics(t: Tansu) -> None:
    """The topics of ``tests/jobs/kafka_count.py``: ``in`` (4 partitions) and ``out`` (3)."""
    t.create_topic("in", 4)
    t.create_topic("out", 3)


def produce_input(
    t: Tansu, events: int, keys: int, per_second: float | None = None
) -> threading.Thread:
    """Write the input of ``kafka_count``: record ``i`` is ``[i % keys, i]`` on partition
    ``i % 4`` (``per_second``: at that pace, so the job keeps waiting for more and
    checkpoints complete all along; None: all at once, returning when written); the
    thread that does it, started. Its exact output: ``keyed_sum.expected(events, keys)``."""

    def produce() -> None:
        producer = ck.Producer({"bootstrap.servers": t.bootstrap_servers, "linger.ms": 5})
        started = time.monotonic()
        for i in range(events):
            producer.produce("in", json.dumps([i % keys, i]).encode(), partition=i % 4)
            if per_second is not None and i % 200 == 0:
                producer.poll(0)
                ahead = started + i / per_second - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)  # pacing the input, not waiting for a condition
        assert producer.flush(30) == 0

    thread = threading.Thread(target=produce, daemon=True)
    thread.start()
    if per_second is None:
        thread.join()
    return thread


def committed_output(
    t: Tansu, copies_seen: list[str] | None = None
) -> tuple[Counter[tuple[int, int]], int]:
    """The committed output of topic ``out`` (written with the sink's ``txn`` header), and
    how many transactions more than one attempt wrote.

    Tansu's ``read_committed`` does not hide aborted records, so this reader drops them
    the way a broker would: a transaction is committed at most once (its commit
    marker), and the copy a restore committed has a higher attempt than any aborted
    copy before it, so the highest attempt's copy of each transaction is the committed
    one. A transaction written by several attempts is thus either an aborted copy and
    its commit, or a duplicate this reader hides: callers bound their number by the
    commits their failures can have cut short. ``copies_seen``, when given, gets one line
    per such transaction: its id, checkpoint, and records per attempt (a diagnosis)."""
    consumer = ck.Consumer(
        {
            "bootstrap.servers": t.bootstrap_servers,
            "group.id": "checker",
            # Tansu's read_committed can stop for good at a committed transaction (its
            # last stable offset stays behind), and it hides no aborted records anyway.
            "isolation.level": "read_uncommitted",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    parts = consumer.list_topics("out", timeout=30).topics["out"].partitions
    # From offset 0, not OFFSET_BEGINNING: Tansu has reported a log start offset above
    # records it still serves.
    tps = [ck.TopicPartition("out", p, 0) for p in parts]

    def watermark(partition: int) -> int:
        high: int = consumer.get_watermark_offsets(
            ck.TopicPartition("out", partition), timeout=30, cached=False
        )[1]
        return high

    ends = {p: watermark(p) for p in parts}
    consumer.assign(tps)
    copies: dict[tuple[str, int], dict[int, list[tuple[int, int]]]] = {}
    deadline = time.monotonic() + 60
    idle = 0  # consecutive empty polls
    positions: list[ck.TopicPartition] = []
    while True:
        if time.monotonic() > deadline:
            raise AssertionError(
                f"the reader of 'out' did not reach its end in 60 s: positions {positions},"
                f" high watermarks {ends}"
            )
        batch = consumer.consume(1000, 0.2)
        idle = 0 if batch else idle + 1
        for m in batch:
            if m.error() is not None:
                continue
            headers = m.headers()
            assert isinstance(headers, list)
            [stamp] = [value for name, value in headers if name == "txn"]
            assert isinstance(stamp, bytes)
            tid, cid, attempt = stamp.decode().rsplit(":", 2)
            record = json.loads(m.value() or b"null")
            copies.setdefault((tid, int(cid)), {}).setdefault(int(attempt), []).append(
                (record[0], record[1])
            )
        positions = consumer.position([ck.TopicPartition("out", p) for p in parts])
        if all(tp.offset >= ends[tp.partition] for tp in positions):
            # Tansu's high watermark can lag its log end: done only once it stays put
            # and polls come back empty, or the last records would be read as missing.
            now = {p: watermark(p) for p in parts}
            if now == ends and idle >= 5:
                break
            ends = now
    consumer.close()
    out: Counter[tuple[int, int]] = Counter()
    for (name, checkpoint), by_attempt in sorted(copies.items()):
        out.update(by_attempt[max(by_attempt)])
        if copies_seen is not None and len(by_attempt) > 1:
            counts = ", ".join(f"attempt {a}: {len(r)}" for a, r in sorted(by_attempt.items()))
            copies_seen.append(f"{name} checkpoint {checkpoint} ({counts} records)")
    return out, sum(1 for by_attempt in copies.values() if len(by_attempt) > 1)
