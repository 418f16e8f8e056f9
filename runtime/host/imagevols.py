"""Image volumes on the host (CRI Mount.image, KEP-4639): an image's layers mounted read-only where a pod's
containers bind them from, and a sub path of such a mount found without leaving it.

- mount: an overlay of the image's layer dirs (top first) and an empty dir last, with no upper dir: read-only by
  construction (overlay needs two lower dirs without an upper one, hence the empty dir, as CRI-O does), and
  mounted MS_RDONLY|MS_NOSUID|MS_NODEV|MS_NOEXEC (the API documents image volumes as ro and noexec). Overlay reads
  the layers' whiteouts and opaque dirs as for a rootfs, so the volume shows what the image's rootfs shows.
- resolve_sub_path: the image's content is the image author's, and hostile as far as the host goes: a sub path is
  opened inside the mount with RESOLVE_IN_ROOT (absolute symlinks and ".." stay under the mount's root),
  RESOLVE_NO_MAGICLINKS, no other mount crossed, and must be a directory; the bind source returned is the
  kernel's own name for what was opened, which has no symlink left in it.
- unmount / unmount_all: lazily (a running container's bind keeps the layers busy until it goes), then the mount
  point is removed. Which mounts are in use is the daemon's business (it counts them by container record).
"""

from __future__ import annotations

import errno
import os
import stat

from runtime.host import linux
from runtime.launch.rootfs import open_in_root

EMPTY = ".empty"
FLAGS = linux.MS_RDONLY | linux.MS_NOSUID | linux.MS_NODEV | linux.MS_NOEXEC


def mount(target: str, lowerdirs: list[str], empty: str) -> bool:
    """Mount the layers on target (made if missing) unless something is mounted there already; True if it
    mounted. empty: an empty dir (made if missing), the last lower dir."""
    if not lowerdirs:
        raise ValueError("an image volume needs at least one layer")
    os.makedirs(empty, mode=0o755, exist_ok=True)
    os.makedirs(target, mode=0o755, exist_ok=True)
    if os.path.ismount(target):
        return False
    for d in lowerdirs:  # a comma or colon would be read as the next option or layer
        if any(c in d for c in ",:\\"):
            raise ValueError(f"layer dir {d!r} cannot be named in overlay options")
    linux.mount("overlay", target, "overlay", FLAGS, "lowerdir=" + ":".join([*lowerdirs, empty]))
    return True


def unmount(target: str) -> bool:
    """Unmount target (lazily) if it is mounted, then remove the mount point; a missing target is no error.
    True if something was unmounted."""
    mounted = os.path.ismount(target)
    if mounted:
        linux.umount2(target, linux.MNT_DETACH)
    try:
        os.rmdir(target)
    except FileNotFoundError:
        pass
    return mounted


def unmount_all(parent: str) -> None:
    """Unmount every image volume under parent (a pod's image volume dir) and remove parent. Every entry is
    tried; then the first failure is raised (OSError)."""
    try:
        names = os.listdir(parent)
    except FileNotFoundError:
        return
    failures = []
    for name in names:
        try:
            unmount(os.path.join(parent, name))
        except OSError as exc:
            failures.append(exc)
    if failures:
        raise failures[0]
    os.rmdir(parent)


def resolve_sub_path(root: str, sub_path: str) -> str:
    """The host path of directory sub_path inside the mount root, resolved as described above; OSError
    (ENOENT, ENOTDIR, ELOOP, EXDEV...) when there is no such directory inside it."""
    root_fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fd = open_in_root(root_fd, sub_path)
        try:
            if not stat.S_ISDIR(os.fstat(fd).st_mode):
                raise NotADirectoryError(errno.ENOTDIR, "not a directory", sub_path)
            if linux.mount_id(fd) != linux.mount_id(root_fd):  # (nothing is mounted inside an image volume)
                raise OSError(errno.EXDEV, "crosses a mount", sub_path)
            path = os.readlink(f"/proc/self/fd/{fd}")
        finally:
            os.close(fd)
        top = os.readlink(f"/proc/self/fd/{root_fd}")
    finally:
        os.close(root_fd)
    if path != top and not path.startswith(top.rstrip("/") + "/"):  # (the kernel's rules make this unreachable)
        raise OSError(errno.EXDEV, "resolves outside the image volume", sub_path)
    return path
