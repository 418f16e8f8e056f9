"""runtime/host/trees.py: removal and usage of trees far deeper than Python's recursion limit and PATH_MAX, without
following symlinks out of the tree or entering another mount."""
from __future__ import annotations

import errno
import os
import subprocess

import pytest

from runtime.host import linux, trees

_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC


def make_deep(top: str, depth: int, data: bytes = b"x") -> tuple[int, int]:
    """top/d/d/.../d (depth levels), a file `f` in each; returns (bytes, entries) below top as the kernel counts
    them, read back level by level through fds (no path of that length could be opened)."""
    fd = os.open(top, _DIR)
    try:
        for _ in range(depth):
            os.mkdir("d", dir_fd=fd)
            f = os.open("f", os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644, dir_fd=fd)
            os.write(f, data)
            os.close(f)
            nfd = os.open("d", _DIR, dir_fd=fd)
            os.close(fd)
            fd = nfd
    finally:
        os.close(fd)
    used = entries = 0
    fd = os.open(top, _DIR)
    try:
        for _ in range(depth):
            for name in ("d", "f"):
                used += os.stat(name, dir_fd=fd, follow_symlinks=False).st_blocks * 512
                entries += 1
            nfd = os.open("d", _DIR, dir_fd=fd)
            os.close(fd)
            fd = nfd
    finally:
        os.close(fd)
    return used, entries


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture
def scratch(tmp_path):
    """A dir for deep trees, removed with the code under test's own primitive afterwards (pytest's rmtree of its
    temp dirs would hit the recursion limit on what a failed test left)."""
    yield tmp_path / "t"
    if os.path.lexists(tmp_path / "t"):
        subprocess.run(["rm", "-rf", "--one-file-system", str(tmp_path / "t")], check=False)


def test_a_tree_10000_deep_is_counted_and_removed_with_few_fds(scratch):
    scratch.mkdir()
    expected = make_deep(str(scratch), 10_000)
    before = open_fds()
    peak = [0]
    real_scandir = os.scandir

    def counting_scandir(fd):
        peak[0] = max(peak[0], open_fds())
        return real_scandir(fd)

    trees.os.scandir = counting_scandir  # (the module's os is the os module: restored below)
    try:
        usage = trees.tree_usage(scratch)
    finally:
        trees.os.scandir = real_scandir
    assert (usage.bytes, usage.inodes, usage.complete) == (*expected, True)
    assert peak[0] - before <= trees.FD_WINDOW + 2, peak  # the window (+ the top, + listdir's own)
    assert open_fds() == before
    trees.remove_tree(scratch)
    assert not os.path.lexists(scratch)
    assert open_fds() == before
    trees.remove_tree(scratch)  # a missing tree: nothing to do


def test_symlinks_pointing_out_are_not_followed(scratch, tmp_path):
    canary = tmp_path / "canary"
    (canary / "sub").mkdir(parents=True)
    (canary / "sub" / "file").write_bytes(b"k" * 100_000)
    scratch.mkdir()
    expected = make_deep(str(scratch), 1_500)
    fd = os.open(scratch, _DIR)
    try:  # at the top and 1,200 levels down: links to a dir, to a file, and a dangling one
        for depth in range(1_201):
            if depth in (0, 1_200):
                os.symlink(str(canary), "to-dir", dir_fd=fd)
                os.symlink(str(canary / "sub" / "file"), "to-file", dir_fd=fd)
                os.symlink("/nonexistent", "dangling", dir_fd=fd)
            nfd = os.open("d", _DIR, dir_fd=fd)
            os.close(fd)
            fd = nfd
    finally:
        os.close(fd)
    usage = trees.tree_usage(scratch)
    assert usage.inodes == expected[1] + 6 and 0 <= usage.bytes - expected[0] < 100_000  # not the 100 kB file
    link = tmp_path / "link-to-canary"
    link.symlink_to(canary)
    trees.remove_tree(link)  # a symlink as the top: the link goes, not what it points to
    assert not os.path.lexists(link)
    trees.remove_tree(scratch)
    assert not os.path.lexists(scratch)
    assert (canary / "sub" / "file").read_bytes() == b"k" * 100_000


@pytest.mark.parametrize("kind", ["tmpfs", "bind"])
def test_a_mount_inside_is_neither_entered_nor_removed(scratch, tmp_path, kind):
    """A tmpfs, and a bind mount of a directory of the same file system (same st_dev: only the mount id tells),
    1,200 levels down: neither counted nor emptied; the rest of the tree goes and the removal says what stayed."""
    canary = tmp_path / "canary"
    canary.mkdir()
    scratch.mkdir()
    expected = make_deep(str(scratch), 1_500)
    fd = os.open(scratch, _DIR)
    for _ in range(1_200):
        nfd = os.open("d", _DIR, dir_fd=fd)
        os.close(fd)
        fd = nfd
    os.mkdir("mnt", dir_fd=fd)
    target = f"/proc/self/fd/{fd}/mnt"
    if kind == "tmpfs":
        linux.mount("tmpfs", target, "tmpfs", 0, "size=1m")
        inside = f"/proc/self/fd/{fd}/mnt/file"
    else:
        linux.mount(str(canary), target, None, linux.MS_BIND)
        inside = str(canary / "file")
    try:
        with open(inside, "wb") as f:
            f.write(b"m" * 200_000)
        usage = trees.tree_usage(scratch)
        assert usage.inodes == expected[1] + 1 and 0 <= usage.bytes - expected[0] < 100_000
        with pytest.raises(OSError) as err:
            trees.remove_tree(scratch)
        assert err.value.errno == errno.EBUSY, err.value
        assert "could not be removed" in str(err.value)
        assert os.path.getsize(inside) == 200_000
        assert os.listdir(f"/proc/self/fd/{fd}") == ["mnt"]  # all else went: the files beside the path, too
        # the top itself a mount point: refused, not emptied
        for top in (target, target + "/"):
            with pytest.raises(OSError) as err:
                trees.remove_tree(top)
            assert err.value.errno == errno.EBUSY and os.path.getsize(inside) == 200_000
    finally:
        linux.umount2(target)
        os.close(fd)
    trees.remove_tree(scratch)
    assert not os.path.lexists(scratch)
    if kind == "bind":
        assert os.path.getsize(canary / "file") == 200_000


def test_a_directory_moved_during_a_deep_walk_stops_it_and_removal_still_finishes(scratch):
    """Root in a running container may rename directories while we count its layer: the walk, back up through
    "..", finds a parent other than the one it came down through, and stops there (never climbs out of the
    tree); usage counts again; a removal takes the rest in its second pass."""
    real_scandir = os.scandir
    moved = []

    def prepare() -> int:
        """A 200-deep tree; the inode of its deepest directory."""
        scratch.mkdir()
        make_deep(str(scratch), 200)
        fd = os.open(scratch, _DIR)
        for _ in range(200):
            nfd = os.open("d", _DIR, dir_fd=fd)
            os.close(fd)
            fd = nfd
        ino = os.fstat(fd).st_ino
        os.close(fd)
        moved.clear()
        return ino

    def mover(fd):
        """When the deepest directory is read: scratch/d/d/d/d/d (level 5, its fd long closed as the walk went
        down) is moved to scratch/moved."""
        if not moved and os.fstat(fd).st_ino == deepest:
            top = os.open(scratch, _DIR)
            level = os.dup(top)
            try:
                for _ in range(4):
                    nfd = os.open("d", _DIR, dir_fd=level)
                    os.close(level)
                    level = nfd
                os.rename("d", "moved", src_dir_fd=level, dst_dir_fd=top)
            finally:
                os.close(level)
                os.close(top)
            moved.append(True)
        return real_scandir(fd)

    def subdirs(fd):
        with trees.os.scandir(fd) as entries:
            return [e.name for e in entries if e.is_dir(follow_symlinks=False)]

    deepest = prepare()
    top = os.open(scratch, _DIR)
    trees.os.scandir = mover
    try:
        with pytest.raises(trees.TreeChanged):
            trees._walk(top, subdirs)
        assert moved
        usage = trees.tree_usage(scratch)  # the second walk sees the moved tree whole
        assert usage.complete and usage.inodes == 2 * 200
        trees.remove_tree(scratch)
        deepest = prepare()
        trees.remove_tree(scratch)  # its first pass stops at the move, the second takes the rest
    finally:
        trees.os.scandir = real_scandir
        os.close(top)
    assert moved and not os.path.lexists(scratch)
