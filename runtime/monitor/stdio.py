"""File descriptors of a container's stdio: non-blocking ends, and a pty from the container's own devpts."""
from __future__ import annotations

import errno
import fcntl
import os
import stat
import struct

from runtime.launch import rootfs


def nonblock(fd: int) -> None:
    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_NONBLOCK)


_TIOCSPTLCK, _TIOCGPTPEER = 0x40045431, 0x5441


def container_pty(pid: int) -> tuple[int, int]:
    """A pty pair from the container's own devpts (so `tty` names it inside), else from the host's. The container
    owns its /dev: its /dev/ptmx is resolved inside its root (rootfs.open_in_root: a symlink of the container's
    leads nowhere outside) and opened only if it is a ptmx (5:2); the slave comes from the master itself
    (TIOCGPTPEER), not from a second lookup."""
    try:
        root = os.open(f"/proc/{pid}/root", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            master = open_device(root, "/dev/ptmx", os.makedev(5, 2))
        finally:
            os.close(root)
    except OSError:
        master, slave = os.openpty()
        os.set_inheritable(master, False)
        return master, slave
    try:
        fcntl.ioctl(master, _TIOCSPTLCK, struct.pack("i", 0))
        slave = fcntl.ioctl(master, _TIOCGPTPEER, os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError:
        os.close(master)
        raise
    return master, slave


def open_device(root: int, path: str, rdev: int) -> int:
    """path in the container whose root is root, opened read-write if it is the character device rdev."""
    fd = rootfs.open_in_root(root, path)
    try:
        st = os.fstat(fd)
        if not stat.S_ISCHR(st.st_mode) or st.st_rdev != rdev:
            raise OSError(errno.EPERM, f"not the device it should be ({os.major(rdev)}:{os.minor(rdev)})", path)
        return os.open(rootfs.fd_path(fd), os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    finally:
        os.close(fd)

