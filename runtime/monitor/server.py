"""The per-pod monitor: a single-threaded, detached child subreaper that forks, reaps and logs containers.

Protocol (unix socket <state_dir>/monitor.sock): one JSON object per line each way. A request is
{"op": ..., ...}; the answer is {"ok": true, ...} or {"ok": false, "error": "..."}. A connection may send
several requests; answers come in order. "wait" and "exec" answer when the process ends.
See docs/runtime.md for the ops.

Here: the loop, the container ops and exits (Monitor), the spare monitor the spawner keeps (SpareMonitor). Beside
it: conns.py (connections, frames, output fds: Monitor's base), execs.py, the runners behind runner.Runner
(builtin.py, ocirunner.py + oci.py), spares.py (pycri-init spares), oom.py, stdio.py, logfile.py (CRI logs).
"""
from __future__ import annotations

import errno
import fcntl
import gc
import json
import os
import selectors
import signal
import struct
import termios
import time

from runtime import cgroups, jsonlog, launch, state
from runtime.host import linux, trees
from runtime.launch import initproc
from runtime.monitor import oom
from runtime.monitor.builtin import BuiltinRunner
from runtime.monitor.conns import STREAM_CH, Conn, InitLines, Server
from runtime.monitor.execs import Exec, ExecOps
from runtime.monitor.logfile import DEFAULT_MAX_LINE, LogFile
from runtime.monitor.runner import RequestError, Runner, kill_quietly
from runtime.monitor.spares import InitSpares
from runtime.monitor.stdio import nonblock

LOG_PATH_ANNOTATION = "io.pycri.log-path"
log = jsonlog.get_logger("runtime.monitor")


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
        self.oom_seen = 0                     # the highest OOM kill count read while it ran (see oom.event)
        self.oom_since = 0.0                  # time.monotonic() when its cgroup began to be watched
        self.oom_watch: cgroups.OomWatch | None = None
        self.log: LogFile | None = None
        self.log_path: str | None = None
        self.outputs: dict[int, str] = {}     # read fd -> stream name
        self.stdin_w: int | None = None
        self.master: int | None = None        # pty master (terminal)
        self.init_lines: InitLines | None = None  # during a create: its init's lines that follow
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

    def detach(self, conn: Conn) -> None:
        if conn in self.attached:
            self.attached.remove(conn)

    def write_state(self, status: str | None = None) -> None:
        """state.json: its record (with this status)."""
        record = self.record()
        if status is not None:
            record["status"] = status
        state.write_json(os.path.join(self.dir, "state.json"), record)

    def open_log(self, path: str, max_line: int) -> None:
        self.log_path = path
        self.log = LogFile(path, max_line)


# What this monitor understands beyond the first requests, for a client of newer or older code (monitors
# outlive a daemon upgrade): 2 = a create with "init": "follows" (conns.InitLines); 3 = a create with "ready": "later"
# (answered once the child is launched: op_start waits for the end of its set-up); 4 = prepared inits (of a
# create or an exec) may hold OP_FORK (its pycri-init knows it). Written to monitor.json; a monitor.json without
# it is older code, which plans every create itself (runtime/client.py: monitor_protocol).
PROTOCOL = 4


class Monitor(Server, ExecOps):
    """One pod's monitor: the loop, the container ops (op_<name>), and the processes' exits."""

    def __init__(self, state_dir: str, pod_id: str = ""):
        super().__init__(log.bind(pod_id=pod_id))
        self.state_dir = os.path.abspath(state_dir)
        self.pod_id = pod_id
        self.containers: dict[str, Container] = {}
        self.execs: dict[int, Exec] = {}
        self.running = True
        self.spares = InitSpares(lambda error: self.log.warning("monitor.spare_failed", error=error))

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
        self._listen(path)
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
            when = self.spares.deadline()
            if when is not None:
                left = max(0.0, when - time.monotonic())
                timeout = left if timeout is None else min(timeout, left)
            # an OOM kill's event before the exit it caused, when both come in one batch (see oom.event)
            for key, mask in sorted(self.sel.select(timeout), key=lambda km: km[0].data == "signal"):
                try:
                    self._dispatch(key, mask)
                except Exception:  # noqa: BLE001 - keep serving the pod's other containers
                    self.log.exception("monitor.event_failed")
                if self._after:  # e.g. an exit's log line, after its waiters were answered
                    self._run_after()
            self._check_deadlines()
            self.spares.tick()
        self._cleanup()

    def _dispatch(self, key, mask) -> None:
        tag = key.data
        if tag == "listen":
            self._accept()
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
        elif isinstance(tag, oom.OomTag):
            oom.event(tag.container)
        elif isinstance(tag, tuple):
            fd, owner, stream = tag
            if fd in owner.outputs:  # an earlier event of this batch may have closed it
                self._output(fd, owner, stream)

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
            lines = InitLines(conn, head_follows=True)
        elif isinstance(init, dict) and "tail" in init and init["tail"] is None:
            lines = InitLines(conn, head_follows=False)
        else:
            lines = None
        try:
            return self._op_create(req, lines)
        finally:
            if lines is not None:
                lines.drain()  # read even when the create failed: never left for the next request

    def _op_create(self, req, lines: "InitLines | None"):
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
        if self.spares.due is not None:  # a create sooner than SPARE_AFTER_START_S: the spare first
            self.spares.make_due()
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
        return self._pipes(c, stdin), None

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
            self.spares.after_start(c.runner.spare_hint, c.id)
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
        self.spares.end()  # nothing of ours outlives the answer
        self.running = False
        self._reply(conn, {"ok": True})
        self._conn_flush(conn)
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
                self._stream_send(conn, STREAM_CH[stream], data)
        elif owner.conn.stream is owner:  # interactive exec (output dropped once the client left)
            if owner.stream is not None:
                self._stream_send(owner.stream, STREAM_CH[stream], data)
        else:
            buf = owner.out[stream]
            room = owner.cap - len(owner.out["stdout"]) - len(owner.out["stderr"])  # (the cap is for both)
            if room < len(data):
                owner.truncated = True
            buf += data[:max(0, room)]
        return True

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
                killed = bool(c.cgroup and oom.kills(c, sig) > c.oom_base)
                c.exit = {"exit_code": exit_code, "signal": sig, "finished_at": time.time_ns(),
                          "oom_killed": killed}
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
        if self.spares.due_for(c.id):
            self._later(self.spares.make_due)
        for conn in list(c.attached):
            self._stream_end(conn, c.exit)
        c.attached.clear()

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
        oom.unwatch(self.sel, c)
        if c.cgroup:
            c.cgroup.remove()
        trees.remove_tree(c.dir)

    def _cleanup(self) -> None:
        self.spares.end()
        self._close_all()
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
