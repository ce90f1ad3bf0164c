"""Length-prefixed frames over asyncio streams.

A frame is a 4-byte big-endian length followed by the payload.  Control
messages are msgpack-encoded :mod:`messages`; data frames carry pickled record
batches.

Limits: the first frame of a connection (a registration or a data hello) may
be at most :data:`MAX_HELLO` bytes, later frames :data:`MAX_FRAME`.  A frame
over the limit is refused from its 4-byte header, before its payload is read.
Connections are mutual TLS (:mod:`streamjob_runtime.security`), so even the
first frame comes from an authenticated peer; the small first limit bounds
what an unauthenticated peer can make a process buffer when TLS is turned off
(``--insecure``).
"""

from __future__ import annotations

import asyncio
import struct

_HEADER = struct.Struct(">I")
MAX_HELLO = 64 * 1024
MAX_FRAME = 256 * 1024 * 1024


class FrameError(ConnectionError):
    pass


async def read_frame(reader: asyncio.StreamReader, max_size: int = MAX_FRAME) -> bytes:
    """The next frame's payload; :class:`FrameError` if it announces more than ``max_size``."""
    header = await reader.readexactly(_HEADER.size)
    (size,) = _HEADER.unpack(header)
    if size > max_size:
        raise FrameError(f"frame of {size} bytes exceeds the {max_size} byte limit")
    return await reader.readexactly(size)


def frame(payload: bytes) -> bytes:
    return _HEADER.pack(len(payload)) + payload


def write_frame(writer: asyncio.StreamWriter, payload: bytes) -> None:
    writer.write(_HEADER.pack(len(payload)))
    writer.write(payload)
