"""The wire format of stream elements between TaskManagers (one data frame each).

A frame's payload starts with a one-byte tag that says how the rest encodes
the element; every record decodes to an equal value of the same type:

* ``T`` a record batch ``("b", values, timestamps)`` of plain data, in the
  plain format below (when the C extension ``_plainbatch`` is built);
* ``B`` any other record batch, pickled with protocol 5 (named tuples, enums,
  dataclasses included);
* ``P`` any other element (watermark, barrier, end of input), pickled.

The plain format (``T``): a record is plain when it is an exact ``int`` that
fits 64 bits, ``float``, ``str``, ``bytes``, ``bool``, ``None``, or an exact
``tuple`` of plain values nested at most 32 deep; a batch is plain when all its
records are and its timestamps (if any) are such ints.  Varints are unsigned
LEB128, signed ints zigzag-coded varints::

    batch  = varint(count) flags:u8 [timestamps: count x signed] count x value
    value  = 0x01 signed | 0x02 float64-le | 0x03 varint(n) utf-8[n]
           | 0x04 varint(n) bytes[n] | 0x05 (None) | 0x06 (True) | 0x07 (False)
           | 0x08 varint(n) n x value                      (a tuple)

``flags`` is 1 when timestamps follow.  The C codec encodes a batch of
``(int, int)`` records about 3x faster than pickle and decodes it a little
faster (11 against 32 and 40 against 46 ns per record, measured here; decoding
is mostly creating the objects, as for pickle), checking each field's exact
type as it writes (the check alone cost more than pickle in Python: see below);
a batch that is not plain is pickled as ``B``.  A TaskManager without the
extension sends ``B`` and still reads ``T`` (:func:`_decode_plain`, in Python).

A receiving TaskManager queues a ``B`` or ``T`` payload undecoded, as the element
``("s", payload)`` (:func:`receive`), and the task decodes it just before it
processes the records (:func:`decode_batch`): see that function for why.
A batch whose first record is a plain tuple or scalar is pickled without a
memo (:mod:`streamjob_runtime.state.serialization`): for ``(int, int)``
records that halves encoding and trims decoding.  Other batches keep the memo,
which writes a class, or a dict key string that every record repeats, once
per batch instead of once per record.

Why not msgpack (msgspec) for plain data, from Python: it encodes a batch of tuples of ints
about 4x faster than pickle and decodes it no faster, but proving a batch is
plain (exact ``int``/``str``/... and exact ``tuple``, or msgpack silently turns
an ``IntEnum`` into an ``int`` and a nested tuple into a list) costs a pass
over every field of every record, which made encode + check slower than pickle
alone (512 records of ``(int, int)``: 53 us against 29 us; 512 ints: 10 against
5 us; measured in this repository).  The C codec checks types while it writes.

Decoding pickle runs code named by the payload: the data port accepts only
peers of the job's certificate authority (mutual TLS), see
:mod:`streamjob_runtime.security`.  The plain format runs no code; its
decoders check every length and tag against the payload and raise
``ValueError`` for anything malformed.
"""

from __future__ import annotations

import pickle
import struct
from typing import Any

from streamjob_runtime import native
from streamjob_runtime.state import serialization

Element = tuple[Any, ...]

PICKLE = b"P"
BATCH = b"B"
PLAIN = b"T"
# The _plainbatch.c format version this module reads and writes.
PLAIN_VERSION = 1
PLAIN_MAX_DEPTH = 32


_native = native.load("streamjob_runtime.taskmanager._plainbatch", PLAIN_VERSION)

# Record types whose batches pickle faster without a memo: nothing in them recurs
# from record to record the way a class reference or a dict's key strings do.
_MEMO_FREE = frozenset((tuple, int, str, float, bytes, bool))


def encode(element: Element) -> bytes:
    """``element`` as a tagged payload that :func:`decode` turns back into an equal element."""
    if element[0] == "b":
        if _native is not None and type(element[1]) is list:
            plain: bytes | None = _native.encode(element[1], element[2])
            if plain is not None:
                return PLAIN + plain
        if element[1] and type(element[1][0]) in _MEMO_FREE:
            return BATCH + serialization.dumps(element)
        return BATCH + pickle.dumps(element, protocol=5)
    return PICKLE + pickle.dumps(element, protocol=5)


def decode(payload: bytes) -> Element:
    """The element of a payload from :func:`encode`; ``ValueError`` for an unknown tag."""
    tag = payload[:1]
    if tag in (BATCH, PICKLE):
        element: Element = pickle.loads(memoryview(payload)[1:])
        return element
    if tag == PLAIN:
        values, timestamps = decode_plain(payload)
        return ("b", values, timestamps)
    raise ValueError(f"unknown codec tag {tag!r} on a data connection")


def decode_plain(payload: bytes) -> tuple[list[Any], list[int] | None]:
    """The records and timestamps of a ``T`` payload; ``ValueError`` when it is malformed."""
    if _native is not None:
        result: tuple[list[Any], list[int] | None] = _native.decode(payload, 1)
        return result
    return _decode_plain(payload, 1)


def _decode_plain(payload: bytes, start: int) -> tuple[list[Any], list[int] | None]:
    """:func:`decode_plain` in Python, for a TaskManager without the C extension."""
    view = memoryview(payload)
    end = len(view)
    pos = start

    def varint() -> int:
        nonlocal pos
        value = shift = 0
        while shift < 64:
            if pos >= end:
                raise ValueError("corrupt plain batch: truncated varint")
            byte = view[pos]
            pos += 1
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return value & 0xFFFFFFFFFFFFFFFF
            shift += 7
        raise ValueError("corrupt plain batch: varint too long")

    def signed() -> int:
        u = varint()
        return (u >> 1) ^ -(u & 1)

    def value(depth: int) -> Any:
        nonlocal pos
        if pos >= end:
            raise ValueError("corrupt plain batch: truncated")
        tag = view[pos]
        pos += 1
        if tag == 1:
            return signed()
        if tag == 8:
            if depth >= PLAIN_MAX_DEPTH:
                raise ValueError("corrupt plain batch: nested too deep")
            n = varint()
            if n > end - pos:
                raise ValueError("corrupt plain batch: bad tuple")
            return tuple([value(depth + 1) for _ in range(n)])
        if tag in (3, 4):
            n = varint()
            if n > end - pos:
                raise ValueError("corrupt plain batch: bad length")
            raw = bytes(view[pos : pos + n])
            pos += n
            return raw.decode() if tag == 3 else raw
        if tag == 2:
            if end - pos < 8:
                raise ValueError("corrupt plain batch: bad float")
            (f,) = struct.unpack_from("<d", view, pos)
            pos += 8
            return f
        if tag in (5, 6, 7):
            return (None, True, False)[tag - 5]
        raise ValueError("corrupt plain batch: unknown value tag")

    count = varint()
    if pos >= end or count > end - pos:
        raise ValueError("corrupt plain batch: bad count")
    flags = view[pos]
    pos += 1
    if flags > 1:
        raise ValueError("corrupt plain batch: unknown flags")
    timestamps = [signed() for _ in range(count)] if flags else None
    values = [value(0) for _ in range(count)]
    if pos != end:
        raise ValueError("corrupt plain batch: bytes after the last record")
    return values, timestamps


def receive(payload: bytes) -> Element:
    """What a data connection puts in its input channel for ``payload``: a record batch
    stays encoded, as ``("s", payload)``; any other element is decoded.

    ``ValueError`` for an unknown tag (the batch's pickle itself is read only later,
    by :func:`decode_batch`).
    """
    tag = payload[:1]
    if tag in (BATCH, PLAIN):
        return ("s", payload)
    return decode(payload)


def decode_batch(payload: bytes) -> tuple[list[Any], list[int] | None]:
    """The records and timestamps of a ``("s", payload)`` element from :func:`receive`.

    Why batches are decoded by the task and not on arrival: a queued batch stays
    compact (about 7 bytes per ``(int, int)`` record instead of some 90 bytes of
    objects), an unaligned checkpoint stores it as it is (:func:`stored`), and
    the records are created just before the operator reads them and freed just
    after, so fewer of them are alive at once.
    """
    if payload[:1] == PLAIN:
        return decode_plain(payload)
    element = decode(payload)
    if element[0] != "b":
        raise ValueError(f"a batch frame held the element kind {element[0]!r}")
    return element[1], element[2]


def stored(payload: bytes) -> bytes:
    """The channel-state form (:func:`channelstate.encode_element`) of the batch in
    ``payload``: a standard protocol-5 pickle of ``("b", values, timestamps)``.  For a
    ``B`` payload that is the pickle after the tag, stored without decoding it; a
    ``T`` payload is decoded and pickled (only while an unaligned checkpoint records)."""
    if payload[:1] == PLAIN:
        return serialization.dumps(("b", *decode_plain(payload)))
    return bytes(memoryview(payload)[1:])
