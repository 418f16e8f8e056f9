"""A tiny loopback HTTP/1.1 proxy in front of the test registry, run in the test's event loop.

It counts requests, and can misbehave on purpose: stall a blob after a few bytes, corrupt a blob, or demand
bearer tokens from its own token endpoint (/token) so the client's token flow is exercised end to end.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import secrets
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

import httpx


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]


@dataclass
class Proxy:
    upstream: str  # e.g. http://127.0.0.1:5000
    stall_blobs: bool | str = False  # send headers and 10 bytes of every blob (or of this digest), then nothing
    throttle_blobs: int = 0  # send blob bodies at about this many bytes per second (0: at full speed)
    corrupt_blobs: bool = False  # flip the last byte of every blob
    corrupt_manifests: bool = False  # add a space to every manifest body
    redirect_blobs: bool = False  # answer blob GETs with a 307 to /storage/..., served from the upstream
    missing_blobs: bool = False  # answer blob GETs with 404 (a mirror that has the manifest only)
    bearer: tuple[str, str] | None = None  # (user, password) the token endpoint accepts
    identity_token: str | None = None  # refresh token the token endpoint accepts on POST
    seen: list[Seen] = field(default_factory=list)
    token_requests: list[dict] = field(default_factory=list)
    _tokens: set[str] = field(default_factory=set)
    _server: asyncio.AbstractServer | None = None
    _client: httpx.AsyncClient | None = None
    _writers: set = field(default_factory=set)
    _handlers: set = field(default_factory=set)
    port: int = 0

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def __aenter__(self) -> "Proxy":
        self._client = httpx.AsyncClient(base_url=self.upstream, trust_env=False)
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc) -> None:
        self._server.close()
        for task in list(self._handlers):
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        for writer in list(self._writers):
            writer.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._server.wait_closed(), 5)
        await self._client.aclose()

    def blob_gets(self, digest: str | None = None) -> list[Seen]:
        return [s for s in self.seen if s.method == "GET" and "/blobs/" in s.path
                and (digest is None or s.path.endswith(digest))]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        self._handlers.add(asyncio.current_task())
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, target, _ = lines[0].split(" ", 2)
                headers = {}
                for line in lines[1:]:
                    if ":" in line:
                        k, v = line.split(":", 1)
                        headers[k.strip().lower()] = v.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0") or 0))
                self.seen.append(Seen(method, target, headers))
                if not await self._answer(writer, method, target, headers, body):
                    return
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError, asyncio.CancelledError):
            pass
        finally:
            self._handlers.discard(asyncio.current_task())
            self._writers.discard(writer)
            writer.close()

    async def _send(self, writer, status: int, headers: dict[str, str], body: bytes) -> None:
        out = [f"HTTP/1.1 {status} X"] + [f"{k}: {v}" for k, v in headers.items()]
        out.append(f"Content-Length: {len(body)}")
        writer.write(("\r\n".join(out) + "\r\n\r\n").encode("latin-1") + body)
        await writer.drain()

    async def _send_slowly(self, writer, status: int, headers: dict[str, str], body: bytes) -> None:
        """Send a body at about `throttle_blobs` bytes per second, in 16 KiB pieces."""
        out = [f"HTTP/1.1 {status} X"] + [f"{k}: {v}" for k, v in headers.items()]
        out.append(f"Content-Length: {len(body)}")
        writer.write(("\r\n".join(out) + "\r\n\r\n").encode("latin-1"))
        piece = 16384
        for i in range(0, len(body), piece):
            writer.write(body[i:i + piece])
            await writer.drain()
            await asyncio.sleep(piece / self.throttle_blobs)

    async def _answer(self, writer, method, target, headers, body) -> bool:
        path = urlsplit(target).path
        if path == "/token":
            return await self._token(writer, method, target, headers, body)
        if self.bearer or self.identity_token:
            auth = headers.get("authorization", "")
            if not (auth.startswith("Bearer ") and auth[7:] in self._tokens):
                repo = path.split("/")[2:4] if path.startswith("/v2/") else []
                scope = f'repository:{"/".join(repo)}:pull'
                challenge = (f'Bearer realm="http://{self.host}/token",service="pycri-proxy",scope="{scope}"')
                await self._send(writer, 401, {"WWW-Authenticate": challenge}, b'{"errors":[]}')
                return True
        if path.startswith("/storage/"):
            target = "/v2/" + path[len("/storage/"):]
            self.seen[-1] = Seen(method, target, dict(headers, storage="1"))
        elif self.missing_blobs and "/blobs/" in path:
            await self._send(writer, 404, {"Content-Type": "application/json"}, b'{"errors":[]}')
            return True
        elif self.redirect_blobs and "/blobs/" in path and method == "GET":
            await self._send(writer, 307, {"Location": f"http://{self.host}/storage/{path[4:]}"}, b"")
            return True
        fwd = {k: v for k, v in headers.items() if k in ("accept", "range")}
        request = self._client.build_request(method, target, headers=fwd, content=body or None)
        response = await self._client.send(request, stream=True)
        out_headers = {k: v for k, v in response.headers.items()
                       if k.lower() in ("content-type", "docker-content-digest", "content-range", "location")}
        data = b""
        try:
            async for chunk in response.aiter_raw():
                data += chunk
        except httpx.RemoteProtocolError:
            pass  # docker-registry's 416 answers declare a longer body than they send
        finally:
            await response.aclose()
        if "/manifests/" in path and self.corrupt_manifests:
            data += b" "
        if "/blobs/" in target and method == "GET" and response.status_code in (200, 206):
            if self.stall_blobs is True or (self.stall_blobs and target.endswith(str(self.stall_blobs))):
                first = [f"HTTP/1.1 {response.status_code} X"] + [f"{k}: {v}" for k, v in out_headers.items()]
                first.append(f"Content-Length: {len(data)}")
                writer.write(("\r\n".join(first) + "\r\n\r\n").encode("latin-1") + data[:10])
                await writer.drain()
                await asyncio.sleep(3600)
                return False
            if self.corrupt_blobs and data:
                data = data[:-1] + bytes([data[-1] ^ 0xFF])
            if self.throttle_blobs:
                await self._send_slowly(writer, response.status_code, out_headers, data)
                return True
        await self._send(writer, response.status_code, out_headers, data)
        return True

    async def _token(self, writer, method, target, headers, body) -> bool:
        params = {k: v for k, v in parse_qs(urlsplit(target).query).items()}
        if method == "POST":
            params = parse_qs(body.decode())
        self.token_requests.append({"method": method, **{k: v for k, v in params.items()}})
        ok = False
        if method == "GET" and self.bearer:
            auth = headers.get("authorization", "")
            expected = "Basic " + base64.b64encode(":".join(self.bearer).encode()).decode()
            ok = auth == expected
        if method == "POST" and self.identity_token:
            ok = params.get("grant_type") == ["refresh_token"] and params.get("refresh_token") == [
                self.identity_token]
        if not ok:
            await self._send(writer, 401, {}, b'{"errors":[{"code":"UNAUTHORIZED"}]}')
            return True
        token = secrets.token_hex(8)
        self._tokens.add(token)
        key = "access_token" if method == "POST" else "token"
        await self._send(writer, 200, {"Content-Type": "application/json"},
                         f'{{"{key}": "{token}", "expires_in": 300}}'.encode())
        return True
