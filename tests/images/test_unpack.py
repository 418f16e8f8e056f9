"""Layer extraction: hostile archives never write outside the target; whiteouts, metadata, compression kept right."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import shutil
import stat
import tarfile
from pathlib import Path

import pytest
import zstandard

from pycri.images.unpack import LayerError, UnpackOptions, unpack_layer

from .conftest import tree


def entry(name, kind="file", data=b"", mode=0o644, uid=0, gid=0, link="", dev=(0, 0), pax=None):
    info = tarfile.TarInfo(name)
    info.mode, info.uid, info.gid, info.mtime = mode, uid, gid, 1_700_000_000
    info.type = {"file": tarfile.REGTYPE, "dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE,
                 "hardlink": tarfile.LNKTYPE, "char": tarfile.CHRTYPE, "block": tarfile.BLKTYPE,
                 "fifo": tarfile.FIFOTYPE}[kind]
    info.linkname = link
    info.devmajor, info.devminor = dev
    if pax:
        info.pax_headers = pax
    if kind == "file":
        info.size = len(data)
    return info, (io.BytesIO(data) if kind == "file" else None)


def make_tar(*entries) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in entries:
            tar.addfile(info, data)
    return out.getvalue()


@pytest.fixture
def sandbox(tmp_path):
    """(target, canary): the canary dir lives next to the target and must stay untouched."""
    target, canary = tmp_path / "target", tmp_path / "canary"
    target.mkdir()
    canary.mkdir()
    (canary / "secret").write_text("secret\n")
    before = tree(canary)
    passwd = os.stat("/etc/passwd")
    yield target, canary
    after = tree(canary)
    assert after.keys() == before.keys(), "something was written outside the target"
    assert (canary / "secret").read_text() == "secret\n"
    assert os.stat("/etc/passwd").st_nlink == passwd.st_nlink
    assert os.stat("/etc/passwd").st_mtime_ns == passwd.st_mtime_ns


def unpack(tmp_path, data: bytes, target: Path, **kw):
    blob = tmp_path / f"blob-{hashlib.sha256(data).hexdigest()[:8]}"
    blob.write_bytes(data)
    return unpack_layer(blob, target, **kw)


def test_dotdot_escape_rejected(tmp_path, sandbox):
    target, canary = sandbox
    data = make_tar(entry("../canary/pwned", data=b"x"))
    with pytest.raises(LayerError, match="escapes"):
        unpack(tmp_path, data, target)
    data = make_tar(entry("a/../../canary/pwned", data=b"x"))
    with pytest.raises(LayerError, match="escapes"):
        unpack(tmp_path, data, target)


def test_absolute_path_stays_inside(tmp_path, sandbox):
    target, canary = sandbox
    unpack(tmp_path, make_tar(entry(str(canary / "pwned"), data=b"x")), target)
    inside = target / str(canary / "pwned").lstrip("/")
    assert inside.read_bytes() == b"x"


@pytest.mark.parametrize("link", ["ABS", "../canary", "../../../../../../..{canary}"])
def test_write_through_symlink_rejected(tmp_path, sandbox, link):
    target, canary = sandbox
    link = str(canary) if link == "ABS" else link.format(canary=canary)
    data = make_tar(entry("evil", "symlink", link=link), entry("evil/pwned", data=b"x"))
    with pytest.raises(LayerError, match="symlink"):
        unpack(tmp_path, data, target)


def test_existing_symlink_is_replaced_not_followed(tmp_path, sandbox):
    target, canary = sandbox
    data = make_tar(entry("victim", "symlink", link=str(canary / "secret")), entry("victim", data=b"new"))
    unpack(tmp_path, data, target)
    assert not (target / "victim").is_symlink() and (target / "victim").read_bytes() == b"new"


@pytest.mark.parametrize("link", ["/etc/passwd", "../../../../etc/passwd", "nothere"])
def test_hardlink_outside_rejected(tmp_path, sandbox, link):
    target, _ = sandbox
    data = make_tar(entry("hl", "hardlink", link=link))
    with pytest.raises(LayerError):
        unpack(tmp_path, data, target)
    assert not os.path.lexists(target / "hl")


def test_hardlink_through_symlink_rejected(tmp_path, sandbox):
    target, canary = sandbox
    data = make_tar(entry("d", "symlink", link=str(canary)), entry("hl", "hardlink", link="d/secret"))
    with pytest.raises(LayerError, match="symlink"):
        unpack(tmp_path, data, target)


def test_hardlink_inside_layer_and_to_lower(tmp_path, sandbox):
    target, _ = sandbox
    lower = tmp_path / "lower"
    lower.mkdir()
    (lower / "base").write_bytes(b"lower file")
    os.chmod(lower / "base", 0o750)
    data = make_tar(entry("a", data=b"same"), entry("b", "hardlink", link="a"),
                    entry("c", "hardlink", link="/base"))
    unpack(tmp_path, data, target, options=UnpackOptions(lowers=[lower]))
    assert os.stat(target / "a").st_ino == os.stat(target / "b").st_ino
    assert (target / "c").read_bytes() == b"lower file"
    assert os.stat(target / "c").st_ino != os.stat(lower / "base").st_ino
    assert stat.S_IMODE(os.stat(target / "c").st_mode) == 0o750


def test_devices(tmp_path, sandbox):
    target, _ = sandbox
    data = make_tar(entry("null", "char", dev=(1, 3), mode=0o666))
    with pytest.raises(LayerError, match="device"):
        unpack(tmp_path, data, target, options=UnpackOptions(allow_devices=False))
    assert not os.path.lexists(target / "null")
    if os.geteuid() == 0:
        unpack(tmp_path, data, target, options=UnpackOptions(allow_devices=True))
        st = os.lstat(target / "null")
        assert stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(1, 3)
    # a 0/0 char device is an overlay-format whiteout: always allowed
    unpack(tmp_path, make_tar(entry("wh", "char", dev=(0, 0))), target,
           options=UnpackOptions(allow_devices=False))
    assert os.lstat(target / "wh").st_rdev == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="whiteouts and ownership need root")
def test_whiteouts_metadata_xattrs(tmp_path, sandbox):
    target, _ = sandbox
    data = make_tar(
        entry("dir", "dir", mode=0o755), entry("dir/.wh..wh..opq"), entry("dir/.wh.gone"),
        entry("dir/keep", data=b"k", mode=0o4755, uid=1000, gid=1001, pax={"SCHILY.xattr.user.test": "v"}),
        entry("dir/evil", data=b"e", pax={"SCHILY.xattr.trusted.overlay.redirect": "/etc"}),
        entry("fifo", "fifo", mode=0o640), entry("link", "symlink", link="/nowhere", uid=5, gid=6),
        entry(".wh..wh.plnk"),
    )
    unpack(tmp_path, data, target)
    assert os.getxattr(target / "dir", "trusted.overlay.opaque") == b"y"
    gone = os.lstat(target / "dir" / "gone")
    assert stat.S_ISCHR(gone.st_mode) and gone.st_rdev == 0
    keep = os.lstat(target / "dir" / "keep")
    assert (keep.st_uid, keep.st_gid, stat.S_IMODE(keep.st_mode)) == (1000, 1001, 0o4755)
    assert keep.st_mtime == 1_700_000_000
    assert os.getxattr(target / "dir" / "keep", "user.test") == b"v"
    with pytest.raises(OSError):
        os.getxattr(target / "dir" / "evil", "trusted.overlay.redirect")
    assert stat.S_ISFIFO(os.lstat(target / "fifo").st_mode)
    assert os.readlink(target / "link") == "/nowhere" and os.lstat(target / "link").st_uid == 5
    assert os.lstat(target / "dir").st_mtime == 1_700_000_000  # directory times set after their children
    assert not os.path.lexists(target / ".wh..wh.plnk")


@pytest.mark.parametrize("compression", ["none", "gzip", "zstd"])
def test_compressions_and_diff_id(tmp_path, compression):
    target = tmp_path / "t"
    target.mkdir()
    raw = make_tar(entry("f", data=b"hello"))
    diff_id = "sha256:" + hashlib.sha256(raw).hexdigest()
    blob = {"none": raw, "gzip": gzip.compress(raw), "zstd": zstandard.ZstdCompressor().compress(raw)}[compression]
    result = unpack(tmp_path, blob, target, diff_id=diff_id, media_type="application/vnd.oci.image.layer.v1.tar")
    assert result.diff_id == diff_id and (target / "f").read_bytes() == b"hello"
    with pytest.raises(LayerError, match="config says"):
        unpack(tmp_path, blob, tmp_path / "t", diff_id="sha256:" + "0" * 64)


def test_corrupt_and_unknown(tmp_path):
    target = tmp_path / "t"
    target.mkdir()
    with pytest.raises(LayerError, match="corrupt"):
        unpack(tmp_path, gzip.compress(make_tar(entry("f", data=b"x" * 5000)))[:-30], target)
    with pytest.raises(LayerError, match="media type"):
        unpack(tmp_path, make_tar(entry("f")), target, media_type="application/x-evil")


def test_hardlink_through_lower_layer_symlink_not_followed(tmp_path, sandbox):
    target, canary = sandbox
    lower = tmp_path / "lower"
    lower.mkdir()
    os.symlink(str(canary), lower / "lnk")
    data = make_tar(entry("hl", "hardlink", link="lnk/secret"))
    with pytest.raises(LayerError, match="not in this layer or below"):
        unpack(tmp_path, data, target, options=UnpackOptions(lowers=[lower]))
    assert not os.path.lexists(target / "hl")


@pytest.mark.skipif(os.geteuid() != 0, reason="whiteouts need root")
def test_whiteout_hides_lower_layers_only(tmp_path, sandbox):
    target, _ = sandbox
    data = make_tar(entry("f", data=b"this layer"), entry(".wh.f"), entry("d", "dir"), entry("d/x", data=b"x"),
                    entry(".wh.d"), entry(".wh.g"), entry("g", data=b"re-added"))
    unpack(tmp_path, data, target)
    assert (target / "f").read_bytes() == b"this layer"
    assert (target / "d" / "x").read_bytes() == b"x"
    assert os.getxattr(target / "d", "trusted.overlay.opaque") == b"y"
    assert (target / "g").read_bytes() == b"re-added"


def test_a_deep_layer_unpacks_and_a_deep_directory_it_replaces_goes(tmp_path, sandbox):
    """3,000 levels (past Python's recursion limit and, at 6,000 characters, PATH_MAX): y/d/.../d is made with its
    times; x/d/.../d, with a symlink to the canary 2,500 levels down, is then replaced by a file of that name:
    the directory goes whole, the symlink is not followed."""
    from runtime.host.trees import remove_tree

    target, canary = sandbox
    deep = ["d"] * 3_000
    entries = []
    for top in ("x", "y"):
        entries += [entry("/".join([top] + deep[:k]), "dir", mode=0o750) for k in range(3_001)]
        entries.append(entry("/".join([top] + deep + ["bottom"]), data=b"deep\n"))
    entries.append(entry("/".join(["x"] + deep[:2_500] + ["out"]), "symlink", link=str(canary)))
    entries.append(entry("x", data=b"now a file\n"))
    try:
        result = unpack(tmp_path, make_tar(*entries), target)
        assert result.entries == len(entries)
        assert (target / "x").read_bytes() == b"now a file\n"
        fd = os.open(target / "y", os.O_RDONLY | os.O_DIRECTORY)
        try:
            for _ in deep:
                st = os.stat(fd)
                assert (stat.S_IMODE(st.st_mode), st.st_mtime) == (0o750, 1_700_000_000)
                nfd = os.open("d", os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
                os.close(fd)
                fd = nfd
            with open(os.open("bottom", os.O_RDONLY, dir_fd=fd), "rb") as f:
                assert f.read() == b"deep\n"
        finally:
            os.close(fd)
    finally:
        remove_tree(target)  # (pytest's own removal of its temp dirs would hit the recursion limit)


# -- sparse members and bounds ------------------------------------------------------------------------------------

GiB = 1 << 30


@pytest.mark.parametrize("fmt", ["gnu", "pax-1.0", "pax-0.1"])
def test_sparse_members_are_written_with_holes(tmp_path, sandbox, fmt):
    """A 4 GiB GNU sparse file of 12 KiB of data takes a few KiB of disk, not 4 GiB, and reads back right."""
    from tests.fuzz.tarbuild import build, gnu_sparse, pax_sparse

    target, _ = sandbox
    blocks = [(4096, b"a" * 4096), (GiB, b"b" * 512), (4 * GiB - 4096, b"c" * 4096)]
    data = gnu_sparse("big", 4 * GiB, blocks) if fmt == "gnu" else pax_sparse("big", 4 * GiB, blocks, fmt[4:])
    assert len(data) < 16384
    unpack(tmp_path, build([("dir", "d", None, {})])[:-1024] + data, target)
    st = os.stat(target / "big")
    assert st.st_size == 4 * GiB
    assert st.st_blocks * 512 <= 64 * 1024, f"{st.st_blocks * 512} bytes allocated"
    with open(target / "big", "rb") as f:
        for offset, chunk in blocks:
            f.seek(offset)
            assert f.read(len(chunk)) == chunk
        f.seek(0)
        assert f.read(4096) == bytes(4096)
        f.seek(GiB - 4096)
        assert f.read(8192) == bytes(4096) + b"b" * 512 + bytes(3584)
    assert (target / "d").is_dir()  # the entries around it are read right


@pytest.mark.parametrize("blocks,size", [
    ([(8192, b"x" * 512), (0, b"y" * 512)], 16384),  # out of order
    ([(0, b"x" * 1024), (512, b"y" * 512)], 16384),  # overlapping
    ([(16384, b"x" * 512)], 8192),  # past the real size
])
def test_hostile_sparse_maps_are_refused(tmp_path, sandbox, blocks, size):
    from tests.fuzz.tarbuild import gnu_sparse

    target, _ = sandbox
    with pytest.raises(LayerError, match="sparse map"):
        unpack(tmp_path, gnu_sparse("f", size, blocks), target)


def test_sparse_header_cut_short_is_a_corrupt_layer(tmp_path, sandbox):
    """An old GNU sparse header announcing extension blocks that are not there (tarfile: IndexError)."""
    from tests.fuzz.tarbuild import gnu_sparse

    target, _ = sandbox
    data = gnu_sparse("f", 1 << 20, [(4096 * (i + 1), b"x" * 512) for i in range(8)])
    with pytest.raises(LayerError, match="corrupt"):
        unpack(tmp_path, data[:512], target)


def zeros_layer(name: str, size: int) -> tuple[bytes, str]:
    """(gzip blob, diff id) of a layer holding one file of `size` zero bytes: a decompression bomb."""
    import zlib

    info = tarfile.TarInfo(name)
    info.size, info.mode = size, 0o644
    header = info.tobuf(tarfile.PAX_FORMAT)
    gz = zlib.compressobj(6, zlib.DEFLATED, 31)
    digest = hashlib.sha256()
    out = []
    zero = bytes(1 << 20)
    for piece in [header] + [zero] * (size >> 20) + [bytes(size % (1 << 20)), bytes(-size % 512), bytes(1024)]:
        digest.update(piece)
        out.append(gz.compress(piece))
    out.append(gz.flush())
    return b"".join(out), "sha256:" + digest.hexdigest()


def test_bytes_bound_stops_a_decompression_bomb(tmp_path):
    from pycri.images.unpack import UnpackBudget, UnpackLimit

    target = tmp_path / "t"
    target.mkdir()
    blob, _ = zeros_layer("bomb", 256 << 20)
    assert len(blob) < 512 * 1024
    budget = UnpackBudget(max_bytes=32 << 20, image="example/bomb")
    with pytest.raises(UnpackLimit, match="max_unpacked_bytes"):
        unpack(tmp_path, blob, target, options=UnpackOptions(budget=budget))
    assert os.stat(target / "bomb").st_size <= 33 << 20  # stopped at the bound, not at the end
    with pytest.raises(UnpackLimit):  # the budget stays spent: the image's other layers stop too
        unpack(tmp_path, make_tar(entry("f", data=b"x")), tmp_path, options=UnpackOptions(budget=budget))


def test_entries_bound_over_the_layers_of_an_image(tmp_path):
    from pycri.images.unpack import UnpackBudget, UnpackLimit

    budget = UnpackBudget(max_entries=100)
    for i in range(2):
        (tmp_path / f"l{i}").mkdir()
        unpack(tmp_path, make_tar(*[entry(f"f{i}-{n}") for n in range(50)]), tmp_path / f"l{i}",
               options=UnpackOptions(budget=budget))
    assert budget.entries == 100
    (tmp_path / "l2").mkdir()
    with pytest.raises(UnpackLimit, match="max_entries"):
        unpack(tmp_path, make_tar(entry("one-more")), tmp_path / "l2", options=UnpackOptions(budget=budget))


def test_hardlink_copies_from_lower_layers_count(tmp_path, sandbox):
    """Hardlinks into a lower layer are copies: 20 of a 1 MiB file are 20 MiB on disk from a 20 KiB tar."""
    from pycri.images.unpack import UnpackBudget, UnpackLimit

    target, _ = sandbox
    lower = tmp_path / "lower"
    lower.mkdir()
    (lower / "base").write_bytes(os.urandom(1 << 20))
    data = make_tar(*[entry(f"copy{n}", "hardlink", link="base") for n in range(20)])
    assert len(data) < 32 * 1024
    result = unpack(tmp_path, data, target, options=UnpackOptions(lowers=[lower], budget=UnpackBudget()))
    assert result.copied == 20 << 20
    shutil.rmtree(target)
    target.mkdir()
    with pytest.raises(UnpackLimit, match="max_unpacked_bytes"):
        unpack(tmp_path, data, target, options=UnpackOptions(lowers=[lower], budget=UnpackBudget(max_bytes=8 << 20)))


def test_free_space_reserve_is_checked_before_unpacking(tmp_path):
    from pycri.images.unpack import UnpackBudget, UnpackLimit

    target = tmp_path / "t"
    target.mkdir()
    budget = UnpackBudget(min_free_bytes=1 << 60, path=tmp_path, image="example/app")
    with pytest.raises(UnpackLimit, match=r"bytes free on .*images.min_free_bytes"):
        unpack(tmp_path, make_tar(entry("f", data=b"x")), target, options=UnpackOptions(budget=budget))
    assert os.listdir(target) == []


def test_oversized_metadata_headers_are_refused_before_they_are_read(tmp_path, sandbox):
    """tarfile reads a PAX header or a GNU long name whole into memory: past 1 MiB the layer is refused."""
    target, _ = sandbox
    ok = make_tar(entry("f", data=b"x", pax={"comment": "c" * 60000}))
    unpack(tmp_path, ok, target)
    big = make_tar(entry("g", data=b"x", pax={"comment": "c" * (2 << 20)}))
    with pytest.raises(LayerError, match="header of .* bytes"):
        unpack(tmp_path, big, target)
    info = tarfile.TarInfo("n" * (2 << 20))
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.GNU_FORMAT) as tar:
        tar.addfile(info, io.BytesIO(b""))
    with pytest.raises(LayerError, match="header of .* bytes"):
        unpack(tmp_path, out.getvalue(), target)
    assert not os.path.lexists(target / "g")


def test_directories_an_archive_implies_count_as_entries(tmp_path):
    """Three members 3,000 levels deep made 9,000 directories and were charged 3 entries (found by an attacker's
    review): each parent the extractor makes is charged as an entry too."""
    from pycri.images.unpack import UnpackBudget, UnpackLimit
    from runtime.host.trees import remove_tree

    target = tmp_path / "t"
    target.mkdir()
    deep = "/".join(["a"] * 3_000)
    budget = UnpackBudget(max_entries=1_000)
    try:
        with pytest.raises(UnpackLimit, match="max_entries"):
            unpack(tmp_path, make_tar(*[entry(f"{top}/{deep}/f", data=b"x") for top in "kxy"]), target,
                   options=UnpackOptions(budget=budget))
        assert budget.entries == 1_001
    finally:
        remove_tree(target)


@pytest.mark.parametrize("fmt", ["gnu", "pax-1.0", "pax-0.1"])
def test_a_sparse_map_longer_than_the_bound_is_refused_before_it_is_read(tmp_path, fmt):
    """A GNU 1.0 map lives in the member's data and old GNU extension blocks follow the header: tarfile read
    either whole into a list (a 20 KB gzip layer cost 718 MiB of memory), past what MAX_HEADER bounds."""
    from pycri.images.unpack import MAX_SPARSE_ENTRIES
    from tests.fuzz.tarbuild import build, gnu_sparse, pax_sparse

    blocks = [(2 * i, b"x") for i in range(MAX_SPARSE_ENTRIES + 1)]
    size = 2 * len(blocks)
    data = gnu_sparse("big", size, blocks) if fmt == "gnu" else pax_sparse("big", size, blocks, fmt[4:])
    target = tmp_path / "t"
    target.mkdir()
    with pytest.raises(LayerError, match="extents" if fmt != "pax-0.1" else "header of"):  # (0.1: in a PAX header)
        unpack(tmp_path, build([("dir", "d", None, {})])[:-1024] + data, target)
    assert not (target / "big").exists()
