"""A small read-only HTTP/1.1 server in the daemon's event loop: one request per connection, GET only.

The daemon runs two: the metrics server on `[metrics] address` (`GET /metrics`, TCP, off by default) and the
status socket next to the CRI socket (`GET /pulls`, unix, mode 0600). Pages are built in the loop (they read
in-memory state and take well under a millisecond), so no thread is started: the daemon never has to worry about
forking after a thread exists, and the pages see the records as the RPCs leave them.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Callable

import h11

from pycri import log
from pycri.server import http

_log = log.get("infoserver")

REQUEST_TIMEOUT = 10.0
# path -> () -> (content type, body)
Routes = dict[str, Callable[[], tuple[str, bytes]]]


class InfoServer:
    def __init__(self, name: str, routes: Routes) -> None:
        self.name = name
        self.routes = routes
        self._server: asyncio.base_events.Server | None = None
        self._tasks: set[asyncio.Task] = set()
        self.address = ""

    async def start_tcp(self, host: str, port: int) -> None:
        self._server = await asyncio.start_server(self._connection, host, port)
        bound = self._server.sockets[0].getsockname()
        self.address = f"[{bound[0]}]:{bound[1]}" if ":" in bound[0] else f"{bound[0]}:{bound[1]}"
        _log.info("listening", server=self.name, address=self.address, paths=sorted(self.routes))

    async def start_unix(self, path: Path) -> None:
        """Listen on `path`, owner (root) only; a stale socket there is replaced."""
        path.unlink(missing_ok=True)
        old_umask = os.umask(0o177)  # born 0600: no window in which others could connect
        try:
            self._server = await asyncio.start_unix_server(self._connection, str(path))
        finally:
            os.umask(old_umask)
        os.chmod(path, 0o600)
        self.address = str(path)
        _log.info("listening", server=self.name, socket=self.address, paths=sorted(self.routes))

    async def stop(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()
        self._server = None
        if self.address.startswith("/"):
            Path(self.address).unlink(missing_ok=True)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self._tasks.add(task)
        conn = http.connection()
        try:
            request = await asyncio.wait_for(http.read_request(conn, reader), REQUEST_TIMEOUT)
            if request is None:
                return
            status, ctype, body = self._answer(request)
            await http.respond(conn, writer, status, ctype, body, head_only=request.method == b"HEAD")
        except (h11.ProtocolError, asyncio.TimeoutError, ConnectionError) as exc:
            _log.debug("request failed", server=self.name, error=f"{type(exc).__name__}: {exc}")
        finally:
            self._tasks.discard(task)
            writer.close()

    def _answer(self, request: h11.Request) -> tuple[int, str, bytes]:
        path = request.target.decode("latin-1").split("?", 1)[0]
        if request.method not in (b"GET", b"HEAD"):
            return 405, "text/plain", b"only GET\n"
        page = self.routes.get(path)
        if page is None:
            return 404, "text/plain", f"no such page; try {', '.join(sorted(self.routes))}\n".encode()
        try:
            ctype, body = page()
        except Exception as exc:  # noqa: BLE001 - a broken page answers 500 and is logged, never kills the server
            _log.error("page failed", server=self.name, path=path, error=f"{type(exc).__name__}: {exc}",
                       exc_info=exc)
            return 500, "text/plain", b"internal error\n"
        return 200, ctype, body
