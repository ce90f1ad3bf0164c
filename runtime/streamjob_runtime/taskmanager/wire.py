"""The wire format of stream elements between TaskManagers (one data frame each).

A frame's payload starts with a one-byte codec tag; today there is one codec,
``P``: the element pickled with protocol 5, so every record decodes to an
equal value of the same type (named tuples, enums, dataclasses included).
A batch whose first record is a plain tuple or scalar is pickled without a
memo (:mod:`streamjob_runtime.state.serialization`): for ``(int, int)``
records that halves encoding and trims decoding.  Other batches keep the memo,
which writes a class, or a dict key string that every record repeats, once
per batch instead of once per record.

Why not msgpack (msgspec) for plain data: it encodes a batch of tuples of ints
about 4x faster than pickle and decodes it no faster, but proving a batch is
plain (exact ``int``/``str``/... and exact ``tuple``, or msgpack silently turns
an ``IntEnum`` into an ``int`` and a nested tuple into a list) costs a pass
over every field of every record, which made encode + check slower than pickle
alone (512 records of ``(int, int)``: 53 us against 29 us; 512 ints: 10 against
5 us; measured in this repository).  The tag leaves room for a codec that pays.

Decoding pickle runs code named by the payload: the data port accepts only
peers of the job's certificate authority (mutual TLS), see
:mod:`streamjob_runtime.security`.
"""

from __future__ import annotations

import pickle
from typing import Any

from streamjob_runtime.state import serialization

Element = tuple[Any, ...]

PICKLE = b"P"

# Record types whose batches pickle faster without a memo: nothing in them recurs
# from record to record the way a class reference or a dict's key strings do.
_MEMO_FREE = frozenset((tuple, int, str, float, bytes, bool))


def encode(element: Element) -> bytes:
    """``element`` as a tagged payload that :func:`decode` turns back into an equal element."""
    if element[0] == "b" and element[1] and type(element[1][0]) in _MEMO_FREE:
        return PICKLE + serialization.dumps(element)
    return PICKLE + pickle.dumps(element, protocol=5)


def decode(payload: bytes) -> Element:
    """The element of a payload from :func:`encode`; ``ValueError`` for an unknown tag."""
    if payload[:1] == PICKLE:
        element: Element = pickle.loads(memoryview(payload)[1:])
        return element
    raise ValueError(f"unknown codec tag {payload[:1]!r} on a data connection")
