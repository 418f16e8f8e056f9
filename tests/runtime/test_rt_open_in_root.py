"""rootfs.open_in_root: paths of a container resolved under its root by the kernel (openat2 RESOLVE_IN_ROOT) or,
without openat2, by the walk through fds; both must agree, stay in the root, and make what is missing."""
from __future__ import annotations

import errno
import os

import pytest

from runtime.host import linux
from runtime.launch import rootfs

CASES = [  # (path in the container, where it must lead, relative to the root; None: ENOENT)
    ("/a/b", "a/b"),
    ("/abs-link/b", "a/b"),             # an absolute symlink: from the container's root
    ("/a/rel-link", "a/b"),             # a relative one
    ("/a/up-link/a", "a"),              # "../.." past the root stays at the root
    ("/../../a/./b/../b", "a/b"),
    ("/escape/x", None),                # -> /../../../../x: the root's x, which does not exist
    ("/hostname", "etc/hostname"),      # a link to a file
]


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "root"
    (root / "a" / "b").mkdir(parents=True)
    (root / "etc").mkdir()
    (root / "etc" / "hostname").write_text("h")
    os.symlink("/a", root / "abs-link")
    os.symlink("b", root / "a" / "rel-link")
    os.symlink("../../..", root / "a" / "up-link")
    os.symlink("../../../../x", root / "escape")
    os.symlink("/etc/hostname", root / "hostname")
    (tmp_path / "x").mkdir()  # what /escape would reach if it were not kept in the root
    fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    yield root, fd
    os.close(fd)


def _where(fd: int) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    finally:
        os.close(fd)


@pytest.mark.parametrize("path,want", CASES)
def test_resolution_stays_in_the_root(tree, method, path, want):
    root, fd = tree
    if want is None:
        with pytest.raises(FileNotFoundError):
            rootfs.open_in_root(fd, path)
    else:
        assert _where(rootfs.open_in_root(fd, path)) == str(root / want)


def test_what_is_missing_is_made_inside(tree, method):
    root, fd = tree
    assert _where(rootfs.open_in_root(fd, "/abs-link/new/dir", "dir")) == str(root / "a" / "new" / "dir")
    assert (root / "a" / "new" / "dir").is_dir()
    assert _where(rootfs.open_in_root(fd, "/escape/made/file", "file")) == str(root / "x" / "made" / "file")
    assert (root / "x" / "made" / "file").is_file() and not (tree[0].parent / "x" / "made").exists()


def test_errors_name_the_container_path(tree, method):
    root, fd = tree
    os.symlink("loop", root / "loop")
    with pytest.raises(OSError) as err:
        rootfs.open_in_root(fd, "/loop/x", "dir")
    assert err.value.errno == errno.ELOOP and err.value.filename == "/loop/x"
    with pytest.raises(NotADirectoryError) as err:
        rootfs.open_in_root(fd, "/etc/hostname/x", "dir")
    assert err.value.filename == "/etc/hostname/x"


def test_a_reopened_mount_must_be_the_one_made_on_its_mount_point(tree, method):
    """reopen_mounted (before a read-only remount or a propagation change) takes only a mount made right on the
    fd it was given: one stacked on top of that (a mount of someone else's, in the same place, path and all)
    or a path that no longer leads there is refused (EAGAIN: the destination changed), never acted on."""
    root, _ = tree
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # a private mount namespace, gone with the child
        code = 1
        try:
            os.close(r)
            linux.unshare(linux.CLONE_NEWNS)
            linux.mount(None, "/", None, linux.MS_REC | linux.MS_PRIVATE)
            fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)  # (one of this mount namespace)
            results = []
            under = rootfs.open_in_root(fd, "/a/b")
            linux.mount("tmpfs", rootfs.fd_path(under), "tmpfs", 0, "size=64k")
            over = rootfs.reopen_mounted(fd, "/a/b", under)
            results.append("direct:ok")
            linux.mount("tmpfs", rootfs.fd_path(over), "tmpfs", 0, "size=64k")  # stacked on the first
            for name, args in (("stacked", ("/a/b", under)), ("elsewhere", ("/etc", under))):
                try:
                    os.close(rootfs.reopen_mounted(fd, *args))
                    results.append(f"{name}:ok")
                except OSError as exc:
                    results.append(f"{name}:{errno.errorcode.get(exc.errno, exc.errno)}")
            os.write(w, " ".join(results).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    out = os.read(r, 4096).decode()
    os.close(r)
    assert os.waitpid(pid, 0)[1] == 0, out
    assert out == "direct:ok stacked:EAGAIN elsewhere:EAGAIN"
