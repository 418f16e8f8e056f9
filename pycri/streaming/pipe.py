"""Inbound byte buffers handed to backends as their `stdin`/`reader`: what the peer sent on a stream or channel.

`read()` reports consumption back to the transport (SPDY turns it into WINDOW_UPDATE) and lets a transport that
buffers too much wait for the consumer (`wait_below`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class InboundBuffer:
    """An asyncio byte queue with EOF: `await read(n)` returns b"" only at EOF (like asyncio.StreamReader)."""

    def __init__(self, on_consumed: Callable[[int], None] | None = None) -> None:
        self._buf = bytearray()
        self._eof = False
        self._discard = False
        self._readable = asyncio.Event()
        self._drained = asyncio.Event()
        self._drained.set()
        self._on_consumed = on_consumed

    def feed(self, data: bytes) -> None:
        if self._eof or not data:
            return
        if self._discard:
            self._consumed(len(data))
            return
        self._buf += data
        self._readable.set()
        self._drained.clear()

    def feed_eof(self) -> None:
        self._eof = True
        self._readable.set()

    def at_eof(self) -> bool:
        return self._eof and not self._buf

    @property
    def eof_received(self) -> bool:
        return self._eof

    def buffered(self) -> int:
        return len(self._buf)

    def discard(self) -> None:
        """Nobody will read any more: drop what is buffered and whatever arrives later."""
        self._discard = True
        n = len(self._buf)
        self._buf.clear()
        self._drained.set()
        if n:
            self._consumed(n)

    async def read(self, n: int = -1) -> bytes:
        while not self._buf and not self._eof:
            self._readable.clear()
            await self._readable.wait()
        if n < 0 or n >= len(self._buf):
            data = bytes(self._buf)
            self._buf.clear()
        else:
            data = bytes(self._buf[:n])
            del self._buf[:n]
        if not self._buf:
            self._drained.set()
        if data:
            self._consumed(len(data))
        return data

    async def wait_below(self, limit: int) -> None:
        """Wait until the consumer has read the buffer down (used to stop reading the socket, not to lose data)."""
        while len(self._buf) > limit and not self._discard:
            self._drained.clear()
            await self._drained.wait()

    def _consumed(self, n: int) -> None:
        if self._on_consumed is not None:
            self._on_consumed(n)
