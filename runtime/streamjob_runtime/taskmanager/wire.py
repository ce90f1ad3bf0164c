"""The wire format of stream elements between TaskManagers (one data frame each).

A frame's payload starts with a one-byte codec tag:

* ``M``: a record batch of plain scalars, msgpack-encoded (msgspec);
* ``T``: a record batch of plain tuples of scalars, msgpack-encoded;
* ``P``: any element, pickled with protocol 5.

"Plain" means exact types only (``int`` within 64 bits, ``float``, ``str``,
``bytes``, ``bool``, ``None``; ``tuple`` itself, not a named tuple): for these
msgpack round-trips the value to an equal one of the same type, and it is
cheaper than pickle in both directions.  The choice is made per batch from the
set of types in it (C loops, no per-record Python code); anything else, and
a batch msgpack refuses (an int over 64 bits, a str with a lone surrogate),
goes as pickle, so every element decodes to what was sent.

Decoding pickle runs code named by the payload: the data port accepts only
peers of the job's certificate authority (mutual TLS), see
:mod:`streamjob_runtime.security`.
"""

from __future__ import annotations

import pickle
from itertools import chain
from typing import Any

import msgspec

Element = tuple[Any, ...]

SCALARS = frozenset((int, float, str, bytes, bool, type(None)))
_INTS = frozenset((int,))
_TUPLE = frozenset((tuple,))

_encoder = msgspec.msgpack.Encoder()
_scalar_batch = msgspec.msgpack.Decoder(tuple[str, list[Any], list[int] | None])
_tuple_batch = msgspec.msgpack.Decoder(tuple[str, list[tuple[Any, ...]], list[int] | None])


def encode(element: Element) -> bytes:
    """``element`` as a tagged payload that :func:`decode` turns back into an equal element."""
    if element[0] == "b":
        values, timestamps = element[1], element[2]
        if timestamps is None or set(map(type, timestamps)) <= _INTS:
            kinds = set(map(type, values))
            tag = b""
            if kinds <= SCALARS:
                tag = b"M"
            elif kinds == _TUPLE and set(map(type, chain.from_iterable(values))) <= SCALARS:
                tag = b"T"
            if tag:
                try:
                    return tag + _encoder.encode(element)
                except (OverflowError, UnicodeEncodeError, TypeError, ValueError):
                    pass  # out of msgpack's range: pickle keeps it exact
    return b"P" + pickle.dumps(element, protocol=5)


def decode(payload: bytes) -> Element:
    """The element of a payload from :func:`encode`; ``ValueError`` for an unknown tag."""
    tag = payload[:1]
    body = memoryview(payload)[1:]
    if tag == b"P":
        element: Element = pickle.loads(body)
        return element
    if tag == b"M":
        return _scalar_batch.decode(body)
    if tag == b"T":
        return _tuple_batch.decode(body)
    raise ValueError(f"unknown codec tag {tag!r} on a data connection")
