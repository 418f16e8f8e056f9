"""The spawner ("zygote"): a small pre-imported process that forks pod monitors on request, so a monitor
costs a fork instead of a new interpreter.

It is a fresh `python -S` running only runtime/ (stdlib only), started once (~30 ms) by the daemon before
it imports grpc: a fork of the daemon itself would carry the daemon's memory (grpc, structlog, asyncio) into
every monitor and make each container fork slower (measured: +1 ms per fork with structlog loaded).

    spawner = runtime.spawner.start()            # at daemon start-up, before `import grpc`
    sock = spawner.spawn_monitor(pod_id, state_dir)   # any thread; returns the monitor socket path
    spawner.close()                              # monitors keep running
Requests and answers are JSON lines over a socketpair. The spawner exits when the daemon end closes.
"""
from __future__ import annotations

import errno
import json
import os
import socket
import sys

# threading and subprocess: imported where the daemon's side uses them, never in the spawner process (see main)

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class SpawnerError(Exception):
    pass


class Spawner:
    def __init__(self, sock: socket.socket, proc):
        import threading
        self._sock = sock
        self._file = sock.makefile("rb")
        self._proc = proc  # subprocess.Popen
        self.pid = proc.pid
        self._lock = threading.Lock()
        self.warning: str | None = None  # how it runs less safely than it should (start() says)

    def spawn_monitor(self, pod_id: str, state_dir: str) -> str:
        """Start a detached monitor for a pod; returns its socket path once it listens."""
        req = json.dumps({"pod_id": pod_id, "state_dir": os.path.abspath(state_dir)}).encode() + b"\n"
        with self._lock:
            try:
                self._sock.sendall(req)
                line = self._file.readline()
            except OSError as exc:
                raise SpawnerError(f"spawner unreachable: {exc}") from None
        if not line:
            raise SpawnerError("spawner exited")
        ans = json.loads(line)
        if not ans.get("ok"):
            raise SpawnerError(ans.get("error", "spawn failed"))
        return ans["socket"]

    def alive(self) -> bool:
        return self._proc.poll() is None

    def close(self) -> None:
        """Stop the spawner (monitors it made keep running)."""
        self._file.close()
        self._sock.close()
        self._proc.wait()


def start() -> Spawner:
    """Start the spawner process; returns once it has imported the monitor code and is ready.

    It runs from a sealed memfd copy of the interpreter, and so do the monitors it forks and the Python children
    they clone into containers: a process of a container that opened one's /proc/<pid>/exe would get that copy,
    which no one can write, not the host's interpreter (CVE-2019-5736; the children are non-dumpable as well).
    An interpreter that cannot run from a copy (one that finds its libraries relative to its own path) runs from
    its file, and the Spawner says so in .warning."""
    from runtime.host import linux
    exe = linux.sealed_copy(os.path.realpath(sys.executable), "python")
    try:
        return _start(exe)
    except (OSError, SpawnerError) as exc:  # only what says that the copy does not run
        if isinstance(exc, OSError) and exc.errno not in (errno.ENOEXEC, errno.EACCES, errno.ENOENT, errno.EPERM):
            raise
        sp = _start(None)
        sp.warning = (f"the interpreter does not run from a sealed copy ({exc}): monitors and their Python "
                      f"children run from {os.path.realpath(sys.executable)}, which a container's root could "
                      "open while one enters it (CVE-2019-5736)")
        return sp


def _start(exe: str | None) -> Spawner:
    """The spawner, run from exe ("/proc/self/fd/<n>", closed here) or from sys.executable (None)."""
    import subprocess
    exe_fd = int(exe.rsplit("/", 1)[1]) if exe is not None else -1
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    close_exe = f"os.close({exe_fd}); " if exe is not None else ""
    code = (f"import os; {close_exe}import sys; sys.path.insert(0, {_ROOT!r}); "
            f"from runtime.spawner import main; main({child.fileno()})")
    try:
        # argv[0] stays the interpreter's path: Python finds its standard library from it
        proc = subprocess.Popen([sys.executable, "-S", "-c", code], executable=exe or sys.executable,
                                pass_fds=[child.fileno()] + ([exe_fd] if exe is not None else []),
                                stdin=subprocess.DEVNULL, close_fds=True)
    except BaseException:
        parent.close()
        raise
    finally:
        if exe is not None:
            os.close(exe_fd)
        child.close()
    sp = Spawner(parent, proc)
    ready = sp._file.readline()
    if ready != b"READY\n":
        sp.close()
        raise SpawnerError(f"spawner failed to start: {ready!r}")
    return sp


def main(fd: int) -> None:
    """Spawner process entry point: serve spawn requests on the inherited socket until EOF.

    It imports no more than the monitors need. threading, in particular, registers an at-fork handler: Python
    code that ran in both processes of each monitor's double fork, writing to objects shared with the spawner.
    It cost every pod 0.23 MiB of private memory (2.95 -> 2.72 MiB per monitor without it, measured).

    It keeps one spare monitor forked ahead (runtime.monitor.server.prefork): a request hands the spare its pod
    (bind the socket, write monitor.json: ~1 ms) and the next spare is forked after the answer, while the
    daemon goes on with the pod. At EOF the unassigned spare is released (it exits before the spawner does)."""
    import signal
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from runtime.host import linux
    from runtime.launch import fastinit, initproc
    from runtime.monitor.server import prefork
    from runtime.state import SOCKET_NAME
    linux.set_comm("pycri-spawner")
    if fastinit.enabled():
        initproc.sealed_binary()  # one copy, shared by every monitor forked from here
    initproc.warm()
    sock = socket.socket(fileno=fd)
    spare = prefork()
    sock.sendall(b"READY\n")
    f = sock.makefile("rb")
    try:
        for line in f:
            try:
                req = json.loads(line)
                state_dir = req["state_dir"]
                try:
                    pid = (spare or prefork()).assign(state_dir, str(req.get("pod_id", "")))
                except RuntimeError:
                    if spare is None:
                        raise
                    spare = None  # the spare died (killed?): once more with a fresh one
                    pid = prefork().assign(state_dir, str(req.get("pod_id", "")))
                ans = {"ok": True, "pid": pid, "socket": os.path.join(state_dir, SOCKET_NAME)}
            except Exception as exc:  # noqa: BLE001 - report, keep serving
                ans = {"ok": False, "error": str(exc)}
            spare = None
            sock.sendall(json.dumps(ans).encode() + b"\n")
            try:
                spare = prefork()  # for the next pod, off the critical path
            except OSError:
                spare = None
    finally:
        if spare is not None:
            spare.close()
