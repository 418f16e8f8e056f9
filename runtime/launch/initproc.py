"""pycri-init's processes: run from a sealed copy of its binary, spawned for a plan, or started ahead of need as a
spare (made by a factory, so that the monitor need not wait); and the spawner's warm-up of all that
(docs/runtime.md, "Fast init" and "The spare"). The plans they carry out are encoded by launch/fastinit.py.

    spawn(plan, c2p_w, p2c_r) -> pid
    Spare(new_pidns[, factory]) a pycri-init started ahead of need; .use(plan, c2p_w, p2c_r) -> pid
    SpareFactory()              a pycri-init that makes spares as the monitor's children, so it need not wait
"""
from __future__ import annotations

import array
import errno
import os
import socket
import struct

from runtime import cgroups
from runtime.host import linux
from runtime.launch.fastinit import BASE, BINARY, HEADER, OP_CONTINUE, _PACK_I, _U8, eligible, encode_parts
from runtime.launch.plan import LaunchError, plan_from_spec

_sealed: str | None = None  # "/proc/self/fd/<n>" of this process's sealed copy of BINARY, once made
_UNPACK_I = struct.Struct("=i").unpack  # a factory's answer (an int32_t)


def sealed_binary() -> str:
    """The path to execute pycri-init by: a sealed memfd copy of BINARY, made once per process (the spawner
    makes it before it forks monitors, which share it), as runc runs itself since CVE-2019-5736. A process of
    the container that opened the exe of one it sees start would get that copy, which no one can write, not
    the file on the host (and pycri-init makes itself non-dumpable besides, so that it cannot be opened)."""
    global _sealed
    if _sealed is None:  # (above the fds a spawn dup2s to: SPARE_SOCK, BASE..BASE+5)
        _sealed = linux.sealed_copy(BINARY, "pycri-init", min_fd=BASE + 6)
    return _sealed


def sealed_fd() -> int | None:
    """The fd of that copy, if this process has made it (a process that closes its fds keeps this one)."""
    return int(_sealed.rsplit("/", 1)[1]) if _sealed is not None else None


_WARM_SPEC = {
    "ociVersion": "1.0.2", "root": {"path": "/dev"},  # any directory: nothing is mounted
    "process": {"args": ["true"], "cwd": "/", "env": ["PATH=/usr/bin:/bin"], "noNewPrivileges": True,
                "user": {"uid": 0, "gid": 0}, "rlimits": [{"type": "RLIMIT_NOFILE", "soft": 1024, "hard": 1024}],
                "capabilities": {k: ["CAP_CHOWN", "CAP_KILL", "CAP_NET_BIND_SERVICE"]
                                 for k in ("bounding", "effective", "permitted")}},
    "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"},
               {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "mode=755"]},
               {"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec"]},
               {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "ro"]},
               {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["ro"]},
               {"destination": "/etc/hostname", "type": "bind", "source": "/etc/hostname", "options": ["rbind"]}],
    "linux": {"namespaces": [{"type": t} for t in ("pid", "ipc", "uts", "mount", "network")],
              "maskedPaths": ["/proc/kcore"], "readonlyPaths": ["/proc/sys"]},
}


def warm() -> None:
    """Plan and encode a typical container once: for the spawner, before it forks monitors, so that what the
    first create fills in (host facts, caches, the code's warm-up) is shared with every monitor instead of
    copied into each (measured: ~0.3 MiB private per monitor without it). The same for the cgroup v1
    hierarchies (read once per process), for the ctypes calls a spawn makes around a new pid namespace
    (~0.15 MiB: no-op ones here, so that ctypes makes its function objects in the spawner), and for the
    spare-factory code a monitor runs after its first start (~45 KiB): one factory and one spare, started and
    reaped here; nothing is left running."""
    try:
        cgroups.open_cgroup("/pycri-warm-up").self_attach_paths()  # reads the v1 hierarchies (cached), makes nothing
    except (cgroups.CgroupError, OSError):
        pass
    try:
        plan = plan_from_spec(_WARM_SPEC, None, stdio=(0, 1, 2))
        plan.go_stage = "late"
        if eligible(plan):
            encode_parts(plan)
    except (LaunchError, OSError, ValueError):
        pass  # only a warm-up
    try:
        own = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        linux.unshare(0)
        linux.setns(own, linux.CLONE_NEWPID)  # our own: changes nothing
    except OSError:
        pass
    finally:
        os.close(own)
    try:  # a spare from a factory, as a monitor gets them; both exit on EOF and are reaped here
        factory = SpareFactory()
    except OSError:
        return
    pids = [factory.pid]
    try:
        spare = Spare(True, factory)
        pids.append(spare.pid)
        spare.close()
    except OSError:
        pass
    finally:
        factory.close()
        for pid in pids:
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass


SPARE_SOCK = 3          # the spare's end of its socket (see pycri-init.c, spare mode)


class Spare:
    """pycri-init started ahead of need, waiting on a socket for its plan and fds; in a new pid namespace of
    its own when new_pidns (it is then the namespace's pid 1, as spawn() makes it). Made by factory (a
    SpareFactory) when given, else spawned here. Used once, or released (close(): it exits; the monitor reaps
    it as any other child)."""

    def __init__(self, new_pidns: bool, factory: "SpareFactory | None" = None):
        self.new_pidns = new_pidns
        self._factory = factory
        self._pid: int | None = None
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        own_ns = -1
        try:
            if factory is not None:
                factory.request(self, theirs)
            else:
                if new_pidns:
                    own_ns = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
                    linux.unshare(linux.CLONE_NEWPID)
                try:
                    self._pid = os.posix_spawn(sealed_binary(), [BINARY, "spare", str(SPARE_SOCK)],
                                               _environ(),
                                               file_actions=[(os.POSIX_SPAWN_DUP2, theirs.fileno(), SPARE_SOCK)])
                finally:
                    if own_ns >= 0:
                        linux.setns(own_ns, linux.CLONE_NEWPID)
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
            if own_ns >= 0:
                os.close(own_ns)
        self.sock: socket.socket | None = ours

    @property
    def pid(self) -> int:
        """Its pid; from a factory, read from its answer the first time (OSError if the factory failed)."""
        if self._pid is None:
            self._factory.answers(until=self)
        if self._pid < 0:
            raise OSError(-self._pid, f"making a spare: {os.strerror(-self._pid)}")
        return self._pid

    def fits(self, plan) -> bool:
        """Whether this spare can carry out plan (an eligible one): the same pid namespace choice, none joined."""
        return self.sock is not None and plan.join_pid is None and \
            self.new_pidns == bool(plan.clone_flags & linux.CLONE_NEWPID)

    def use(self, plan, c2p_w: int, p2c_r: int, parts=None) -> int:
        """Hand plan (and the pipes, the stdio) to the spare; returns its pid. Raises OSError if it is gone
        (ValueError: a plan that cannot be encoded). parts: (head, tail) made already (encode_parts), where tail
        may be a function that returns it (it is called once the spare has the head). The plan goes in two parts:
        the spare joins and makes the namespaces (the slow part of its set-up) on the first."""
        stdio = list(plan.stdio) if plan.stdio is not None else []
        head, tail = parts if parts is not None else encode_parts(plan)
        head_data = HEADER + head + _U8[OP_CONTINUE]
        sock, self.sock = self.sock, None
        try:
            sock.sendmsg([_PACK_I(len(head_data)) + head_data],
                         [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [p2c_r, c2p_w, *stdio]))])
            if callable(tail):
                tail = tail()
            sock.sendall(_PACK_I(len(tail)) + tail)
        finally:
            sock.close()  # (a spare cut short reads EOF and exits)
        return self.pid

    def close(self) -> None:
        """Release an unused spare: it reads EOF and exits."""
        if self.sock is not None:
            self.sock.close()
            self.sock = None


class SpareFactory:
    """pycri-init in factory mode (see pycri-init.c): it makes spares on request, cloned as the monitor's own
    children (CLONE_PARENT), so that the monitor neither waits for a spawn nor makes their pid namespaces: a
    spare costs it a socketpair and a message (~0.05 ms) instead of ~0.3-0.5 ms, just after a start, when a
    short-lived container may already be exiting. Each answer (the spare's pid) is read when that pid is first
    needed. Closed (it exits on EOF) with the last spare it made; the monitor reaps it as any child."""

    ANSWER_WAIT_S = 5.0

    def __init__(self):
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            self.pid = os.posix_spawn(sealed_binary(), [BINARY, "factory", str(SPARE_SOCK)], _environ(),
                                      file_actions=[(os.POSIX_SPAWN_DUP2, theirs.fileno(), SPARE_SOCK)])
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        ours.settimeout(self.ANSWER_WAIT_S)
        self.sock: socket.socket | None = ours
        self._waiting: list[Spare] = []  # the spares asked for whose pid is still to be read, oldest first

    def request(self, spare: Spare, theirs: socket.socket) -> None:
        """Ask for spare, whose end of its socket is theirs. Raises OSError if the factory is gone."""
        if self.sock is None:
            raise OSError(errno.EPIPE, "the spare factory is closed")
        self.sock.sendmsg([b"\1" if spare.new_pidns else b"\0"],
                          [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [theirs.fileno()]))])
        self._waiting.append(spare)

    def answers(self, until: Spare) -> None:
        """Read the answers up to until's; a factory gone (or silent) fails every spare still waiting."""
        try:
            while self._waiting and until._pid is None:
                data = b""
                while len(data) < 4:
                    chunk = self.sock.recv(4 - len(data)) if self.sock is not None else b""
                    if not chunk:
                        raise OSError(errno.EPIPE, "the spare factory is gone")
                    data += chunk
                self._waiting.pop(0)._pid = _UNPACK_I(data)[0]
        except OSError as exc:
            for spare in self._waiting:
                spare._pid = -(exc.errno or errno.EPIPE)
            self._waiting.clear()
        if until._pid is None:
            until._pid = -errno.EPIPE

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


def _environ():
    """os.environ as posix_spawn takes it fastest: its bytes dict (kept current by os.environ), which the C side
    reads as it is. os.environ itself is converted by Python code, which costs a monitor ~0.1 MiB of pages."""
    data = getattr(os.environ, "_data", None)
    return data if isinstance(data, dict) else os.environ


def spawn(plan, c2p_w: int, p2c_r: int, parts=None) -> int:
    """Start pycri-init for plan; returns its pid (for a plan that joins a pid namespace, that of an intermediate
    that forks the container's process and reports its pid: launch.Process reads it). parts: as Spare.use's. A
    new pid namespace is made here, around the spawn."""
    stdio = list(plan.stdio) if plan.stdio is not None else []
    head, tail = parts if parts is not None else encode_parts(plan)
    if callable(tail):
        tail = tail()
    exe = sealed_binary()
    memfd = os.memfd_create("pycri-plan", os.MFD_CLOEXEC)
    own_ns = -1
    try:
        os.write(memfd, HEADER + head + tail)
        # the fds go to BASE.. (where the plan expects the stdio): first above every source, so that no dup2
        # overwrites a source still to be moved
        srcs = [memfd, p2c_r, c2p_w, *stdio]
        high = max(*srcs, BASE + len(srcs), sealed_fd()) + 1  # (nor the binary's fd)
        actions = [(os.POSIX_SPAWN_DUP2, fd, high + i) for i, fd in enumerate(srcs)]
        actions += [(os.POSIX_SPAWN_DUP2, high + i, BASE + i) for i in range(len(srcs))]
        actions += [(os.POSIX_SPAWN_CLOSE, high + i) for i in range(len(srcs))]
        if plan.clone_flags & linux.CLONE_NEWPID:
            own_ns = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
            linux.unshare(linux.CLONE_NEWPID)
        try:
            # the monitor's environment, as a cloned child would have until its execve (the tests' leak check
            # finds containers by it)
            return os.posix_spawn(exe, [BINARY, str(BASE)], _environ(), file_actions=actions)
        finally:
            if own_ns >= 0:
                linux.setns(own_ns, linux.CLONE_NEWPID)
    finally:
        os.close(memfd)
        if own_ns >= 0:
            os.close(own_ns)
