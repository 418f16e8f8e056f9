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
