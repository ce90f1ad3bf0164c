"""File connectors: a line source replayable by byte offset and an exactly-once sink.

The sink writes each checkpoint's records to a hidden staged file
(``.staging/<uid>/<job id>/...inprogress``), fsyncs it at the barrier, and renames it to a
visible ``part-*`` file when the checkpoint completes.  Readers of the
directory see only committed ``part-*`` files.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import msgspec

from streamjob_runtime import config, logs
from streamjob_runtime.connectors import s3files
from streamjob_runtime.operators import base, sink, source
from streamjob_runtime.state import objectstore, storage

log = logging.getLogger(__name__)


@dataclass
class FileSplit:
    index: int
    path: str
    offset: int


class FileReader(source.SourceReader):
    def __init__(self) -> None:
        self.splits: list[FileSplit] = []
        self._file: IO[bytes] | None = None

    def add_splits(self, splits: list[Any]) -> None:
        self.splits.extend(FileSplit(s.index, s.path, s.offset) for s in splits)

    def poll(self, max_records: int) -> list[source.SplitRecords] | None:
        finished: list[source.SplitRecords] = []
        while self.splits:
            split = self.splits[0]
            if self._file is None:
                self._file = open(split.path, "rb")  # noqa: SIM115 - kept open across polls
                self._file.seek(split.offset)
            lines = []
            for _ in range(max_records):
                line = self._file.readline()
                if not line:
                    break
                lines.append(line.rstrip(b"\r\n").decode())
            split.offset = self._file.tell()
            if lines:
                return [*finished, source.SplitRecords(split.index, lines)]
            self._file.close()
            self._file = None
            self.splits.pop(0)
            finished.append(source.SplitRecords(split.index, [], finished=True))
        return finished or None

    def snapshot(self) -> list[Any]:
        return [FileSplit(s.index, s.path, s.offset) for s in self.splits]

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class FileSource(source.Source):
    """Lines of one or more text files; each file is a split (bounded).

    A subtask reads its files one after the other; every file not yet finished
    holds its watermark back, so with event time the watermark waits for the
    last file (records are never late for being in a later file).
    """

    def __init__(self, paths: str | list[str]) -> None:
        self.paths = [paths] if isinstance(paths, str) else list(paths)
        for p in self.paths:
            if not os.path.isfile(p):
                raise FileNotFoundError(f"file source: {p} is not a readable file")

    def create_splits(self, parallelism: int) -> list[Any]:
        return [FileSplit(i, os.path.abspath(p), 0) for i, p in enumerate(self.paths)]

    def create_reader(self, subtask_index: int, parallelism: int) -> source.SourceReader:
        return FileReader()


_json = msgspec.json.Encoder()


def _json_line(value: Any) -> bytes:
    return _json.encode(value)


@dataclass(frozen=True)
class Committable:
    staged: str  # path relative to the sink directory
    final: str


class FileSinkWriter(sink.SinkWriter):
    """Staged files live in ``.staging/<uid>/<job id>/<attempt>-<subtask>-<txn>.inprogress``.

    The staging directory of a job belongs to that job alone: a job restored
    from another job's checkpoint or savepoint commits the restored
    committables (wherever they are staged) but never deletes another job's
    staged files, because that job may still be running (a fork: a savepoint
    without cancel, then ``run -s`` into the same directory).  Files a job that
    ended left staged stay in its directory and are reported at the restore.
    """

    def __init__(
        self, directory: Path, encode: Callable[[Any], bytes], ctx: base.OperatorContext
    ) -> None:
        self.directory = directory
        self.staging = directory / ".staging" / ctx.uid / ctx.job_id
        if not self.staging.is_dir():
            self.staging.mkdir(parents=True, exist_ok=True)
            # Staged files must survive a power loss once pre-committed: so must their
            # directories' entries, up to the sink directory's own.
            storage.fsync_directory(directory.parent)
            storage.fsync_directory(directory)
            storage.fsync_directory(directory / ".staging")
            storage.fsync_directory(self.staging.parent)
        self.encode = encode
        self.ctx = ctx
        self._file: IO[bytes] | None = None
        self._name = ""
        self._txn = 0

    def _open(self) -> IO[bytes]:
        if self._file is None:
            self._txn += 1
            ctx = self.ctx
            self._name = f"{ctx.attempt}-{ctx.subtask_index}-{self._txn}.inprogress"
            self._file = open(self.staging / self._name, "wb")  # noqa: SIM115
        return self._file

    def write(self, values: list[Any]) -> None:
        encode = self.encode
        self._open().write(b"".join([encode(v) + b"\n" for v in values]))

    def prepare_commit(self, checkpoint_id: int) -> list[Any]:
        if self._file is None:
            return []
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        self._file = None
        # The new file's name in .staging/<uid>: without it the fsynced data is unreachable
        # after a power loss, and the acknowledged pre-commit is lost.
        storage.fsync_directory(self.staging)
        ctx = self.ctx
        final = (
            f"part-{ctx.uid}-{ctx.job_id[:8]}-{ctx.subtask_index}-a{ctx.attempt}"
            f"-c{checkpoint_id}.jsonl"
        )
        staged = self.staging.relative_to(self.directory) / self._name
        return [Committable(staged.as_posix(), final)]

    def commit(self, committables: list[Any]) -> None:
        for c in committables:
            staged, final = self.directory / c.staged, self.directory / c.final
            try:
                os.replace(staged, final)
            except FileNotFoundError:
                if not final.exists():
                    # A restart restores the same committable and fails the same way.
                    raise base.UnrecoverableError(
                        f"file sink: staged file {staged} is gone and {final} was never"
                        " committed; the sink directory was modified outside the job"
                    ) from None
        if committables:
            storage.fsync_directory(self.directory)

    def discard_staged(self, keep: list[Any], restored_job_id: str | None) -> None:
        """Delete this job's staged files of earlier attempts that are not in ``keep``.

        Only subtask 0 does it, after every subtask has committed its share of
        ``keep`` in ``initialize_state``; files of the current attempt and
        files of other jobs (the restored one included) are never touched.
        """
        if self.ctx.subtask_index != 0:
            return
        kept = {c.staged for c in keep}
        prefix = self.staging.relative_to(self.directory).as_posix()
        for entry in self.staging.iterdir():
            if f"{prefix}/{entry.name}" in kept or not entry.name.endswith(".inprogress"):
                continue
            attempt = entry.name.partition("-")[0]
            if attempt.isdigit() and int(attempt) < self.ctx.attempt:
                with contextlib.suppress(FileNotFoundError):
                    entry.unlink()
        if restored_job_id is not None and restored_job_id != self.ctx.job_id:
            self._report_left_by(restored_job_id, kept)

    def _report_left_by(self, job_id: str, kept: set[str]) -> None:
        other = self.staging.parent / job_id
        if not other.is_dir():
            return
        prefix = other.relative_to(self.directory).as_posix()
        left = [e for e in other.iterdir() if f"{prefix}/{e.name}" not in kept]
        if left:
            logs.event(
                log,
                "file_sink_staged_files_of_restored_job_kept",
                logging.WARNING,
                uid=self.ctx.uid,
                directory=str(other),
                files=len(left),
                hint=f"job {job_id} may still be running; delete {other} once it has ended",
            )

    def close(self) -> None:
        if self._file is not None:
            # Never pre-committed, so no checkpoint refers to it: a restore replays its records.
            self._file.close()
            self._file = None
            with contextlib.suppress(FileNotFoundError):
                (self.staging / self._name).unlink()


class FileSink(sink.Sink):
    """Exactly-once file sink: one JSON line per record (or ``encoder(record)``)."""

    def __init__(self, directory: str, encoder: Callable[[Any], str] | None = None) -> None:
        # A path, file://..., or s3://bucket/prefix (multipart two-phase commit).
        self.location = storage.location(directory)
        self.encoder = encoder

    @property
    def directory(self) -> Path:
        if not isinstance(self.location, Path):
            raise TypeError(f"{self.location} is not a local directory")
        return self.location

    def create_writer(self, ctx: base.OperatorContext) -> sink.SinkWriter:
        enc = self.encoder
        encode: Callable[[Any], bytes] = _json_line if enc is None else (lambda v: enc(v).encode())
        if isinstance(self.location, objectstore.ObjectPath):
            # Reached with the job's s3.* options (the sink is built before they are known).
            return s3files.S3FileSinkWriter(self.location.with_options(ctx.s3), encode, ctx)
        self.directory.mkdir(parents=True, exist_ok=True)
        return FileSinkWriter(self.directory, encode, ctx)


def read_committed_lines(directory: str, s3: config.S3Config | None = None) -> list[str]:
    """Every committed line of a file sink directory (what a downstream reader sees)."""
    lines: list[str] = []
    location = storage.location(directory, s3)
    if isinstance(location, objectstore.ObjectPath):
        for name in sorted(n for n in storage.names(location) if n.startswith("part-")):
            lines.extend(storage.read_bytes(location / name).decode().splitlines())
        return lines
    root = Path(directory)
    if not root.is_dir():
        return lines
    for part in sorted(root.glob("part-*")):
        lines.extend(part.read_text().splitlines())
    return lines
