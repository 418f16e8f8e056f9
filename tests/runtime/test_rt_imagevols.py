"""runtime/host/imagevols.py: an image's layers mounted read-only on the host, and sub paths found inside that mount
however the image's symlinks point (by openat2 RESOLVE_IN_ROOT and by the walk through fds alike)."""
from __future__ import annotations

import errno
import os

import pytest

from runtime.host import imagevols


@pytest.fixture
def volume(tmp_path):
    """Two layers (the upper one whiting out a file and making a dir opaque, as the unpacker writes them) mounted
    as an image volume; the host's side of the attack: tmp_path/etc, which nothing may reach."""
    lower, upper = tmp_path / "l1", tmp_path / "l2"
    for d in (lower / "data" / "dir", upper / "data" / "dir", lower / "etc", tmp_path / "etc"):
        d.mkdir(parents=True)
    (lower / "data" / "gone").write_text("gone")
    (lower / "data" / "dir" / "a").write_text("a")
    (lower / "etc" / "in-image").write_text("image")
    (tmp_path / "etc" / "on-host").write_text("host")
    os.mknod(upper / "data" / "gone", 0o600 | 0o020000, os.makedev(0, 0))  # whiteout
    os.setxattr(upper / "data" / "dir", "trusted.overlay.opaque", b"y")
    (upper / "data" / "dir" / "c").write_text("c")
    os.symlink("/etc", upper / "to-etc")
    os.symlink("../../../../../../../../..", upper / "up")
    os.symlink("../../../../../../etc", upper / "data" / "escape")
    os.symlink("loop", upper / "loop")
    (upper / "file").write_text("f")
    target = str(tmp_path / "vols" / "img")
    assert imagevols.mount(target, [str(upper), str(lower)], str(tmp_path / "vols" / imagevols.EMPTY))
    try:
        yield target
    finally:
        imagevols.unmount_all(str(tmp_path / "vols"))
    assert not (tmp_path / "vols").exists()


def test_mount_is_read_only_noexec_and_honours_whiteouts(volume):
    assert sorted(os.listdir(os.path.join(volume, "data"))) == ["dir", "escape"]
    assert os.listdir(os.path.join(volume, "data", "dir")) == ["c"]
    flags = os.statvfs(volume).f_flag
    for flag in (os.ST_RDONLY, os.ST_NOSUID, os.ST_NODEV, os.ST_NOEXEC):
        assert flags & flag, flag
    with pytest.raises(OSError) as err:
        open(os.path.join(volume, "new"), "w")
    assert err.value.errno == errno.EROFS
    assert not imagevols.mount(volume, ["/nonexistent"], "/nonexistent")  # mounted already: kept, not stacked


@pytest.mark.parametrize("sub,want", [
    ("data/dir", "data/dir"), ("to-etc", "etc"), ("data/escape", "etc"), ("up", ""), ("up/up/to-etc", "etc"),
    ("./data//dir/", "data/dir"), ("", ""),
])
def test_sub_paths_resolve_inside_the_image(volume, method, sub, want):
    assert imagevols.resolve_sub_path(volume, sub) == os.path.join(volume, want).rstrip("/")


@pytest.mark.parametrize("sub,code", [("nope", errno.ENOENT), ("file", errno.ENOTDIR), ("loop", errno.ELOOP),
                                      ("data/gone", errno.ENOENT), ("to-etc/on-host", errno.ENOENT)])
def test_bad_sub_paths_fail(volume, method, sub, code):
    with pytest.raises(OSError) as err:
        imagevols.resolve_sub_path(volume, sub)
    assert err.value.errno == code


def test_unmount_is_idempotent(tmp_path):
    assert imagevols.unmount(str(tmp_path / "missing")) is False
    imagevols.unmount_all(str(tmp_path / "missing"))
