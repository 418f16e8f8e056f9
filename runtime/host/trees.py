"""Directory trees of any depth: remove one, count its usage. For trees someone else filled (a container's
writable layer, an image's layer), possibly while they still change them.

The walk is a loop with a stack of levels, never recursion (a tree is as deep as the kernel lets it be, far past
Python's recursion limit), and it names entries only relative to their directory's fd (openat and friends): no
path string grows with the depth, so nothing meets PATH_MAX. Symlinks are never followed (O_NOFOLLOW, lstat), and
a directory on another mount than the top's is neither entered nor removed (a bind mount left inside a tree must
not lose its files): mounts are told apart by mount id (runtime/linux.mount_id), which also sees a bind mount of
the same file system, where st_dev is the same.

Open fds stay bounded whatever the depth: the FD_WINDOW deepest levels keep their fd, and a level above them is
reopened through the ".." of its child when the walk climbs back, then checked against the (st_dev, st_ino) it had
on the way down. A directory moved meanwhile (root in a running container may rename what we walk) fails that
check: the walk stops there rather than go on from a place outside the tree (TreeChanged).
"""
from __future__ import annotations

import errno
import os
import stat
from typing import Callable, NamedTuple

from runtime.host import linux

FD_WINDOW = 32  # directory fds one walk keeps open at most (+1 for the top)
REMOVE_PASSES = 2  # a second pass takes what a first one could not (entries added meanwhile)
USAGE_ATTEMPTS = 3  # walks of a tree that keeps changing before its usage is given as counted so far
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class TreeChanged(OSError):
    """A directory of the tree was moved while the walk was below it: the walk stopped."""

    def __init__(self, what: str) -> None:
        super().__init__(errno.ESTALE, f"directory moved during the walk: {what}")


class Usage(NamedTuple):
    bytes: int  # st_blocks * 512 of every entry below the top (the top itself not counted)
    inodes: int  # entries below the top
    complete: bool  # False: the tree kept changing under every walk; the figures are a lower bound


def remove_tree(path: str | os.PathLike, *, dir_fd: int | None = None) -> None:
    """Remove path and everything below it, like `rm -rf --one-file-system`; a missing path is no error.

    With dir_fd, path is a name relative to that directory. Everything that can go goes; then OSError is raised
    if anything stayed (the errno of the first failure; the message says how many entries stayed and why, e.g. a
    mount point inside). Never follows a symlink and never enters another mount; a top that is itself a mount
    point is refused (EBUSY) rather than emptied.
    """
    try:
        st = os.stat(path, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        _unlink(path, dir_fd)
        return
    failures: list[tuple[str, OSError]] = []
    for _ in range(REMOVE_PASSES):
        failures = []
        try:
            fd = os.open(path, _DIR, dir_fd=dir_fd)
        except FileNotFoundError:
            return
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):  # replaced by a symlink or a file meanwhile
                _unlink(path, dir_fd)
                return
            raise
        try:
            if _is_mount_point(fd, path, dir_fd):
                raise OSError(errno.EBUSY, f"{os.fspath(path)} is a mount point: not removed")
            _empty(fd, failures)
        finally:
            os.close(fd)
        try:
            os.rmdir(path, dir_fd=dir_fd)
            return
        except FileNotFoundError:
            return
        except OSError as exc:
            if not failures:
                failures.append((os.path.basename(os.fspath(path)), exc))
    name, first = failures[0]
    raise OSError(first.errno, f"{os.fspath(path)}: {len(failures)} entries could not be removed; first: "
                               f"{name!r}: {first.strerror or first}")


def tree_usage(path: str | os.PathLike, seen: set[tuple[int, int]] | None = None) -> Usage:
    """Bytes (st_blocks * 512) and entries below path, this mount only, symlinks not followed; (0, 0) if path
    is missing. A file with several links is counted once per `seen` set (pass one set for several tops that
    share inodes); without one, once per link, as `du -l`."""
    best = Usage(0, 0, False)
    for _ in range(USAGE_ATTEMPTS):
        counted = [0, 0]
        marks = set(seen) if seen is not None else None
        try:
            fd = os.open(path, _DIR)
        except (FileNotFoundError, NotADirectoryError):
            return Usage(0, 0, True)
        try:
            _walk(fd, lambda dfd: _count(dfd, counted, marks))
        except TreeChanged:
            if counted[0] >= best.bytes:
                best = Usage(counted[0], counted[1], False)
            continue
        finally:
            os.close(fd)
        if seen is not None:
            seen |= marks
        return Usage(counted[0], counted[1], True)
    return best


# ---- the walk -------------------------------------------------------------------------------------------------

class _Level:
    __slots__ = ("fd", "name", "dev", "ino", "pending")

    def __init__(self, fd: int | None, name: str, st: os.stat_result) -> None:
        self.fd = fd
        self.name = name
        self.dev, self.ino = st.st_dev, st.st_ino
        self.pending: list[str] = []


def _walk(top: int, scan: Callable[[int], list[str]], leave: Callable[[int, str], None] | None = None,
          on_mount: Callable[[str], None] | None = None, window: int = FD_WINDOW) -> None:
    """Depth first below the directory open at `top` (the caller's fd, left open).

    scan(fd) reads the directory open at fd, does its work on the entries and returns the names of the
    subdirectories to enter; leave(parent_fd, name) runs when the walk is done below parent/name; on_mount(name)
    for a subdirectory on another mount, which is not entered.
    """
    mount = _Mount(top)
    stack = [_Level(top, "", os.fstat(top))]
    stack[0].pending = scan(top)
    try:
        while stack:
            level = stack[-1]
            if level.pending:
                name = level.pending.pop()
                fd = _open_dir(level.fd, name)
                if fd is None:
                    continue
                try:
                    st = os.fstat(fd)
                    if not mount.same(fd, st):
                        if on_mount is not None:
                            on_mount(name)
                        os.close(fd)
                        continue
                except BaseException:
                    os.close(fd)
                    raise
                stack.append(_Level(fd, name, st))
                if len(stack) > window + 1 and (far := stack[-window - 1]).fd is not None:
                    os.close(far.fd)
                    far.fd = None
                stack[-1].pending = scan(fd)
                continue
            stack.pop()
            if not stack:
                return
            try:
                parent = stack[-1]
                if parent.fd is None:
                    parent.fd = _reopen_parent(level.fd, parent)
            finally:
                os.close(level.fd)
            if leave is not None:
                leave(parent.fd, level.name)
    finally:
        for level in stack[1:]:
            if level.fd is not None:
                os.close(level.fd)


def _open_dir(parent: int, name: str) -> int | None:
    """An fd on the subdirectory parent/name; None if it is gone or is no directory now (a symlink put in its
    place is not followed)."""
    try:
        return os.open(name, _DIR, dir_fd=parent)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            return None
        raise


def _reopen_parent(child: int, parent: _Level) -> int:
    fd = os.open("..", _DIR, dir_fd=child)
    st = os.fstat(fd)
    if (st.st_dev, st.st_ino) != (parent.dev, parent.ino):
        os.close(fd)
        raise TreeChanged(parent.name or ".")
    return fd


class _Mount:
    """Whether a directory is on the top's mount: the same mount id (a bind mount of the same file system has the
    same st_dev; a btrfs subvolume has another st_dev on the same mount). Where the kernel tells no mount ids,
    the same st_dev."""

    def __init__(self, top: int) -> None:
        self.dev = os.fstat(top).st_dev
        self.id = linux.mount_id(top)

    def same(self, fd: int, st: os.stat_result) -> bool:
        if self.id is None:
            return st.st_dev == self.dev
        return linux.mount_id(fd) == self.id


def _is_mount_point(fd: int, path, dir_fd: int | None) -> bool:
    parent = os.open(os.path.dirname(os.path.normpath(os.fspath(path))) or ".", _DIR & ~os.O_NOFOLLOW, dir_fd=dir_fd)
    try:
        return not _Mount(parent).same(fd, os.fstat(fd))
    finally:
        os.close(parent)


# ---- removal and counting -------------------------------------------------------------------------------------

def _empty(top: int, failures: list[tuple[str, OSError]]) -> None:
    """Remove everything below the directory open at top; what cannot go is appended to failures."""
    def scan(fd: int) -> list[str]:
        subdirs = []
        with os.scandir(fd) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    subdirs.append(entry.name)
                    continue
                try:
                    os.unlink(entry.name, dir_fd=fd)
                except FileNotFoundError:
                    pass
                except IsADirectoryError:  # a directory now: entered like the others
                    subdirs.append(entry.name)
                except OSError as exc:
                    failures.append((entry.name, exc))
        return subdirs

    def leave(parent: int, name: str) -> None:
        try:
            os.rmdir(name, dir_fd=parent)
        except FileNotFoundError:
            pass
        except OSError as exc:
            failures.append((name, exc))

    def on_mount(name: str) -> None:
        failures.append((name, OSError(errno.EBUSY, "a mount point: not entered")))

    try:
        _walk(top, scan, leave, on_mount)
    except TreeChanged as exc:
        failures.append(("", exc))


def _count(fd: int, counted: list[int], seen: set[tuple[int, int]] | None) -> list[str]:
    subdirs = []
    with os.scandir(fd) as entries:
        for entry in entries:
            try:
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            if stat.S_ISDIR(st.st_mode):
                subdirs.append(entry.name)
            elif seen is not None and st.st_nlink > 1:
                key = (st.st_dev, st.st_ino)
                if key in seen:
                    continue
                seen.add(key)
            counted[0] += st.st_blocks * 512
            counted[1] += 1
    return subdirs


def _unlink(path, dir_fd: int | None) -> None:
    try:
        os.unlink(path, dir_fd=dir_fd)
    except FileNotFoundError:
        pass
