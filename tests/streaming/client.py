"""Test clients for the streaming server, written to the protocols: raw HTTP/1.1 upgrade, then SPDY/3.1 frames
(the frame codec is pycri's, checked on its own against hand-made bytes in test_spdy_frames) or WebSocket
(wsproto client side) with Kubernetes channel bytes."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import struct
from urllib.parse import urlsplit

from wsproto.connection import Connection, ConnectionState, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Message, Ping, TextMessage

from pycri.streaming import spdy

TIMEOUT = 20


class HttpResult:
    def __init__(self, status: int, headers: dict[str, list[str]], body: bytes, rest: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body
        self.rest = rest

    def header(self, name: str) -> str | None:
        v = self.headers.get(name.lower())
        return v[0] if v else None


async def http_upgrade(url: str, headers: list[tuple[str, str]], method: str = "GET"):
    """Send the request; return (reader, writer, HttpResult). A non-101 answer carries its body."""
    u = urlsplit(url)
    reader, writer = await asyncio.open_connection(u.hostname, u.port)
    target = u.path + (f"?{u.query}" if u.query else "")
    lines = [f"{method} {target} HTTP/1.1", f"Host: {u.netloc}"] + [f"{k}: {v}" for k, v in headers]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
    await writer.drain()
    buf = b""
    while b"\r\n\r\n" not in buf:
        data = await asyncio.wait_for(reader.read(65536), TIMEOUT)
        if not data:
            raise ConnectionError(f"server closed before answering: {buf!r}")
        buf += data
    head, rest = buf.split(b"\r\n\r\n", 1)
    status_line, *hlines = head.decode("latin-1").split("\r\n")
    status = int(status_line.split()[1])
    hdrs: dict[str, list[str]] = {}
    for line in hlines:
        k, v = line.split(":", 1)
        hdrs.setdefault(k.strip().lower(), []).append(v.strip())
    body = b""
    if status != 101:
        n = int(hdrs.get("content-length", ["0"])[0])
        body = rest
        while len(body) < n:
            data = await asyncio.wait_for(reader.read(65536), TIMEOUT)
            if not data:
                break
            body += data
        writer.close()
    return reader, writer, HttpResult(status, hdrs, body, rest)


class ClientStream:
    def __init__(self, sid: int) -> None:
        self.id = sid
        self.data = bytearray()
        self.fin = asyncio.Event()
        self.replied = asyncio.Event()
        self.reset_status: int | None = None
        self.send_window = 65536
        self.changed = asyncio.Event()


class SpdyClient:
    """A SPDY/3.1 client session. With flow_control it sends SETTINGS and WINDOW_UPDATEs like a compliant peer
    (and can hold them back, `auto_window=False`, to test the server's sending side)."""

    def __init__(self, reader, writer, rest: bytes, flow_control: bool = False, window: int = 65536,
                 auto_window: bool = True) -> None:
        self.reader, self.writer = reader, writer
        self.enc, self.dec = spdy.Encoder(), spdy.Decoder()
        self.dec.feed(rest)
        self.streams: dict[int, ClientStream] = {}
        self.next_id = 1
        self.frames: list[spdy.Frame] = []
        self.goaway: spdy.GoAway | None = None
        self.closed = asyncio.Event()
        self.auto_window = auto_window
        self.flow_control = flow_control
        self.window_changed = asyncio.Event()
        self.received_data = 0
        if flow_control:
            self.send(spdy.Settings({spdy.SETTINGS_INITIAL_WINDOW_SIZE: window}))
        self._task = asyncio.create_task(self._read())

    @classmethod
    async def connect(cls, url: str, protocols: list[str], **kw) -> tuple[SpdyClient | None, HttpResult]:
        headers = [("Connection", "Upgrade"), ("Upgrade", "SPDY/3.1")]
        headers += [("X-Stream-Protocol-Version", p) for p in protocols]
        reader, writer, res = await http_upgrade(url, headers)
        if res.status != 101:
            return None, res
        return cls(reader, writer, res.rest, **kw), res

    def send(self, frame: spdy.Frame) -> None:
        self.writer.write(self.enc.encode(frame))

    def send_raw(self, data: bytes) -> None:
        self.writer.write(data)

    def open(self, headers: dict[str, str], fin: bool = False) -> ClientStream:
        sid = self.next_id
        self.next_id += 2
        s = ClientStream(sid)
        self.streams[sid] = s
        self.send(spdy.SynStream(sid, {k: [v] for k, v in headers.items()}, flags=spdy.FLAG_FIN if fin else 0))
        return s

    def write(self, s: ClientStream, data: bytes, fin: bool = False) -> None:
        self.send(spdy.Data(s.id, data, spdy.FLAG_FIN if fin else 0))

    async def _read(self) -> None:
        try:
            for f in self.dec.frames():
                self._on(f)
            while data := await self.reader.read(65536):
                self.dec.feed(data)
                for f in self.dec.frames():
                    self._on(f)
        except (ConnectionError, spdy.ProtocolError):
            pass
        finally:
            self.closed.set()
            for s in self.streams.values():
                s.fin.set()
                s.changed.set()

    def _on(self, f: spdy.Frame) -> None:
        self.frames.append(f)
        if isinstance(f, spdy.Data):
            s = self.streams[f.stream_id]
            s.data += f.data
            self.received_data += len(f.data)
            if f.data and self.flow_control and self.auto_window:
                self.send(spdy.WindowUpdate(f.stream_id, len(f.data)))
                self.send(spdy.WindowUpdate(0, len(f.data)))
            if f.fin:
                s.fin.set()
            s.changed.set()
        elif isinstance(f, spdy.SynReply):
            self.streams[f.stream_id].replied.set()
        elif isinstance(f, spdy.RstStream):
            s = self.streams.get(f.stream_id)
            if s is not None:
                s.reset_status = f.status
                s.fin.set()
                s.changed.set()
        elif isinstance(f, spdy.GoAway):
            self.goaway = f
        elif isinstance(f, spdy.WindowUpdate) and f.stream_id in self.streams:
            self.streams[f.stream_id].send_window += f.delta
            self.window_changed.set()

    async def write_flow(self, s: ClientStream, data: bytes, fin: bool = False) -> None:
        """Send respecting the server's stream window (what a flow-controlling peer must do)."""
        while data:
            while s.send_window <= 0:
                self.window_changed.clear()
                await asyncio.wait_for(self.window_changed.wait(), TIMEOUT)
            n = min(len(data), s.send_window, 16384)
            self.write(s, data[:n])
            s.send_window -= n
            data = data[n:]
        if fin:
            self.write(s, b"", fin=True)

    async def read_until(self, s: ClientStream, needle: bytes, timeout: float = TIMEOUT) -> bytes:
        async def wait():
            while needle not in s.data:
                if s.fin.is_set():
                    raise AssertionError(f"stream {s.id} ended without {needle!r}: {bytes(s.data)!r}")
                s.changed.clear()
                await s.changed.wait()
            return bytes(s.data)
        return await asyncio.wait_for(wait(), timeout)

    async def read_all(self, s: ClientStream, timeout: float = TIMEOUT) -> bytes:
        await asyncio.wait_for(s.fin.wait(), timeout)
        return bytes(s.data)

    async def wait_closed(self, timeout: float = TIMEOUT) -> None:
        await asyncio.wait_for(self.closed.wait(), timeout)
        self.writer.close()

    def close(self) -> None:
        self._task.cancel()
        self.writer.close()


class WsClient:
    """A WebSocket client for the channel protocols: collects output per channel until the server closes."""

    def __init__(self, reader, writer, rest: bytes, protocol: str) -> None:
        self.reader, self.writer = reader, writer
        self.protocol = protocol
        self.base64 = "base64" in protocol
        self.ws = Connection(ConnectionType.CLIENT)
        self.channels: dict[int, bytearray] = {}
        self.messages: list[tuple[int, bytes]] = []
        self.close_code: int | None = None
        self.closed = asyncio.Event()
        self.changed = asyncio.Event()
        self._partial: list = []
        self._rest = rest
        self._task = asyncio.create_task(self._read())

    @classmethod
    async def connect(cls, url: str, protocols: list[str]) -> tuple[WsClient | None, HttpResult]:
        key = base64.b64encode(os.urandom(16)).decode()
        headers = [("Connection", "Upgrade"), ("Upgrade", "websocket"), ("Sec-WebSocket-Version", "13"),
                   ("Sec-WebSocket-Key", key)]
        if protocols:
            headers.append(("Sec-WebSocket-Protocol", ", ".join(protocols)))
        reader, writer, res = await http_upgrade(url, headers)
        if res.status != 101:
            return None, res
        from wsproto.utilities import generate_accept_token
        assert res.header("sec-websocket-accept") == generate_accept_token(key.encode()).decode()
        return cls(reader, writer, res.rest, res.header("sec-websocket-protocol") or ""), res

    async def _read(self) -> None:
        try:
            data = self._rest
            while True:
                if data:
                    self.ws.receive_data(data)
                    for ev in self.ws.events():
                        self._on(ev)
                if self.ws.state == ConnectionState.CLOSED:
                    break
                data = await self.reader.read(65536)
                if not data:
                    break
        except ConnectionError:
            pass
        finally:
            self.closed.set()
            self.changed.set()

    def _on(self, ev) -> None:
        if isinstance(ev, Message):
            self._partial.append(ev.data)
            if not ev.message_finished:
                return
            whole = b"".join(self._partial) if isinstance(ev, BytesMessage) else "".join(self._partial)
            self._partial = []
            if self.base64:
                ch, data = int(whole[0]), base64.b64decode(whole[1:])
            else:
                ch, data = whole[0], whole[1:]
            self.channels.setdefault(ch, bytearray()).extend(data)
            self.messages.append((ch, data))
            self.changed.set()
        elif isinstance(ev, Ping):
            self.writer.write(self.ws.send(ev.response()))
        elif isinstance(ev, CloseConnection):
            self.close_code = ev.code
            if self.ws.state == ConnectionState.REMOTE_CLOSING:
                self.writer.write(self.ws.send(ev.response()))

    def send(self, channel: int, data: bytes) -> None:
        if self.base64:
            self.writer.write(self.ws.send(TextMessage(data=str(channel) + base64.b64encode(data).decode())))
        else:
            self.writer.write(self.ws.send(BytesMessage(data=bytes([channel]) + data)))

    def send_close_signal(self, channel: int) -> None:
        self.writer.write(self.ws.send(BytesMessage(data=bytes([255, channel]))))

    def resize(self, w: int, h: int) -> None:
        self.send(4, json.dumps({"Width": w, "Height": h}).encode())

    def output(self, channel: int) -> bytes:
        return bytes(self.channels.get(channel, b""))

    async def read_until(self, channel: int, needle: bytes, timeout: float = TIMEOUT) -> bytes:
        async def wait():
            while needle not in self.output(channel):
                if self.closed.is_set():
                    raise AssertionError(f"closed without {needle!r} on {channel}: {self.output(channel)!r}")
                self.changed.clear()
                await self.changed.wait()
            return self.output(channel)
        return await asyncio.wait_for(wait(), timeout)

    async def wait_closed(self, timeout: float = TIMEOUT) -> None:
        await asyncio.wait_for(self.closed.wait(), timeout)
        self.writer.close()


def port_prefix(port: int) -> bytes:
    return struct.pack("<H", port)
