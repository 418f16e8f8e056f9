"""Frames of a streaming connection (interactive exec, attach): 1 byte channel, 4 bytes big-endian length,
payload. Shared by the monitor and the client."""
from __future__ import annotations

import struct

CH_STDIN, CH_STDOUT, CH_STDERR, CH_EXIT, CH_RESIZE, CH_CLOSE_STDIN = range(6)
HEADER = struct.Struct(">BI")
MAX_PAYLOAD = 1 << 20


def frame(channel: int, payload: bytes) -> bytes:
    return HEADER.pack(channel, len(payload)) + payload


def split(buf: bytes) -> tuple[list[tuple[int, bytes]], bytes]:
    """Complete frames at the start of buf, and the rest. Raises ValueError on an oversized frame."""
    out = []
    while len(buf) >= HEADER.size:
        channel, size = HEADER.unpack_from(buf)
        if size > MAX_PAYLOAD:
            raise ValueError(f"frame of {size} bytes is too large")
        if len(buf) < HEADER.size + size:
            break
        out.append((channel, buf[HEADER.size:HEADER.size + size]))
        buf = buf[HEADER.size + size:]
    return out, buf
