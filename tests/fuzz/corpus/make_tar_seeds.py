"""Regenerate the hostile layer seeds in this directory: `python -m tests.fuzz.corpus.make_tar_seeds`.

Every absolute path they aim at starts with /tmp/pycri-fuzz-escape, which the tests check does not appear."""

from __future__ import annotations

import gzip
import os

import zstandard

from tests.fuzz.tarbuild import build, gnu_sparse, pax_sparse

ESC = "/tmp/pycri-fuzz-escape"
D = os.path.join(os.path.dirname(__file__), "tar")

SEEDS = {
    "dotdot": [("file", "../pycri-fuzz-escape-dotdot", b"x", {}), ("file", "a/../../escape", b"x", {})],
    "absolute": [("file", f"{ESC}-abs", b"x", {}), ("dir", "/", None, {})],
    "symlink-dir-then-file": [("sym", "link", "/tmp", {}), ("file", "link/pycri-fuzz-escape-sym", b"x", {})],
    "symlink-parent-then-file": [("sym", "up", "..", {}), ("file", "up/escape-up", b"x", {})],
    "symlink-chain": [("sym", "a", "b", {}), ("sym", "b", "/", {}), ("file", "a/tmp/pycri-fuzz-escape-chain", b"x", {})],
    "symlink-replaced-by-file": [("sym", "f", f"{ESC}-replace", {}), ("file", "f", b"content", {})],
    "symlink-then-dir": [("sym", "d", "/tmp", {}), ("dir", "d", None, {}), ("file", "d/pycri-fuzz-escape-d", b"x", {})],
    "hardlink-escape": [("file", "ok", b"x", {}), ("lnk", "h1", "../../../etc/passwd", {})],
    "hardlink-absolute": [("lnk", "h2", "/etc/passwd", {})],
    "hardlink-through-symlink": [("sym", "s", "/etc", {}), ("lnk", "h3", "s/passwd", {})],
    "hardlink-to-dir": [("dir", "d", None, {}), ("lnk", "h4", "d", {})],
    "whiteouts": [("dir", "d", None, {}), ("file", "d/.wh..wh..opq", b"", {}), ("file", ".wh.gone", b"", {}),
                  ("file", ".wh..wh.plnk", b"", {}), ("file", "d/.wh.d2", b"", {}), ("file", ".wh...", b"", {})],
    "whiteout-dotdot": [("file", "../.wh.x", b"", {})],
    "devices": [("chr", "null", (1, 3), {}), ("blk", "sda", (8, 0), {}), ("fifo", "pipe", None, {}),
                ("chr", "wh", (0, 0), {})],
    "long-names": [("file", "n" * 300, b"x", {}), ("file", "/".join(["d" * 200] * 30), b"x", {})],
    "duplicates": [("dir", "d", None, {}), ("file", "d", b"now a file", {}), ("file", "d/x", b"x", {})],
    "dir-replaced-by-symlink": [("dir", "d", None, {}), ("file", "d/x", b"x", {}), ("sym", "d", "/tmp", {}),
                                ("file", "d/pycri-fuzz-escape-dsym", b"x", {})],
    "xattrs": [("file", "x", b"x", {"SCHILY.xattr.trusted.overlay.opaque": "y", "SCHILY.xattr.user.a": "b"}),
               ("dir", "xd", None, {"SCHILY.xattr.trusted.overlay.redirect": "/etc"})],
    "setuid-modes": [("file", "suid", b"x", {"_mode": 0o7777}), ("dir", "sticky", None, {"_mode": 0o1777})],
    "odd-types": [("cont", "contiguous", b"c", {}), ("odd", "unknown-type", b"u", {})],
    "pax-bad-numbers": [("file", "bigmtime", b"x", {"mtime": "1e30"}), ("file", "bigid", b"x", {"uid": "99999999999"})],
    "pax-nan-mtime": [("file", "nan", b"x", {"mtime": "nan"})],
    "pax-negative-uid": [("file", "neg", b"x", {"uid": "-5", "gid": "-7"})],
}


def main() -> None:
    os.makedirs(D, exist_ok=True)
    for name, entries in SEEDS.items():
        with open(os.path.join(D, name + ".tar"), "wb") as f:
            f.write(build([(k, n, a, dict(p)) for k, n, a, p in entries]))
    plain = build([("dir", "etc", None, {}), ("file", "etc/hello", b"hello\n", {}), ("sym", "link", "etc/hello", {}),
                   ("lnk", "hard", "etc/hello", {})])
    with open(os.path.join(D, "good.tar.gz"), "wb") as f:
        f.write(gzip.compress(plain, mtime=0))
    with open(os.path.join(D, "good.tar.zst"), "wb") as f:
        f.write(zstandard.ZstdCompressor().compress(plain))
    with open(os.path.join(D, "truncated.tar"), "wb") as f:
        f.write(plain[:700])
    with open(os.path.join(D, "truncated.tar.gz"), "wb") as f:
        f.write(gzip.compress(plain, mtime=0)[:60])
    with open(os.path.join(D, "garbage.bin"), "wb") as f:
        f.write(b"\x1f\x8b" + b"not gzip at all" * 10)
    for name, blob in SPARSE.items():
        with open(os.path.join(D, name + ".tar"), "wb") as f:
            f.write(blob)


# GNU sparse members (4 GiB of apparent size in a few KiB), and hostile maps.
_BLOCKS = [(4096, b"a" * 512), (1 << 31, b"b" * 512)]
SPARSE = {
    "sparse-gnu": gnu_sparse("sparse", 1 << 32, _BLOCKS),
    "sparse-gnu-extended": gnu_sparse("sparse", 1 << 32, [(4096 * (i + 1), bytes([65 + i % 26]) * 512)
                                                          for i in range(30)]),
    "sparse-pax10": pax_sparse("sparse", 1 << 32, _BLOCKS),
    "sparse-pax01": pax_sparse("sparse", 1 << 32, _BLOCKS, "0.1"),
    "sparse-out-of-order": gnu_sparse("sparse", 1 << 20, [(8192, b"x" * 512), (0, b"y" * 512)]),
    "sparse-past-size": pax_sparse("sparse", 4096, [(8192, b"x" * 512)]),
}


if __name__ == "__main__":
    main()
