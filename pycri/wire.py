"""Responses put together from serialized messages (protobuf's wire format), for the read path: a record keeps
its messages serialized (pycri/pods/messages.py, pycri/containers/messages.py), and a List or Status answer is
those bytes behind their field keys, not a message tree built and serialized again per call.

A handler may return such bytes instead of a message: the method table's serializers pass bytes through
(pycri/server/rpc.py). Two serialized messages of one type concatenated parse as one with both sets of fields,
which is how `message_field` parts and a small serialized message combine.
"""

from __future__ import annotations

_LEN = 2  # wire type of a length-delimited field (messages, strings, bytes)


def number(message_cls, field: str) -> int:
    """The number of a field, from the generated descriptor (so the code names fields, as the proto does)."""
    return message_cls.DESCRIPTOR.fields_by_name[field].number


def varint(n: int) -> bytes:
    """n (>= 0) as a base-128 varint."""
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def message_field(number: int, payload: bytes) -> bytes:
    """One occurrence of message field `number` holding the serialized message `payload`."""
    return varint(number << 3 | _LEN) + varint(len(payload)) + payload


def repeated_field(number: int, payloads) -> bytes:
    """A repeated message field `number`, one occurrence per serialized message, in order."""
    key = varint(number << 3 | _LEN)
    return b"".join(key + varint(len(p)) + p for p in payloads)
