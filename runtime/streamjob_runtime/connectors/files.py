"""File connectors: a line source replayable by byte offset and an exactly-once sink.

The sink writes each checkpoint's records to a hidden staged file
(``.staging/...inprogress``), fsyncs it at the barrier, and renames it to a
visible ``part-*`` file when the checkpoint completes.  Readers of the
directory see only committed ``part-*`` files.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import msgspec

from streamjob_runtime.operators import base, sink, source
from streamjob_runtime.state import storage


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

    def poll(self, max_records: int) -> list[Any] | None:
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
                return lines
            self._file.close()
            self._file = None
            self.splits.pop(0)
        return None

    def snapshot(self) -> list[Any]:
        return [FileSplit(s.index, s.path, s.offset) for s in self.splits]

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class FileSource(source.Source):
    """Lines of one or more text files; each file is a split (bounded)."""

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
    """Staged files live in ``.staging/<uid>/<job>-<attempt>-<subtask>-<txn>.inprogress``."""

    def __init__(
        self, directory: Path, encode: Callable[[Any], bytes], ctx: base.OperatorContext
    ) -> None:
        self.directory = directory
        self.staging = directory / ".staging" / ctx.uid
        if not self.staging.is_dir():
            self.staging.mkdir(parents=True, exist_ok=True)
            # Staged files must survive a power loss once pre-committed: so must their
            # directories' entries.
            storage.fsync_directory(directory.parent)
            storage.fsync_directory(directory)
            storage.fsync_directory(directory / ".staging")
        self.encode = encode
        self.ctx = ctx
        self._file: IO[bytes] | None = None
        self._name = ""
        self._txn = 0

    def _open(self) -> IO[bytes]:
        if self._file is None:
            self._txn += 1
            ctx = self.ctx
            self._name = f"{ctx.job_id}-{ctx.attempt}-{ctx.subtask_index}-{self._txn}.inprogress"
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
        return [Committable(f".staging/{ctx.uid}/{self._name}", final)]

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
        """Delete staged files of earlier attempts (or of the restored job) not in ``keep``.

        Only subtask 0 does it, after every subtask has committed its share of
        ``keep`` in ``initialize_state``; files of the current attempt are
        never touched.
        """
        if self.ctx.subtask_index != 0:
            return
        kept = {Path(c.staged).name for c in keep}
        for entry in self.staging.iterdir():
            if entry.name in kept or not entry.name.endswith(".inprogress"):
                continue
            job, attempt = entry.name.split("-")[:2]
            stale = (job == self.ctx.job_id and int(attempt) < self.ctx.attempt) or (
                job == restored_job_id and job != self.ctx.job_id
            )
            if stale:
                with contextlib.suppress(FileNotFoundError):
                    entry.unlink()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class FileSink(sink.Sink):
    """Exactly-once file sink: one JSON line per record (or ``encoder(record)``)."""

    def __init__(self, directory: str, encoder: Callable[[Any], str] | None = None) -> None:
        self.directory = Path(directory)
        self.encoder = encoder

    def create_writer(self, ctx: base.OperatorContext) -> sink.SinkWriter:
        self.directory.mkdir(parents=True, exist_ok=True)
        enc = self.encoder
        encode: Callable[[Any], bytes] = _json_line if enc is None else (lambda v: enc(v).encode())
        return FileSinkWriter(self.directory, encode, ctx)


def read_committed_lines(directory: str) -> list[str]:
    """Every committed line of a file sink directory (what a downstream reader sees)."""
    lines: list[str] = []
    root = Path(directory)
    if not root.is_dir():
        return lines
    for part in sorted(root.glob("part-*")):
        lines.extend(part.read_text().splitlines())
    return lines
