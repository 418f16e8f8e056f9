"""CRI container log format: `<RFC3339Nano> <stdout|stderr> <F|P> <text>\n`.

A line longer than max_line is cut into P (partial) records; the last piece gets F. Output left without a
trailing newline at EOF is written as an F record (as containerd does).
"""
from __future__ import annotations

import errno
import os
import time

DEFAULT_MAX_LINE = 16 * 1024


def rfc3339nano(ns: int | None = None) -> str:
    ns = time.time_ns() if ns is None else ns
    sec, frac = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)) + f".{frac:09d}Z"


class LogFile:
    """One container's log file; streams keep their own partial-line buffers."""

    def __init__(self, path: str, max_line: int = DEFAULT_MAX_LINE):
        if max_line < 1:
            raise ValueError("max_line must be positive")
        self.path = path
        self.max_line = max_line
        self._buf: dict[str, bytes] = {"stdout": b"", "stderr": b""}
        self.fd = -1
        self.reopen()

    def reopen(self) -> None:
        """Open (or re-open after rotation) the path for appending. Neither the file nor its directory (the
        container's, in the kubelet's layout `<pod log dir>/<name>/<attempt>.log`) is followed if it is a
        symbolic link: a pod with a hostPath of the node's log directory could plant one there."""
        parent = os.path.dirname(self.path) or "."
        os.makedirs(parent, exist_ok=True)
        try:
            dir_fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                fd = os.open(os.path.basename(self.path),
                             os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC, 0o640,
                             dir_fd=dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as exc:
            if exc.errno == errno.ELOOP or (exc.errno == errno.ENOTDIR and os.path.islink(parent)):
                raise OSError(exc.errno, f"log {self.path}: a symbolic link on the way, not followed") from None
            raise
        if self.fd >= 0:
            os.close(self.fd)
        self.fd = fd

    def write(self, stream: str, data: bytes) -> None:
        buf = self._buf[stream] + data
        out = []
        ts = rfc3339nano().encode()
        tag = stream.encode()
        while True:
            nl = buf.find(b"\n", 0, self.max_line + 1)
            if nl >= 0:
                out.append(b"%s %s F %s\n" % (ts, tag, buf[:nl]))
                buf = buf[nl + 1:]
            elif len(buf) > self.max_line:  # at exactly max_line, the next byte may be the newline
                out.append(b"%s %s P %s\n" % (ts, tag, buf[:self.max_line]))
                buf = buf[self.max_line:]
            else:
                break
        self._buf[stream] = buf
        if out:
            self._emit(b"".join(out))

    def flush(self, stream: str) -> None:
        """End of a stream: write what is left as a full line."""
        buf = self._buf[stream]
        if buf:
            self._buf[stream] = b""
            self._emit(b"%s %s F %s\n" % (rfc3339nano().encode(), stream.encode(), buf))

    def close(self) -> None:
        for s in self._buf:
            self.flush(s)
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def _emit(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            n = os.write(self.fd, view)
            view = view[n:]
