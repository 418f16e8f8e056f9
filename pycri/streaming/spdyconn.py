"""A server-side SPDY/3.1 session over an asyncio stream pair: accepts client streams, answers PING, honours
GOAWAY, and does stream and session flow control.

Flow control note: kubelet's and kubectl's SPDY library (moby/spdystream) neither sends WINDOW_UPDATE nor limits
what it sends. Enforcing windows against such a peer would stall every stream after 64 KiB, so windows are enforced
(both directions) only once the peer shows it does flow control, by sending SETTINGS or WINDOW_UPDATE. We always
send WINDOW_UPDATE as the backend consumes data, which is harmless to a peer that ignores it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from pycri import log
from pycri.streaming import spdy
from pycri.streaming.pipe import InboundBuffer

_log = log.get("streaming.spdy")

CHUNK = 32 * 1024
HIGH_WATER = 1024 * 1024  # stop reading the socket while one stream holds this much unread input


class StreamClosed(Exception):
    """Write on a stream that was reset or already finished."""


class SpdyStream:
    """One client-initiated stream: `input` holds what the client sent, `write`/`close` send to it."""

    def __init__(self, conn: SpdyConnection, stream_id: int, headers: spdy.Headers) -> None:
        self.conn = conn
        self.id = stream_id
        self.headers = headers
        self.input = InboundBuffer(on_consumed=self._consumed)
        self.send_window = conn.peer_initial_window
        self.recv_window = spdy.DEFAULT_WINDOW
        self._unacked = 0
        self.local_closed = False
        self.reset = False
        self._window_open = asyncio.Event()
        self._window_open.set()

    def header(self, name: str) -> str | None:
        return spdy.header(self.headers, name)

    def _consumed(self, n: int) -> None:
        self._unacked += n
        if self._unacked >= spdy.DEFAULT_WINDOW // 2 and not self.reset:
            self.conn.send_nowait(spdy.WindowUpdate(self.id, self._unacked))
            self.recv_window += self._unacked
            self._unacked = 0
        self.conn.session_consumed(n)

    def window_changed(self, delta: int) -> None:
        self.send_window += delta
        if self.send_window > 0:
            self._window_open.set()

    async def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            if self.reset or self.local_closed:
                raise StreamClosed(f"stream {self.id} is closed")
            n = min(len(view), CHUNK)
            if self.conn.flow_control:
                await self.conn.wait_send_window(self)
                n = min(n, self.send_window, self.conn.session_send_window)
                self.send_window -= n
                self.conn.session_send_window -= n
                if self.send_window <= 0:
                    self._window_open.clear()
            await self.conn.send(spdy.Data(self.id, bytes(view[:n])))
            view = view[n:]

    async def close(self) -> None:
        """Half-close: DATA with FIN. Idempotent; a no-op on a reset stream."""
        if self.local_closed or self.reset:
            return
        self.local_closed = True
        await self.conn.send(spdy.Data(self.id, b"", spdy.FLAG_FIN))

    def on_reset(self) -> None:
        self.reset = True
        self.input.feed_eof()
        self._window_open.set()


class SpdyConnection:
    """Reads frames until the peer goes away; `on_stream` is called (synchronously) for each new stream."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 on_stream: Callable[[SpdyStream], None] | None, idle_timeout: float, peer: str = "",
                 initial: bytes = b"") -> None:
        self._reader = reader
        self._writer = writer
        self.on_stream = on_stream
        self._encoder = spdy.Encoder()
        self._decoder = spdy.Decoder()
        self.streams: dict[int, SpdyStream] = {}
        self._last_stream_id = 0
        self.peer_initial_window = spdy.DEFAULT_WINDOW
        self.session_send_window = spdy.DEFAULT_WINDOW
        self._session_unacked = 0
        self._session_window_open = asyncio.Event()
        self._session_window_open.set()
        self.flow_control = False
        self.going_away = False
        self.closed = False
        self.idle_timeout = idle_timeout
        self.last_activity = time.monotonic()
        self.peer = peer
        self.error: str | None = None
        self._initial = initial
        self._serve_done = asyncio.Event()
        self._goaway_sent = False

    # ---- sending
    def send_nowait(self, frame: spdy.Frame) -> None:
        """Queue a frame on the transport (encoding is synchronous, so the zlib context stays ordered)."""
        if self.closed or self._writer.is_closing():
            return
        self._writer.write(self._encoder.encode(frame))
        self.last_activity = time.monotonic()

    async def send(self, frame: spdy.Frame) -> None:
        if self.closed or self._writer.is_closing():
            raise StreamClosed("connection closed")
        self.send_nowait(frame)
        try:
            await self._writer.drain()
        except (ConnectionError, RuntimeError) as exc:
            raise StreamClosed(f"connection lost: {exc}") from None

    async def wait_send_window(self, stream: SpdyStream) -> None:
        while stream.send_window <= 0 or self.session_send_window <= 0:
            if stream.reset or self.closed or self._serve_done.is_set():  # no WINDOW_UPDATE can come any more
                raise StreamClosed(f"stream {stream.id} is closed")
            if stream.send_window <= 0:
                await stream._window_open.wait()
            else:
                self._session_window_open.clear()
                await self._session_window_open.wait()

    def session_consumed(self, n: int) -> None:
        self._session_unacked += n
        if self._session_unacked >= spdy.DEFAULT_WINDOW // 2:
            self.send_nowait(spdy.WindowUpdate(0, self._session_unacked))
            self._session_unacked = 0

    # ---- receiving
    async def serve(self) -> None:
        """Run until EOF, a protocol error, GOAWAY-and-EOF, idle timeout or close()."""
        watchdog = asyncio.create_task(self._idle_watchdog())
        try:
            pending, self._initial = self._initial, b""
            while True:
                data = pending or await self._reader.read(65536)
                pending = b""
                if not data:
                    break
                self.last_activity = time.monotonic()
                self._decoder.feed(data)
                await self._handle_buffered()
        except spdy.ProtocolError as exc:
            self.error = f"SPDY protocol error: {exc}"
            _log.warning("spdy protocol error, closing connection", peer=self.peer, error=str(exc))
            self._send_goaway(spdy.GOAWAY_PROTOCOL_ERROR)
        except (ConnectionError, asyncio.IncompleteReadError) as exc:
            self.error = f"connection lost: {exc}"
        finally:
            watchdog.cancel()
            self._end_inputs()
            self._serve_done.set()

    async def _handle_buffered(self) -> None:
        """Handle every complete frame; a stream error resets that stream and the rest are still handled."""
        while True:
            try:
                for frame in self._decoder.frames():
                    try:
                        await self._handle(frame)
                    except spdy.StreamError as exc:
                        self._stream_error(exc)
                return
            except spdy.StreamError as exc:  # from the decoder; that frame's bytes are consumed already
                self._stream_error(exc)

    def _stream_error(self, exc: spdy.StreamError) -> None:
        _log.info("spdy stream error", peer=self.peer, stream=exc.stream_id, error=str(exc))
        self.send_nowait(spdy.RstStream(exc.stream_id, exc.status))

    def _end_inputs(self) -> None:
        for s in self.streams.values():
            s.input.feed_eof()
            s._window_open.set()
        self._session_window_open.set()

    async def _idle_watchdog(self) -> None:
        while True:
            remaining = self.last_activity + self.idle_timeout - time.monotonic()
            if remaining <= 0:
                _log.info("spdy connection idle, closing", peer=self.peer, idle_timeout=self.idle_timeout)
                self.error = "idle timeout"
                self._send_goaway(spdy.GOAWAY_OK)
                self.closed = True
                self._writer.close()  # serve() then reads EOF and ends
                return
            await asyncio.sleep(remaining)

    async def _handle(self, frame: spdy.Frame) -> None:
        if isinstance(frame, spdy.Data):
            await self._on_data(frame)
        elif isinstance(frame, spdy.SynStream):
            self._on_syn_stream(frame)
        elif isinstance(frame, spdy.RstStream):
            s = self.streams.get(frame.stream_id)
            if s is not None:
                _log.info("spdy stream reset by peer", peer=self.peer, stream=frame.stream_id, status=frame.status)
                s.on_reset()
        elif isinstance(frame, spdy.Ping):
            if frame.ping_id % 2 == 1:  # client-initiated: echo; even ids would be answers to our own pings
                self.send_nowait(frame)
        elif isinstance(frame, spdy.Settings):
            self.flow_control = True
            if spdy.SETTINGS_INITIAL_WINDOW_SIZE in frame.values:
                new = frame.values[spdy.SETTINGS_INITIAL_WINDOW_SIZE]
                if new > 0x7FFFFFFF:
                    raise spdy.ProtocolError("SETTINGS_INITIAL_WINDOW_SIZE above 2^31-1")
                delta = new - self.peer_initial_window
                self.peer_initial_window = new
                for s in self.streams.values():
                    s.window_changed(delta)
        elif isinstance(frame, spdy.WindowUpdate):
            self.flow_control = True
            if frame.stream_id == 0:
                self.session_send_window += frame.delta
                self._session_window_open.set()
            elif (s := self.streams.get(frame.stream_id)) is not None:
                if s.send_window + frame.delta > 0x7FFFFFFF:
                    raise spdy.StreamError(s.id, spdy.FLOW_CONTROL_ERROR, "window above 2^31-1")
                s.window_changed(frame.delta)
        elif isinstance(frame, spdy.GoAway):
            _log.info("spdy goaway from peer", peer=self.peer, last_good=frame.last_good_stream_id,
                      status=frame.status)
            self.going_away = True
        elif isinstance(frame, spdy.SynReply):
            raise spdy.StreamError(frame.stream_id, spdy.PROTOCOL_ERROR, "SYN_REPLY from a client")
        elif isinstance(frame, spdy.HeadersFrame):
            if frame.stream_id not in self.streams:
                raise spdy.StreamError(frame.stream_id, spdy.INVALID_STREAM, "HEADERS for an unknown stream")
            if frame.flags & spdy.FLAG_FIN:
                self.streams[frame.stream_id].input.feed_eof()

    def _on_syn_stream(self, f: spdy.SynStream) -> None:
        if f.stream_id % 2 == 0:
            raise spdy.StreamError(f.stream_id, spdy.PROTOCOL_ERROR, "client stream ids must be odd")
        if f.stream_id in self.streams:
            raise spdy.StreamError(f.stream_id, spdy.STREAM_IN_USE, "stream id already in use")
        if f.stream_id <= self._last_stream_id:
            raise spdy.StreamError(f.stream_id, spdy.PROTOCOL_ERROR, "stream id not increasing")
        if self.going_away:
            raise spdy.StreamError(f.stream_id, spdy.REFUSED_STREAM, "connection is going away")
        self._last_stream_id = f.stream_id
        s = SpdyStream(self, f.stream_id, f.headers)
        self.streams[f.stream_id] = s
        self.send_nowait(spdy.SynReply(f.stream_id, {}))
        if f.flags & spdy.FLAG_FIN:
            s.input.feed_eof()
        if f.flags & spdy.FLAG_UNIDIRECTIONAL:
            s.local_closed = True
        if self.on_stream is not None:
            self.on_stream(s)

    async def _on_data(self, f: spdy.Data) -> None:
        s = self.streams.get(f.stream_id)
        if s is None:
            raise spdy.StreamError(f.stream_id, spdy.INVALID_STREAM, "DATA for an unknown stream")
        if s.reset:
            return  # frames in flight after a reset are dropped
        if s.input.eof_received:
            raise spdy.StreamError(f.stream_id, spdy.STREAM_ALREADY_CLOSED, "DATA after FIN")
        if self.flow_control:
            s.recv_window -= len(f.data)
            if s.recv_window < 0:
                s.on_reset()
                raise spdy.StreamError(f.stream_id, spdy.FLOW_CONTROL_ERROR, "peer exceeded the stream window")
        s.input.feed(f.data)
        if f.fin:
            s.input.feed_eof()
        if s.input.buffered() > HIGH_WATER:
            await s.input.wait_below(HIGH_WATER)

    def _send_goaway(self, status: int) -> None:
        """At most one GOAWAY per connection; no new streams are accepted after it."""
        if not self._goaway_sent:
            self._goaway_sent = True
            self.send_nowait(spdy.GoAway(self._last_stream_id, status))
        self.going_away = True

    def reset_stream(self, stream: SpdyStream, status: int) -> None:
        stream.on_reset()
        self.send_nowait(spdy.RstStream(stream.id, status))

    async def close(self, linger: float = 2.0) -> None:
        """GOAWAY, flush, half-close, give the peer `linger` seconds to hang up (serve() sees its EOF), close."""
        if self.closed:
            return
        self._send_goaway(spdy.GOAWAY_OK)
        self.closed = True
        for st in self.streams.values():  # wake writers waiting for window: they fail now
            st._window_open.set()
        self._session_window_open.set()
        try:
            await asyncio.wait_for(self._writer.drain(), linger)
            if self._writer.can_write_eof():
                self._writer.write_eof()
            await asyncio.wait_for(self._serve_done.wait(), linger)
        except (asyncio.TimeoutError, ConnectionError, RuntimeError, OSError):
            pass
        self._writer.close()
