"""The monitor's side of its socket: connections, JSON lines in and answers out, frame streams bound to a
container's or an exec's stdio, the output fds it watches, and work deferred until an answer is out. Server is
the base of the Monitor (server.py), which adds the ops and the processes.
"""
from __future__ import annotations

import base64
import binascii
import fcntl
import json
import os
import select
import selectors
import socket
import struct
import termios
import time

from runtime import cgroups, frames, launch
from runtime.frames import CH_CLOSE_STDIN, CH_EXIT, CH_RESIZE, CH_STDERR, CH_STDIN, CH_STDOUT, frame
from runtime.monitor.runner import RequestError
from runtime.monitor.stdio import nonblock


def _recv(sock: socket.socket) -> bytes | None:
    """recv on a non-blocking socket: None if nothing is there yet; b"" at EOF, or on an error."""
    try:
        return sock.recv(65536)
    except BlockingIOError:
        return None
    except OSError:
        return b""


STREAM_CH = {"stdout": CH_STDOUT, "stderr": CH_STDERR}
STREAM_OUTBUF_MAX = 8 * 1024 * 1024
INIT_LINES_WAIT_S = 10.0


class Conn:
    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.inbuf = b""
        self.outbuf = b""
        self.closed = False
        self.stream = None          # Container or Exec once the connection carries frames
        self.close_when_flushed = False
        self.dropped = 0            # output bytes dropped because the client read too slowly
        self.events = selectors.EVENT_READ  # what the selector watches it for

    def detach(self) -> None:
        """The connection is closing: the container or exec it streams for forgets it."""
        if self.stream is not None:
            self.stream.detach(self)


class InitLines:
    """The lines that follow a create with a prepared init, on its connection, each read when it is needed:
    with "init": "follows", first {"init": fastinit.prepare's dict with "tail": null, or null}, planned by the
    client while the monitor makes the container's pipes and state (head); then, after an init whose "tail" is
    null, {"tail": ...} or {"error": ...} (fastinit.prepare_tail), made while the spare starts on the first
    part (tail). drain() reads what was not read, whatever became of the create, so the connection stays in
    step. The client sends them at once, so the waits are short; INIT_LINES_WAIT_S bounds each."""

    def __init__(self, conn: Conn, head_follows: bool):
        self.conn = conn
        self.head_pending = head_follows
        self.tail_pending = not head_follows

    def head(self) -> dict | None:
        self.head_pending = False
        line = self._line("the init")
        try:
            init = json.loads(line)["init"]
        except (KeyError, TypeError, json.JSONDecodeError) as exc:
            raise ValueError(f"malformed init line: {exc}") from None
        if init is not None and not isinstance(init, dict):
            raise ValueError("malformed init line: not an object")
        self.tail_pending = init is not None and init.get("tail", "") is None
        return init

    def tail(self) -> bytes:
        self.tail_pending = False
        line = self._line("the second part of the init")
        try:
            msg = json.loads(line)
            if "error" in msg:
                raise ValueError(str(msg["error"]))
            return binascii.a2b_base64(msg["tail"], strict_mode=True)
        except (KeyError, TypeError, binascii.Error, json.JSONDecodeError) as exc:
            raise ValueError(f"malformed second part of the init: {exc}") from None

    def drain(self) -> None:
        try:
            if self.head_pending:
                self.head()
            if self.tail_pending:
                self.tail_pending = False
                self._line("the second part of the init")
        except ValueError:
            pass

    def _line(self, what: str) -> bytes:
        conn = self.conn
        deadline = time.monotonic() + INIT_LINES_WAIT_S
        while b"\n" not in conn.inbuf:
            left = deadline - time.monotonic()
            if conn.closed or left <= 0 or not select.select([conn.sock], [], [], left)[0]:
                raise ValueError(f"{what} did not come")
            data = _recv(conn.sock)
            if data is None:
                continue
            if not data:
                raise ValueError(f"the connection closed before {what}")
            conn.inbuf += data
        line, _, conn.inbuf = conn.inbuf.partition(b"\n")
        return line


class Server:
    """Connections and output fds on one selector; the subclass answers requests with its op_<name> methods."""

    def __init__(self, log):
        self.sel = selectors.DefaultSelector()
        self.log = log
        self._after: list = []  # (fn, args, kwargs) run once the current answer is sent (logging)

    def _listen(self, path: str) -> None:
        if len(path.encode()) > 107:
            raise ValueError(f"socket path too long for AF_UNIX: {path}")
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        self.lsock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        self.lsock.bind(path)
        os.chmod(path, 0o600)
        self.lsock.listen(64)
        self.lsock.setblocking(False)
        self.sel.register(self.lsock, selectors.EVENT_READ, "listen")

    def _accept(self) -> None:
        try:
            sock, _ = self.lsock.accept()
        except BlockingIOError:
            return
        sock.setblocking(False)
        conn = Conn(sock)
        self.sel.register(sock, selectors.EVENT_READ, conn)

    def _conn_read(self, conn: Conn) -> None:
        data = _recv(conn.sock)
        if data is None:
            return
        if not data:
            self._conn_close(conn)
            return
        conn.inbuf += data
        if conn.stream is not None:
            self._stream_read(conn)
            return
        if len(conn.inbuf) > 16 * 1024 * 1024:
            self._reply(conn, {"ok": False, "error": "request too large"})
            self._conn_close(conn)
            return
        while b"\n" in conn.inbuf and not conn.closed and conn.stream is None:
            line, _, conn.inbuf = conn.inbuf.partition(b"\n")
            self._handle(conn, line)
        if conn.stream is not None and conn.inbuf:
            self._stream_read(conn)

    def _handle(self, conn: Conn, line: bytes) -> None:
        try:
            req = json.loads(line)
            if not isinstance(req, dict):
                raise RequestError("request must be a JSON object")
            op = req.get("op")
            handler = getattr(self, f"op_{op}", None) if isinstance(op, str) and op.isidentifier() else None
            if handler is None:
                raise RequestError(f"unknown op {op!r}")
            result = handler(conn, req)
        except (RequestError, launch.LaunchError, cgroups.CgroupError, ValueError, TypeError, KeyError) as exc:
            self._reply(conn, {"ok": False, "error": str(exc)})
            self._run_after()
            return
        except Exception as exc:  # noqa: BLE001 - one bad request must not kill the pod's monitor
            self._reply(conn, {"ok": False, "error": f"internal error: {type(exc).__name__}: {exc}"})
            self.log.exception("monitor.request_failed", line=line[:200].decode(errors="replace"))
            self._run_after()
            return
        if result is not None:
            self._reply(conn, {"ok": True, **result})
        self._run_after()

    def _later(self, fn, *args, **kwargs) -> None:
        """Run fn after the answer to the current request has been sent (for what the client need not wait)."""
        self._after.append((fn, args, kwargs))

    def _run_after(self) -> None:
        while self._after:
            fn, args, kwargs = self._after.pop(0)
            try:
                fn(*args, **kwargs)
            except Exception:  # noqa: BLE001
                self.log.exception("monitor.deferred_failed")

    def _reply(self, conn: Conn, obj: dict) -> None:
        if conn.closed:
            return
        conn.outbuf += json.dumps(obj).encode() + b"\n"
        self._conn_flush(conn)

    def _conn_flush(self, conn: Conn) -> None:
        try:
            while conn.outbuf:
                n = conn.sock.send(conn.outbuf)
                conn.outbuf = conn.outbuf[n:]
        except BlockingIOError:
            pass
        except OSError:
            self._conn_close(conn)
            return
        if not conn.outbuf and conn.close_when_flushed:
            self._conn_close(conn)
            return
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if conn.outbuf else 0)
        if events != conn.events:  # (most answers go out whole: no epoll_ctl for them)
            conn.events = events
            self.sel.modify(conn.sock, events, conn)

    def _conn_close(self, conn: Conn) -> None:
        if not conn.closed:
            conn.closed = True
            self.sel.unregister(conn.sock)
            conn.sock.close()
            conn.detach()

    def _close_all(self) -> None:
        """Every connection, its answers sent as far as they go (shutdown)."""
        for conn in [k.data for k in list(self.sel.get_map().values()) if isinstance(k.data, Conn)]:
            self._conn_flush(conn)
            self._conn_close(conn)

    # ---------------------------------------------------------------- a container's stdio
    def op_attach(self, conn, req):
        """Turn this connection into a frame stream bound to the container's stdio."""
        c = self._get(req)
        if c.status not in ("created", "running"):
            raise RequestError(f"container {c.id} is {c.status}")
        self._reply(conn, {"ok": True, "tty": c.master is not None, "stdin": c.stdin_w is not None
                           or c.master is not None})
        conn.stream = c
        c.attached.append(conn)
        return None

    def op_close_stdin(self, conn, req):
        c = self._get(req)
        if c.stdin_w is not None:
            c.stdin_eof = True  # after what is still pending
            self._flush_stdin(c)
        return {}

    def op_write_stdin(self, conn, req):
        c = self._get(req)
        if (c.master is None and c.stdin_w is None) or c.stdin_eof:
            raise RequestError(f"container {c.id} has no open stdin")
        data = base64.b64decode(req.get("data", ""), validate=True)
        if len(c.stdin_pending) + len(data) > STREAM_OUTBUF_MAX:
            raise RequestError("stdin buffer full: the container is not reading")
        c.stdin_pending += data
        self._flush_stdin(c)
        return {"written": len(data)}

    def _stream_send(self, conn: Conn, channel: int, payload: bytes) -> None:
        if conn.closed:
            return
        if channel in (CH_STDOUT, CH_STDERR) and len(conn.outbuf) > STREAM_OUTBUF_MAX:
            conn.dropped += len(payload)
            return
        conn.outbuf += frame(channel, payload)
        self._conn_flush(conn)

    def _stream_end(self, conn: Conn, exit_info: dict) -> None:
        if conn.closed:
            return
        self._stream_send(conn, CH_EXIT, json.dumps({**exit_info, "dropped": conn.dropped}).encode())
        conn.close_when_flushed = True
        self._conn_flush(conn)

    def _stream_read(self, conn: Conn) -> None:
        target = conn.stream
        try:
            got, conn.inbuf = frames.split(conn.inbuf)
        except ValueError:
            self._conn_close(conn)
            return
        for channel, payload in got:
            if channel == CH_STDIN:
                target.stdin_pending += payload
                self._flush_stdin(target)
            elif channel == CH_CLOSE_STDIN:
                if target.master is not None and target.stdin_w is None:
                    target.stdin_pending += b"\x04"  # EOF on a terminal is ^D
                    self._flush_stdin(target)
                elif target.stdin_w is not None:
                    target.stdin_eof = True  # closed once what is pending has been written
                    self._flush_stdin(target)
            elif channel == CH_RESIZE and target.master is not None:
                try:
                    size_req = json.loads(payload)
                    fcntl.ioctl(target.master, termios.TIOCSWINSZ,
                                struct.pack("HHHH", int(size_req["height"]), int(size_req["width"]), 0, 0))
                except (ValueError, KeyError, TypeError, OSError):
                    pass

    def _flush_stdin(self, target) -> None:
        fd = target.master if target.master is not None else target.stdin_w
        if fd is None:
            target.stdin_pending = b""
            return
        try:
            while target.stdin_pending:
                n = os.write(fd, target.stdin_pending[:65536])
                target.stdin_pending = target.stdin_pending[n:]
        except BlockingIOError:
            return
        except OSError:
            target.stdin_pending = b""  # the reader is gone
        if target.stdin_eof and target.stdin_w is not None and not target.stdin_pending:
            os.close(target.stdin_w)
            target.stdin_w = None

    # ---------------------------------------------------------------- output fds
    def _pipes(self, owner, stdin: bool) -> tuple[int, int, int]:
        """stdout and stderr pipes watched for owner (a Container or an Exec); stdin a pipe whose writing end is
        owner.stdin_w, or /dev/null. Returns the child's ends (in, out, err): the caller closes them once the
        child has its copies."""
        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        if stdin:
            in_r, owner.stdin_w = os.pipe2(os.O_CLOEXEC)
            nonblock(owner.stdin_w)
        else:
            in_r = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
        for fd, stream in ((out_r, "stdout"), (err_r, "stderr")):
            nonblock(fd)
            self._watch(fd, owner, stream)
        return in_r, out_w, err_w

    def _watch(self, fd: int, owner, stream: str) -> None:
        """Read fd, an output of owner (a Container or an Exec): _output has each chunk."""
        owner.outputs[fd] = stream
        self.sel.register(fd, selectors.EVENT_READ, (fd, owner, stream))

    def _unwatch(self, fd: int, owner) -> None:
        if owner.outputs.pop(fd, None) is not None:
            self.sel.unregister(fd)
            if fd == owner.master:
                owner.master = None
            os.close(fd)

    def _output(self, fd: int, owner, stream: str) -> bool:
        """Move one chunk from an output fd; False when nothing was read (EAGAIN or EOF)."""
        raise NotImplementedError

    def _get(self, req: dict):
        """The container a request names (RequestError if none)."""
        raise NotImplementedError

    def _drain(self, owner) -> None:
        """Read what the process left in its pipes before recording its exit."""
        fds = owner.outputs
        for fd, stream in list(fds.items()):
            while fd in fds and self._output(fd, owner, stream):
                pass
