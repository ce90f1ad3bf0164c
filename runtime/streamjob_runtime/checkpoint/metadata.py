"""The ``_metadata`` file: what a completed checkpoint or savepoint contains.

It is JSON (readable with any tool), carries a format version and a CRC of its
body, and names every state file with its size, so a truncated or edited
checkpoint is detected before a restore uses it.
"""

from __future__ import annotations

import zlib
from pathlib import PurePosixPath

import msgspec

from streamjob_runtime.rpc import messages
from streamjob_runtime.state import storage

FORMAT_VERSION = 1


class CorruptCheckpointError(ValueError):
    """The checkpoint cannot be used; the message says why."""


class OperatorState(msgspec.Struct, frozen=True):
    parallelism: int
    max_parallelism: int
    handles: list[messages.StateHandle]


class CheckpointMetadata(msgspec.Struct, frozen=True):
    version: int
    job_id: str
    checkpoint_id: int
    timestamp: int
    kind: str  # "checkpoint" | "savepoint"
    operators: dict[str, OperatorState]

    def state_size(self) -> int:
        return sum(h.size for op in self.operators.values() for h in op.handles)


class _Envelope(msgspec.Struct, frozen=True):
    crc32: int
    body: msgspec.Raw


_body_decoder = msgspec.json.Decoder(CheckpointMetadata)
_envelope_decoder = msgspec.json.Decoder(_Envelope)


def encode(meta: CheckpointMetadata) -> bytes:
    body = msgspec.json.encode(meta)
    return msgspec.json.encode(_Envelope(zlib.crc32(body), msgspec.Raw(body))) + b"\n"


def write(directory: storage.Location, meta: CheckpointMetadata) -> None:
    """Write ``_metadata`` last, atomically and durably: the checkpoint is complete after it.

    Besides the file, the directory entries that lead to it are fsynced: the
    checkpoint's directory in its parent (``chk-N`` in the job directory, or a
    savepoint in its target) and that parent in its own (created with the first
    checkpoint), so a power loss cannot take away a checkpoint already reported
    complete.  On object storage (no directories) only the upload happens.
    """
    storage.write_atomically(directory / storage.METADATA, encode(meta))
    storage.fsync_directory(directory.parent)
    storage.fsync_directory(directory.parent.parent)


def _relative(name: str, path: storage.Location) -> str:
    """``name`` if it is a plain relative path inside the checkpoint directory.

    State files are restored by unpickling them, so a ``_metadata`` naming a file
    elsewhere (``../``, an absolute path) must not lead a restore out of the
    directory the user or the JobManager chose.  The same holds on object storage,
    where ``..`` would be a literal key but still names an object outside.
    """
    parts = PurePosixPath(name).parts
    if not name or "\\" in name or name.startswith("/") or ".." in parts or "\0" in name:
        raise CorruptCheckpointError(
            f"{path} names the state file {name!r}, which is not a relative path inside its"
            " directory; state files must lie in the checkpoint's own directory"
        )
    return name


def read(directory: storage.Location) -> CheckpointMetadata:
    """Read and verify ``directory/_metadata``; raise :class:`CorruptCheckpointError`."""
    path = directory / storage.METADATA
    try:
        raw = storage.read_bytes(path)
    except FileNotFoundError:
        raise CorruptCheckpointError(
            f"{path} is missing (the checkpoint never completed)"
        ) from None
    try:
        envelope = _envelope_decoder.decode(raw)
    except msgspec.DecodeError as e:
        raise CorruptCheckpointError(f"{path} is not valid checkpoint metadata: {e}") from None
    body = bytes(envelope.body)
    if zlib.crc32(body) != envelope.crc32:
        raise CorruptCheckpointError(f"{path} is corrupt: its checksum does not match")
    try:
        version = msgspec.json.decode(body, type=dict).get("version")
    except msgspec.DecodeError as e:
        raise CorruptCheckpointError(f"{path} is not valid checkpoint metadata: {e}") from None
    if version != FORMAT_VERSION:
        raise CorruptCheckpointError(
            f"{path} has format version {version!r}; this streamjob reads version"
            f" {FORMAT_VERSION}: restore it with the streamjob release that wrote it"
        )
    try:
        meta = _body_decoder.decode(body)
    except msgspec.ValidationError as e:
        raise CorruptCheckpointError(f"{path} is not valid checkpoint metadata: {e}") from None
    for op in meta.operators.values():
        for h in op.handles:
            f = directory / _relative(h.file, path)
            try:
                size = storage.size(f)
            except FileNotFoundError:
                raise CorruptCheckpointError(f"state file {f} named in {path} is missing") from None
            if size != h.size:
                raise CorruptCheckpointError(
                    f"state file {f} has {size} bytes, {path} says {h.size}"
                )
    return meta
