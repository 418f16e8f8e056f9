"""The Kubernetes channel protocols over WebSocket (wsproto framing): every message is one channel byte followed by
data (binary protocols) or one ASCII channel digit followed by base64 (base64 protocols). v5 adds a close signal:
a message [255, channel] ends the client's input on that channel (stdin EOF).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import time

from wsproto.connection import Connection, ConnectionState, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Message, Ping, TextMessage
from wsproto.utilities import generate_accept_token

from pycri import log
from pycri.streaming.pipe import InboundBuffer

_log = log.get("streaming.websocket")

V5, V4, V4_BASE64, V1, BASE64 = ("v5.channel.k8s.io", "v4.channel.k8s.io", "v4.base64.channel.k8s.io",
                                 "channel.k8s.io", "base64.channel.k8s.io")
REMOTECOMMAND_PROTOCOLS = [V5, V4, V4_BASE64, V1, BASE64]
PORTFORWARD_PROTOCOLS = [V4, V4_BASE64]
CLOSE_SIGNAL = 255
CHUNK = 32 * 1024
MAX_MESSAGE = 4 * 1024 * 1024
HIGH_WATER = 1024 * 1024


def is_base64(protocol: str) -> bool:
    return "base64" in protocol


def negotiate(requested: list[str], supported: list[str]) -> str | None:
    """The server's most preferred protocol the client offers; "" when the client offers none (binary v1)."""
    if not requested:
        return ""
    for p in supported:
        if p in requested:
            return p
    return None


def handshake_headers(key: str, protocol: str) -> list[tuple[str, str]]:
    headers = [("Upgrade", "websocket"), ("Connection", "Upgrade"),
               ("Sec-WebSocket-Accept", generate_accept_token(key.encode()).decode())]
    if protocol:
        headers.append(("Sec-WebSocket-Protocol", protocol))
    return headers


class ChannelWriter:
    """Output on one channel; `close` is a no-op (the server ends by closing the WebSocket)."""

    def __init__(self, ws: WsChannels, channel: int) -> None:
        self._ws = ws
        self.channel = channel

    async def write(self, data: bytes) -> None:
        for i in range(0, len(data), CHUNK):
            await self._ws.send_channel(self.channel, data[i:i + CHUNK])

    async def close(self) -> None:
        return None


class WsChannels:
    """A server WebSocket carrying numbered channels. `inputs` maps readable channels to their buffers; data for
    other channels is dropped with a log line."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, protocol: str,
                 inputs: dict[int, InboundBuffer], idle_timeout: float, peer: str = "", initial: bytes = b"") -> None:
        self._reader = reader
        self._writer = writer
        self.protocol = protocol
        self.base64 = is_base64(protocol)
        self.inputs = inputs
        self.idle_timeout = idle_timeout
        self.peer = peer
        self._ws = Connection(ConnectionType.SERVER)
        self._initial = initial
        self._partial: list[bytes | str] = []
        self._partial_size = 0
        self.last_activity = time.monotonic()
        self.closed = False
        self.error: str | None = None
        self._done = asyncio.Event()

    def writer(self, channel: int) -> ChannelWriter:
        return ChannelWriter(self, channel)

    async def send_channel(self, channel: int, data: bytes) -> None:
        if self.closed or self._writer.is_closing():
            raise ConnectionResetError("websocket closed")
        if self.base64:
            event = TextMessage(data=str(channel) + base64.b64encode(data).decode())
        else:
            event = BytesMessage(data=bytes([channel]) + data)
        self._writer.write(self._ws.send(event))
        self.last_activity = time.monotonic()
        await self._writer.drain()

    async def serve(self) -> None:
        """Read messages until the client closes, idles out, or breaks the protocol."""
        watchdog = asyncio.create_task(self._idle_watchdog())
        try:
            pending, self._initial = self._initial, b""
            while self._ws.state not in (ConnectionState.CLOSED,):
                data = pending or await self._reader.read(65536)
                pending = b""
                if not data:
                    self._ws.receive_data(None)
                    break
                self.last_activity = time.monotonic()
                self._ws.receive_data(data)
                if not self._handle_events():
                    break
                for buf in self.inputs.values():  # backpressure: stop reading while a consumer lags
                    if buf.buffered() > HIGH_WATER:
                        await buf.wait_below(HIGH_WATER)
        except (ConnectionError, OSError) as exc:
            self.error = f"connection lost: {exc}"
        finally:
            watchdog.cancel()
            for buf in self.inputs.values():
                buf.feed_eof()
            self._done.set()

    def _handle_events(self) -> bool:
        for event in self._ws.events():
            if isinstance(event, Message):
                self._partial.append(event.data)
                self._partial_size += len(event.data)
                if self._partial_size > MAX_MESSAGE:
                    return self._protocol_error(1009, "message too big")
                if event.message_finished:
                    parts, self._partial, self._partial_size = self._partial, [], 0
                    whole = b"".join(parts) if isinstance(event, BytesMessage) else "".join(parts)
                    if not self._on_message(whole):
                        return False
            elif isinstance(event, Ping):
                self._writer.write(self._ws.send(event.response()))
            elif isinstance(event, CloseConnection):
                if self._ws.state == ConnectionState.OPEN:  # wsproto's way of reporting a frame it cannot parse
                    return self._protocol_error(event.code, event.reason or "bad frame")
                if self._ws.state == ConnectionState.REMOTE_CLOSING:
                    self._writer.write(self._ws.send(event.response()))
                if event.code not in (1000, 1001, 1005):
                    self.error = f"closed by peer: {event.code} {event.reason}"
                    _log.info("websocket closed by peer with an error code", peer=self.peer, code=event.code,
                              reason=event.reason)
                self.closed = True
                return False
        return True

    def _protocol_error(self, code: int, reason: str) -> bool:
        self.error = reason
        _log.warning("websocket protocol error, closing", peer=self.peer, reason=reason)
        if self._ws.state == ConnectionState.OPEN:
            self._writer.write(self._ws.send(CloseConnection(code=code, reason=reason)))
        self.closed = True
        return False

    def _on_message(self, msg: bytes | str) -> bool:
        if self.base64:
            if not isinstance(msg, str) or not msg or msg[0] not in "0123456789":
                return self._protocol_error(1003, "base64 protocol needs text messages starting with a channel digit")
            try:
                channel, data = int(msg[0]), base64.b64decode(msg[1:], validate=True)
            except (binascii.Error, ValueError):
                return self._protocol_error(1007, "bad base64 in message")
        else:
            if isinstance(msg, str):
                return self._protocol_error(1003, "binary protocol needs binary messages")
            if not msg:
                return True  # empty message: nothing to route
            channel, data = msg[0], msg[1:]
        if channel == CLOSE_SIGNAL and self.protocol == V5:
            if len(data) != 1:
                return self._protocol_error(1002, "close signal must name one channel")
            buf = self.inputs.get(data[0])
            if buf is not None:
                buf.feed_eof()
            return True
        buf = self.inputs.get(channel)
        if buf is None:
            _log.info("data for a channel that is not readable, dropped", peer=self.peer, channel=channel)
            return True
        buf.feed(data)
        return True

    async def _idle_watchdog(self) -> None:
        while True:
            remaining = self.last_activity + self.idle_timeout - time.monotonic()
            if remaining <= 0:
                _log.info("websocket idle, closing", peer=self.peer, idle_timeout=self.idle_timeout)
                self.error = "idle timeout"
                self.closed = True
                self._writer.close()
                return
            await asyncio.sleep(remaining)

    async def close(self, linger: float = 2.0) -> None:
        """Close handshake (1000), wait briefly for the client's answer, close the socket."""
        if self._ws.state == ConnectionState.OPEN and not self._writer.is_closing():
            self._writer.write(self._ws.send(CloseConnection(code=1000)))
        self.closed = True
        try:
            await asyncio.wait_for(self._writer.drain(), linger)
            await asyncio.wait_for(self._done.wait(), linger)
        except (asyncio.TimeoutError, ConnectionError, OSError, RuntimeError):
            pass
        self._writer.close()
