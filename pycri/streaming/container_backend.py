"""The daemon's streaming Backend: exec and attach through the pod monitors, port-forward into the pod's netns.

- exec/attach open a frame stream on the pod monitor's socket (runtime/client.py: `exec_stream` / `attach`; the
  blocking open runs in a worker thread), then move the frames with asyncio on that socket: no thread per session.
  Client stdin -> stdin frames (EOF -> a close-stdin frame), resize queue -> resize frames, stdout/stderr frames ->
  the client's writers, until the exit frame. Writes to the monitor wait for its socket to drain (backpressure
  for stdin); while the client reads slowly we stop reading the monitor, which buffers up to 8 MiB and then drops
  output (docs/runtime.md).
- When the client goes away (the backend call is cancelled) or its writer fails, an exec's process is killed, as
  containerd does, and the stream is closed; an attach only detaches (the container keeps running).
- Attach: stdin EOF closes the container's stdin and keeps the output flowing until the container exits when the
  container is StdinOnce without a tty; otherwise it ends the attach (containerd's ContainerIO.Attach).
- port_forward creates the socket inside the pod's network namespace (runtime/host/netns_socket.py: setns in a
  short-lived thread, nothing forks), connects to localhost:<port> (127.0.0.1, then ::1, as containerd) and pumps
  bytes both ways; host-network pods connect on the host's localhost.

`streaming_server(daemon)` builds the StreamingServer from `[streaming]`; `running_container` and `ready_sandbox`
are the RPC-side checks (NotFound / FailedPrecondition) for the Exec/Attach/PortForward handlers.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import struct
from typing import Any, Callable

from pycri import log
from pycri.node import (CH_CLOSE_STDIN, CH_EXIT, CH_RESIZE, CH_STDERR, CH_STDIN, CH_STDOUT, HEADER, MAX_PAYLOAD,
                        MonitorClient, MonitorError, NetnsError, Stream, frame, socket_in_netns)
from pycri.errors import FailedPrecondition, NotFound
from pycri.state.records import C_CREATING, C_RUNNING, SB_CREATING, SB_READY, ContainerRecord, SandboxRecord
from pycri.streaming.backend import NotFoundError, StreamReaderLike, StreamWriterLike
from pycri.streaming.server import StreamingServer

_log = log.get("streaming.containers")

CHUNK = 65536
CONNECT_TIMEOUT = 10.0  # connecting to a port in the pod (loopback: only a full accept queue makes it wait)


class ContainerNotRunning(Exception):
    """The container exists but is not running (exec/attach need a running container)."""


class PodNotReady(Exception):
    """The pod sandbox exists but is not ready (stopped, or its network is gone)."""


# ---- lookups shared by the RPC handlers (gRPC errors) and the backend (streaming errors)

def running_container(daemon, container_id: str) -> tuple[ContainerRecord, SandboxRecord]:
    """The container and its sandbox; NotFound for an unknown one, FailedPrecondition unless it is running."""
    daemon.take_exits()
    rec = daemon.records.find_container(container_id)
    if rec is None or rec.state == C_CREATING:
        raise NotFound(f"container {container_id!r} not found")
    sandbox = daemon.records.sandboxes.get(rec.sandbox_id)
    if sandbox is None:
        raise NotFound(f"pod sandbox {rec.sandbox_id!r} of container {rec.id} not found")
    if rec.state != C_RUNNING:
        raise FailedPrecondition(f"container {rec.id} is not running (state: {rec.state})")
    return rec, sandbox


def ready_sandbox(daemon, pod_sandbox_id: str) -> SandboxRecord:
    """The sandbox; NotFound for an unknown one, FailedPrecondition unless it is ready."""
    daemon.take_exits()
    sandbox = daemon.records.find_sandbox(pod_sandbox_id)
    if sandbox is None or sandbox.state == SB_CREATING:
        raise NotFound(f"pod sandbox {pod_sandbox_id!r} not found")
    if sandbox.state != SB_READY:
        raise FailedPrecondition(f"pod sandbox {sandbox.id} is not ready (state: {sandbox.state})")
    return sandbox


def streaming_server(daemon) -> StreamingServer:
    cfg = daemon.config.streaming
    return StreamingServer(cfg.address, cfg.port, ContainerBackend(daemon))


# ---- the backend

class ContainerBackend:
    def __init__(self, daemon) -> None:
        self.daemon = daemon

    def _container(self, container_id: str) -> tuple[ContainerRecord, SandboxRecord]:
        try:
            return running_container(self.daemon, container_id)
        except NotFound:
            raise NotFoundError(container_id) from None
        except FailedPrecondition as exc:
            raise ContainerNotRunning(str(exc)) from None

    async def exec(self, container_id: str, cmd: list[str], tty: bool, stdin: StreamReaderLike | None,
                   stdout: StreamWriterLike | None, stderr: StreamWriterLike | None,
                   resize: asyncio.Queue[tuple[int, int]]) -> int:
        rec, sandbox = self._container(container_id)
        client = self.daemon.monitors.client(sandbox.monitor_dir)
        process = {"args": list(cmd), "terminal": bool(tty)}
        opened = await _open_in_thread(lambda: _open_exec(client, rec.id, process, stdin is not None),
                                       lambda o: o.close())
        session = _Session(opened.stream, rec.id)
        try:
            await session.connect()
            _log.debug("exec started", container_id=rec.id, pid=opened.pid, cmd=cmd[:8], tty=tty)
            exit_info = await session.run(stdin, stdout, stderr, resize, on_stdin_eof="close")
            return int(exit_info.get("exit_code", 255))
        finally:
            if not session.exited:
                killed = opened.kill()
                _log.info("exec ended before its process: killed it", container_id=rec.id, pid=opened.pid,
                          killed=killed)
            opened.close_pidfd()
            session.close()

    async def attach(self, container_id: str, tty: bool, stdin: StreamReaderLike | None,
                     stdout: StreamWriterLike | None, stderr: StreamWriterLike | None,
                     resize: asyncio.Queue[tuple[int, int]]) -> None:
        rec, sandbox = self._container(container_id)
        client = self.daemon.monitors.client(sandbox.monitor_dir)
        stream = await _open_in_thread(lambda: _open_attach(client, rec.id), Stream.close)
        session = _Session(stream, rec.id)
        has_tty, has_stdin = bool(stream.info.get("tty")), bool(stream.info.get("stdin"))
        if not has_stdin:
            on_eof = "ignore"  # nothing to feed: the client's input is dropped, the attach lasts until the exit
        elif rec.config.stdin_once and not has_tty:
            on_eof = "close"
        else:
            on_eof = "detach"
        try:
            await session.connect()
            _log.debug("attached", container_id=rec.id, tty=has_tty, stdin=has_stdin, on_stdin_eof=on_eof)
            await session.run(stdin, stdout, stderr, resize, on_stdin_eof=on_eof, feed_stdin=has_stdin)
        finally:
            session.close()

    async def port_forward(self, pod_sandbox_id: str, port: int, reader: StreamReaderLike,
                           writer: StreamWriterLike) -> None:
        try:
            sandbox = ready_sandbox(self.daemon, pod_sandbox_id)
        except NotFound:
            raise NotFoundError(pod_sandbox_id) from None
        except FailedPrecondition as exc:
            raise PodNotReady(str(exc)) from None
        sock = await _connect_in_pod(sandbox, port)
        r, w = await asyncio.open_connection(sock=sock)

        async def upstream() -> None:
            try:
                while data := await reader.read(CHUNK):
                    w.write(data)
                    await w.drain()
                if w.can_write_eof():
                    w.write_eof()  # the client is done sending: half-close, the answer may still come
            except (ConnectionError, OSError):
                pass

        up = asyncio.create_task(upstream())
        try:
            while True:
                try:
                    data = await r.read(CHUNK)
                except ConnectionResetError:
                    data = b""
                if not data:  # the target hung up: done (containerd ends on the first direction that ends)
                    break
                await writer.write(data)
        finally:
            up.cancel()
            w.close()


# ---- exec/attach plumbing

class _OpenedExec:
    """An exec stream and a pidfd on its process (so that killing it can never hit a recycled pid)."""

    def __init__(self, stream: Stream, pid: int, pidfd: int | None) -> None:
        self.stream = stream
        self.pid = pid
        self.pidfd = pidfd

    def kill(self) -> bool:
        if self.pidfd is None:
            return False
        try:
            signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)
            return True
        except ProcessLookupError:  # it exited (and was reaped) meanwhile
            return False

    def close_pidfd(self) -> None:
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None

    def close(self) -> None:
        """For a stream opened after its caller was cancelled: the exec must not run on unattended."""
        self.kill()
        self.close_pidfd()
        self.stream.close()


def _open_attach(client: MonitorClient, container_id: str) -> Stream:
    try:
        return client.attach(container_id)
    except MonitorError as exc:
        raise RuntimeError(str(exc)) from None


def _open_exec(client: MonitorClient, container_id: str, process: dict, stdin: bool) -> _OpenedExec:
    try:
        stream = client.exec_stream(container_id, process, stdin=stdin)
    except MonitorError as exc:
        raise RuntimeError(str(exc)) from None  # e.g. 'exec: "nope": executable file not found in $PATH'
    pid = int(stream.info.get("pid") or 0)
    return _OpenedExec(stream, pid, _pidfd_of_child(pid, _peer_pid(stream.sock)))


def _peer_pid(sock: socket.socket) -> int:
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)[0]


def _pidfd_of_child(pid: int, parent: int) -> int | None:
    """A pidfd on `pid` if it is still the monitor's child (the exec); None once it is gone."""
    if pid <= 0:
        return None
    try:
        fd = os.pidfd_open(pid)
    except (ProcessLookupError, OSError):
        return None
    try:
        with open(f"/proc/{pid}/status") as f:
            ppid = next((int(line.split()[1]) for line in f if line.startswith("PPid:")), -1)
    except (OSError, ValueError):
        ppid = -1
    if ppid != parent:  # exited, reaped and the pid reused before we looked: not ours
        os.close(fd)
        return None
    return fd


async def _open_in_thread(open_fn: Callable[[], Any], discard: Callable[[Any], None]) -> Any:
    """open_fn() in a worker thread; if we are cancelled meanwhile, what it opens later is discarded."""
    fut = asyncio.ensure_future(asyncio.to_thread(open_fn))
    try:
        return await asyncio.shield(fut)
    except asyncio.CancelledError:
        def orphan(f: asyncio.Future) -> None:
            if not f.cancelled() and f.exception() is None:
                discard(f.result())
        fut.add_done_callback(orphan)
        raise


class _Session:
    """Frames on a monitor stream socket, moved with asyncio (the socket is handed to an asyncio transport)."""

    def __init__(self, stream: Stream, container_id: str) -> None:
        self.stream = stream
        self.container_id = container_id
        self.exited = False
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def connect(self) -> None:
        # Nothing is buffered in `stream` yet: _open_stream reads the answer line byte by byte.
        self.reader, self.writer = await asyncio.open_unix_connection(sock=self.stream.sock)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()  # closes the socket: the monitor detaches this connection
        else:
            self.stream.close()

    def _send(self, channel: int, payload: bytes) -> None:
        self.writer.write(frame(channel, payload))

    async def run(self, stdin, stdout, stderr, resize: asyncio.Queue, on_stdin_eof: str,
                  feed_stdin: bool = True) -> dict:
        """Pump until the exit frame (returns its info) or, with on_stdin_eof="detach", the client's stdin EOF."""
        helpers = [asyncio.create_task(self._resizes(resize))]
        feeder = None
        if stdin is not None:
            feeder = asyncio.create_task(self._stdin(stdin, on_stdin_eof if feed_stdin else "ignore", feed_stdin))
            helpers.append(feeder)
        output = asyncio.create_task(self._output(stdout, stderr))
        try:
            pending = {output} | ({feeder} if feeder else set())
            while True:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                if output in done:
                    return output.result()
                if feeder in done and feeder.result():
                    return {}  # detached on stdin EOF
        finally:
            for t in helpers + [output]:
                t.cancel()
            await asyncio.gather(*helpers, output, return_exceptions=True)

    async def _stdin(self, stdin, on_eof: str, feed: bool) -> bool:
        """Client input -> stdin frames. True when the session should end (detach on EOF)."""
        try:
            while data := await stdin.read(CHUNK):
                if feed:
                    self._send(CH_STDIN, data)
                    await self.writer.drain()
            if on_eof == "close":
                self._send(CH_CLOSE_STDIN, b"")
                await self.writer.drain()
            return on_eof == "detach"
        except (ConnectionError, OSError):
            return False  # the monitor side is gone: the output side ends the session

    async def _resizes(self, queue: asyncio.Queue) -> None:
        try:
            while True:
                width, height = await queue.get()
                self._send(CH_RESIZE, json.dumps({"width": width, "height": height}).encode())
                await self.writer.drain()
        except (ConnectionError, OSError):
            pass

    async def _output(self, stdout, stderr) -> dict:
        while True:
            try:
                head = await self.reader.readexactly(HEADER.size)
                channel, size = HEADER.unpack(head)
                if size > MAX_PAYLOAD:
                    raise RuntimeError(f"the pod monitor sent a frame of {size} bytes")
                payload = await self.reader.readexactly(size)
            except (asyncio.IncompleteReadError, ConnectionError) as exc:
                raise RuntimeError(f"the pod monitor closed the stream of container {self.container_id} "
                                   "before reporting an exit status") from exc
            if channel == CH_EXIT:
                self.exited = True
                return json.loads(payload)
            out = stdout if channel == CH_STDOUT else stderr if channel == CH_STDERR else None
            if out is not None and payload:
                await out.write(payload)


# ---- port-forward plumbing

async def _connect_in_pod(sandbox: SandboxRecord, port: int) -> socket.socket:
    """A connected, non-blocking socket to localhost:port in the pod's network namespace (IPv4, then IPv6)."""
    where = f"inside the network namespace of pod {sandbox.id}" if sandbox.netns else "on the host (host network)"
    loop = asyncio.get_running_loop()
    errors = []
    for family, address in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
        try:
            sock = await _open_in_thread(lambda f=family: socket_in_netns(sandbox.netns, f), socket.socket.close)
        except OSError as exc:
            errors.append(f"{address}: {_reason(exc)}")
            continue
        try:
            sock.setblocking(False)
            await asyncio.wait_for(loop.sock_connect(sock, (address, port)), CONNECT_TIMEOUT)
            return sock
        except (OSError, asyncio.TimeoutError) as exc:
            sock.close()
            errors.append(f"{address}: {_reason(exc)}")
        except BaseException:
            sock.close()
            raise
    raise ConnectionError(f"failed to connect to localhost:{port} {where}: {'; '.join(errors)}")


def _reason(exc: BaseException) -> str:
    if isinstance(exc, asyncio.TimeoutError):
        return f"timed out after {CONNECT_TIMEOUT:g}s"
    if isinstance(exc, NetnsError):
        return exc.strerror
    if isinstance(exc, OSError) and exc.errno:
        return os.strerror(exc.errno)  # asyncio's own text repeats the address
    return str(exc)
