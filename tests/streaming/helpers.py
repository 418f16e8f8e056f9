"""Shared test plumbing: a real StreamingServer on 127.0.0.1 with the host backend, and request builders."""

from __future__ import annotations

import asyncio
import contextlib
import json

from pycri.api import api_pb2
from pycri.streaming import StreamingServer
from tests.streaming.hostbackend import HostBackend


def run(coro, timeout: float = 60):
    async def main():
        return await asyncio.wait_for(coro, timeout)
    return asyncio.run(main())


@contextlib.asynccontextmanager
async def serving(backend=None, **kw):
    server = StreamingServer("127.0.0.1", 0, backend or HostBackend(), **kw)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


def exec_req(cmd, container_id="c1", tty=False, stdin=False, stdout=True, stderr=None):
    if stderr is None:
        stderr = not tty
    return api_pb2.ExecRequest(container_id=container_id, cmd=cmd, tty=tty, stdin=stdin, stdout=stdout,
                               stderr=stderr)


def status_of(raw: bytes) -> dict:
    return json.loads(raw.decode())
