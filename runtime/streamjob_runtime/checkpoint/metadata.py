"""The ``_metadata`` file: what a completed checkpoint or savepoint contains.

It is JSON (readable with any tool), carries a format version and a CRC of its
body, and names every state file with its size, so a truncated or edited
checkpoint is detected before a restore uses it.
"""

from __future__ import annotations

import zlib

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
    storage.write_atomically(directory / storage.METADATA, encode(meta))


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
            f = directory / h.file
            try:
                size = storage.size(f)
            except FileNotFoundError:
                raise CorruptCheckpointError(f"state file {f} named in {path} is missing") from None
            if size != h.size:
                raise CorruptCheckpointError(
                    f"state file {f} has {size} bytes, {path} says {h.size}"
                )
    return meta
