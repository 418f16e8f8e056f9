"""The streaming server: hands out single-use URLs for Exec/Attach/PortForward requests and serves them over
HTTP/1.1 upgraded to SPDY/3.1 or WebSocket, in the daemon's event loop."""

from __future__ import annotations

import asyncio
import ipaddress
from urllib.parse import parse_qs, urlsplit

import h11

from pycri import log
from pycri.api import api_pb2
from pycri.errors import InvalidArgument
from pycri.server import http
from pycri.streaming import portforward, remotecommand, spdysession, websocket, wssession, wstunnel
from pycri.streaming.backend import Backend
from pycri.streaming.spdyconn import SpdyConnection
from pycri.streaming.tokens import TokenCache

_log = log.get("streaming")

DEFAULT_IDLE_TIMEOUT = 4 * 3600.0  # kubelet's streamIdleTimeout
DEFAULT_CREATION_TIMEOUT = 30.0  # kubelet's streamCreationTimeout
REQUEST_HEAD_TIMEOUT = 30.0
KINDS = ("exec", "attach", "portforward")


class HttpReject(Exception):
    def __init__(self, status: int, body: str, headers: list[tuple[str, str]] | None = None) -> None:
        super().__init__(body)
        self.status = status
        self.body = body
        self.headers = headers or []


def _header_values(headers: list[tuple[bytes, bytes]], name: bytes) -> list[str]:
    """All values of a header, comma lists split, in order."""
    out = []
    for k, v in headers:
        if k == name:
            out += [x.strip() for x in v.decode("latin-1").split(",") if x.strip()]
    return out


def _has_token(headers: list[tuple[bytes, bytes]], name: bytes, token: str) -> bool:
    return token.lower() in (v.lower() for v in _header_values(headers, name))


class StreamingServer:
    def __init__(self, address: str, port: int, backend: Backend, token_ttl: float = 60.0,
                 idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
                 stream_creation_timeout: float = DEFAULT_CREATION_TIMEOUT) -> None:
        self.address = address
        self.port = port
        self.backend = backend
        self.idle_timeout = idle_timeout
        self.stream_creation_timeout = stream_creation_timeout
        self.tokens = TokenCache(token_ttl)
        self._server: asyncio.base_events.Server | None = None
        self._connections: set[asyncio.Task] = set()

    # ---- lifecycle
    async def start(self) -> None:
        self._server = await asyncio.start_server(self._connection, self.address, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        _log.info("streaming server listening", url=self.base_url)

    async def stop(self) -> None:
        """Stop listening and end every session (their backend calls are cancelled)."""
        if self._server is not None:
            self._server.close()
        for t in list(self._connections):
            t.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    @property
    def base_url(self) -> str:
        host = self.address
        try:
            if ipaddress.ip_address(host).version == 6:
                host = f"[{host}]"
        except ValueError:
            pass
        return f"http://{host}:{self.port}"

    # ---- the CRI side
    def register_exec(self, req: api_pb2.ExecRequest) -> str:
        if not req.container_id or not req.cmd:
            raise InvalidArgument("exec needs a container id and a command")
        if not (req.stdin or req.stdout or req.stderr):
            raise InvalidArgument("one of stdin, stdout, or stderr must be set")
        if req.tty and req.stderr:
            raise InvalidArgument("tty and stderr cannot both be true")
        return self._register("exec", req)

    def register_attach(self, req: api_pb2.AttachRequest) -> str:
        if not req.container_id:
            raise InvalidArgument("attach needs a container id")
        if not (req.stdin or req.stdout or req.stderr):
            raise InvalidArgument("one of stdin, stdout, or stderr must be set")
        if req.tty and req.stderr:
            raise InvalidArgument("tty and stderr cannot both be true")
        return self._register("attach", req)

    def register_portforward(self, req: api_pb2.PortForwardRequest) -> str:
        if not req.pod_sandbox_id:
            raise InvalidArgument("port forward needs a pod sandbox id")
        return self._register("portforward", req)

    def _register(self, kind: str, req) -> str:
        copy = type(req)()
        copy.CopyFrom(req)
        return f"{self.base_url}/{kind}/{self.tokens.insert(kind, copy)}"

    # ---- the HTTP side
    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self._connections.add(task)
        peername = writer.get_extra_info("peername")
        peer = f"{peername[0]}:{peername[1]}" if peername else ""
        try:
            await self._serve_http(reader, writer, peer)
        except asyncio.CancelledError:
            pass
        except Exception:  # noqa: BLE001 - one broken connection must not take the server down
            _log.exception("streaming connection failed", peer=peer)
        finally:
            self._connections.discard(task)
            writer.close()

    async def _serve_http(self, reader, writer, peer: str) -> None:
        conn = http.connection()
        try:
            request = await asyncio.wait_for(http.read_request(conn, reader, 65536), REQUEST_HEAD_TIMEOUT)
        except (h11.RemoteProtocolError, asyncio.TimeoutError, ConnectionError) as exc:
            _log.info("bad or incomplete http request", peer=peer, error=str(exc) or type(exc).__name__)
            if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                await self._respond(conn, writer, 400, f"bad request: {exc}\n")
            return
        if request is None:
            return
        try:
            await self._dispatch(conn, request, reader, writer, peer)
        except HttpReject as rej:
            _log.info("streaming request rejected", peer=peer, status=rej.status, reason=rej.body.strip(),
                      path=request.target.decode("latin-1", "replace")[:32])
            await self._respond(conn, writer, rej.status, rej.body, rej.headers)

    @staticmethod
    async def _respond(conn: h11.Connection, writer, status: int, body: str,
                       headers: list[tuple[str, str]] | None = None) -> None:
        await http.respond(conn, writer, status, "text/plain; charset=utf-8", body.encode(), headers)

    async def _dispatch(self, conn: h11.Connection, request: h11.Request, reader, writer, peer: str) -> None:
        if request.method not in (b"GET", b"POST"):
            raise HttpReject(405, "only GET and POST are served\n", [("Allow", "GET, POST")])
        url = urlsplit(request.target.decode("latin-1"))
        parts = url.path.strip("/").split("/")
        if len(parts) != 2 or parts[0] not in KINDS:
            raise HttpReject(404, f"not found: {url.path} (expected /exec/<token>, /attach/<token> or "
                                  f"/portforward/<token>)\n")
        kind, token = parts
        cri_request = self.tokens.consume(kind, token)
        if cri_request is None:
            raise HttpReject(404, f"{kind} token not found, expired or already used; ask the CRI for a new "
                                  f"{kind} URL\n")
        headers = request.headers
        upgrade = _header_values(headers, b"upgrade")
        if not _has_token(headers, b"connection", "upgrade") or not upgrade:
            raise HttpReject(400, "unable to upgrade: missing upgrade headers in request "
                                  "(Connection: Upgrade, Upgrade: SPDY/3.1 or websocket)\n")
        query = parse_qs(url.query)
        if any(u.lower() == "websocket" for u in upgrade):
            await self._websocket(conn, kind, cri_request, headers, query, reader, writer, peer)
        elif any(u.lower() == "spdy/3.1" for u in upgrade):
            await self._spdy(conn, kind, cri_request, headers, reader, writer, peer)
        else:
            raise HttpReject(400, f"unable to upgrade: unsupported protocol {upgrade}, want SPDY/3.1 or websocket\n")

    async def _switch(self, conn: h11.Connection, writer, headers: list[tuple[str, str]]) -> bytes:
        writer.write(conn.send(h11.InformationalResponse(status_code=101, headers=headers)))
        await writer.drain()
        data, _closed = conn.trailing_data
        return bytes(data)

    async def _spdy(self, conn, kind, cri_request, headers, reader, writer, peer: str) -> None:
        offered = _header_values(headers, b"x-stream-protocol-version")
        supported = [portforward.PROTOCOL_V1] if kind == "portforward" else remotecommand.SPDY_PROTOCOLS
        if not offered:
            protocol = supported[-1] if kind != "portforward" else portforward.PROTOCOL_V1
        else:
            protocol = next((p for p in supported if p in offered), None)
            if protocol is None:
                raise HttpReject(403, f"unable to upgrade: unable to negotiate protocol: client supports {offered}, "
                                      f"server supports {supported}\n")
        reply = [("Connection", "Upgrade"), ("Upgrade", "SPDY/3.1")]
        if offered:
            reply.append(("X-Stream-Protocol-Version", protocol))
        initial = await self._switch(conn, writer, reply)
        _log.info("streaming session started", kind=kind, transport="spdy", protocol=protocol, peer=peer)
        sconn = SpdyConnection(reader, writer, None, self.idle_timeout, peer, initial)
        if kind == "portforward":
            await spdysession.serve_portforward(sconn, cri_request.pod_sandbox_id, set(cri_request.port),
                                                self.backend, self.stream_creation_timeout)
        else:
            await spdysession.serve_remotecommand(sconn, _rc_request(kind, cri_request), self.backend, protocol,
                                                  self.stream_creation_timeout)

    async def _websocket(self, conn, kind, cri_request, headers, query, reader, writer, peer: str) -> None:
        key = next(iter(_header_values(headers, b"sec-websocket-key")), "")
        if not key or _header_values(headers, b"sec-websocket-version") != ["13"]:
            raise HttpReject(400, "bad websocket handshake: Sec-WebSocket-Key and Sec-WebSocket-Version: 13 "
                                  "are required\n", [("Sec-WebSocket-Version", "13")])
        offered = _header_values(headers, b"sec-websocket-protocol")
        if kind == "portforward" and wstunnel.PROTOCOL in offered:
            initial = await self._switch(conn, writer, websocket.handshake_headers(key, wstunnel.PROTOCOL))
            _log.info("streaming session started", kind=kind, transport="websocket", protocol=wstunnel.PROTOCOL,
                      peer=peer)
            tunnel = wstunnel.WsTunnel(reader, writer, initial, peer)
            sconn = SpdyConnection(tunnel, tunnel, None, self.idle_timeout, peer)
            await spdysession.serve_portforward(sconn, cri_request.pod_sandbox_id, set(cri_request.port),
                                                self.backend, self.stream_creation_timeout)
            return
        supported = websocket.PORTFORWARD_PROTOCOLS if kind == "portforward" else websocket.REMOTECOMMAND_PROTOCOLS
        protocol = websocket.negotiate(offered, supported)
        if protocol is None:
            raise HttpReject(400, f"requested protocol(s) are not supported: {offered}; supports {supported}\n")
        if kind == "portforward":
            try:
                ports = [portforward.parse_port(p) for v in query.get("port", []) for p in v.split(",")]
            except ValueError as exc:
                raise HttpReject(400, f"bad port query parameter: {exc}\n") from None
            ports = ports or list(cri_request.port)
            if not ports:
                raise HttpReject(400, 'query parameter "port" is required\n')
            allowed = set(cri_request.port)
            if allowed and not set(ports) <= allowed:
                raise HttpReject(403, f"ports {sorted(set(ports) - allowed)} were not in the port-forward "
                                      f"request {sorted(allowed)}\n")
            inputs = wssession.portforward_inputs(ports)
        else:
            rc = _rc_request(kind, cri_request)
            inputs = wssession.remotecommand_inputs(rc)
        initial = await self._switch(conn, writer, websocket.handshake_headers(key, protocol))
        _log.info("streaming session started", kind=kind, transport="websocket", protocol=protocol or "(none)",
                  peer=peer)
        ws = websocket.WsChannels(reader, writer, protocol or websocket.V1, inputs, self.idle_timeout, peer, initial)
        if kind == "portforward":
            await wssession.serve_portforward(ws, cri_request.pod_sandbox_id, ports, self.backend)
        else:
            await wssession.serve_remotecommand(ws, rc, self.backend)


def _rc_request(kind: str, r) -> remotecommand.Request:
    return remotecommand.Request(kind=kind, container_id=r.container_id, cmd=list(r.cmd) if kind == "exec" else [],
                                 tty=r.tty, stdin=r.stdin, stdout=r.stdout, stderr=r.stderr)
