"""Regenerate the SPDY and WebSocket seeds: `python -m tests.fuzz.corpus.make_stream_seeds`.

Each file is what a client sends right after a successful upgrade (exec of `cat` with stdin)."""

from __future__ import annotations

import os
import struct
import zlib

from wsproto import ConnectionType
from wsproto.connection import Connection
from wsproto.events import BytesMessage, CloseConnection, Ping, TextMessage

from pycri.streaming import spdy

HERE = os.path.dirname(__file__)


def ctl(ftype: int, payload: bytes, flags: int = 0, version: int = 3) -> bytes:
    return struct.pack(">HHI", 0x8000 | version, ftype, (flags << 24) | len(payload)) + payload


def spdy_seeds() -> dict[str, bytes]:
    enc = spdy.Encoder()
    streams = b"".join(enc.encode(spdy.SynStream(i, {"streamtype": [t]})) for i, t in
                       ((1, "error"), (3, "stdin"), (5, "stdout"), (7, "stderr")))
    bomb = zlib.compressobj(zdict=spdy.DICTIONARY)
    block = bomb.compress(struct.pack(">I", 1) + struct.pack(">I", 1) + b"a" + struct.pack(">I", 1 << 22)
                          + b"\0" * (1 << 22)) + bomb.flush(zlib.Z_SYNC_FLUSH)
    return {
        "bad-zlib": ctl(1, struct.pack(">IIBB", 1, 0, 0, 0) + b"\xde\xad\xbe\xef"),
        "spdy2": ctl(6, b"\0\0\0\1", version=2),
        "data-stream-0": struct.pack(">II", 0, 3) + b"abc",
        "settings-length": ctl(4, struct.pack(">I", 5) + b"\0" * 8),
        "huge-length": struct.pack(">HHI", 0x8003, 1, 0xFFFFFF),
        "zlib-bomb": ctl(1, struct.pack(">IIBB", 1, 0, 0, 0) + block),
        "session": streams + enc.encode(spdy.Data(3, b"hello\n", spdy.FLAG_FIN)) + enc.encode(spdy.Ping(1)),
        "window-zero": streams + ctl(9, struct.pack(">II", 3, 0)),
        "window-overflow": streams + ctl(9, struct.pack(">II", 5, 0x7FFFFFFF)) * 2
        + ctl(9, struct.pack(">II", 0, 0x7FFFFFFF)) * 2,
        "settings-window": ctl(4, struct.pack(">I", 1) + struct.pack(">II", 7, 0xFFFFFFFF)) + streams,
        "rst-then-data": streams + enc.encode(spdy.RstStream(3, 5)) + enc.encode(spdy.Data(3, b"late")),
        "goaway-then-syn": enc.encode(spdy.GoAway(0)) + streams,
        "duplicate-header": ctl(1, struct.pack(">IIBB", 1, 0, 0, 0) + spdy.Encoder()._block({"a": ["1"]})[:-1]),
        "unknown-control": ctl(0x7777, b"whatever") + ctl(5, b""),
        "rst-status-0": ctl(3, struct.pack(">II", 1, 0)),
    }


def ws_seeds() -> dict[str, bytes]:
    class Fresh:  # a new (open) client connection for every send: one seed's close does not end the others
        @staticmethod
        def send(event) -> bytes:
            return Connection(ConnectionType.CLIENT).send(event)
    c = Fresh()
    return {
        "unmasked": b"\x82\x05hello",
        "close-signal": c.send(BytesMessage(data=b"\x00hello")) + c.send(BytesMessage(data=b"\xff\x00")),
        "close-signal-bad": c.send(BytesMessage(data=b"\xff")) + c.send(BytesMessage(data=b"\xff\x00\x01")),
        "huge-length": b"\x82\xff" + struct.pack(">Q", 1 << 63) + b"\0\0\0\0",
        "fragmented-ping": b"\x09\x80\0\0\0\0",  # a control frame without FIN
        "reserved-bits": b"\xf2\x80\0\0\0\0",
        "bad-utf8": b"\x81\x82\0\0\0\0\xff\xfe",
        "text-on-binary": c.send(TextMessage(data="0aGVsbG8=")),
        "ping-then-close": c.send(Ping(b"x")) + c.send(CloseConnection(code=1002, reason="bye")) + b"\x82\x80\0\0\0\0",
        "many-channels": b"".join(c.send(BytesMessage(data=bytes([i]) + b"x")) for i in range(256)),
        "continuation-first": b"\x80\x80\0\0\0\0",
    }


def main() -> None:
    for kind, seeds in (("spdy", spdy_seeds()), ("websocket", ws_seeds())):
        d = os.path.join(HERE, kind)
        os.makedirs(d, exist_ok=True)
        for name, data in seeds.items():
            with open(os.path.join(d, name + ".bin"), "wb") as f:
                f.write(data)


if __name__ == "__main__":
    main()
