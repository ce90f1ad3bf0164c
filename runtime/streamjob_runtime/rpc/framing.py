"""Length-prefixed frames over asyncio streams.

A frame is a 4-byte big-endian length followed by the payload.  Control
messages are msgpack-encoded :mod:`messages`; data frames carry pickled record
batches.
"""

from __future__ import annotations

import asyncio
import struct

_HEADER = struct.Struct(">I")
MAX_FRAME = 1 << 30


class FrameError(ConnectionError):
    pass


async def read_frame(reader: asyncio.StreamReader) -> bytes:
    header = await reader.readexactly(_HEADER.size)
    (size,) = _HEADER.unpack(header)
    if size > MAX_FRAME:
        raise FrameError(f"frame of {size} bytes exceeds the {MAX_FRAME} byte limit")
    return await reader.readexactly(size)


def frame(payload: bytes) -> bytes:
    return _HEADER.pack(len(payload)) + payload


def write_frame(writer: asyncio.StreamWriter, payload: bytes) -> None:
    writer.write(_HEADER.pack(len(payload)))
    writer.write(payload)
