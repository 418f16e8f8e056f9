"""What the streaming server needs from the runtime: run a command in a container, attach to one, and connect to a
port in a pod's network namespace. The daemon implements `Backend`; the tests implement it with host processes.
"""

from __future__ import annotations

import asyncio
from typing import Protocol, runtime_checkable


class NotFoundError(Exception):
    """The container or pod sandbox does not exist (or is not running): reported to the client, not logged as a
    server fault."""


class StreamReaderLike(Protocol):
    """What the client sends. `read(n)` returns at most n bytes (all buffered bytes for n < 0) and b"" only at EOF
    (stdin closed). asyncio.StreamReader fits."""

    async def read(self, n: int = -1) -> bytes: ...


class StreamWriterLike(Protocol):
    """Where output goes. `write` waits while the client is slow (flow control); it raises ConnectionError-like
    errors (StreamClosed) when the client has gone. The server closes it after the backend call returns."""

    async def write(self, data: bytes) -> None: ...


@runtime_checkable
class Backend(Protocol):
    async def exec(self, container_id: str, cmd: list[str], tty: bool, stdin: StreamReaderLike | None,
                   stdout: StreamWriterLike | None, stderr: StreamWriterLike | None,
                   resize: asyncio.Queue[tuple[int, int]]) -> int:
        """Run `cmd` in the container and return its exit code once it has exited and its output has been written.
        With tty, stdout carries the terminal and stderr is None; (width, height) tuples arrive on `resize`, the
        first one possibly before the process starts. Raise NotFoundError for an unknown container."""
        ...

    async def attach(self, container_id: str, tty: bool, stdin: StreamReaderLike | None,
                     stdout: StreamWriterLike | None, stderr: StreamWriterLike | None,
                     resize: asyncio.Queue[tuple[int, int]]) -> None:
        """Connect to the main process's stdio until it exits (or, when the client sends stdin EOF and the
        container is not StdinOnce, until the client goes). Raise NotFoundError for an unknown container."""
        ...

    async def port_forward(self, pod_sandbox_id: str, port: int, reader: StreamReaderLike,
                           writer: StreamWriterLike) -> None:
        """Connect to `port` on localhost inside the pod's network namespace and pump bytes both ways until both
        directions have ended; raise NotFoundError for an unknown pod, OSError-like errors when the connect
        fails (their message goes to the client)."""
        ...
