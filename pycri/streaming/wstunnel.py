"""SPDY tunnelled through WebSocket (subprotocol `SPDY/3.1+portforward.k8s.io`, what kubectl >= 1.31 tries first
for port-forward): binary messages carry the raw SPDY byte stream, with no channel byte. This adapter gives
SpdyConnection the reader/writer pair it expects."""

from __future__ import annotations

import asyncio

from wsproto.connection import Connection, ConnectionState, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Ping, TextMessage

from pycri import log

_log = log.get("streaming.websocket")

PROTOCOL = "SPDY/3.1+portforward.k8s.io"


class WsTunnel:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, initial: bytes = b"",
                 peer: str = "") -> None:
        self._reader = reader
        self._writer = writer
        self._ws = Connection(ConnectionType.SERVER)
        self._pending = initial
        self._buf = bytearray()
        self._eof = False
        self.peer = peer

    async def read(self, n: int = -1) -> bytes:
        while not self._buf and not self._eof:
            data = self._pending or await self._reader.read(65536)
            self._pending = b""
            if not data:
                self._eof = True
                break
            self._ws.receive_data(data)
            self._events()
        if n < 0 or n >= len(self._buf):
            out, self._buf = bytes(self._buf), bytearray()
        else:
            out, self._buf = bytes(self._buf[:n]), self._buf[n:]
        return out

    def _events(self) -> None:
        for ev in self._ws.events():
            if isinstance(ev, BytesMessage):
                self._buf += ev.data
            elif isinstance(ev, Ping):
                self._writer.write(self._ws.send(ev.response()))
            elif isinstance(ev, TextMessage):
                _log.warning("text message in a SPDY tunnel, closing", peer=self.peer)
                self._writer.write(self._ws.send(CloseConnection(code=1003, reason="binary messages only")))
                self._eof = True
            elif isinstance(ev, CloseConnection):
                if self._ws.state == ConnectionState.OPEN:  # a frame wsproto could not parse
                    _log.warning("websocket protocol error in SPDY tunnel", peer=self.peer, reason=ev.reason)
                    self._writer.write(self._ws.send(CloseConnection(code=ev.code, reason=ev.reason)))
                elif self._ws.state == ConnectionState.REMOTE_CLOSING:
                    self._writer.write(self._ws.send(ev.response()))
                self._eof = True

    # the StreamWriter subset SpdyConnection uses
    def write(self, data: bytes) -> None:
        if self._ws.state == ConnectionState.OPEN:
            self._writer.write(self._ws.send(BytesMessage(data=data)))

    async def drain(self) -> None:
        await self._writer.drain()

    def is_closing(self) -> bool:
        return self._writer.is_closing() or self._ws.state != ConnectionState.OPEN

    def can_write_eof(self) -> bool:
        return False

    def close(self) -> None:
        if self._ws.state == ConnectionState.OPEN and not self._writer.is_closing():
            self._writer.write(self._ws.send(CloseConnection(code=1000)))
        self._writer.close()
