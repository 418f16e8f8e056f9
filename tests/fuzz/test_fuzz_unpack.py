"""The layer extractor against hostile tars: nothing is ever written outside the target, and the only error is
LayerError (pycri/images/unpack.py).

The target sits in a sentinel parent dir that also holds a lower layer (for hardlink copies) and a few files; the
whole parent except the target is snapshotted (names, types, modes, owners, sizes, mtimes, contents, link targets)
before and compared after every example. Generated entries aim at the parent through `..`, absolute paths (into the
parent's absolute path), symlinks to it, to `/` and to `..`, hardlinks, whiteouts, devices, duplicates and long names.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import stat
import tarfile
import tempfile
from pathlib import Path

import pytest
import zstandard
from hypothesis import event, given, settings
from hypothesis import strategies as st

from pycri.images.unpack import LayerError, UnpackBudget, UnpackOptions, unpack_layer
from tests.fuzz.profiles import budget, corpus
from tests.fuzz.tarbuild import build, gnu_sparse, pax_sparse

ESCAPE_PREFIX = "pycri-fuzz-escape"


def snapshot(root: Path, skip: Path) -> dict[str, tuple]:
    """Everything under root except `skip`: path -> (type, mode, uid, gid, size, mtime_ns, sha256 or link)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        if Path(dirpath) == skip or Path(dirpath).is_relative_to(skip):
            dirnames.clear()
            continue
        st_ = os.lstat(dirpath)
        out[dirpath] = ("d", st_.st_mode, st_.st_uid, st_.st_gid, st_.st_mtime_ns)
        for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            p = os.path.join(dirpath, name)
            s = os.lstat(p)
            if stat.S_ISLNK(s.st_mode):
                extra = os.readlink(p)
            elif stat.S_ISREG(s.st_mode):
                extra = hashlib.sha256(Path(p).read_bytes()).hexdigest()
            else:
                extra = s.st_rdev
            out[p] = (stat.S_IFMT(s.st_mode), s.st_mode, s.st_uid, s.st_gid, s.st_size, s.st_mtime_ns, extra)
    return out


def escapes_in_tmp() -> set[str]:
    return {n for n in os.listdir("/tmp") if n.startswith(ESCAPE_PREFIX)}


class Sandbox:
    """parent/{sentinel, outside/, lower/, target/}; `check` raises if anything but target/ changed."""

    def __init__(self) -> None:
        self.parent = Path(tempfile.mkdtemp(prefix="pycri-fuzz-"))
        (self.parent / "sentinel").write_text("do not touch\n")
        (self.parent / "outside").mkdir()
        (self.parent / "outside" / "file").write_text("outside\n")
        lower = self.parent / "lower"
        (lower / "etc").mkdir(parents=True)
        (lower / "etc" / "passwd").write_text("root:x:0:0::/root:/bin/sh\n")
        os.symlink("/", lower / "rootlink")
        os.symlink(str(self.parent / "sentinel"), lower / "sentinel-link")
        os.mknod(lower / "whiteout", stat.S_IFCHR, os.makedev(0, 0))
        self.lower = lower
        self.target = self.parent / "target"
        self.tmp_escapes = escapes_in_tmp()
        self.before = snapshot(self.parent, self.target)

    def fresh_target(self) -> Path:
        if self.target.exists():
            shutil.rmtree(self.target)
        self.target.mkdir()
        return self.target

    def check(self) -> None:
        after = snapshot(self.parent, self.target)
        changed = {p for p in set(after) | set(self.before) if after.get(p) != self.before.get(p)}
        changed.discard(str(self.parent))  # the parent's own mtime changes when target/ is recreated
        assert not changed, f"written outside the target: {sorted(changed)}"
        assert escapes_in_tmp() == self.tmp_escapes, f"written to /tmp: {escapes_in_tmp() - self.tmp_escapes}"

    def close(self) -> None:
        shutil.rmtree(self.parent, ignore_errors=True)


P = "@PARENT@"  # in generated names, replaced by the sandbox's absolute path when the tar is built


@pytest.fixture(scope="module")
def sandbox():
    """One sandbox for the module: hypothesis runs a test body many times within one fixture instance."""
    box = Sandbox()
    yield box
    box.close()


def extract(box: Sandbox, blob: bytes, options: UnpackOptions) -> str:
    """Unpack blob into a fresh target; 'ok' or 'rejected'. Any other exception fails the test."""
    target = box.fresh_target()
    path = box.parent / "blob"
    path.write_bytes(blob)
    try:
        try:
            unpack_layer(path, target, options=options)
            return "ok"
        except LayerError:
            return "rejected"
    finally:
        path.unlink()
        box.check()


# -- the seeds ---------------------------------------------------------------------------------------------------

SEEDS = corpus("tar")


@pytest.mark.parametrize("name,blob", SEEDS, ids=[n for n, _ in SEEDS])
@pytest.mark.parametrize("devices", [False, True])
def test_seed_layers(sandbox, name, blob, devices):
    extract(sandbox, blob, UnpackOptions(allow_devices=devices, lowers=[sandbox.lower]))


def test_seed_outcomes(sandbox):
    """The hostile seeds that must be refused are refused; the benign ones extract with the right content."""
    seeds = dict(SEEDS)
    opts = UnpackOptions(lowers=[sandbox.lower])
    for name in ("dotdot", "symlink-dir-then-file", "symlink-parent-then-file", "symlink-chain",
                 "hardlink-escape", "hardlink-through-symlink", "hardlink-to-dir", "dir-replaced-by-symlink",
                 "whiteout-dotdot", "devices", "pax-nan-mtime", "pax-negative-uid", "garbage.bin"):
        assert extract(sandbox, seeds[name + ("" if "." in name else ".tar")], opts) == "rejected", name
    assert extract(sandbox, seeds["symlink-replaced-by-file.tar"], opts) == "ok"
    f = sandbox.target / "f"
    assert f.is_file() and not f.is_symlink() and f.read_bytes() == b"content"
    assert extract(sandbox, seeds["absolute.tar"], opts) == "ok"
    assert (sandbox.target / "tmp" / f"{ESCAPE_PREFIX}-abs").is_file()  # re-rooted, not at /tmp
    # a hardlink to a lower layer's file is a copy; the lower file is untouched (checked by the snapshot)
    assert extract(sandbox, build([("lnk", "p", "etc/passwd", {})]), opts) == "ok"
    assert (sandbox.target / "p").read_text().startswith("root:") and (sandbox.target / "p").stat().st_nlink == 1
    # ... through a lower layer's symlink to / is not followed: the target is not found
    assert extract(sandbox, build([("lnk", "p", "rootlink/etc/passwd", {})]), opts) == "rejected"
    assert extract(sandbox, build([("lnk", "p", "whiteout", {})]), opts) == "rejected"
    for name in ("good.tar.gz", "good.tar.zst"):
        assert extract(sandbox, seeds[name], opts) == "ok"
        assert (sandbox.target / "hard").read_bytes() == b"hello\n"
        assert os.readlink(sandbox.target / "link") == "etc/hello"
    # GNU sparse members: 4 GiB files of a few KiB of data stay sparse; maps out of order or past the size are refused
    for name in ("sparse-gnu", "sparse-gnu-extended", "sparse-pax10", "sparse-pax01"):
        assert extract(sandbox, seeds[name + ".tar"], opts) == "ok", name
        st_ = os.stat(sandbox.target / "sparse")
        assert st_.st_size == 1 << 32 and st_.st_blocks * 512 <= 256 * 1024, (name, st_.st_blocks)
    for name in ("sparse-out-of-order", "sparse-past-size"):
        assert extract(sandbox, seeds[name + ".tar"], opts) == "rejected", name


# -- generated layers --------------------------------------------------------------------------------------------

def _components():
    plain = st.sampled_from(["a", "b", "d", "f", "link", "etc", "tmp", "sentinel", "outside", "lower", "target"])
    special = st.sampled_from(["..", ".", "", ".wh.a", ".wh..wh..opq", ".wh..wh.plnk", ".wh..", ".wh.", "n" * 256,
                               "\u00e9", "x\x01y"])
    rel_path = st.lists(st.one_of(plain, plain, special), min_size=1, max_size=6).map("/".join)
    abs_parent = st.builds(lambda rest: "/".join([P] + rest),
                           st.lists(st.one_of(plain, st.just("..")), max_size=3))
    ups = st.builds(lambda n, rest: "/".join([".."] * n + rest), st.integers(1, 8), st.lists(plain, max_size=3))
    return st.one_of(rel_path, rel_path, abs_parent, ups, st.just(f"/tmp/{ESCAPE_PREFIX}-gen"))


def entries_strategy():
    name = _components()
    linkname = st.one_of(name, st.sampled_from(["/", "..", "../..", P, P + "/sentinel", "/tmp", "/etc",
                                                 "etc/passwd", "rootlink", "rootlink/etc/passwd", "whiteout"]))
    pax = st.one_of(
        st.just({}), st.just({}), st.just({}),
        st.fixed_dictionaries({}, optional={
            "mtime": st.sampled_from(["nan", "inf", "-1", "1e30", "0", "1.5", "99999999999999"]),
            "uid": st.sampled_from(["0", "-1", "4294967295", "99999999999", "65534"]),
            "gid": st.sampled_from(["0", "-5", "4294967296"]),
            "SCHILY.xattr.user.fuzz": st.text(max_size=8),
            "SCHILY.xattr.trusted.overlay.opaque": st.just("y"),
            "SCHILY.xattr.security.capability": st.just("\x01\x00\x00\x02"),
            "_mode": st.integers(0, 0o7777),
        }))
    entry = st.one_of(
        st.tuples(st.just("file"), name, st.binary(max_size=64), pax),
        st.tuples(st.just("dir"), name, st.none(), pax),
        st.tuples(st.just("sym"), name, linkname, pax),
        st.tuples(st.just("lnk"), name, linkname, pax),
        st.tuples(st.sampled_from(["chr", "blk"]), name, st.sampled_from([(0, 0), (1, 3), (1, 5), (5, 1)]), pax),
        st.tuples(st.sampled_from(["fifo", "cont", "odd"]), name, st.just(b"z"), pax),
    )
    # a symlink (or a dir replaced by one), then entries written through it: the classic escape
    through = st.builds(
        lambda link, target, child, kind, replace_dir: (
            ([("dir", link, None, {}), ("file", f"{link}/x", b"x", {})] if replace_dir else [])
            + [("sym", link, target, {}), (kind, f"{link}/{child}", b"pwned" if kind == "file" else child, {})]),
        st.sampled_from(["l", "a/l", "d"]),
        st.sampled_from(["/", "..", "../..", P, P + "/outside", "/tmp", "a"]),
        st.sampled_from(["pwned", "sentinel", "outside/file", f"tmp/{ESCAPE_PREFIX}-thru", "lower/etc/passwd"]),
        st.sampled_from(["file", "dir", "lnk", "sym"]), st.booleans())
    return st.lists(st.one_of(entry.map(lambda e: [e]), through), min_size=1, max_size=8).map(
        lambda groups: [e for g in groups for e in g])


def _place(value, parent: str):
    return value.replace(P, parent) if isinstance(value, str) else value


@given(entries=entries_strategy(), devices=st.booleans(), lowers=st.booleans(),
       compress=st.sampled_from(["tar", "tar", "gzip", "zstd"]), fmt=st.sampled_from(
           [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT, tarfile.USTAR_FORMAT]))
@settings(max_examples=budget(400))
def test_generated_layers_never_escape(sandbox, entries, devices, lowers, compress, fmt):
    parent = str(sandbox.parent)
    try:
        blob = build([(k, _place(n, parent), _place(a, parent), dict(p)) for k, n, a, p in entries], fmt=fmt)
    except (ValueError, UnicodeError, tarfile.TarError, OverflowError):
        return  # this tar format cannot express the entry (a ustar name too long, a NUL...): nothing to test
    if compress == "gzip":
        blob = gzip.compress(blob, mtime=0)
    elif compress == "zstd":
        blob = zstandard.ZstdCompressor().compress(blob)
    extract(sandbox, blob, UnpackOptions(allow_devices=devices, lowers=[sandbox.lower] if lowers else None))


@given(entries=entries_strategy(), max_bytes=st.integers(0, 16384), max_entries=st.integers(0, 12),
       compress=st.sampled_from(["tar", "gzip"]))
@settings(max_examples=budget(150))
def test_generated_layers_within_bounds(sandbox, entries, max_bytes, max_entries, compress):
    """With a budget, a layer is extracted within it or refused (LayerError), never past it nor outside."""
    parent = str(sandbox.parent)
    try:
        blob = build([(k, _place(n, parent), _place(a, parent), dict(p)) for k, n, a, p in entries])
    except (ValueError, UnicodeError, tarfile.TarError, OverflowError):
        return
    if compress == "gzip":
        blob = gzip.compress(blob, mtime=0)
    limits = UnpackBudget(max_bytes=max_bytes, max_entries=max_entries)
    if extract(sandbox, blob, UnpackOptions(lowers=[sandbox.lower], budget=limits)) == "ok":
        assert limits.bytes <= max_bytes and limits.entries <= max_entries


def _sparse_map_valid(blocks: list[tuple[int, bytes]], size: int) -> bool:
    end = 0
    for offset, data in blocks:
        if offset < end or offset + len(data) > size:
            return False
        end = offset + len(data)
    return True


def _in_order(gaps: list[tuple[int, bytes]]) -> list[tuple[int, bytes]]:
    """(gap in 512-byte blocks, data) -> (offset, data): a valid map (offsets past the previous block's end)."""
    out, end = [], 0
    for gap, data in gaps:
        offset = ((end + 511) // 512 + gap) * 512
        out.append((offset, data))
        end = offset + len(data)
    return out


_DATA = st.binary(min_size=1, max_size=1536)
_ANY_BLOCKS = st.lists(st.tuples(st.integers(1, 1 << 23).map(lambda n: n * 512), _DATA), max_size=30)
_VALID_BLOCKS = st.lists(st.tuples(st.integers(0, 1 << 19), _DATA), max_size=30).map(_in_order)


@given(blocks=st.one_of(_VALID_BLOCKS, _VALID_BLOCKS, _ANY_BLOCKS),
       size=st.integers(0, (1 << 33) - 1), fit=st.sampled_from([True, True, False]),
       fmt=st.sampled_from(["gnu", "1.0", "0.1"]),
       name=st.sampled_from(["s", "d/s", "../s", f"{P}/sentinel", "lower/etc/passwd", "/tmp/" + ESCAPE_PREFIX]))
@settings(max_examples=budget(200))
def test_generated_sparse_members(sandbox, blocks, size, fit, fmt, name):
    """GNU sparse members with random maps (in order or not, overlapping, past the size), in the old GNU format and
    PAX 1.0/0.1: a valid map extracts with each block's data at its offset, holes unallocated; any other is
    refused; nothing outside the target changes. `fit`: the size is just past the last block's end."""
    if fit:
        size = min(max([off + len(d) for off, d in blocks] or [0]) + size % 4096, (1 << 33) - 1)
    name = _place(name, str(sandbox.parent))
    if fmt == "gnu" and len(name.encode()) > 99:
        return
    blob = gnu_sparse(name, size, blocks) if fmt == "gnu" else pax_sparse(name, size, blocks, fmt)
    outcome = extract(sandbox, blob, UnpackOptions(lowers=[sandbox.lower]))
    event(f"{fmt} {outcome}")
    inside = name.lstrip("/") if ".." not in name else None
    if inside is None:
        assert outcome == "rejected"
        return
    assert outcome == ("ok" if _sparse_map_valid(blocks, size) else "rejected"), (blocks, size)
    if outcome == "ok":
        path = sandbox.target / inside
        st_ = os.stat(path)
        assert st_.st_size == size
        assert st_.st_blocks * 512 <= 64 * 1024 + 8192 * len(blocks), (st_.st_blocks, blocks)
        with open(path, "rb") as f:
            for offset, data in blocks:
                f.seek(offset)
                assert f.read(len(data)) == data


@given(seed=st.sampled_from(SEEDS), edits=st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 255)),
                                                    min_size=1, max_size=8), cut=st.integers(0, 1 << 16))
@settings(max_examples=budget(300))
def test_mutated_seeds(sandbox, seed, edits, cut):
    """Byte flips and truncations of the seeds (headers, checksums, sizes, compressed streams)."""
    data = bytearray(seed[1])
    for pos, value in edits:
        data[pos % len(data)] = value
    extract(sandbox, bytes(data[:max(1, cut % (len(data) + 1))]), UnpackOptions(lowers=[sandbox.lower]))


@given(blob=st.binary(max_size=2048))
@settings(max_examples=budget(150))
def test_random_bytes(sandbox, blob):
    extract(sandbox, blob, UnpackOptions())
