"""Thin ctypes wrappers over the Linux syscalls the launcher needs (x86_64 and aarch64).

Every wrapper raises OSError(errno, message) on failure, so callers get one error type.
"""
from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import platform
import stat

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long

CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
CLONE_NEWTIME = 0x00000080

NS_FLAGS = {
    "mount": CLONE_NEWNS, "pid": CLONE_NEWPID, "network": CLONE_NEWNET, "ipc": CLONE_NEWIPC,
    "uts": CLONE_NEWUTS, "cgroup": CLONE_NEWCGROUP, "user": CLONE_NEWUSER, "time": CLONE_NEWTIME,
}
# /proc/<pid>/ns/<name> for each OCI namespace type
NS_PROC_NAMES = {
    "mount": "mnt", "pid": "pid", "network": "net", "ipc": "ipc", "uts": "uts",
    "cgroup": "cgroup", "user": "user", "time": "time",
}

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_SYNCHRONOUS = 16
MS_REMOUNT = 32
MS_MANDLOCK = 64
MS_DIRSYNC = 128
MS_NOSYMFOLLOW = 256
MS_NOATIME = 1024
MS_NODIRATIME = 2048
MS_BIND = 4096
MS_MOVE = 8192
MS_REC = 16384
MS_SILENT = 32768
MS_UNBINDABLE = 1 << 17
MS_PRIVATE = 1 << 18
MS_SLAVE = 1 << 19
MS_SHARED = 1 << 20
MS_RELATIME = 1 << 21
MS_STRICTATIME = 1 << 24
MS_LAZYTIME = 1 << 25

MNT_DETACH = 2

PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_SET_KEEPCAPS = 8
PR_SET_NAME = 15
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_SET_CHILD_SUBREAPER = 36
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_RAISE = 2
PR_CAP_AMBIENT_CLEAR_ALL = 4

_ARCH = platform.machine()
if _ARCH == "x86_64":
    SYS = {"clone": 56, "pivot_root": 155, "capget": 125, "capset": 126, "setns": 308,
           "pidfd_open": 434, "gettid": 186, "mount_setattr": 442, "openat2": 437, "bpf": 321}
elif _ARCH == "aarch64":
    SYS = {"clone": 220, "pivot_root": 41, "capget": 90, "capset": 91, "setns": 268,
           "pidfd_open": 434, "gettid": 178, "mount_setattr": 442, "openat2": 437, "bpf": 280}
else:  # pragma: no cover - we only ship for these two
    raise ImportError(f"runtime.linux: unsupported architecture {_ARCH}")


def _check(ret: int, what: str) -> int:
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return ret


def clone(flags: int) -> int:
    """fork()-like clone(2) with namespace flags; returns 0 in the child, the child pid in the parent.

    Only safe from a single-threaded process: no atfork handlers run.
    """
    import signal
    # no stack (child continues on a copy, like fork) and no tid/tls pointers: the argument order that
    # differs between x86_64 and aarch64 does not matter when they are all NULL
    ret = libc.syscall(SYS["clone"], ctypes.c_ulong(flags | signal.SIGCHLD), None, None, None, None)
    return _check(ret, "clone")


def unshare(flags: int) -> None:
    _check(libc.unshare(ctypes.c_int(flags)), "unshare")


def setns(fd: int, nstype: int = 0) -> None:
    _check(libc.setns(ctypes.c_int(fd), ctypes.c_int(nstype)), "setns")


def mount(source: str | None, target: str, fstype: str | None, flags: int = 0, data: str | None = None,
          shown: str | None = None) -> None:
    """mount(2); an error names the target as `shown` when given (a container path, where target is an fd's)."""
    ret = libc.mount(_b(source), _b(target), _b(fstype), ctypes.c_ulong(flags), _b(data))
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {source!r} on {shown or target!r} (type {fstype!r}, flags {flags:#x}, "
                           f"data {data!r}): {os.strerror(err)}")


MOUNT_ATTR_RDONLY = 0x1
MOUNT_ATTR_NOSUID = 0x2
MOUNT_ATTR_NODEV = 0x4
MOUNT_ATTR_NOEXEC = 0x8
_AT_FDCWD = -100
_AT_RECURSIVE = 0x8000


class _MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]


def mount_setattr_recursive(path: str, attr_set: int, attr_clr: int = 0) -> None:
    """Set (and clear) mount attributes on path and every mount below it (Linux >= 5.12)."""
    attr = _MountAttr(attr_set, attr_clr, 0, 0)
    _check(libc.syscall(SYS["mount_setattr"], ctypes.c_int(_AT_FDCWD), _b(path), ctypes.c_uint(_AT_RECURSIVE),
                        ctypes.byref(attr), ctypes.c_size_t(ctypes.sizeof(attr))), f"mount_setattr {path!r}")


def mount_setattr_supported() -> bool:
    """Whether the kernel has mount_setattr(2): a call on a bad fd fails with EBADF there, ENOSYS elsewhere."""
    attr = _MountAttr(0, 0, 0, 0)
    ret = libc.syscall(SYS["mount_setattr"], ctypes.c_int(-1), b"", ctypes.c_uint(0), ctypes.byref(attr),
                       ctypes.c_size_t(ctypes.sizeof(attr)))
    return not (ret < 0 and ctypes.get_errno() == 38)  # ENOSYS


RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_IN_ROOT = 0x10


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


def openat2(dir_fd: int, path: str, flags: int, resolve: int, mode: int = 0) -> int:
    """openat2(2): path resolved by the kernel under the rules of `resolve` (RESOLVE_IN_ROOT: dir_fd is "/" for
    absolute symlinks and ".." alike, nothing resolves outside it). OSError (ENOSYS before Linux 5.6)."""
    how = _OpenHow(flags, mode, resolve)
    ret = libc.syscall(SYS["openat2"], ctypes.c_int(dir_fd), os.fsencode(path), ctypes.byref(how),
                       ctypes.c_size_t(ctypes.sizeof(how)))
    return _check(ret, f"openat2 {path!r}")


def bpf(cmd: int, attr: bytes) -> int:
    """bpf(2) with attr (a union bpf_attr, packed by the caller); returns what it returns (an fd, or 0)."""
    buf = ctypes.create_string_buffer(attr, len(attr))
    return _check(libc.syscall(SYS["bpf"], ctypes.c_int(cmd), buf, ctypes.c_uint(len(attr))), f"bpf({cmd})")


_HAVE: dict[str, bool] = {}


def openat2_supported() -> bool:
    if "openat2" not in _HAVE:
        try:
            os.close(openat2(-100, "/", os.O_PATH | os.O_CLOEXEC, RESOLVE_IN_ROOT))
            _HAVE["openat2"] = True
        except OSError:
            _HAVE["openat2"] = False
    return _HAVE["openat2"]


_AT_EMPTY_PATH = 0x1000
_STATX_MNT_ID = 0x1000
_STATX_MNT_ID_OFFSET = 144  # struct statx: stx_mnt_id, after stx_dev_minor
_STATX_SIZE = 256


def mount_id(fd: int) -> int | None:
    """The id of the mount the file open at fd is on (as in /proc/self/mountinfo): a bind mount of a directory of
    the same file system has the same st_dev but another mount id. statx(2) (Linux >= 5.8), else the fd's
    /proc fdinfo; None where neither tells."""
    if _HAVE.setdefault("statx_mnt_id", hasattr(libc, "statx")):  # (glibc >= 2.28)
        buf = ctypes.create_string_buffer(_STATX_SIZE)
        if libc.statx(ctypes.c_int(fd), b"", ctypes.c_int(_AT_EMPTY_PATH), ctypes.c_uint(_STATX_MNT_ID), buf) == 0:
            mask = int.from_bytes(buf.raw[:4], "little")
            if mask & _STATX_MNT_ID:
                return int.from_bytes(buf.raw[_STATX_MNT_ID_OFFSET:_STATX_MNT_ID_OFFSET + 8], "little")
        elif ctypes.get_errno() == errno.EBADF:
            raise OSError(errno.EBADF, os.strerror(errno.EBADF))
        _HAVE["statx_mnt_id"] = False
    try:
        with open(f"/proc/self/fdinfo/{fd}", "rb") as f:
            for line in f:
                if line.startswith(b"mnt_id:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def umount2(target: str, flags: int = 0) -> None:
    _check(libc.umount2(_b(target), ctypes.c_int(flags)), f"umount {target!r}")


def pivot_root(new_root: str, put_old: str) -> None:
    _check(libc.syscall(SYS["pivot_root"], _b(new_root), _b(put_old)), "pivot_root")


def sethostname(name: str) -> None:
    raw = name.encode()
    _check(libc.sethostname(raw, ctypes.c_size_t(len(raw))), "sethostname")


def setdomainname(name: str) -> None:
    raw = name.encode()
    _check(libc.setdomainname(raw, ctypes.c_size_t(len(raw))), "setdomainname")


def prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    return _check(libc.prctl(ctypes.c_int(option), ctypes.c_ulong(arg2), ctypes.c_ulong(arg3),
                             ctypes.c_ulong(arg4), ctypes.c_ulong(arg5)), f"prctl({option})")


def prctl_args(option: int, arg2: int = 0) -> tuple:
    """prctl arguments as ready ctypes values, built ahead (in the parent) for prctl_call in the child."""
    return (ctypes.c_int(option), ctypes.c_ulong(arg2), ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_ulong(0))


def prctl_call(args: tuple) -> None:
    if libc.prctl(*args) < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl({args[0].value}, {args[1].value}): {os.strerror(err)}")


def set_comm(name: str) -> None:
    """Set the process name shown by ps/top (15 bytes max)."""
    libc.prctl(ctypes.c_int(PR_SET_NAME), ctypes.c_char_p(name.encode()[:15]), ctypes.c_ulong(0),
               ctypes.c_ulong(0), ctypes.c_ulong(0))


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


_CAP_V3 = 0x20080522


def capset(effective: int, permitted: int, inheritable: int) -> None:
    """Set the calling thread's capability sets (64-bit masks)."""
    hdr = _CapHeader(_CAP_V3, 0)
    data = (_CapData * 2)()
    for i in range(2):
        shift = 32 * i
        data[i].effective = (effective >> shift) & 0xFFFFFFFF
        data[i].permitted = (permitted >> shift) & 0xFFFFFFFF
        data[i].inheritable = (inheritable >> shift) & 0xFFFFFFFF
    _check(libc.syscall(SYS["capset"], ctypes.byref(hdr), data), "capset")


def cap_last_cap() -> int:
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            return int(f.read())
    except OSError:
        return 40


def pidfd_open(pid: int) -> int:
    return _check(libc.syscall(SYS["pidfd_open"], ctypes.c_int(pid), ctypes.c_uint(0)), "pidfd_open")


def close_all_but(keep) -> None:
    """Close every fd of this process but those in keep (None and negative numbers are ignored), and put
    /dev/null on 0-2 unless they are kept."""
    keep = sorted({fd for fd in keep if fd is not None and fd >= 0})
    null = os.open("/dev/null", os.O_RDWR | os.O_CLOEXEC)
    for fd in range(3):
        if fd not in keep:
            os.dup2(null, fd)
    if null > 2 and null not in keep:
        os.close(null)
    low = 3
    for fd in keep:
        if fd >= low:
            os.closerange(low, fd)
            low = fd + 1
    os.closerange(low, 1 << 20)


MFD_EXEC = 0x10      # (Linux 6.3)
F_SEAL_EXEC = 0x20   # (Linux 6.3)


def sealed_copy(path: str, name: str, min_fd: int = 0) -> str:
    """A sealed memfd copy of the file at path (no write, grow, shrink or new seal: the kernel refuses them to
    everyone), close-on-exec, at an fd >= min_fd; returns "/proc/self/fd/<n>", by which this process (and its
    forks) can execute it. The fd stays open for the process's life. Where the kernel knows them (6.3+), it is
    made executable on purpose (MFD_EXEC: vm.memfd_noexec=1 would make it not executable) and its mode sealed
    (F_SEAL_EXEC)."""
    try:
        fd = os.memfd_create(name, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING | MFD_EXEC)
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            raise
        fd = os.memfd_create(name, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    if fd < min_fd:
        moved = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, min_fd)
        os.close(fd)
        fd = moved
    try:
        src = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            size = os.fstat(src).st_size
            sent = 0
            while sent < size:
                n = os.sendfile(fd, src, sent, size - sent)
                if n == 0:
                    break
                sent += n
        finally:
            os.close(src)
        seals = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE
        try:
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals | F_SEAL_EXEC)
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SEAL)
    except BaseException:
        os.close(fd)
        raise
    return f"/proc/self/fd/{fd}"


def resolve(path: str) -> tuple[str, bool]:
    """(os.path.realpath(path), whether it is a directory) of an existing path, from the kernel: an O_PATH open
    and /proc/self/fd, a third of realpath's time (which lstats every component in Python; the planning of a
    container with a few bind mounts spent a third of its time there). OSError if it does not exist (a dangling
    symlink included, where realpath would still answer)."""
    fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    try:
        return os.readlink(f"/proc/self/fd/{fd}"), stat.S_ISDIR(os.fstat(fd).st_mode)
    finally:
        os.close(fd)


def _b(s: str | None) -> bytes | None:
    return None if s is None else os.fsencode(s)


def proc_start_time(pid: int) -> int | None:
    """Field 22 of /proc/<pid>/stat (start time in clock ticks since boot), None when the pid is gone.

    A (pid, start_time) pair identifies a process across pid reuse.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    # the comm field may contain spaces and parentheses: split after the last ')'
    fields = raw[raw.rindex(b")") + 2:].split()
    return int(fields[19])


def is_alive(pid: int, start_time: int | None) -> bool:
    """True when the process pid still exists, is not a zombie, and has the recorded start time."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return False
    rest = raw[raw.rindex(b")") + 2:].split()
    if rest[0] in (b"Z", b"X"):
        return False
    return start_time is None or int(rest[19]) == start_time


IN_MODIFY = 0x00000002
IN_CLOSE_WRITE = 0x00000008
IN_MOVED_TO = 0x00000080
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_ONLYDIR = 0x01000000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC


def inotify_init() -> int:
    """A non-blocking, close-on-exec inotify fd (readable when an event is queued)."""
    return _check(libc.inotify_init1(ctypes.c_int(IN_NONBLOCK | IN_CLOEXEC)), "inotify_init1")


def inotify_add_watch(fd: int, path: str, mask: int) -> int:
    return _check(libc.inotify_add_watch(ctypes.c_int(fd), os.fsencode(path), ctypes.c_uint32(mask)),
                  f"inotify_add_watch {path}")


def inotify_rm_watch(fd: int, wd: int) -> None:
    _check(libc.inotify_rm_watch(ctypes.c_int(fd), ctypes.c_int(wd)), "inotify_rm_watch")


def inotify_watch(path: str, mask: int = IN_MODIFY) -> int:
    """A non-blocking, close-on-exec inotify fd watching path (readable when an event is queued)."""
    fd = inotify_init()
    try:
        inotify_add_watch(fd, path, mask)
    except OSError:
        os.close(fd)
        raise
    return fd
