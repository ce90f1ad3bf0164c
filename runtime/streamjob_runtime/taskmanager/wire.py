"""The wire format of stream elements between TaskManagers (one data frame each).

A frame's payload starts with a one-byte tag, then the element pickled with
protocol 5, so every record decodes to an equal value of the same type (named
tuples, enums, dataclasses included).  The tag says what the pickle holds:
``B`` a record batch ``("b", values, timestamps)``, ``P`` any other element.
A receiving TaskManager queues a ``B`` payload undecoded, as the element
``("s", payload)`` (:func:`receive`), and the task decodes it just before it
processes the records (:func:`decode_batch`): see that function for why.
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
BATCH = b"B"

# Record types whose batches pickle faster without a memo: nothing in them recurs
# from record to record the way a class reference or a dict's key strings do.
_MEMO_FREE = frozenset((tuple, int, str, float, bytes, bool))


def encode(element: Element) -> bytes:
    """``element`` as a tagged payload that :func:`decode` turns back into an equal element."""
    if element[0] == "b":
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
    raise ValueError(f"unknown codec tag {tag!r} on a data connection")


def receive(payload: bytes) -> Element:
    """What a data connection puts in its input channel for ``payload``: a record batch
    stays encoded, as ``("s", payload)``; any other element is decoded.

    ``ValueError`` for an unknown tag (the batch's pickle itself is read only later,
    by :func:`decode_batch`).
    """
    tag = payload[:1]
    if tag == BATCH:
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
    element = decode(payload)
    if element[0] != "b":
        raise ValueError(f"a batch frame held the element kind {element[0]!r}")
    return element[1], element[2]


def stored(payload: bytes) -> bytes:
    """The channel-state form (:func:`channelstate.encode_element`) of the batch in
    ``payload``: the pickle after the tag, a standard protocol-5 pickle of
    ``("b", values, timestamps)``, so a capture stores it without decoding it."""
    return bytes(memoryview(payload)[1:])
