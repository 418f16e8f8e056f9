"""asyncio client for a pod monitor's socket: runtime.client's operations and framing, waited for in the event loop.

A call that waits for a container (an exec, a wait) holds a socket and a coroutine, no thread. Connections come
from and go back to runtime.client's pool of idle ones (shared with the blocking client); a call's socket is
non-blocking while it is ours. The request is sent when the method is called, not when its coroutine is first
awaited (where the socket is ready for it, as it nearly always is): a caller that goes on working meanwhile has
the monitor working too.
"""
from __future__ import annotations

import asyncio
import socket

from runtime.client import MonitorError, Ops, _give_back, _take, answer_of, forget, io_error, request_line

CONNECT_RETRY = 0.005  # s between connects while the monitor's listen backlog is full


class AsyncMonitorClient(Ops):
    def __init__(self, socket_path: str, timeout: float | None = 30.0):
        self.socket_path = socket_path
        self.timeout = timeout

    def _do(self, op: str, finish=None, *, io_timeout: float | None = ..., then=None, **args):
        call = _Call(self.socket_path, op, self.timeout if io_timeout is ... else io_timeout)
        call.begin(request_line({"op": op, **args}))
        return call.run(then, finish)


class _Call:
    """One request and its answer on a connection of its own."""

    def __init__(self, path: str, op: str, timeout: float | None):
        self.path = path
        self.op = op
        self.timeout = timeout
        self.sock: socket.socket | None = None
        self.connected = False
        self.unsent = b""
        self.error: OSError | None = None

    def begin(self, req: bytes) -> None:
        """Connect and send what goes without waiting; the rest (and any error) is for run()."""
        self.unsent = req
        try:
            self.sock = _take(self.path)
            if self.sock is not None:
                self.sock.setblocking(False)
                self.connected = True
            else:
                self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC |
                                          socket.SOCK_NONBLOCK)
                self._connect()
            if self.connected:
                self.unsent = req[self.sock.send(req):]
        except BlockingIOError:
            pass
        except OSError as exc:
            self.error = exc

    def _connect(self) -> None:
        try:
            self.sock.connect(self.path)
            self.connected = True
        except BlockingIOError:  # (EAGAIN: the listen backlog is full; AF_UNIX has no connect in progress)
            pass

    async def run(self, then, finish):
        loop = asyncio.get_running_loop()
        sock, done, chunks = self.sock, False, []
        try:
            if self.error is not None:
                raise self.error
            async with asyncio.timeout(self.timeout):
                while not self.connected:
                    await asyncio.sleep(CONNECT_RETRY)
                    self._connect()
                if self.unsent:
                    await loop.sock_sendall(sock, self.unsent)
                if then is not None:
                    for line in then():
                        await loop.sock_sendall(sock, request_line(line))
                while not chunks or b"\n" not in chunks[-1]:
                    chunk = await loop.sock_recv(sock, 1 << 20)
                    if not chunk:
                        raise MonitorError(f"monitor at {self.path} closed the connection during {self.op}")
                    chunks.append(chunk)
            # one answer, one line: anything after it (a reply to follow-up lines the monitor gave up waiting
            # for) means the connection is out of step, and it is closed rather than reused
            done = chunks[-1].endswith(b"\n") and chunks[-1].count(b"\n") == 1
        except OSError as exc:  # (a timeout too)
            raise io_error(self.path, self.op, exc) from None
        finally:  # (a cancelled call's socket is closed: its late answer must never reach the next caller)
            if sock is not None:
                if done and self.op != "shutdown":
                    _give_back(self.path, sock)
                else:
                    sock.close()
        if self.op == "shutdown":
            forget(self.path)
        answer = answer_of(b"".join(chunks).split(b"\n", 1)[0] + b"\n")
        return finish(answer) if finish is not None else answer
