"""The per-pod monitor: a single-threaded, detached child subreaper that forks, reaps and logs containers.

Protocol (unix socket <state_dir>/monitor.sock): one JSON object per line each way. A request is
{"op": ..., ...}; the answer is {"ok": true, ...} or {"ok": false, "error": "..."}. A connection may send
several requests; answers come in order. "wait" and "exec" answer when the process ends.
See docs/runtime.md for the ops.
"""
from __future__ import annotations

import base64
import binascii
import errno
import fcntl
import gc
import json
import os
import select
import selectors
import signal
import socket
import struct
import termios
import time

from runtime import cgroups, frames, jsonlog, launch, state
from runtime.frames import CH_CLOSE_STDIN, CH_EXIT, CH_RESIZE, CH_STDERR, CH_STDIN, CH_STDOUT, frame
from runtime.host import linux, trees
from runtime.launch import initproc
from runtime.monitor.builtin import BuiltinRunner
from runtime.monitor.logfile import DEFAULT_MAX_LINE, LogFile
from runtime.monitor.runner import RequestError, Runner, kill_quietly
from runtime.monitor.stdio import container_pty, nonblock

LOG_PATH_ANNOTATION = "io.pycri.log-path"
DEFAULT_OUTPUT_CAP = 16 * 1024 * 1024
log = jsonlog.get_logger("runtime.monitor")


def _recv(sock: socket.socket) -> bytes | None:
    """recv on a non-blocking socket: None if nothing is there yet; b"" at EOF, or on an error."""
    try:
        return sock.recv(65536)
    except BlockingIOError:
        return None
    except OSError:
        return b""


def _signum(sig) -> int:
    if isinstance(sig, int) and 0 < sig < 65:
        return sig
    if isinstance(sig, str):
        name = sig.upper()
        if name.isascii() and name.isdigit():
            return _signum(int(name))
        name = name if name.startswith("SIG") else "SIG" + name
        if hasattr(signal.Signals, name):
            return int(signal.Signals[name])
    raise RequestError(f"bad signal {sig!r}")


_STREAM_CH = {"stdout": CH_STDOUT, "stderr": CH_STDERR}
STREAM_OUTBUF_MAX = 8 * 1024 * 1024
# How long a spare pycri-init (initproc.Spare) is kept after a container's create: long enough for the rest of a
# pod's containers (the kubelet creates them one after another), short enough that an idle pod holds none.
SPARE_KEEP_S = 5.0
# When op_start's spare is made: at the started container's exit, or this long after its start, whichever
# comes first, so that its clone does not compete with the container's exec (docs/runtime.md, "The spare"); a
# create that comes sooner has the spare made first.
SPARE_AFTER_START_S = 0.002


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


class OomTag:
    """Selector data of a container's OOM watch."""

    def __init__(self, container: "Container"):
        self.container = container


class Container:
    def __init__(self, cid: str, bundle: str, spec: dict, sdir: str):
        self.id = cid
        self.bundle = bundle
        self.spec = spec
        self.dir = sdir
        self.pid = 0
        self.start_time: int | None = None
        self.status = "creating"
        self.runner: Runner | None = None      # what makes its processes: BuiltinRunner or ocirunner.OciRunner
        self.cgroup: cgroups.Cgroup | None = None
        self.oom_base = 0
        self.oom_seen = 0                     # the highest OOM kill count read while it ran (see _oom_event)
        self.oom_since = 0.0                  # time.monotonic() when its cgroup began to be watched
        self.oom_watch: cgroups.OomWatch | None = None
        self.log: LogFile | None = None
        self.log_path: str | None = None
        self.outputs: dict[int, str] = {}     # read fd -> stream name
        self.stdin_w: int | None = None
        self.master: int | None = None        # pty master (terminal)
        self.init_lines: _InitLines | None = None  # during a create: its init's lines that follow
        self.setup_error: str | None = None  # a set-up that failed before op_start came (read at the exit)
        self.waiters: list[Conn] = []
        self.attached: list[Conn] = []
        self.stdin_pending = b""
        self.stdin_eof = False
        self.exit: dict | None = None
        self.created_at = time.time_ns()
        self.started_at = 0

    def record(self) -> dict:
        return {"id": self.id, "pid": self.pid, "start_time": self.start_time, "status": self.status,
                "bundle": self.bundle, "created_at": self.created_at, "started_at": self.started_at,
                "cgroup": self.cgroup.path if self.cgroup else None, "log_path": self.log_path}

    def write_state(self, status: str | None = None) -> None:
        """state.json: its record (with this status)."""
        record = self.record()
        if status is not None:
            record["status"] = status
        state.write_json(os.path.join(self.dir, "state.json"), record)

    def open_log(self, path: str, max_line: int) -> None:
        self.log_path = path
        self.log = LogFile(path, max_line)


class _InitLines:
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


INIT_LINES_WAIT_S = 10.0

# What this monitor understands beyond the first requests, for a client of newer or older code (monitors
# outlive a daemon upgrade): 2 = a create with "init": "follows" (_InitLines); 3 = a create with "ready": "later"
# (answered once the child is launched: op_start waits for the end of its set-up); 4 = prepared inits (of a
# create or an exec) may hold OP_FORK (its pycri-init knows it). Written to monitor.json; a monitor.json without
# it is older code, which plans every create itself (runtime/client.py: monitor_protocol).
PROTOCOL = 4


class Exec:
    def __init__(self, conn: Conn, container: Container, cap: int, deadline: float | None):
        self.conn = conn
        self.container = container
        self.cap = cap
        self.deadline = deadline
        self.pid = 0
        self.out = {"stdout": bytearray(), "stderr": bytearray()}
        self.truncated = False
        self.fds: dict[int, str] = {}
        self.status: int | None = None
        self.timed_out = False
        self.stream: Conn | None = None     # interactive exec: output goes here as frames
        self.stdin_w: int | None = None
        self.master: int | None = None
        self.stdin_pending = b""
        self.stdin_eof = False


class Monitor:
    def __init__(self, state_dir: str, pod_id: str = ""):
        self.state_dir = os.path.abspath(state_dir)
        self.pod_id = pod_id
        self.sel = selectors.DefaultSelector()
        self.containers: dict[str, Container] = {}
        self.execs: dict[int, Exec] = {}
        self.running = True
        self.log = log.bind(pod_id=pod_id)
        self._after: list = []  # (fn, args, kwargs) run once the current answer is sent (logging)
        self.spare: initproc.Spare | None = None  # see _keep_spare
        self.spare_factory: initproc.SpareFactory | None = None  # makes the spares, while there are any
        self.spare_until = 0.0
        self.spare_due: tuple[float, bool, str] | None = None  # (when, new pid ns, container): see op_start

    # ---------------------------------------------------------------- set-up and loop
    def prepare(self) -> None:
        """The process-wide part of start-up (subreaper, signals, wakeup pipe): a spare does it ahead."""
        if getattr(self, "wake_r", None) is not None:
            return
        linux.prctl(linux.PR_SET_CHILD_SUBREAPER, 1)
        r, w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self.wake_r = r
        signal.set_wakeup_fd(w, warn_on_full_buffer=False)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        for s in (signal.SIGPIPE, signal.SIGHUP, signal.SIGINT, signal.SIGTERM):
            signal.signal(s, signal.SIG_IGN)
        self.sel.register(r, selectors.EVENT_READ, "signal")

    def bind(self) -> None:
        self.prepare()
        os.makedirs(self.state_dir, mode=0o700, exist_ok=True)
        path = os.path.join(self.state_dir, state.SOCKET_NAME)
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
        state.write_json(os.path.join(self.state_dir, "monitor.json"),
                         {"pid": os.getpid(), "start_time": linux.proc_start_time(os.getpid()),
                          "pod_id": self.pod_id, "protocol": PROTOCOL})
        self._later(self.log.info, "monitor.listening", socket=path, pid=os.getpid())
        gc.freeze()  # start-up objects: never scanned again, so clones copy fewer pages

    def serve_forever(self) -> None:
        while self.running:
            timeout = None
            deadlines = [e.deadline for e in self.execs.values() if e.deadline and not e.timed_out]
            if deadlines:  # at most a day per wait: epoll's millisecond int overflows past ~24 days, which killed
                # the monitor on an ExecSync timeout of 2^63-1 s (found by tests/fuzz)
                timeout = min(86400.0, max(0.0, min(deadlines) - time.monotonic()))
            if self._pending_stdin():
                timeout = 0.01 if timeout is None else min(timeout, 0.01)
            if self.spare is not None or self.spare_factory is not None:
                left = max(0.0, self.spare_until - time.monotonic())
                timeout = left if timeout is None else min(timeout, left)
            if self.spare_due is not None:
                left = max(0.0, self.spare_due[0] - time.monotonic())
                timeout = left if timeout is None else min(timeout, left)
            # an OOM kill's event before the exit it caused, when both come in one batch (see _oom_event)
            for key, mask in sorted(self.sel.select(timeout), key=lambda km: km[0].data == "signal"):
                try:
                    self._dispatch(key, mask)
                except Exception:  # noqa: BLE001 - keep serving the pod's other containers
                    self.log.exception("monitor.event_failed")
                if self._after:  # e.g. an exit's log line, after its waiters were answered
                    self._run_after()
            self._check_deadlines()
            if self.spare_due is not None and time.monotonic() >= self.spare_due[0]:
                self._make_due_spare()
            if (self.spare is not None or self.spare_factory is not None) and time.monotonic() >= self.spare_until:
                self._drop_spare()
                self._drop_spare_factory()
        self._cleanup()

    def _dispatch(self, key, mask) -> None:
        tag = key.data
        if tag == "listen":
            try:
                sock, _ = self.lsock.accept()
            except BlockingIOError:
                return
            sock.setblocking(False)
            conn = Conn(sock)
            self.sel.register(sock, selectors.EVENT_READ, conn)
        elif tag == "signal":
            try:
                while os.read(self.wake_r, 4096):
                    pass
            except BlockingIOError:
                pass
            self._reap()
        elif isinstance(tag, Conn):
            if tag.closed:
                return
            if mask & selectors.EVENT_READ:
                self._conn_read(tag)
            if mask & selectors.EVENT_WRITE and not tag.closed:
                self._conn_flush(tag)
        elif isinstance(tag, OomTag):
            self._oom_event(tag.container)
        elif isinstance(tag, tuple):
            fd, owner, stream = tag
            fds = owner.outputs if isinstance(owner, Container) else owner.fds
            if fd in fds:  # an earlier event of this batch may have closed it
                self._output(fd, owner, stream)

    # ---------------------------------------------------------------- clients
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
            if isinstance(conn.stream, Container) and conn in conn.stream.attached:
                conn.stream.attached.remove(conn)
            elif isinstance(conn.stream, Exec) and conn.stream.stream is conn:
                conn.stream.stream = None  # the exec keeps running; its output is dropped

    # ---------------------------------------------------------------- streams
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

    def _pending_stdin(self) -> bool:
        pending = False
        for t in list(self.containers.values()) + list(self.execs.values()):
            if t.stdin_pending:
                self._flush_stdin(t)
                pending = pending or bool(t.stdin_pending)
        return pending

    # ---------------------------------------------------------------- ops
    def _get(self, req: dict) -> Container:
        cid = state.check_id(req.get("id"))
        c = self.containers.get(cid)
        if c is None:
            raise RequestError(f"container {cid} not found")
        return c

    def op_ping(self, conn, req):
        return {"pid": os.getpid(), "containers": sorted(self.containers), "protocol": PROTOCOL}

    def op_create(self, conn, req):
        init = req.get("init")
        if init == "follows":
            lines = _InitLines(conn, head_follows=True)
        elif isinstance(init, dict) and "tail" in init and init["tail"] is None:
            lines = _InitLines(conn, head_follows=False)
        else:
            lines = None
        try:
            return self._op_create(req, lines)
        finally:
            if lines is not None:
                lines.drain()  # read even when the create failed: never left for the next request

    def _op_create(self, req, lines: "_InitLines | None"):
        cid = state.check_id(req.get("id"))
        if cid in self.containers:
            raise RequestError(f"container {cid} already exists")
        bundle = req.get("bundle")
        if not isinstance(bundle, str) or not os.path.isabs(bundle):
            raise RequestError("bundle must be an absolute path")
        spec = req.get("spec")  # inline: no config.json to write and read back (the bundle dir still anchors
        if spec is None:        # a relative root.path)
            spec = launch.spec_json(os.path.join(bundle, "config.json"))
        elif not isinstance(spec, dict):
            raise RequestError("spec must be a JSON object (an OCI runtime spec)")
        sdir = os.path.join(self.state_dir, cid)
        if os.path.exists(sdir):
            raise RequestError(f"container {cid} has state left in {sdir}; delete it first")
        if self.spare_due is not None:  # a create sooner than SPARE_AFTER_START_S: the spare first
            self._make_due_spare()
        c = Container(cid, bundle, spec, sdir)
        c.init_lines = lines
        if req.get("runtime") is not None:
            from runtime.monitor import ocirunner  # only pods of an OCI handler pay for it
            c.runner = ocirunner.OciRunner(self, c, req["runtime"])
        else:
            c.runner = BuiltinRunner(self, c)
        try:
            self._create(c, req)
        except BaseException:
            self._teardown(c)
            raise
        finally:
            c.init_lines = None
        return {"pid": c.pid, "warnings": c.runner.warnings}

    def _create(self, c: Container, req: dict) -> None:
        spec = c.spec
        proc = spec.get("process") or {}
        log_path = req.get("log_path") or (spec.get("annotations") or {}).get(LOG_PATH_ANNOTATION)
        max_line = int(req.get("log_max_line") or DEFAULT_MAX_LINE)
        runner_tty = c.runner.own_pty and bool(proc.get("terminal"))
        stdio, console = (None, None) if runner_tty else self._make_stdio(c, bool(proc.get("terminal")),
                                                                          bool(req.get("stdin")))
        try:
            t0, t1, t2 = c.runner.create(req, log_path, max_line, stdio, console)
        finally:  # the child's ends: it has its own copies by now (or it failed)
            for fd in stdio or ():
                os.close(fd)
            if console is not None:
                os.close(console)
        c.status = "created"
        self.containers[c.id] = c
        t3 = time.perf_counter()
        for w in c.runner.warnings:
            self._later(self.log.warning, "container.warning", container_id=c.id, warning=w)
        self._later(self.log.info, "container.created", container_id=c.id, pid=c.pid,
                    plan_ms=round((t1 - t0) * 1e3, 2), clone_ms=round((t2 - t1) * 1e3, 2),
                    setup_ms=round((t3 - t2) * 1e3, 2))

    def _make_stdio(self, c: Container, terminal: bool, stdin: bool):
        """Pipes (or a pty) for the container; returns the child's ends (closed after setup)."""
        if terminal:
            master, slave = os.openpty()
            os.set_inheritable(master, False)
            size = (c.spec.get("process") or {}).get("consoleSize") or {}
            if size:
                fcntl.ioctl(master, termios.TIOCSWINSZ,
                            struct.pack("HHHH", int(size.get("height", 24)), int(size.get("width", 80)), 0, 0))
            nonblock(master)
            c.master = master
            self._watch(master, c, "stdout")
            return None, slave
        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        if stdin:
            in_r, in_w = os.pipe2(os.O_CLOEXEC)
            nonblock(in_w)
            c.stdin_w = in_w
        else:
            in_r = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
        for fd, stream in ((out_r, "stdout"), (err_r, "stderr")):
            nonblock(fd)
            self._watch(fd, c, stream)
        return (in_r, out_w, err_w), None

    def _watch(self, fd: int, owner, stream: str) -> None:
        owner_fds = owner.outputs if isinstance(owner, Container) else owner.fds
        owner_fds[fd] = stream
        self.sel.register(fd, selectors.EVENT_READ, (fd, owner, stream))

    def op_start(self, conn, req):
        c = self._get(req)
        if c.setup_error is not None:  # its set-up failed, and it was reaped, before this start
            raise launch.LaunchError(c.setup_error)
        if c.status != "created":
            raise RequestError(f"container {c.id} is {c.status}, not created")
        started_at = time.time_ns()
        c.runner.start()
        # while the child drops privileges and execs: record "running" (before the answer, as always;
        # a failed exec below turns it into an exit file)
        c.status = "running"
        c.started_at = started_at
        c.write_state()
        try:
            c.runner.started()
        except launch.LaunchError:
            self._failed_start(c, 127)
            raise
        self._later(self.log.info, "container.started", container_id=c.id, pid=c.pid)
        if c.runner.spare_hint is not None:  # once its start-up is over (SPARE_AFTER_START_S)
            self.spare_due = (time.monotonic() + SPARE_AFTER_START_S, c.runner.spare_hint, c.id)
        self._later(c.runner.hooks, ("poststart",), "running", fatal=False)
        return {"pid": c.pid, "started_at": c.started_at}

    def _failed_start(self, c: Container, exit_code: int) -> None:
        """A start whose exec (127) or set-up (128) failed ends the container."""
        c.status = "stopped"
        c.exit = {"exit_code": exit_code, "signal": 0, "finished_at": time.time_ns(), "oom_killed": False}
        self._finish(c)

    def op_kill(self, conn, req):
        c = self._get(req)
        sig = _signum(req.get("signal", signal.SIGTERM))
        if c.status not in ("created", "running"):
            raise RequestError(f"container {c.id} is not running")
        c.runner.kill(sig, bool(req.get("all")))
        return {}

    def op_wait(self, conn, req):
        c = self._get(req)
        if c.exit is not None:
            return dict(c.exit)
        c.waiters.append(conn)
        return None

    def op_state(self, conn, req):
        c = self._get(req)
        out = c.record()
        if c.exit:
            out.update(c.exit)
        return out

    def op_list(self, conn, req):
        return {"containers": [{"id": c.id, "status": c.status, "pid": c.pid} for c in self.containers.values()]}

    def op_stats(self, conn, req):
        c = self._get(req)
        if not c.cgroup:
            raise RequestError(f"container {c.id} has no cgroup")
        return {"stats": c.cgroup.stats()}

    def op_update_resources(self, conn, req):
        c = self._get(req)
        if not c.cgroup:
            raise RequestError(f"container {c.id} has no cgroup")
        res = req.get("resources")
        if not isinstance(res, dict):
            raise RequestError("resources must be an object")
        return {"warnings": c.runner.update(res)}

    def op_reopen_log(self, conn, req):
        c = self._get(req)
        if c.log is None:
            raise RequestError(f"container {c.id} has no log file")
        c.log.reopen()
        return {}

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

    def op_delete(self, conn, req):
        c = self._get(req)
        if c.status in ("created", "running"):
            if not req.get("force"):
                raise RequestError(f"container {c.id} is {c.status}; stop it first or use force")
            self._kill_and_reap(c)
        self._teardown(c)
        self.containers.pop(c.id, None)
        self._later(self.log.info, "container.deleted", container_id=c.id)
        self._later(c.runner.hooks, ("poststop",), "stopped", fatal=False)
        return {}

    def op_shutdown(self, conn, req):
        live = [c.id for c in self.containers.values() if c.status in ("created", "running")]
        if live and not req.get("force"):
            raise RequestError(f"containers still running: {', '.join(live)}")
        for c in list(self.containers.values()):
            if c.status in ("created", "running"):
                self._kill_and_reap(c)
            self._teardown(c)
        self.containers.clear()
        self._end_spare()  # nothing of ours outlives the answer
        self.running = False
        self._reply(conn, {"ok": True})
        self._conn_flush(conn)
        return None

    def op_exec(self, conn, req):
        c = self._get(req)
        if c.status != "running":
            raise RequestError(f"container {c.id} is {c.status}, not running")
        base = dict(c.spec.get("process") or {})
        override = req.get("process")
        if not isinstance(override, dict) or not override.get("args"):
            raise RequestError("exec needs process.args")
        process = {**base, **override, "terminal": bool(override.get("terminal", False))}
        timeout = req.get("timeout")
        deadline = time.monotonic() + float(timeout) if timeout else None
        ex = Exec(conn, c, int(req.get("output_cap") or DEFAULT_OUTPUT_CAP), deadline)
        streaming = bool(req.get("stream"))
        console = None
        if process["terminal"] and c.runner.own_pty:
            stdio = None  # the runner makes the pty in the container and hands back the master
        elif process["terminal"]:
            master, console = container_pty(c.pid)
            nonblock(master)
            self._watch(master, ex, "stdout")
            if streaming:
                ex.master = master
            stdio = None
        else:
            out_r, out_w = os.pipe2(os.O_CLOEXEC)
            err_r, err_w = os.pipe2(os.O_CLOEXEC)
            if streaming and req.get("stdin"):
                in_r, ex.stdin_w = os.pipe2(os.O_CLOEXEC)
                nonblock(ex.stdin_w)
            else:
                in_r = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
            stdio = (in_r, out_w, err_w)
            for fd, stream in ((out_r, "stdout"), (err_r, "stderr")):
                nonblock(fd)
                self._watch(fd, ex, stream)
        try:
            pid, master = c.runner.exec(process, stdio, console, req.get("init"))
            if master is not None:
                nonblock(master)
                self._watch(master, ex, "stdout")
                if streaming:
                    ex.master = master
        except BaseException:
            for fd in list(ex.fds):
                self._unwatch(fd, ex)
            if ex.stdin_w is not None:
                os.close(ex.stdin_w)
            raise
        finally:
            for fd in stdio or ():
                os.close(fd)
            if console is not None:
                os.close(console)
        ex.pid = pid
        self.execs[pid] = ex
        self._later(self.log.info, "exec.started", container_id=c.id, pid=pid, stream=streaming)
        if streaming:
            self._reply(conn, {"ok": True, "pid": pid, "tty": process["terminal"]})
            conn.stream = ex
            ex.stream = conn
        return None

    # ---------------------------------------------------------------- process events
    def _output(self, fd: int, owner, stream: str) -> bool:
        """Move one chunk from an output fd; False when nothing was read (EAGAIN or EOF)."""
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            return False
        except OSError as exc:
            if exc.errno != errno.EIO:  # EIO: pty slave closed
                raise
            data = b""
        if not data:
            self._unwatch(fd, owner)
            if isinstance(owner, Container) and owner.log:
                owner.log.flush(stream)
            elif isinstance(owner, Exec):
                self._maybe_finish_exec(owner)
            return False
        if isinstance(owner, Container):
            if owner.log:
                owner.log.write(stream, data)
            for conn in owner.attached:
                self._stream_send(conn, _STREAM_CH[stream], data)
        elif owner.conn.stream is owner:  # interactive exec (output dropped once the client left)
            if owner.stream is not None:
                self._stream_send(owner.stream, _STREAM_CH[stream], data)
        else:
            buf = owner.out[stream]
            room = owner.cap - len(owner.out["stdout"]) - len(owner.out["stderr"])  # (the cap is for both)
            if room < len(data):
                owner.truncated = True
            buf += data[:max(0, room)]
        return True

    def _unwatch(self, fd: int, owner) -> None:
        fds = owner.outputs if isinstance(owner, Container) else owner.fds
        if fds.pop(fd, None) is not None:
            self.sel.unregister(fd)
            if fd == owner.master:
                owner.master = None
            os.close(fd)

    def _drain(self, owner) -> None:
        """Read what the process left in its pipes before recording its exit."""
        fds = owner.outputs if isinstance(owner, Container) else owner.fds
        for fd, stream in list(fds.items()):
            while fd in fds and self._output(fd, owner, stream):
                pass

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            self._exited(pid, status)

    def _exited(self, pid: int, status: int) -> None:
        """Record the exit of a reaped child: an exec, a container init, or an orphan (ignored)."""
        code = os.waitstatus_to_exitcode(status)
        exit_code, sig = (128 - code, -code) if code < 0 else (code, 0)
        if pid in self.execs:
            ex = self.execs[pid]
            ex.status = exit_code
            self._drain(ex)
            self._maybe_finish_exec(ex, force=True)
            return
        for c in self.containers.values():
            if c.pid == pid and c.status in ("created", "running"):
                exit_code = c.runner.exited(exit_code, sig)
                oom = bool(c.cgroup and self._oom_kills(c, sig) > c.oom_base)
                c.exit = {"exit_code": exit_code, "signal": sig, "finished_at": time.time_ns(),
                          "oom_killed": oom}
                c.status = "stopped"
                self._drain(c)
                self._finish(c)
                break

    def _finish(self, c: Container) -> None:
        """Record an exited container: flush logs, exit file, answer waiters."""
        for fd in list(c.outputs):
            self._unwatch(fd, c)
        if c.log:
            for s in ("stdout", "stderr"):
                c.log.flush(s)
        if c.stdin_w is not None:
            os.close(c.stdin_w)
            c.stdin_w = None
        # exit.json alone records the end (state.container_status lets it override state.json): one file
        # written, not two, before the waiters are answered
        state.write_json(os.path.join(c.dir, "exit.json"), c.exit)
        self._later(self.log.info, "container.exited", container_id=c.id, **c.exit)
        for w in c.waiters:
            self._reply(w, {"ok": True, **c.exit})
        c.waiters.clear()
        if self.spare_due is not None and self.spare_due[2] == c.id:
            self._later(self._make_due_spare)
        for conn in list(c.attached):
            self._stream_end(conn, c.exit)
        c.attached.clear()

    def _maybe_finish_exec(self, ex: Exec, force: bool = False) -> None:
        # answer once the process is reaped; late output from leftover children is dropped
        if ex.status is None or ex.pid not in self.execs:
            return
        if ex.fds and not force:
            return
        for fd in list(ex.fds):
            self._unwatch(fd, ex)
        del self.execs[ex.pid]
        if ex.stdin_w is not None:
            os.close(ex.stdin_w)
            ex.stdin_w = None
        if ex.conn.stream is ex:
            if ex.stream is not None:
                self._stream_end(ex.stream, {"exit_code": ex.status, "timed_out": ex.timed_out})
            self.log.info("exec.exited", container_id=ex.container.id, pid=ex.pid, exit_code=ex.status)
            return
        self._reply(ex.conn, {"ok": True, "exit_code": ex.status, "timed_out": ex.timed_out,
                              "truncated": ex.truncated,
                              "stdout": base64.b64encode(bytes(ex.out["stdout"])).decode(),
                              "stderr": base64.b64encode(bytes(ex.out["stderr"])).decode()})
        self._later(self.log.info, "exec.exited", container_id=ex.container.id, pid=ex.pid, exit_code=ex.status,
                      timed_out=ex.timed_out)

    def _check_deadlines(self) -> None:
        now = time.monotonic()
        for ex in self.execs.values():
            if ex.deadline and not ex.timed_out and now >= ex.deadline:
                ex.timed_out = True
                try:
                    os.kill(ex.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass

    def _kill_and_reap(self, c: Container) -> None:
        if c.status == "created" and c.runner.abort():
            c.exit = {"exit_code": 137, "signal": 9, "finished_at": time.time_ns(), "oom_killed": False}
            c.status = "stopped"
            self._finish(c)
            return
        kill_quietly((c.pid,), signal.SIGKILL)
        c.runner.kill_cgroup(signal.SIGKILL)
        # reap anything, not just the init: a pid namespace's init only finishes exiting once the other
        # processes of the namespace (our exec children among them) have been reaped
        deadline = time.monotonic() + 10
        while c.status != "stopped" and time.monotonic() < deadline:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                time.sleep(0.001)
                continue
            self._exited(pid, status)
        if c.status != "stopped":
            self.log.error("container.unkillable", container_id=c.id, pid=c.pid)

    def _teardown(self, c: Container) -> None:
        """Release everything a container holds: fds, log, cgroup, state dir."""
        if c.runner is not None:
            c.runner.release()
        for fd in list(c.outputs):
            self._unwatch(fd, c)
        for fd in (c.stdin_w, c.master):
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
        c.stdin_w = c.master = None
        if c.log:
            c.log.close()
        self._unwatch_oom(c)
        if c.cgroup:
            c.cgroup.remove()
        trees.remove_tree(c.dir)

    def _watch_oom(self, c: Container) -> None:
        c.oom_seen = c.oom_base
        c.oom_since = time.monotonic()
        c.oom_watch = c.cgroup.oom_watch()
        if c.oom_watch is not None:
            self.sel.register(c.oom_watch.fd, selectors.EVENT_READ, OomTag(c))

    def _oom_event(self, c: Container) -> None:
        """The OOM killer acted in c's cgroup (or a memory.events counter moved): read the count now, while the
        cgroup exists. Under the systemd driver the scope of an exited container can be removed before its
        process is reaped, and the count with it."""
        if c.oom_watch is None:
            return
        c.oom_watch.drain()
        if c.cgroup is not None:
            kills = c.cgroup.oom_kills()
            if kills <= c.oom_base and c.oom_watch.onset():  # v1: the kill is not counted yet (cgroups.OomWatch)
                kills = c.oom_base + 1
            c.oom_seen = max(c.oom_seen, kills)

    def _oom_kills(self, c: Container, sig: int = 0) -> int:
        """At the exit: the count now, or what was read when the kill was notified if the cgroup is gone; for
        a SIGKILL with the cgroup gone and no kill read, the kernel's log (cgroups.oom_kill_logged)."""
        if c.oom_watch is not None and select.select([c.oom_watch.fd], [], [], 0)[0]:
            self._oom_event(c)  # notified, not yet handled (the exit came first in this batch)
        kills = max(c.cgroup.oom_kills(), c.oom_seen)
        if kills <= c.oom_base and sig == signal.SIGKILL and c.oom_since and not c.cgroup.exists() \
                and cgroups.oom_kill_logged(c.cgroup.path, c.pid, c.oom_since):
            kills = c.oom_base + 1
        return kills

    def _unwatch_oom(self, c: Container) -> None:
        if c.oom_watch is not None:
            self.sel.unregister(c.oom_watch.fd)
            c.oom_watch.close()
            c.oom_watch = None

    def _make_due_spare(self) -> None:
        if self.spare_due is not None:
            new_pidns = self.spare_due[1]
            self.spare_due = None
            self._keep_spare(new_pidns)

    def _keep_spare(self, new_pidns: bool) -> None:
        """After a fast-init start (answered): have a pycri-init ready for the pod's next container, in a
        new pid namespace if this one had one, for SPARE_KEEP_S."""
        self.spare_until = time.monotonic() + SPARE_KEEP_S
        if self.spare is not None and self.spare.new_pidns == new_pidns:
            return
        self._drop_spare()
        try:
            if self.spare_factory is None:
                self.spare_factory = initproc.SpareFactory()
            self.spare = initproc.Spare(new_pidns, self.spare_factory)
        except OSError as exc:  # (a factory gone: the next start makes another)
            self._drop_spare_factory()
            self.log.warning("monitor.spare_failed", error=str(exc))

    def _drop_spare(self) -> None:
        """Release the spare: it exits on EOF and is reaped as any child (waited for here at shutdown)."""
        if self.spare is not None:
            self.spare.close()
            self.spare = None

    def _drop_spare_factory(self) -> None:
        """Release the spare factory: it exits on EOF and is reaped as any child (waited for at shutdown)."""
        if self.spare_factory is not None:
            self.spare_factory.close()
            self.spare_factory = None

    def _end_spare(self) -> None:
        """Release the spare and its factory and wait for their exits (shutdown)."""
        self.spare_due = None
        pids = []
        if self.spare is not None:
            try:
                pids.append(self.spare.pid)
            except OSError:  # never made
                pass
            self._drop_spare()
        if self.spare_factory is not None:
            pids.append(self.spare_factory.pid)
            self._drop_spare_factory()
        for pid in pids:
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:  # reaped already
                pass

    def _cleanup(self) -> None:
        self._end_spare()
        for conn in [k.data for k in list(self.sel.get_map().values()) if isinstance(k.data, Conn)]:
            self._conn_flush(conn)
            self._conn_close(conn)
        path = os.path.join(self.state_dir, state.SOCKET_NAME)
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        try:
            os.unlink(os.path.join(self.state_dir, "monitor.json"))
        except FileNotFoundError:
            pass
        self.log.info("monitor.exiting")


def configure_logging(path: str | None) -> None:
    """JSON lines to path (or stderr)."""
    jsonlog.configure(path)


def run_detached(state_dir: str, pod_id: str = "", log_path: str | None = None) -> int:
    """Start a monitor that outlives the caller (double fork + setsid); returns its pid once it listens.

    The caller must be single-threaded. The monitor's log goes to log_path or <state_dir>/monitor.log.
    """
    return prefork().assign(state_dir, pod_id, log_path)


class SpareMonitor:
    """A detached monitor process (double fork + setsid, stdio on /dev/null, no other fds) that waits for
    its pod: `assign()` makes it bind `<state_dir>/monitor.sock` and serve. The spawner keeps one ready, so a
    pod's monitor costs a pipe message instead of two forks. A spare whose pipe closes unassigned exits."""

    def __init__(self, assign_w: int, ready_r: int):
        self._assign_w = assign_w
        self._ready_r = ready_r

    def assign(self, state_dir: str, pod_id: str = "", log_path: str | None = None) -> int:
        """Turn the spare into the monitor of state_dir; returns its pid once it listens."""
        state_dir = os.path.abspath(state_dir)
        os.makedirs(state_dir, mode=0o700, exist_ok=True)
        req = json.dumps({"state_dir": state_dir, "pod_id": pod_id, "log_path": log_path}).encode() + b"\n"
        try:
            try:
                os.write(self._assign_w, req)
            except OSError as exc:
                raise RuntimeError(f"spare monitor gone: {exc}") from None
            os.close(self._assign_w)
            self._assign_w = -1
            msg = _read_all(self._ready_r)
        finally:
            self.close()
        if not msg.startswith(b"OK "):
            raise RuntimeError(f"monitor for {state_dir} failed to start: {msg.decode(errors='replace') or 'died'}")
        return int(msg[3:])

    def close(self) -> None:
        """Release an unassigned spare: it exits; returns once it has (its end of the ready pipe closed)."""
        if self._assign_w >= 0:
            os.close(self._assign_w)
            self._assign_w = -1
            _read_all(self._ready_r)
        if self._ready_r >= 0:
            os.close(self._ready_r)
            self._ready_r = -1


def prefork() -> SpareMonitor:
    """Fork a detached spare monitor (the caller must be single-threaded)."""
    ready_r, ready_w = os.pipe2(os.O_CLOEXEC)
    assign_r, assign_w = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:
        try:
            os.close(ready_r)
            os.close(assign_w)
            os.setsid()
            if os.fork():
                os._exit(0)
            _spare_main(assign_r, ready_w)
        finally:
            os._exit(1)
    os.close(ready_w)
    os.close(assign_r)
    os.waitpid(pid, 0)
    return SpareMonitor(assign_w, ready_r)


def _read_all(fd: int) -> bytes:
    msg = b""
    while True:
        try:
            chunk = os.read(fd, 4096)
        except InterruptedError:
            continue
        if not chunk:
            return msg
        msg += chunk


def _spare_main(assign_r: int, ready_w: int) -> None:
    try:
        os.chdir("/")
        linux.set_comm("pycri-monitor")
        linux.close_all_but({assign_r, ready_w, initproc.sealed_fd()})  # the spawner's copy of pycri-init stays
        m = Monitor("/", "")
        m.prepare()
        line = b""
        while not line.endswith(b"\n"):
            chunk = os.read(assign_r, 65536)
            if not chunk:
                os._exit(0)  # released unassigned
            line += chunk
        os.close(assign_r)
        req = json.loads(line)
        state_dir, pod_id, log_path = req["state_dir"], req.get("pod_id") or "", req.get("log_path")
        m.state_dir, m.pod_id = os.path.abspath(state_dir), pod_id
    except BaseException as exc:  # noqa: BLE001
        os.write(ready_w, f"ERR {exc}".encode())
        os._exit(1)
    _become_monitor(m, log_path, ready_w)


def _become_monitor(m: Monitor, log_path: str | None, ready_w: int) -> None:
    try:
        configure_logging(log_path or os.path.join(m.state_dir, "monitor.log"))
        m.log = log.bind(pod_id=m.pod_id)
        m.bind()
    except BaseException as exc:  # noqa: BLE001
        os.write(ready_w, f"ERR {exc}".encode())
        os._exit(1)
    os.write(ready_w, f"OK {os.getpid()}".encode())
    os.close(ready_w)
    m._run_after()
    try:
        m.serve_forever()
    except BaseException:  # noqa: BLE001
        m.log.exception("monitor.crashed")
        os._exit(1)
    os._exit(0)
