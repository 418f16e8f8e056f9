"""Content store: verified blobs under `<root>/blobs/sha256/<hex>`.

A download is written to `<root>/ingest/<hex>.partial`, checked against the expected size and digest, fsynced and
renamed into place, so a blob file that exists is always complete and correct. A pull that is cancelled or fails on
the network leaves only the partial file; the next pull of that blob resumes it with a Range request (or starts over
when the registry ignores the Range), and a partial whose bytes turn out wrong is discarded at the digest check.
Concurrent fetches of one digest share one download; it is cancelled only when every waiter has gone.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, AsyncContextManager, AsyncIterator, Callable

from .reference import validate_digest

# opener(offset) -> async context manager yielding (offset the source honoured, chunks from there on)
Opener = Callable[[int], AsyncContextManager[tuple[int, AsyncIterator[bytes]]]]

_CHUNK = 1 << 20


class ContentError(Exception):
    """A blob could not be stored: wrong digest or size, or an incomplete download."""


class DigestMismatch(ContentError):
    pass


class ResumeRejected(ContentError):
    """The source cannot continue a partial download (HTTP 416): start it over."""


@dataclass
class _Download:
    task: asyncio.Task
    waiters: int = 0
    extra: dict = field(default_factory=dict)


class Transfer:
    """How far one blob download has got: bytes present (a resumed partial counts), when data last arrived, and
    the rate over the last few seconds (for `pycri images pulls` and the pull metrics)."""

    WINDOW = 5.0  # seconds of samples behind the rate
    SAMPLE = 0.25

    def __init__(self, size: int) -> None:
        self.size = size
        self.done = 0
        self.started = self.last_data = time.monotonic()
        self._samples: collections.deque[tuple[float, int]] = collections.deque([(self.started, 0)])

    def restart(self, offset: int) -> None:
        """The stream (re)starts at `offset` (a resumed partial, or 0 when the source ignored the Range)."""
        self.done = offset
        self._samples = collections.deque([(time.monotonic(), offset)])

    def add(self, n: int) -> None:
        self.done += n
        now = self.last_data = time.monotonic()
        if now - self._samples[-1][0] >= self.SAMPLE:
            self._samples.append((now, self.done))
            while len(self._samples) > 2 and now - self._samples[1][0] >= self.WINDOW:
                self._samples.popleft()

    def rate(self, now: float | None = None) -> float:
        """Bytes per second since the oldest sample in the window (falls towards 0 while the download stalls)."""
        now = time.monotonic() if now is None else now
        t0, d0 = self._samples[0]
        return (self.done - d0) / (now - t0) if now - t0 > 0.05 else 0.0


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class ContentStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.blob_dir = self.root / "blobs" / "sha256"
        self.ingest_dir = self.root / "ingest"
        for d in (self.blob_dir.parent, self.blob_dir, self.ingest_dir):  # root's alone (pycri/state/dirs.py)
            d.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._inflight: dict[str, _Download] = {}
        self.transfers: dict[str, Transfer] = {}  # digest -> progress of its download in flight
        self.downloads = 0  # completed network downloads (for metrics and tests)
        self.bytes_fetched = 0  # bytes received from registries, including downloads that later failed

    # -- lookups ---------------------------------------------------------------------------------------------
    def path(self, digest: str) -> Path:
        return self.blob_dir / validate_digest(digest).split(":", 1)[1]

    def partial_path(self, digest: str) -> Path:
        return self.ingest_dir / (validate_digest(digest).split(":", 1)[1] + ".partial")

    def has(self, digest: str) -> bool:
        return self.path(digest).is_file()

    def read(self, digest: str) -> bytes:
        return self.path(digest).read_bytes()

    def digests(self) -> set[str]:
        return {f"sha256:{p.name}" for p in self.blob_dir.iterdir() if len(p.name) == 64}

    def delete(self, digest: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path(digest).unlink()
        with contextlib.suppress(FileNotFoundError):
            self.partial_path(digest).unlink()

    # -- writes ----------------------------------------------------------------------------------------------
    def write_bytes(self, digest: str, data: bytes) -> Path:
        """Store a small blob held in memory (manifests, configs), verifying its digest."""
        actual = "sha256:" + hashlib.sha256(data).hexdigest()
        if actual != validate_digest(digest):
            raise DigestMismatch(f"content of {digest} has digest {actual}")
        target = self.path(digest)
        if target.is_file():
            return target
        tmp = self.ingest_dir / (digest.split(":", 1)[1] + f".{os.getpid()}.{id(data)}.tmp")
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
        _fsync_dir(self.blob_dir)
        return target

    def ingest_file(self, digest: str | None, size: int | None, source: IO[bytes]) -> tuple[str, int]:
        """Copy a file object into the store (blocking; for archive import). Without `digest`, trust its hash."""
        h = hashlib.sha256()
        tmp = self.ingest_dir / f"import.{os.getpid()}.{id(source)}.tmp"
        total = 0
        try:
            with open(tmp, "wb") as f:
                while chunk := source.read(_CHUNK):
                    total += len(chunk)
                    if size is not None and total > size:
                        raise ContentError(f"blob {digest} is larger than its declared size {size}")
                    h.update(chunk)
                    f.write(chunk)
                f.flush()
                os.fsync(f.fileno())
            actual = "sha256:" + h.hexdigest()
            if size is not None and total != size:
                raise ContentError(f"blob {digest} has {total} bytes, expected {size}")
            if digest is not None and actual != validate_digest(digest):
                raise DigestMismatch(f"blob {digest} has digest {actual}")
            os.replace(tmp, self.path(actual))
            _fsync_dir(self.blob_dir)
            return actual, total
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()

    async def fetch(self, digest: str, size: int, opener: Opener, *, label: str = "blob") -> Path:
        """Make sure the blob is stored, downloading it through `opener` once however many callers ask."""
        target = self.path(digest)
        if target.is_file():
            return target
        download = self._inflight.get(digest)
        if download is None:
            task = asyncio.get_running_loop().create_task(self._download(digest, size, opener, label))
            download = _Download(task)
            self._inflight[digest] = download
            task.add_done_callback(lambda t, d=download: self._forget(digest, d))
        download.waiters += 1
        try:
            return await asyncio.shield(download.task)
        finally:
            download.waiters -= 1
            if download.waiters == 0 and not download.task.done():
                download.task.cancel()
                await asyncio.wait([download.task])  # its partial file is closed before we return

    def _forget(self, digest: str, download: _Download) -> None:
        if self._inflight.get(digest) is download:
            del self._inflight[digest]
            self.transfers.pop(digest, None)
        if not download.task.cancelled():
            download.task.exception()  # retrieved here so an error nobody waits for is not reported as lost

    async def _download(self, digest: str, size: int, opener: Opener, label: str) -> Path:
        if size < 0:
            raise ContentError(f"{label} {digest}: invalid size {size}")
        partial = self.partial_path(digest)
        offset = partial.stat().st_size if partial.exists() else 0
        if offset > size:
            partial.unlink()
            offset = 0
        hasher = hashlib.sha256()
        if offset:
            hasher = await asyncio.to_thread(_hash_prefix, partial, offset)
            if offset == size and "sha256:" + hasher.hexdigest() == digest:
                await asyncio.to_thread(self._commit, partial, digest)  # complete before a crash or cancel
                return self.path(digest)
        try:
            return await self._stream(digest, size, opener, label, partial, offset, hasher)
        except ResumeRejected:
            partial.unlink(missing_ok=True)
            return await self._stream(digest, size, opener, label, partial, 0, hashlib.sha256())

    async def _stream(self, digest: str, size: int, opener: Opener, label: str, partial: Path, offset: int,
                      hasher: "hashlib._Hash") -> Path:
        async with opener(offset) as (start, chunks):
            if start != offset:  # the source ignored our Range: start over
                hasher, offset = hashlib.sha256(), 0
            transfer = self.transfers.setdefault(digest, Transfer(size))
            transfer.restart(offset)
            fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.truncate(offset)
                f.seek(offset)
                total = offset
                async for chunk in chunks:
                    total += len(chunk)
                    self.bytes_fetched += len(chunk)
                    transfer.add(len(chunk))
                    if total > size:
                        f.close()
                        partial.unlink()
                        raise ContentError(f"{label} {digest}: registry sent more than the expected {size} bytes")
                    hasher.update(chunk)
                    f.write(chunk)
        if total != size:
            raise ContentError(f"{label} {digest}: download ended after {total} of {size} bytes")
        actual = "sha256:" + hasher.hexdigest()
        if actual != digest:
            partial.unlink()
            raise DigestMismatch(f"{label} {digest}: downloaded content has digest {actual}; discarded")
        await asyncio.to_thread(self._commit, partial, digest)
        self.downloads += 1
        return self.path(digest)

    def _commit(self, partial: Path, digest: str) -> None:
        fd = os.open(partial, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(partial, self.path(digest))
        _fsync_dir(self.blob_dir)

    def clean_ingest(self, max_partial_age: float = 86400.0) -> None:
        """Drop leftover temp files, and partial downloads nobody resumed for `max_partial_age` seconds."""
        import time

        now = time.time()
        for entry in self.ingest_dir.iterdir():
            try:
                stale = entry.name.endswith(".partial") and now - entry.lstat().st_mtime > max_partial_age
                if entry.name.endswith(".tmp") or stale:
                    entry.unlink()
            except FileNotFoundError:
                continue

    def usage(self) -> tuple[int, int]:
        """Bytes (allocated blocks) and inodes used by blobs and ingests."""
        used = inodes = 0
        for directory in (self.blob_dir, self.ingest_dir):
            for entry in os.scandir(directory):
                st = entry.stat(follow_symlinks=False)
                used += st.st_blocks * 512
                inodes += 1
        return used, inodes


def _hash_prefix(path: Path, length: int) -> "hashlib._Hash":
    hasher = hashlib.sha256()
    with open(path, "rb") as f:
        remaining = length
        while remaining:
            chunk = f.read(min(_CHUNK, remaining))
            if not chunk:
                break
            hasher.update(chunk)
            remaining -= len(chunk)
    return hasher
