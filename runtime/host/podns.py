"""Pod-level kernel objects that outlive any one process: a network namespace pinned to a file, and the pod's
/dev/shm tmpfs. Safe to call from a multithreaded process (the daemon): nothing here forks.

A netns is made by a short-lived thread that unshares its own network namespace (namespaces of that kind are
per-thread), brings `lo` up, bind-mounts /proc/thread-self/ns/net onto the pin file and ends; the pin keeps the
namespace alive with no process in it, across daemon restarts.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import struct
import threading

from runtime.host import linux

SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1


class PodNSError(Exception):
    pass


def _loopback_up() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        req = struct.pack("16sh", b"lo", 0)
        flags = struct.unpack("16sh", fcntl.ioctl(s.fileno(), SIOCGIFFLAGS, req))[1]
        fcntl.ioctl(s.fileno(), SIOCSIFFLAGS, struct.pack("16sh", b"lo", flags | IFF_UP))


def create_netns(pin_path: str) -> None:
    """Create a network namespace with lo up and pin it at pin_path (a file created here)."""
    os.makedirs(os.path.dirname(pin_path), mode=0o700, exist_ok=True)
    fd = os.open(pin_path, os.O_RDONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o444)
    os.close(fd)
    error: list[BaseException] = []

    def make() -> None:
        try:
            linux.unshare(linux.CLONE_NEWNET)
            _loopback_up()
            linux.mount(f"/proc/self/task/{threading.get_native_id()}/ns/net", pin_path, None, linux.MS_BIND)
        except BaseException as exc:  # noqa: BLE001 - reported to the caller below
            error.append(exc)
        # The thread ends here, and its network namespace with it unless the pin holds it.

    t = threading.Thread(target=make, name="pycri-netns")
    t.start()
    t.join()
    if error:
        try:
            os.unlink(pin_path)
        except OSError:
            pass
        raise PodNSError(f"cannot create network namespace at {pin_path}: {error[0]}")


def pin_from_pid(pid: int, kind: str, pin_path: str) -> None:
    """Pin a namespace of a running process (/proc/<pid>/ns/<kind>: "net", "user") at pin_path (created here).

    For a pod with a user namespace, the infra container makes the user namespace and the network namespace inside
    it (so that it belongs to it); the daemon pins both from the infra process, as it pins a netns it made."""
    os.makedirs(os.path.dirname(pin_path), mode=0o700, exist_ok=True)
    fd = os.open(pin_path, os.O_RDONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o444)
    os.close(fd)
    try:
        linux.mount(f"/proc/{pid}/ns/{kind}", pin_path, None, linux.MS_BIND)
    except OSError as exc:
        try:
            os.unlink(pin_path)
        except OSError:
            pass
        raise PodNSError(f"cannot pin the {kind} namespace of process {pid} at {pin_path}: {exc}") from None


def loopback_up(netns_path: str) -> None:
    """Bring lo up inside a pinned network namespace (a short-lived thread joins it and ends)."""
    error: list[BaseException] = []

    def run() -> None:
        try:
            fd = os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                linux.setns(fd, linux.CLONE_NEWNET)
            finally:
                os.close(fd)
            _loopback_up()
        except BaseException as exc:  # noqa: BLE001 - reported to the caller below
            error.append(exc)
        # the thread ends here: its network namespace goes with it

    t = threading.Thread(target=run, name="pycri-netns-lo")
    t.start()
    t.join()
    if error:
        raise PodNSError(f"cannot bring lo up in {netns_path}: {error[0]}")


def remove_netns(pin_path: str) -> None:
    """Unpin (lazy unmount) and delete the pin file; a missing pin is fine."""
    try:
        linux.umount2(pin_path, linux.MNT_DETACH)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOENT):
            raise PodNSError(f"cannot unmount {pin_path}: {exc}") from None
    try:
        os.unlink(pin_path)
    except FileNotFoundError:
        pass


def is_pinned(path: str) -> bool:
    return os.path.exists(path) and os.path.ismount(path)


def mount_shm(path: str, size_bytes: int = 64 * 1024 * 1024) -> None:
    """The pod's /dev/shm: a tmpfs its containers bind-mount (shared IPC namespace, shared segments)."""
    os.makedirs(path, mode=0o755, exist_ok=True)
    if os.path.ismount(path):
        return
    linux.mount("shm", path, "tmpfs", linux.MS_NOSUID | linux.MS_NODEV | linux.MS_NOEXEC,
                f"mode=1777,size={size_bytes}")


def unmount_shm(path: str) -> None:
    if os.path.ismount(path):
        linux.umount2(path, linux.MNT_DETACH)
    try:
        os.rmdir(path)
    except (FileNotFoundError, OSError):
        pass
