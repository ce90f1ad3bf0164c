"""The exactly-once file sink's writer for ``s3://`` directories: multipart two-phase commit.

Records of one checkpoint are buffered in memory; at the barrier (pre-commit)
they become a multipart upload of the final object, all parts uploaded, and
the upload id and part ETags go into the checkpoint.  When the checkpoint
completes, the upload is completed: the object appears whole, atomically.  A
restore completes the restored checkpoint's uploads (once: an upload already
completed is recognised by its object existing) and aborts this job's uploads
of earlier attempts that no checkpoint kept.  Names are the local sink's
(``part-<uid>-<job>-<subtask>-a<attempt>-c<checkpoint>.jsonl``).

Not guaranteed: a checkpoint's output per subtask is held in memory until its
barrier; the upload runs in the synchronous phase of the checkpoint (as the
local sink's fsync does); uploads left by a job that ended are not aborted
(an S3 lifecycle rule for incomplete multipart uploads removes them).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from streamjob_runtime import logs
from streamjob_runtime.operators import base, sink
from streamjob_runtime.state import objectstore

log = logging.getLogger(__name__)

_ATTEMPT = re.compile(r"-a(\d+)-c\d+\.jsonl$")


@dataclass(frozen=True)
class MultipartCommittable:
    location: str  # s3://bucket/key of the final object
    upload_id: str
    parts: tuple[tuple[int, str], ...]


class S3FileSinkWriter(sink.SinkWriter):
    def __init__(
        self,
        directory: objectstore.ObjectPath,
        encode: Callable[[Any], bytes],
        ctx: base.OperatorContext,
    ) -> None:
        self.directory = directory
        self.encode = encode
        self.ctx = ctx
        self._buffer: list[bytes] = []
        self._prefix = f"part-{ctx.uid}-{ctx.job_id[:8]}-"

    def write(self, values: list[Any]) -> None:
        encode = self.encode
        self._buffer.append(b"".join([encode(v) + b"\n" for v in values]))

    def prepare_commit(self, checkpoint_id: int) -> list[Any]:
        if not self._buffer:
            return []
        data = b"".join(self._buffer)
        self._buffer = []
        ctx = self.ctx
        final = self.directory / (
            f"{self._prefix}{ctx.subtask_index}-a{ctx.attempt}-c{checkpoint_id}.jsonl"
        )
        upload_id = objectstore.start_upload(final)
        parts = objectstore.upload_parts(final, upload_id, data)
        return [MultipartCommittable(str(final), upload_id, tuple(parts))]

    def commit(self, committables: list[Any]) -> None:
        for c in committables:
            final = objectstore.ObjectPath.parse(c.location, self.directory.options)
            try:
                objectstore.complete_upload(final, c.upload_id, list(c.parts))
            except OSError as e:
                # Completed before (a restore repeating a commit): the object is there.
                if not objectstore.exists(final):
                    # A restart restores the same committable and fails the same way.
                    raise base.UnrecoverableError(
                        f"file sink: the upload of {final} can no longer be completed ({e})"
                        " and the object was never committed; were the bucket's incomplete"
                        " uploads deleted by a lifecycle rule shorter than the job's downtime?"
                    ) from e

    def discard_staged(self, keep: list[Any], restored_job_id: str | None) -> None:
        """Abort this job's uploads of earlier attempts that no restored checkpoint keeps.

        Only subtask 0 does it, after every subtask committed its share of ``keep``.
        """
        if self.ctx.subtask_index != 0:
            return
        kept = {c.upload_id for c in keep if isinstance(c, MultipartCommittable)}
        for path, upload_id in objectstore.pending_uploads(self.directory, self._prefix):
            m = _ATTEMPT.search(path.name)
            if upload_id in kept or m is None or int(m.group(1)) >= self.ctx.attempt:
                continue
            objectstore.abort_upload(path, upload_id)
            logs.event(log, "file_sink_upload_aborted", uid=self.ctx.uid, object=str(path))

    def close(self) -> None:
        # Never pre-committed, so no checkpoint refers to it: a restore replays its records.
        self._buffer = []
