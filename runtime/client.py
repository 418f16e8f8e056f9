"""Blocking client for a pod monitor's socket (safe to use from many threads: a call has a connection to itself).

Connections are kept open between calls (a few per monitor, shared by every MonitorClient of that socket
path in the process): a call on an open connection costs ~60 us, one that connects first ~230 us, and a
container's create, start and wait are three calls. A connection goes back to the pool only after a complete
answer; one that failed or timed out mid-call is closed (a late answer must never reach the next caller).
"""
from __future__ import annotations

import base64
import json
import os
import select
import socket
import threading
from collections import OrderedDict
from dataclasses import dataclass

from runtime import state
from runtime.frames import CH_CLOSE_STDIN, CH_EXIT, CH_RESIZE, CH_STDIN, CH_STDOUT, frame, split
from runtime.launch import fastinit, prepare


class MonitorError(Exception):
    """The monitor refused a request (the message is the monitor's), or could not be reached."""


@dataclass
class ExecResult:
    exit_code: int
    stdout: bytes
    stderr: bytes
    timed_out: bool
    truncated: bool


IDLE_PER_MONITOR = 4  # open connections kept per monitor socket (more concurrent calls connect anew)
IDLE_MONITORS = 512   # monitors with kept connections (least recently used beyond: closed)
_idle: OrderedDict[str, list[socket.socket]] = OrderedDict()
_idle_lock = threading.Lock()


def _take(path: str) -> socket.socket | None:
    """An idle connection to path whose monitor has not closed it (an idle one has nothing to read)."""
    while True:
        with _idle_lock:
            conns = _idle.get(path)
            if not conns:
                return None
            sock = conns.pop()
        readable, _, _ = select.select([sock], [], [], 0)
        if not readable:
            return sock
        sock.close()  # EOF: the monitor exited (or restarted) since


def _give_back(path: str, sock: socket.socket) -> None:
    evicted: list[socket.socket] = []
    with _idle_lock:
        conns = _idle.setdefault(path, [])
        _idle.move_to_end(path)
        if len(conns) < IDLE_PER_MONITOR:
            conns.append(sock)
            sock = None
        while len(_idle) > IDLE_MONITORS:  # e.g. pods whose monitor died and that nobody calls again
            evicted += _idle.popitem(last=False)[1]
    for s in evicted + ([sock] if sock is not None else []):
        s.close()


def forget(path: str) -> None:
    """Close the idle connections to a monitor socket (its pod is gone)."""
    _protocols.pop(path, None)
    with _idle_lock:
        conns = _idle.pop(path, [])
    for sock in conns:
        sock.close()


_protocols: dict[str, int] = {}  # monitor socket -> its monitor.json "protocol"


def monitor_protocol(socket_path: str) -> int:
    """What the monitor at socket_path understands (runtime/monitor/server.py: PROTOCOL), from the monitor.json
    beside it, read once; 0 where it has none: a monitor of older code (pods outlive a daemon upgrade), which
    plans every create itself."""
    proto = _protocols.get(socket_path)
    if proto is None:
        m = state.read_json(os.path.join(os.path.dirname(socket_path), "monitor.json"))
        proto = m.get("protocol") if isinstance(m, dict) else None
        if type(proto) is not int:
            return 0  # (not kept: read again next time)
        _protocols[socket_path] = proto
    return proto


def request_line(obj: dict) -> bytes:
    """One line of the protocol: a request, or a line that follows one (see MonitorClient.create)."""
    return json.dumps(obj).encode() + b"\n"


def answer_of(line: bytes) -> dict:
    """The answer line's content without "ok"; MonitorError with the monitor's message when it refused."""
    answer = json.loads(line)
    if not answer.pop("ok", False):
        raise MonitorError(answer.get("error", "unknown error"))
    return answer


def io_error(path: str, op: str, exc: OSError) -> MonitorError:
    """What a failed exchange with the monitor at path means, as a MonitorError (a timeout is an OSError)."""
    if isinstance(exc, (FileNotFoundError, ConnectionRefusedError)):
        forget(path)
        return MonitorError(f"monitor at {path} is not running: {exc.strerror}")
    if isinstance(exc, TimeoutError):
        return MonitorError(f"monitor at {path}: {op} timed out")
    if isinstance(exc, (ConnectionResetError, BrokenPipeError)):  # (a monitor that died with our request unread)
        return MonitorError(f"monitor at {path} closed the connection during {op}")
    return MonitorError(f"monitor at {path}: {op}: {exc}")


def _exec_result(r: dict) -> ExecResult:
    return ExecResult(r["exit_code"], base64.b64decode(r["stdout"]), base64.b64decode(r["stderr"]),
                      r["timed_out"], r["truncated"])


class Ops:
    """The monitor's operations, once for both clients: each is one request made into one _do call, which
    MonitorClient runs blocking and runtime.aclient.AsyncMonitorClient returns as a coroutine.

    _do(op, finish, io_timeout=, then=, **args): finish (if any) turns the answer into the method's result."""

    socket_path: str

    def _do(self, op: str, finish=None, *, io_timeout: float | None = ..., then=None, **args):
        raise NotImplementedError

    def ping(self) -> dict:
        return self._do("ping")

    def create(self, id: str, bundle: str, *, overlay: dict | None = None, stdin: bool = False,
               log_path: str | None = None, log_max_line: int | None = None, spec: dict | None = None,
               runtime: dict | None = None, ready_later: bool = False) -> dict:
        """Create (not start) a container from an OCI bundle; returns {"pid", "warnings"}.

        overlay: {"lower": [dirs, top first], "upper": dir, "work": dir} mounts root.path as overlayfs
        inside the container's mount namespace. log_path overrides the io.pycri.log-path annotation.
        spec: the OCI spec inline, instead of <bundle>/config.json (which then need not exist).
        runtime: {"type": "oci", "path": "/usr/bin/runc"} runs it with that OCI runtime (else the built-in one).
        With the built-in one, the container's init is planned and encoded here (see runtime/launch/fastinit.py),
        after the request is sent: the monitor makes the container's pipes and state meanwhile (init_lines).
        A monitor of older code (monitor_protocol below 4) gets the create without it and plans it itself.
        ready_later: answered once the child is launched, not set up (the built-in runtime of a monitor_protocol
        3 monitor; others answer as usual): a set-up failure then fails the start. Warnings of the set-up are then logged by the
        monitor, not returned. The pid is the container's either way (a joined pid namespace answers late).
        """
        args = {"id": id, "bundle": bundle, "overlay": overlay, "stdin": stdin, "log_path": log_path}
        if log_max_line:
            args["log_max_line"] = log_max_line
        if spec is not None:
            args["spec"] = spec
        if ready_later and monitor_protocol(self.socket_path) >= 3:
            args["ready"] = "later"
        if runtime is not None:
            args["runtime"] = runtime
        elif fastinit.enabled() and monitor_protocol(self.socket_path) >= 4:  # (older: without OP_FORK)
            args["init"] = "follows"
            return self._do("create", then=lambda: prepare.init_lines(id, bundle, spec, overlay), **args)
        return self._do("create", **args)  # (an older monitor plans it)

    def start(self, id: str) -> dict:
        return self._do("start", id=id)

    def kill(self, id: str, signal: int | str = 15, all: bool = False) -> None:
        return self._do("kill", _nothing, id=id, signal=signal, all=all)

    def wait(self, id: str, timeout: float | None = None) -> dict:
        """Block until the container exits: {"exit_code", "signal", "finished_at", "oom_killed"}."""
        return self._do("wait", io_timeout=timeout, id=id)

    def state(self, id: str) -> dict:
        return self._do("state", id=id)

    def list(self) -> list[dict]:
        return self._do("list", lambda r: r["containers"])

    def stats(self, id: str) -> dict:
        return self._do("stats", lambda r: r["stats"], id=id)

    def exec(self, id: str, process: dict, timeout: float | None = None,
             output_cap: int = 16 * 1024 * 1024, target: tuple[int, str] | None = None) -> ExecResult:
        """Run process (merged over the container's process spec) in the container and collect output.
        target: (the container's pid, its bundle dir), when the caller knows them: the exec is then planned
        and encoded here (launch/prepare.py), not in the monitor."""
        wait = None if timeout is None else timeout + 10
        args = {"process": process, "output_cap": output_cap, "timeout": timeout}
        if target is not None and monitor_protocol(self.socket_path) >= 4 and \
                (init := prepare.prepare_exec(target[0], target[1], process)) is not None:
            args["init"] = init
        return self._do("exec", _exec_result, io_timeout=wait, id=id, **args)

    def reopen_log(self, id: str) -> None:
        return self._do("reopen_log", _nothing, id=id)

    def update_resources(self, id: str, resources: dict) -> list[str]:
        return self._do("update_resources", lambda r: r["warnings"], id=id, resources=resources)

    def write_stdin(self, id: str, data: bytes) -> int:
        return self._do("write_stdin", lambda r: r["written"], id=id, data=base64.b64encode(data).decode())

    def close_stdin(self, id: str) -> None:
        return self._do("close_stdin", _nothing, id=id)

    def delete(self, id: str, force: bool = False) -> None:
        return self._do("delete", _nothing, id=id, force=force)

    def shutdown(self, force: bool = False) -> None:
        return self._do("shutdown", _nothing, force=force)


def _nothing(_answer: dict) -> None:
    return None


class MonitorClient(Ops):
    def __init__(self, socket_path: str, timeout: float | None = 30.0):
        self.socket_path = socket_path
        self.timeout = timeout

    def _do(self, op: str, finish=None, *, io_timeout: float | None = ..., then=None, **args):
        answer = self.call(op, io_timeout=io_timeout, then=then, **args)
        return finish(answer) if finish is not None else answer

    def call(self, op: str, *, io_timeout: float | None = ..., then=None, **args) -> dict:
        """Send one request and return the answer; raises MonitorError on {"ok": false} or I/O failure.
        then: a function returning dicts, each sent as a line after the request as soon as it is made (see
        create)."""
        req = request_line({"op": op, **args})
        sock = _take(self.socket_path)
        if sock is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
            fresh = True
        else:
            fresh = False
        done = False
        try:
            sock.settimeout(self.timeout if io_timeout is ... else io_timeout)
            if fresh:
                sock.connect(self.socket_path)
            sock.sendall(req)
            if then is not None:
                for line in then():
                    sock.sendall(request_line(line))
            chunks = []
            while not chunks or not chunks[-1].endswith(b"\n"):
                chunk = sock.recv(1 << 20)
                if not chunk:
                    raise MonitorError(f"monitor at {self.socket_path} closed the connection during {op}")
                chunks.append(chunk)
            done = True
        except OSError as exc:
            raise io_error(self.socket_path, op, exc) from None
        finally:
            if done and op != "shutdown":
                _give_back(self.socket_path, sock)
            else:
                sock.close()
        if op == "shutdown":
            forget(self.socket_path)
        return answer_of(b"".join(chunks))



class Stream:
    """A connection switched to frames (interactive exec or attach). Not thread-safe: one reader, one writer
    at most (sends and receives use separate halves of the socket)."""

    def __init__(self, sock: socket.socket, info: dict):
        self.sock = sock
        self.info = info
        self._buf = b""
        self._pending: list[tuple[int, bytes]] = []

    def fileno(self) -> int:
        return self.sock.fileno()

    def _send(self, channel: int, payload: bytes) -> None:
        self.sock.sendall(frame(channel, payload))

    def write_stdin(self, data: bytes) -> None:
        for i in range(0, len(data), 1 << 16):
            self._send(CH_STDIN, data[i:i + (1 << 16)])

    def close_stdin(self) -> None:
        self._send(CH_CLOSE_STDIN, b"")

    def resize(self, width: int, height: int) -> None:
        self._send(CH_RESIZE, json.dumps({"width": width, "height": height}).encode())

    def recv(self) -> tuple[str, bytes | dict] | None:
        """Next event: ("stdout"|"stderr", bytes) or ("exit", {exit_code, ...}); None at end of stream."""
        while True:
            if self._pending:
                channel, payload = self._pending.pop(0)
                if channel == CH_EXIT:
                    return "exit", json.loads(payload)
                return ("stdout" if channel == CH_STDOUT else "stderr"), payload
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                return None
            got, self._buf = split(self._buf + chunk)
            self._pending += got

    def collect(self) -> tuple[bytes, bytes, dict | None]:
        """Read to the end: (stdout, stderr, exit info)."""
        out, err, ex = b"", b"", None
        while (ev := self.recv()) is not None:
            if ev[0] == "stdout":
                out += ev[1]
            elif ev[0] == "stderr":
                err += ev[1]
            else:
                ex = ev[1]
        return out, err, ex

    def close(self) -> None:
        self.sock.close()


def _open_stream(client: MonitorClient, req: dict) -> Stream:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    sock.settimeout(client.timeout)
    try:
        sock.connect(client.socket_path)
        sock.sendall(json.dumps(req).encode() + b"\n")
        buf = b""
        while b"\n" not in buf:
            chunk = sock.recv(1)  # byte by byte: frames may follow the answer line directly
            if not chunk:
                raise MonitorError(f"monitor closed the connection during {req['op']}")
            buf += chunk
    except OSError as exc:
        sock.close()
        raise MonitorError(f"monitor at {client.socket_path}: {req['op']}: {exc}") from None
    answer = json.loads(buf)
    if not answer.pop("ok", False):
        sock.close()
        raise MonitorError(answer.get("error", "unknown error"))
    sock.settimeout(None)
    return Stream(sock, answer)


def exec_stream(client: MonitorClient, id: str, process: dict, stdin: bool = False) -> Stream:
    """Interactive exec: frames carry stdin/stdout/stderr/resize; the last frame is the exit status.
    process["terminal"] = True gives a pty (stdout only; resize works)."""
    return _open_stream(client, {"op": "exec", "id": id, "process": process, "stream": True, "stdin": stdin})


def attach(client: MonitorClient, id: str) -> Stream:
    """Attach to a container's stdio (stdin needs create(..., stdin=True) or a terminal)."""
    return _open_stream(client, {"op": "attach", "id": id})


MonitorClient.exec_stream = exec_stream
MonitorClient.attach = attach
