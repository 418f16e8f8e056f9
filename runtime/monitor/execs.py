"""Execs: a process run in a running container by its runner, its output captured (capped) or streamed as
frames, its deadline kept. ExecOps is a part of the Monitor (server.py): it needs its containers and fds."""
from __future__ import annotations

import base64
import os
import signal
import time

from runtime.monitor.conns import Conn
from runtime.monitor.runner import RequestError
from runtime.monitor.stdio import container_pty, nonblock

DEFAULT_OUTPUT_CAP = 16 * 1024 * 1024


class Exec:
    def __init__(self, conn: Conn, container, cap: int, deadline: float | None):
        self.conn = conn
        self.container = container
        self.cap = cap
        self.deadline = deadline
        self.pid = 0
        self.out = {"stdout": bytearray(), "stderr": bytearray()}
        self.truncated = False
        self.outputs: dict[int, str] = {}   # read fd -> stream name
        self.status: int | None = None
        self.timed_out = False
        self.stream: Conn | None = None     # interactive exec: output goes here as frames
        self.stdin_w: int | None = None
        self.master: int | None = None
        self.stdin_pending = b""
        self.stdin_eof = False

    def detach(self, conn: Conn) -> None:
        if self.stream is conn:
            self.stream = None  # the exec keeps running; its output is dropped


class ExecOps:
    def op_exec(self, conn, req):
        """Run a process in the container: answered at its end, or a frame stream ("stream")."""
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
            stdio = self._pipes(ex, streaming and bool(req.get("stdin")))
        try:
            pid, master = c.runner.exec(process, stdio, console, req.get("init"))
            if master is not None:
                nonblock(master)
                self._watch(master, ex, "stdout")
                if streaming:
                    ex.master = master
        except BaseException:
            for fd in list(ex.outputs):
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
        # a probe's exec (no stream) every few seconds per pod: at debug (runtime/jsonlog.py says how to see them)
        self._later(self.log.info if streaming else self.log.debug, "exec.started", container_id=c.id, pid=pid,
                    stream=streaming)
        if streaming:
            self._reply(conn, {"ok": True, "pid": pid, "tty": process["terminal"]})
            conn.stream = ex
            ex.stream = conn
        return None

    def _maybe_finish_exec(self, ex: Exec, force: bool = False) -> None:
        # answer once the process is reaped; late output from leftover children is dropped
        if ex.status is None or ex.pid not in self.execs:
            return
        if ex.outputs and not force:
            return
        for fd in list(ex.outputs):
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
        self._later(self.log.debug, "exec.exited", container_id=ex.container.id, pid=ex.pid, exit_code=ex.status,
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
