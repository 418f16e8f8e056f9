"""Safe extraction of an untrusted layer tarball into an empty snapshot directory (overlayfs upper-dir format).

Every path is resolved component by component from a directory fd of the target with O_NOFOLLOW, so nothing in the
archive can make us write outside the target:
- `..` that would climb above the layer root rejects the layer; a leading `/` is dropped (the name is relative to
  the layer root, as docker and containerd read it);
- a parent component that is a symlink (or not a directory) rejects the layer: a layer made from a filesystem never
  has entries below a symlink, so such an entry can only be an attempt to write through it;
- new files are created with O_EXCL|O_NOFOLLOW after the old entry of that name is removed, so an existing symlink is
  replaced, never followed;
- hardlinks must point at a name inside the layer root. A target in this layer is hardlinked; a target that exists
  only in a lower layer (its parent snapshots) is copied, because one overlay upper dir cannot link into another and
  a shared inode would let one snapshot's metadata changes leak into another; a missing target rejects the layer.
Whiteouts `.wh.<name>` become overlay whiteouts (char device 0/0) - unless this layer itself has <name>, which
then stays (a whiteout hides lower layers only; a directory of that name becomes opaque); `.wh..wh..opq` sets
trusted.overlay.opaque=y on its directory, other `.wh..wh.*` (aufs metadata) are skipped. Device nodes other
than 0/0 are created only when `allow_devices` (a root daemon, as containerd does); FIFOs always. Ownership (when
root), mode with setuid/setgid/sticky, mtimes, and PAX SCHILY.xattr.* attributes are kept; `trusted.*` xattrs from
an archive are refused (they would be overlayfs's own control attributes). Compression is detected from the magic
bytes (gzip, zstd, none), the media type only checked for being a layer type at all; the uncompressed stream is
hashed and must equal the diff id. GNU sparse members (old GNU 'S', PAX 0.0/0.1/1.0) are written with holes: only
their data blocks are written, and the file is truncated to its real size.

Bounds (UnpackBudget, one per image pull, shared by its layers): the bytes of the uncompressed tar streams plus the
bytes copied from lower layers for hardlinks, and the entries, summed over the image's layers; and a reserve of free
bytes and inodes on the snapshots' file system, checked before each layer and every _FREE_CHECK_BYTES /
_FREE_CHECK_ENTRIES during it. Past a bound, or on ENOSPC/EDQUOT, the layer fails with UnpackLimit. The stream is
counted as it is read, so a decompression bomb stops at the bound; a PAX or long-name header, which tarfile
reads whole into memory, is refused past MAX_HEADER before it is read. The holes of sparse files cost nothing and
count for nothing.
"""

from __future__ import annotations

import errno
import gzip
import hashlib
import os
import stat
import tarfile
import threading
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import zstandard

from ..log import get as get_logger
from ..node import remove_tree

log = get_logger("images.unpack")

WHITEOUT_PREFIX = ".wh."
OPAQUE = ".wh..wh..opq"
OVERLAY_OPAQUE_XATTR = "trusted.overlay.opaque"
LAYER_MEDIA_TYPES = {
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd",
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
    "application/vnd.docker.image.rootfs.diff.tar",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
}
_CHUNK = 1 << 20
_FREE_CHECK_BYTES = 16 << 20  # statvfs at least this often while unpacking (it costs ~1 us)
_FREE_CHECK_ENTRIES = 4096
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
MAX_HEADER = 1 << 20  # a PAX record block or a GNU long name/link: tarfile reads one whole into memory
MAX_SPARSE_ENTRIES = 1 << 18  # a sparse member's map (data extents): tarfile reads it whole into a list
_DIR_COST = 4096  # what a directory the archive implies (a missing parent) is charged in bytes
_HEADER_TYPES = (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE, tarfile.GNUTYPE_LONGNAME,
                 tarfile.GNUTYPE_LONGLINK)
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class LayerError(Exception):
    """The layer is malformed or hostile; nothing outside the target was touched."""


class MissingLowers(LayerError):
    """A hardlink points below this layer and the lower layers were not given (UnpackOptions.lowers is None)."""


class UnpackLimit(LayerError):
    """The image unpacks past a configured bound, or the disk has too little room left for it."""


class UnpackBudget:
    """What the layers of one image may unpack to (thread-safe: its layers are extracted in parallel).

    charge() counts bytes (uncompressed tar stream, copies from lower layers) and entries and raises UnpackLimit
    past max_bytes / max_entries; once one charge failed, every later one fails too, so the other layers of the
    image stop at their next read. `path` (on the snapshots' file system) is checked for min_free_bytes and
    min_free_inodes before each layer (check_free) and periodically while charging. None: no bound."""

    def __init__(self, *, max_bytes: int | None = None, max_entries: int | None = None, min_free_bytes: int = 0,
                 min_free_inodes: int = 0, path: Path | None = None, image: str = "") -> None:
        self.max_bytes = max_bytes
        self.max_entries = max_entries
        self.min_free_bytes = min_free_bytes
        self.min_free_inodes = min_free_inodes
        self.path = path
        self.image = image
        self.bytes = 0
        self.entries = 0
        self._lock = threading.Lock()
        self._failed: str | None = None
        self._next_check = (_FREE_CHECK_BYTES, _FREE_CHECK_ENTRIES)

    def charge(self, nbytes: int = 0, entries: int = 0, *, check_free: bool = True) -> None:
        with self._lock:
            if self._failed:
                raise UnpackLimit(self._failed)
            self.bytes += nbytes
            self.entries += entries
            why = None
            if self.max_bytes is not None and self.bytes > self.max_bytes:
                why = f"image {self.image or '?'} unpacks to more than max_unpacked_bytes ({self.max_bytes} bytes)"
            elif self.max_entries is not None and self.entries > self.max_entries:
                why = f"image {self.image or '?'} has more than max_entries ({self.max_entries}) layer entries"
            if why:
                self._failed = why
                raise UnpackLimit(why)
            due = check_free and (self.bytes >= self._next_check[0] or self.entries >= self._next_check[1])
            if due:
                self._next_check = (self.bytes + _FREE_CHECK_BYTES, self.entries + _FREE_CHECK_ENTRIES)
        if due:
            self.check_free()

    def refund(self, nbytes: int, entries: int) -> None:
        """Give back what an extraction that is thrown away and redone charged."""
        with self._lock:
            self.bytes -= nbytes
            self.entries -= entries

    def check_free(self, need: int = 0) -> None:
        """UnpackLimit if the file system of `path` has less than min_free_bytes + need bytes, or fewer than
        min_free_inodes inodes, available (a file system that reports no inode count is not checked for them)."""
        if self.path is None or not (self.min_free_bytes or self.min_free_inodes or need):
            return
        st = os.statvfs(self.path)
        free = st.f_bavail * st.f_frsize
        why = None
        if free < self.min_free_bytes + need:
            why = (f"only {free} bytes free on {self.path}, unpacking image {self.image or '?'} needs "
                   f"{need} more than the reserve of {self.min_free_bytes} (images.min_free_bytes)")
        elif st.f_files and st.f_favail < self.min_free_inodes:
            why = (f"only {st.f_favail} inodes free on {self.path}, under the reserve of {self.min_free_inodes} "
                   f"(images.min_free_inodes), unpacking image {self.image or '?'}")
        if why:
            with self._lock:
                self._failed = self._failed or why
            raise UnpackLimit(why)


class _Meter:
    """One extraction's share of a budget: what it charged, to refund if the extraction is redone."""

    def __init__(self, budget: UnpackBudget | None) -> None:
        self.budget = budget
        self.bytes = 0
        self.entries = 0

    def charge(self, nbytes: int = 0, entries: int = 0) -> None:
        self.bytes += nbytes
        self.entries += entries
        if self.budget is not None:
            self.budget.charge(nbytes, entries)

    def refund(self) -> None:
        if self.budget is not None:
            self.budget.refund(self.bytes, self.entries)
        self.bytes = self.entries = 0


@dataclass
class UnpackOptions:
    allow_devices: bool = False  # mknod real device nodes (only a root daemon)
    same_owner: bool = field(default_factory=lambda: os.geteuid() == 0)
    # Parent snapshot dirs, top-first, for hardlinks to lower-layer files. None: not known yet (the parents are
    # still being unpacked); such a hardlink then raises MissingLowers so the caller can wait and retry.
    lowers: list[Path] | None = field(default_factory=list)
    budget: UnpackBudget | None = None  # bounds shared by the layers of one image; None: unbounded


@dataclass
class UnpackResult:
    diff_id: str
    size: int  # uncompressed bytes
    entries: int
    copied: int = 0  # bytes copied from lower layers (hardlinks into them)


class _HashingReader:
    """A read()-only stream that hashes and counts what passes through it, charging it to the meter."""

    def __init__(self, inner: BinaryIO, meter: _Meter) -> None:
        self.inner = inner
        self.meter = meter
        self.hasher = hashlib.sha256()
        self.count = 0

    def read(self, n: int = -1) -> bytes:
        data = self.inner.read(min(n, _CHUNK) if n is not None and n >= 0 else _CHUNK)
        self.meter.charge(len(data))
        self.hasher.update(data)
        self.count += len(data)
        return data

    def drain(self) -> None:
        while self.read(_CHUNK):
            pass


def decompressed(raw: BinaryIO, media_type: str = "") -> BinaryIO:
    """Wrap a seekable layer blob in its decompressor, chosen by magic bytes."""
    if media_type and media_type not in LAYER_MEDIA_TYPES:
        raise LayerError(f"unsupported layer media type {media_type!r}")
    head = raw.read(4)
    raw.seek(0)
    if head[:2] == b"\x1f\x8b":
        kind = "gzip"
        stream: BinaryIO = gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[assignment]
    elif head == b"\x28\xb5\x2f\xfd":
        kind = "zstd"
        stream = zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)  # type: ignore
    else:
        kind = "tar"
        stream = raw
    declared = "zstd" if media_type.endswith("zstd") else "gzip" if media_type.endswith("gzip") else "tar"
    if media_type and declared != kind:
        log.warning("layer compression differs from its media type", media_type=media_type, detected=kind)
    return stream


class _BoundedTarInfo(tarfile.TarInfo):
    """Refuses a metadata header larger than MAX_HEADER before tarfile reads it (PAX records hold xattrs, at most
    64 KiB each on Linux, and long names, at most 4 KiB)."""

    def _proc_member(self, tarfile):
        if self.type in _HEADER_TYPES and self.size > MAX_HEADER:
            raise LayerError(f"a {self.type.decode(errors='replace')!r} header of {self.size} bytes (more than "
                             f"{MAX_HEADER})")
        return super()._proc_member(tarfile)

    # The sparse maps: tarfile's own readers, with the map's length bounded before it is read. A GNU 1.0 map
    # sits in the member's data and old GNU extension blocks follow the header, so MAX_HEADER does not cover
    # them: a 20 KB gzip layer made tarfile build a list of 718 MiB.

    def _proc_sparse(self, tf):
        structs, isextended, origsize = self._sparse_structs
        del self._sparse_structs
        while isextended:
            buf = tf.fileobj.read(tarfile.BLOCKSIZE)
            if len(buf) < tarfile.BLOCKSIZE:
                raise LayerError(f"corrupt layer archive: the sparse member {self.name!r} is cut short in its header")
            for pos in range(0, 21 * 24, 24):
                try:
                    offset, numbytes = tarfile.nti(buf[pos:pos + 12]), tarfile.nti(buf[pos + 12:pos + 24])
                except ValueError:
                    break
                if offset and numbytes:
                    structs.append((offset, numbytes))
            isextended = bool(buf[504])
            if len(structs) > MAX_SPARSE_ENTRIES:
                raise LayerError(f"a sparse member {self.name!r} of more than {MAX_SPARSE_ENTRIES} extents")
        self.sparse = structs
        self.offset_data = tf.fileobj.tell()
        tf.offset = self.offset_data + self._block(self.size)
        self.size = origsize
        return self

    def _proc_gnusparse_01(self, next, pax_headers):
        if pax_headers["GNU.sparse.map"].count(",") > 2 * MAX_SPARSE_ENTRIES:
            raise LayerError(f"a sparse member of more than {MAX_SPARSE_ENTRIES} extents")
        super()._proc_gnusparse_01(next, pax_headers)

    def _proc_gnusparse_10(self, next, pax_headers, tf):
        buf = tf.fileobj.read(tarfile.BLOCKSIZE)
        count, _, buf = buf.partition(b"\n")
        if not (count.isdigit() and len(count) <= 20 and int(count) <= MAX_SPARSE_ENTRIES):
            raise LayerError(f"a sparse map of {count[:24]!r} extents (at most {MAX_SPARSE_ENTRIES})")
        numbers: list[int] = []
        while len(numbers) < int(count) * 2:
            if b"\n" not in buf:
                buf += tf.fileobj.read(tarfile.BLOCKSIZE)
            number, sep, buf = buf.partition(b"\n")
            if not (sep and number.isdigit() and len(number) <= 20):
                raise LayerError(f"a sparse map entry {number[:24]!r} is not a number")
            numbers.append(int(number))
        next.offset_data = tf.fileobj.tell()
        next.sparse = list(zip(numbers[::2], numbers[1::2]))


def _clean(name: str) -> list[str]:
    parts: list[str] = []
    for comp in name.split("/"):
        if comp in ("", "."):
            continue
        if comp == "..":
            if not parts:
                raise LayerError(f"path {name!r} escapes the layer root")
            parts.pop()
        else:
            parts.append(comp)
    return parts


class _Extractor:
    def __init__(self, target: Path, options: UnpackOptions, meter: _Meter) -> None:
        self.target = target
        self.options = options
        self.meter = meter
        self.copied = 0
        self.root_fd = os.open(target, _DIR_FLAGS)
        self.dir_times: list[tuple[list[str], int]] = []
        self._parent_cache: tuple[tuple[str, ...], int] | None = None

    def close(self) -> None:
        self._drop_cache()
        os.close(self.root_fd)

    def _drop_cache(self) -> None:
        if self._parent_cache:
            os.close(self._parent_cache[1])
            self._parent_cache = None

    def parent_fd(self, parts: list[str], *, create: bool = True, root_fd: int | None = None) -> int:
        """An fd (owned by the caller) on the directory holding parts[-1], never following a symlink.

        The walk starts from the last directory found when that is on the way (an archive lists a directory
        before what is in it): without that, a tree n deep costs n^2 opens (a 3,000-deep layer took 38 s)."""
        key = tuple(parts[:-1])
        own_root = root_fd is None
        start, rest = (self.root_fd if own_root else root_fd), key
        if own_root and self._parent_cache:
            cached, cached_fd = self._parent_cache
            if cached == key:
                return os.dup(cached_fd)
            if len(cached) < len(key) and key[:len(cached)] == cached:
                start, rest = cached_fd, key[len(cached):]
        fd = os.dup(start)
        try:
            for comp in rest:
                try:
                    nfd = os.open(comp, _DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        raise
                    self.meter.charge(nbytes=_DIR_COST, entries=1)  # (an entry the archive did not list)
                    os.mkdir(comp, 0o755, dir_fd=fd)
                    nfd = os.open(comp, _DIR_FLAGS, dir_fd=fd)
                    os.chmod(nfd, 0o755)
                except OSError as exc:
                    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                        raise LayerError(
                            f"{'/'.join(parts)}: parent {comp!r} is a symlink or not a directory"
                        ) from None
                    raise
                os.close(fd)
                fd = nfd
        except BaseException:
            os.close(fd)
            raise
        if own_root:
            self._drop_cache()
            self._parent_cache = (key, os.dup(fd))
        return fd

    def remove_existing(self, pfd: int, name: str, keep_dir: bool) -> bool:
        """Remove what is at `name` (not following symlinks); True if it is a directory and was kept."""
        try:
            st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
        except FileNotFoundError:
            return False
        if stat.S_ISDIR(st.st_mode):
            if keep_dir:
                return True
            self._drop_cache()
            remove_tree(name, dir_fd=pfd)
        else:
            os.unlink(name, dir_fd=pfd)
        return False

    # -- metadata --------------------------------------------------------------------------------------------
    def apply_meta(self, fd: int, member: tarfile.TarInfo) -> None:
        if self.options.same_owner:
            os.chown(fd, member.uid, member.gid)
        os.chmod(fd, member.mode & 0o7777)
        for key, value in member.pax_headers.items():
            if not key.startswith("SCHILY.xattr."):
                continue
            xname = key[len("SCHILY.xattr."):]
            if xname.startswith("trusted."):
                log.warning("layer xattr refused", path=member.name, xattr=xname)
                continue
            raw = value.encode("utf-8", "surrogateescape")
            try:
                os.setxattr(fd, xname, raw)
            except OSError as exc:
                if exc.errno not in (errno.ENOTSUP, errno.EPERM):
                    raise
                log.warning("layer xattr not set", path=member.name, xattr=xname, error=exc.strerror)

    @staticmethod
    def _ns(member: tarfile.TarInfo) -> int:
        return int(member.mtime * 1_000_000_000)

    # -- entries ---------------------------------------------------------------------------------------------
    def entry(self, tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        parts = _clean(member.name)
        if not parts:
            if member.isdir():  # the layer root itself ("./")
                self.apply_meta(self.root_fd, member)
                self.dir_times.append(([], self._ns(member)))
            return
        base = parts[-1]
        if base == OPAQUE:
            pfd = self.parent_fd(parts)
            try:
                os.setxattr(pfd, OVERLAY_OPAQUE_XATTR, b"y")
            finally:
                os.close(pfd)
            return
        if base.startswith(WHITEOUT_PREFIX + WHITEOUT_PREFIX):
            return  # aufs metadata (.wh..wh.plnk etc.)
        if base.startswith(WHITEOUT_PREFIX):
            self.whiteout(parts[:-1] + [base[len(WHITEOUT_PREFIX):]])
            return
        pfd = self.parent_fd(parts)
        try:
            self._create(tar, member, parts, pfd, base)
        finally:
            os.close(pfd)

    def whiteout(self, parts: list[str]) -> None:
        if parts[-1] in ("", ".", ".."):
            raise LayerError(f"invalid whiteout for {'/'.join(parts)!r}")
        pfd = self.parent_fd(parts)
        try:
            # A whiteout hides only lower layers (OCI image spec). When this layer already has the name, that
            # entry shadows the lower one by itself; a directory must then stop merging with lower ones: opaque.
            try:
                st = os.stat(parts[-1], dir_fd=pfd, follow_symlinks=False)
            except FileNotFoundError:
                os.mknod(parts[-1], stat.S_IFCHR | 0o000, os.makedev(0, 0), dir_fd=pfd)
                return
            if stat.S_ISDIR(st.st_mode):
                fd = os.open(parts[-1], _DIR_FLAGS, dir_fd=pfd)
                try:
                    os.setxattr(fd, OVERLAY_OPAQUE_XATTR, b"y")
                finally:
                    os.close(fd)
        finally:
            os.close(pfd)

    def _replacing(self, make, pfd: int, name: str):
        """make(): create name, which is most often not there yet; where an earlier entry of the archive made it,
        that goes first (removed, not followed) and make() runs again. Trying first saves a stat per entry:
        the unpack is mostly metadata syscalls, and they are slow on a busy journal."""
        try:
            return make()
        except FileExistsError:
            self.remove_existing(pfd, name, keep_dir=False)
            return make()

    def _create(self, tar: tarfile.TarFile, member: tarfile.TarInfo, parts: list[str], pfd: int, name: str) -> None:
        if member.isdir():
            try:
                os.mkdir(name, 0o700, dir_fd=pfd)
            except FileExistsError:
                if not self.remove_existing(pfd, name, keep_dir=True):  # a directory stays, with new metadata
                    os.mkdir(name, 0o700, dir_fd=pfd)
            fd = os.open(name, _DIR_FLAGS, dir_fd=pfd)
            try:
                self.apply_meta(fd, member)
            finally:
                os.close(fd)
            self.dir_times.append((parts, self._ns(member)))
            return
        if member.islnk():
            self.hardlink(member, pfd, name)
            return
        if member.isreg():
            fd = self._replacing(lambda: os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                                                 | os.O_CLOEXEC, 0o600, dir_fd=pfd), pfd, name)
            try:
                if member.sparse is not None:
                    self._write_sparse(tar, member, fd)
                else:
                    source = tar.extractfile(member)
                    if source is not None:
                        while chunk := source.read(_CHUNK):
                            _write_all(fd, chunk)
                self.apply_meta(fd, member)
                os.utime(fd, ns=(self._ns(member), self._ns(member)))
            finally:
                os.close(fd)
            return
        if member.issym():
            self._replacing(lambda: os.symlink(member.linkname, name, dir_fd=pfd), pfd, name)
            if self.options.same_owner:
                os.chown(name, member.uid, member.gid, dir_fd=pfd, follow_symlinks=False)
        elif member.ischr() or member.isblk():
            if member.ischr() and member.devmajor == 0 and member.devminor == 0:  # an overlay-format whiteout
                self._replacing(lambda: os.mknod(name, stat.S_IFCHR, os.makedev(0, 0), dir_fd=pfd), pfd, name)
            elif not self.options.allow_devices:
                raise LayerError(f"{member.name}: device nodes are not allowed in layers here")
            else:
                kind = stat.S_IFCHR if member.ischr() else stat.S_IFBLK
                self._replacing(lambda: os.mknod(name, kind | 0o600, os.makedev(member.devmajor, member.devminor),
                                                 dir_fd=pfd), pfd, name)
                self._meta_by_path(pfd, name, member)
        elif member.isfifo():
            self._replacing(lambda: os.mkfifo(name, 0o600, dir_fd=pfd), pfd, name)
            self._meta_by_path(pfd, name, member)
        else:
            raise LayerError(f"{member.name}: unsupported tar entry type {member.type!r}")
        try:
            os.utime(name, ns=(self._ns(member), self._ns(member)), dir_fd=pfd, follow_symlinks=False)
        except OverflowError:
            pass

    @staticmethod
    def _write_sparse(tar: tarfile.TarFile, member: tarfile.TarInfo, fd: int) -> None:
        """A GNU sparse member: its data blocks at their offsets, holes left unwritten, then the real size.
        Empty map entries are skipped (an old GNU header holds 4, used or not, and GNU tar ends with (size, 0))."""
        blocks = [(offset, length) for offset, length in member.sparse or () if length]
        last = 0
        for offset, length in blocks:
            if offset < last or length < 0 or offset + length > member.size:
                raise LayerError(f"{member.name}: sparse map is out of order or past the file's size "
                                 f"({offset}+{length}, size {member.size})")
            last = offset + length
        raw = tar.extractfile(member).raw  # type: ignore[union-attr]  # tarfile's _FileInFile: seek skips holes
        for offset, length in blocks:
            raw.seek(offset)
            os.lseek(fd, offset, os.SEEK_SET)
            while length > 0:
                chunk = raw.read(min(length, _CHUNK))
                if not chunk:
                    raise LayerError(f"{member.name}: sparse data ends early")
                _write_all(fd, chunk)
                length -= len(chunk)
        os.ftruncate(fd, member.size)

    def _meta_by_path(self, pfd: int, name: str, member: tarfile.TarInfo) -> None:
        # Device nodes and FIFOs must not be opened (that could block or touch a device): set by name instead.
        if self.options.same_owner:
            os.chown(name, member.uid, member.gid, dir_fd=pfd, follow_symlinks=False)
        os.chmod(name, member.mode & 0o7777, dir_fd=pfd)

    def hardlink(self, member: tarfile.TarInfo, pfd: int, name: str) -> None:
        target = _clean(member.linkname)
        if not target:
            raise LayerError(f"{member.name}: hardlink to the layer root")
        roots = [(self.root_fd, False)]
        lower_fds = []
        try:
            for lower in self.options.lowers or []:
                lfd = os.open(lower, _DIR_FLAGS)
                lower_fds.append(lfd)
                roots.append((lfd, True))
            for root_fd, is_lower in roots:
                try:
                    tfd = self.parent_fd(target, create=False, root_fd=root_fd)
                except FileNotFoundError:
                    continue
                except LayerError:
                    if not is_lower:
                        raise
                    continue  # a symlink on the way in a lower layer: never followed, so not there
                try:
                    try:
                        st = os.stat(target[-1], dir_fd=tfd, follow_symlinks=False)
                    except FileNotFoundError:
                        continue
                    if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0 and is_lower:
                        break  # whited out above: the target does not exist in the image
                    if stat.S_ISDIR(st.st_mode):
                        raise LayerError(f"{member.name}: hardlink to a directory {member.linkname!r}")
                    self.remove_existing(pfd, name, keep_dir=False)
                    if not is_lower:
                        os.link(target[-1], name, src_dir_fd=tfd, dst_dir_fd=pfd, follow_symlinks=False)
                    else:
                        self._copy_from_lower(tfd, target[-1], st, pfd, name, member)
                    return
                finally:
                    os.close(tfd)
        finally:
            for lfd in lower_fds:
                os.close(lfd)
        if self.options.lowers is None:
            raise MissingLowers(f"{member.name}: hardlink target {member.linkname!r} may be in a lower layer")
        raise LayerError(f"{member.name}: hardlink target {member.linkname!r} is not in this layer or below")

    def _copy_from_lower(self, sfd: int, sname: str, st: os.stat_result, pfd: int, name: str,
                         member: tarfile.TarInfo) -> None:
        if stat.S_ISLNK(st.st_mode):
            os.symlink(os.readlink(sname, dir_fd=sfd), name, dir_fd=pfd)
            return
        if not stat.S_ISREG(st.st_mode):
            raise LayerError(f"{member.name}: hardlink to a special file {member.linkname!r} in a lower layer")
        src = os.open(sname, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=sfd)
        try:
            dst = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                          dir_fd=pfd)
            try:
                while chunk := os.read(src, _CHUNK):
                    self.meter.charge(len(chunk))  # disk this layer takes that its tar stream did not bring
                    self.copied += len(chunk)
                    _write_all(dst, chunk)
                if self.options.same_owner:
                    os.chown(dst, st.st_uid, st.st_gid)
                os.chmod(dst, stat.S_IMODE(st.st_mode))
                os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns))
            finally:
                os.close(dst)
        finally:
            os.close(src)

    def finish(self) -> None:
        """Directory mtimes last (creating children changed them). In archive order, so that parent_fd() goes on
        from the directory before (a directory listed twice gets its last entry's times, as its mode)."""
        self._drop_cache()
        for parts, ns in self.dir_times:
            try:
                if not parts:
                    os.utime(self.root_fd, ns=(ns, ns))
                    continue
                pfd = self.parent_fd(parts, create=False)
                try:
                    os.utime(parts[-1], ns=(ns, ns), dir_fd=pfd, follow_symlinks=False)
                finally:
                    os.close(pfd)
            except (FileNotFoundError, LayerError, OverflowError):
                continue  # removed again later in the archive


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def unpack_layer(blob: Path, target: Path, *, media_type: str = "", diff_id: str | None = None,
                 options: UnpackOptions | None = None) -> UnpackResult:
    """Extract the layer blob into the empty directory `target` (blocking: run it in a thread)."""
    options = options or UnpackOptions()
    meter = _Meter(options.budget)
    try:
        return _unpack(blob, target, media_type, diff_id, options, meter)
    except MissingLowers:
        meter.refund()  # the caller throws this extraction away and redoes it
        raise


def _unpack(blob: Path, target: Path, media_type: str, diff_id: str | None, options: UnpackOptions,
            meter: _Meter) -> UnpackResult:
    entries = 0
    if options.budget is not None:
        options.budget.check_free(os.path.getsize(blob))  # the compressed size: the least the layer needs
    with open(blob, "rb") as raw:
        reader = _HashingReader(decompressed(raw, media_type), meter)
        extractor = _Extractor(target, options, meter)
        member = None
        try:
            with tarfile.open(fileobj=reader, mode="r|", errorlevel=2,  # type: ignore[call-overload]
                              tarinfo=_BoundedTarInfo) as tar:
                for member in tar:
                    entries += 1
                    meter.charge(entries=1)
                    extractor.entry(tar, member)
            extractor.finish()
            reader.drain()
        except LayerError:
            raise
        except (tarfile.TarError, EOFError, zlib.error, zstandard.ZstdError, gzip.BadGzipFile) as exc:
            raise LayerError(f"corrupt layer archive: {exc}") from exc
        except IndexError as exc:  # tarfile parsing an old GNU sparse header cut short (found by tests/fuzz)
            raise LayerError(f"corrupt layer archive: truncated header ({exc})") from exc
        except OSError as exc:
            where = member.name if member is not None else "?"
            if exc.errno in _DISK_FULL:
                raise UnpackLimit(f"cannot extract {where!r}: {exc.strerror}") from exc
            raise LayerError(f"cannot extract {where!r}: {exc.strerror or exc}") from exc
        except (OverflowError, ValueError) as exc:
            # OverflowError/ValueError: metadata the OS cannot take (a PAX uid out of range, an mtime of "nan" or
            # 1e30, a NUL in a name): the layer is rejected like any other unextractable entry.
            where = member.name if member is not None else "?"
            raise LayerError(f"cannot extract {where!r}: {getattr(exc, 'strerror', None) or exc}") from exc
        finally:
            extractor.close()
    actual = "sha256:" + reader.hasher.hexdigest()
    if diff_id is not None and actual != diff_id:
        raise LayerError(f"uncompressed layer has digest {actual}, the image config says {diff_id}")
    return UnpackResult(actual, reader.count, entries, extractor.copied)
