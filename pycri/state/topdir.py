"""ext2/3/4's `T` attribute (chattr +T, "top of directory hierarchies") on the directories whose subdirectories are
unrelated trees: image layers (`<root>/snapshots`) and containers' writable layers (`<root>/containers`).

ext4 then places each new subdirectory in a block group of its own (the Orlov allocator) instead of all of them in
the group of the parent. This matters most on ext4 without a journal: its inode allocator skips, one by one, every
inode of the group freed in the last minutes. After an image or a container that wrote many files was removed,
each new entry in that group paid a scan: busybox's layer took 130-400 ms to extract instead of ~60, and a
container's writable layer dirs 9 ms instead of ~0.8 after a removal of 20000 files. See docs/performance.md.
Best effort: other file systems refuse the attribute or ignore it.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct
from pathlib import Path

# linux/fs.h: FS_IOC_GETFLAGS/SETFLAGS = _IOR/_IOW('f', 1/2, long); the kernel reads and writes an int.
_FS_IOC_GETFLAGS = 0x80086601
_FS_IOC_SETFLAGS = 0x40086602
_FS_TOPDIR_FL = 0x00020000


def mark_top_of_trees(path: Path) -> bool:
    """Set the `T` attribute (chattr +T) on a directory whose subdirectories are unrelated trees. False where the
    file system refuses it (ext2/3/4 have it; tmpfs takes and ignores it)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        buf = bytearray(8)
        fcntl.ioctl(fd, _FS_IOC_GETFLAGS, buf)
        (flags,) = struct.unpack_from("i", buf)
        if not flags & _FS_TOPDIR_FL:
            fcntl.ioctl(fd, _FS_IOC_SETFLAGS, struct.pack("i", flags | _FS_TOPDIR_FL) + bytes(4))
        return True
    except OSError as e:
        if e.errno not in (errno.ENOTTY, errno.EOPNOTSUPP, errno.EINVAL, errno.EPERM):
            raise
        return False
    finally:
        os.close(fd)


def ensure_top_dir(path: Path, mode: int) -> bool:
    """Make path (and its parents) if missing, give it mode, then mark it (mark_top_of_trees)."""
    path.mkdir(parents=True, exist_ok=True, mode=mode)
    os.chmod(path, mode)
    return mark_top_of_trees(path)
