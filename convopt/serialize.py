"""A protobuf message serialized piece by piece: the bytes of ``SerializeToString(deterministic=True)``, yielded
one field element at a time, so that writing a model never holds a second copy of all its weights.

Protobuf's wire format is a sequence of fields in field-number order, each ``tag`` (field number and wire type)
followed, for a length-delimited field (sub-messages, strings, bytes), by its length as a varint and its bytes.
Every element of a repeated sub-message field is its own tag + length + bytes, so a GraphProto's initializers
can be written one tensor at a time, and a ModelProto's graph field as its tag, its length (``ByteSize``) and
then the graph's own pieces (the length is summed over the pieces, made twice, because
upb's ``ByteSize`` serializes the whole message to count it).
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

_LEN = 2  # wire type of length-delimited fields


def varint(n: int) -> bytes:
    """Base-128 varint of a non-negative int (least significant group first)."""
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        out.append(low | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _sub_message(number: int, msg: Message, depth: int) -> Iterator[bytes]:
    tag = varint(number << 3 | _LEN)
    if depth < 0:
        whole = msg.SerializeToString(deterministic=True)
        yield tag + varint(len(whole)) + whole
        return
    # the length from the pieces themselves: upb's ByteSize() serializes the whole message to count it
    yield tag + varint(sum(len(piece) for piece in chunks(msg, depth)))
    yield from chunks(msg, depth)


def chunks(msg: Message, depth: int = 1) -> Iterator[bytes]:
    """Yield ``msg``'s serialized bytes in pieces; ``b"".join(chunks(msg)) == msg.SerializeToString(
    deterministic=True)``. Sub-messages are split ``depth`` levels down (1: a ModelProto's graph into its
    nodes and initializers, each serialized whole); scalar and string fields are serialized alone."""
    for fd, value in msg.ListFields():
        yield from _field(msg, fd, value, depth)


def _field(msg: Message, fd: FieldDescriptor, value: object, depth: int) -> Iterator[bytes]:
    """One field of ``msg`` in pieces, as :func:`chunks` splits it."""
    if fd.type != FieldDescriptor.TYPE_MESSAGE or fd.message_type.GetOptions().map_entry:
        yield _alone(msg, fd, value)
    elif repeated(fd):
        for element in value:  # type: ignore[attr-defined]
            yield from _sub_message(fd.number, element, depth - 1)
    else:
        yield from _sub_message(fd.number, value, depth - 1)  # type: ignore[arg-type]


def repeated(fd: FieldDescriptor) -> bool:
    """protobuf ≥ 5.28 has ``is_repeated`` (and 7 drops ``label``); older ones only ``label``."""
    flag = getattr(fd, "is_repeated", None)
    return bool(flag) if flag is not None else fd.label == FieldDescriptor.LABEL_REPEATED


def _alone(msg: Message, fd: FieldDescriptor, value: object) -> bytes:
    """One scalar or string field (or a repeated one) serialized by itself, through an empty message of the
    same type."""
    tmp = type(msg)()
    if repeated(fd):
        getattr(tmp, fd.name).extend(value)  # type: ignore[arg-type]
    else:
        setattr(tmp, fd.name, value)
    return tmp.SerializeToString(deterministic=True)


def model_chunks(model: Message, initializers: Sequence[Message]) -> Iterator[bytes]:
    """:func:`chunks` of a ModelProto whose graph holds ``initializers`` in place of its own (stand-ins for
    them, or another model's protos; serialized one at a time, never copied into it), placed after the graph's
    other fields: a parser merges a repeated field's elements wherever they stand, so ORT reads the model with
    them. Not the deterministic bytes of any one message: for handing models to ORT, not for the user's files."""
    for fd, value in model.ListFields():
        if fd.number != _GRAPH:
            yield from _field(model, fd, value, 1)
    graph = model.graph  # type: ignore[attr-defined]
    head = b"".join(piece for fd, value in graph.ListFields() if fd.number != _INITIALIZER
                    for piece in _field(graph, fd, value, 0))  # each node serialized whole
    tag = varint(_INITIALIZER << 3 | _LEN)
    size = sum(len(tag) + len(varint(n)) + n for n in (t.ByteSize() for t in initializers))
    yield varint(_GRAPH << 3 | _LEN) + varint(len(head) + size) + head
    for t in initializers:
        whole = t.SerializeToString(deterministic=True)
        yield tag + varint(len(whole)) + whole


_GRAPH, _INITIALIZER = 7, 5  # ModelProto.graph, GraphProto.initializer
