"""Build layer tarballs from entry tuples (for the hostile seeds in corpus/tar and the generated ones)."""

from __future__ import annotations

import io
import tarfile

# (kind, name, arg, pax): kind is a tarfile type name; arg is the data (file), linkname (sym/lnk) or (major, minor)
Entry = tuple[str, str, object, dict]
_TYPES = {"file": tarfile.REGTYPE, "dir": tarfile.DIRTYPE, "sym": tarfile.SYMTYPE, "lnk": tarfile.LNKTYPE,
          "chr": tarfile.CHRTYPE, "blk": tarfile.BLKTYPE, "fifo": tarfile.FIFOTYPE, "cont": tarfile.CONTTYPE,
          "odd": b"Z"}


def build(entries: list[Entry], fmt: int = tarfile.PAX_FORMAT) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for kind, name, arg, pax in entries:
            info = tarfile.TarInfo(name)
            info.type = _TYPES[kind]
            info.mode = pax.pop("_mode", 0o755 if kind == "dir" else 0o644)
            info.mtime = 1_700_000_000
            info.pax_headers = dict(pax)
            data = None
            if kind in ("file", "cont", "odd"):
                data = arg if isinstance(arg, bytes) else b""
                info.size = len(data)
            elif kind in ("sym", "lnk"):
                info.linkname = str(arg)
            elif kind in ("chr", "blk"):
                info.devmajor, info.devminor = arg  # type: ignore[misc]
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
        end = tar.offset
    return buf.getvalue()[:end] + b"\0" * 1024  # the end-of-archive marker, without the record padding


def _pad(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % tarfile.BLOCKSIZE)


def _octal(n: int, width: int = 12) -> bytes:
    return b"%0*o\0" % (width - 1, n)


def gnu_sparse(name: str, size: int, blocks: list[tuple[int, bytes]]) -> bytes:
    """One old-GNU sparse member (type 'S'): `blocks` are (offset, data); the rest of the `size` bytes are holes.
    Up to 4 map entries go in the header, the others in extension blocks of 21. As GNU tar writes them, the map
    ends with (size, 0); GNU tar reads each block's data from a 512-byte boundary (Python's tarfile: right after
    the previous one), so blocks meant to read the same in both are multiples of 512."""
    data = b"".join(d for _, d in blocks)
    blocks = blocks + [(size, b"")]
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o644, 1_700_000_000
    header = bytearray(info.tobuf(tarfile.GNU_FORMAT))
    assert len(header) == tarfile.BLOCKSIZE, "a name this long needs a longname header: not built here"
    entries = [_octal(off) + _octal(len(d)) for off, d in blocks]
    header[156:157] = tarfile.GNUTYPE_SPARSE
    header[386:386 + 24 * len(entries[:4])] = b"".join(entries[:4])
    header[482] = 1 if len(entries) > 4 else 0
    header[483:495] = _octal(size)
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\0 " % sum(header)
    out = [bytes(header)]
    rest = entries[4:]
    while rest:
        ext = bytearray(tarfile.BLOCKSIZE)
        ext[0:24 * len(rest[:21])] = b"".join(rest[:21])
        rest = rest[21:]
        ext[504] = 1 if rest else 0
        out.append(bytes(ext))
    out.append(_pad(data))
    return b"".join(out) + b"\0" * 1024


def pax_sparse(name: str, size: int, blocks: list[tuple[int, bytes]], version: str = "1.0") -> bytes:
    """One PAX sparse member, GNU's format 0.1 (the map in a PAX record) or 1.0 (the map before the data)."""
    data = b"".join(d for _, d in blocks)
    blocks = blocks + [(size, b"")]
    info = tarfile.TarInfo(f"GNUSparseFile.0/{name}")
    info.mode, info.mtime = 0o644, 1_700_000_000
    if version == "1.0":
        info.pax_headers = {"GNU.sparse.major": "1", "GNU.sparse.minor": "0", "GNU.sparse.name": name,
                            "GNU.sparse.realsize": str(size)}
        numbers = [len(blocks)] + [n for off, d in blocks for n in (off, len(d))]
        payload = _pad("".join(f"{n}\n" for n in numbers).encode()) + data
    elif version == "0.1":
        info.pax_headers = {"GNU.sparse.numblocks": str(len(blocks)),
                            "GNU.sparse.map": ",".join(f"{off},{len(d)}" for off, d in blocks),
                            "GNU.sparse.name": name, "GNU.sparse.size": str(size)}
        payload = data
    else:
        raise ValueError(version)
    info.size = len(payload)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        tar.addfile(info, io.BytesIO(payload))
        end = tar.offset
    return buf.getvalue()[:end] + b"\0" * 1024
