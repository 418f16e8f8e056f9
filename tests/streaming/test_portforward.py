"""Port forward to real TCP servers on 127.0.0.1, over SPDY (portforward.k8s.io) and WebSocket (v4 channels)."""

from __future__ import annotations

import asyncio
import contextlib

from pycri.api import api_pb2
from tests.streaming.client import SpdyClient, WsClient, port_prefix
from tests.streaming.helpers import run, serving


@contextlib.asynccontextmanager
async def echo_server():
    async def echo(r, w):
        try:
            while data := await r.read(65536):
                w.write(data)
                await w.drain()
        finally:
            w.close()
    srv = await asyncio.start_server(echo, "127.0.0.1", 0)
    try:
        yield srv.sockets[0].getsockname()[1]
    finally:
        srv.close()


@contextlib.asynccontextmanager
async def http_server():
    async def handle(r, w):
        await r.readuntil(b"\r\n\r\n")
        body = b"hello from http\n"
        w.write(b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        await w.drain()
        w.close()
    srv = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield srv.sockets[0].getsockname()[1]
    finally:
        srv.close()


def pf_req(*ports, pod="pod1"):
    return api_pb2.PortForwardRequest(pod_sandbox_id=pod, port=list(ports))


def test_spdy_portforward_multiple_ports_and_concurrent_connections():
    async def main():
        async with echo_server() as echo_port, http_server() as http_port, serving() as srv:
            c, res = await SpdyClient.connect(srv.register_portforward(pf_req()), ["portforward.k8s.io"])
            assert res.header("x-stream-protocol-version") == "portforward.k8s.io"

            async def one(rid: int, port: int, payload: bytes) -> bytes:
                err = c.open({"streamtype": "error", "port": str(port), "requestid": str(rid)})
                data = c.open({"streamtype": "data", "port": str(port), "requestid": str(rid)})
                c.write(data, payload, fin=True)
                got = await c.read_all(data)
                assert await c.read_all(err) == b""
                return got

            payloads = [bytes([65 + i]) * (100_000 + i) for i in range(5)]
            results = await asyncio.gather(
                *(one(i, echo_port, p) for i, p in enumerate(payloads)),
                one(10, http_port, b"GET / HTTP/1.0\r\n\r\n"))
            assert results[:5] == payloads
            assert results[5].endswith(b"\r\n\r\nhello from http\n")
            c.close()
    run(main())


def test_spdy_portforward_errors_go_to_the_error_stream():
    async def main():
        async with serving() as srv:
            # a closed port: connect fails, the message goes on the error stream, the connection stays usable
            closed = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
            dead_port = closed.sockets[0].getsockname()[1]
            closed.close()
            await closed.wait_closed()
            c, _ = await SpdyClient.connect(srv.register_portforward(pf_req()), ["portforward.k8s.io"])
            err = c.open({"streamtype": "error", "port": str(dead_port), "requestid": "1"})
            c.open({"streamtype": "data", "port": str(dead_port), "requestid": "1"})
            msg = await c.read_all(err)
            assert msg.startswith(f"error forwarding port {dead_port} to pod pod1".encode())
            err = c.open({"streamtype": "error", "port": "notaport", "requestid": "2"})
            c.open({"streamtype": "data", "port": "notaport", "requestid": "2"})
            assert b"unable to parse 'notaport' as a port" in await c.read_all(err)
            c.close()
            # an unknown pod
            c, _ = await SpdyClient.connect(srv.register_portforward(pf_req(pod="ghost")), ["portforward.k8s.io"])
            err = c.open({"streamtype": "error", "port": "80", "requestid": "1"})
            c.open({"streamtype": "data", "port": "80", "requestid": "1"})
            assert b"pod sandbox not found" in await c.read_all(err)
            c.close()
    run(main())


def test_spdy_portforward_restricted_to_requested_ports():
    async def main():
        async with echo_server() as echo_port, serving() as srv:
            c, _ = await SpdyClient.connect(srv.register_portforward(pf_req(echo_port)), ["portforward.k8s.io"])
            err = c.open({"streamtype": "error", "port": str(echo_port + 1), "requestid": "1"})
            c.open({"streamtype": "data", "port": str(echo_port + 1), "requestid": "1"})
            assert b"was not in the port-forward request" in await c.read_all(err)
            c.close()
    run(main())


def test_websocket_portforward_two_ports():
    async def main():
        async with echo_server() as echo_port, http_server() as http_port, serving() as srv:
            url = srv.register_portforward(pf_req()) + f"?port={echo_port}&port={http_port}"
            c, res = await WsClient.connect(url, ["v4.channel.k8s.io"])
            assert res.header("sec-websocket-protocol") == "v4.channel.k8s.io"
            # channel 2i carries data for port i, 2i+1 its errors; each starts with the port, little endian
            await c.read_until(0, port_prefix(echo_port))
            await c.read_until(1, port_prefix(echo_port))
            await c.read_until(2, port_prefix(http_port))
            await c.read_until(3, port_prefix(http_port))
            c.send(0, b"echo me")
            c.send(2, b"GET / HTTP/1.0\r\n\r\n")
            await c.read_until(0, port_prefix(echo_port) + b"echo me")
            await c.read_until(2, b"hello from http\n")
            assert c.output(1) == port_prefix(echo_port) and c.output(3) == port_prefix(http_port)
            c.writer.close()
    run(main())


def test_websocket_portforward_base64_and_missing_port():
    async def main():
        async with echo_server() as echo_port, serving() as srv:
            c, res = await WsClient.connect(srv.register_portforward(pf_req()), ["v4.channel.k8s.io"])
            assert c is None and res.status == 400 and b'"port" is required' in res.body
            url = srv.register_portforward(pf_req()) + f"?port={echo_port}"
            c, res = await WsClient.connect(url, ["v4.base64.channel.k8s.io"])
            c.send(0, b"\x00\x01\x02")
            await c.read_until(0, port_prefix(echo_port) + b"\x00\x01\x02")
            c.writer.close()
    run(main())


class _WsBytes:
    """Test side of the SPDY-in-WebSocket tunnel: a reader/writer pair whose bytes travel as binary messages."""

    def __init__(self, reader, writer, rest: bytes) -> None:
        from wsproto.connection import Connection, ConnectionType
        self.ws = Connection(ConnectionType.CLIENT)
        self.sock_reader, self.sock_writer = reader, writer
        self.reader = asyncio.StreamReader()
        self._task = asyncio.create_task(self._pump(rest))

    async def _pump(self, data: bytes) -> None:
        from wsproto.events import BytesMessage, CloseConnection
        while True:
            if data:
                self.ws.receive_data(data)
                for ev in self.ws.events():
                    if isinstance(ev, BytesMessage):
                        self.reader.feed_data(ev.data)
                    elif isinstance(ev, CloseConnection):
                        self.reader.feed_eof()
                        return
            data = await self.sock_reader.read(65536)
            if not data:
                self.reader.feed_eof()
                return

    def write(self, data: bytes) -> None:
        from wsproto.events import BytesMessage
        self.sock_writer.write(self.ws.send(BytesMessage(data=data)))

    def close(self) -> None:
        self._task.cancel()
        self.sock_writer.close()


def test_spdy_tunnelled_in_websocket_portforward():
    async def main():
        import base64
        import os

        from tests.streaming.client import http_upgrade
        async with echo_server() as echo_port, serving() as srv:
            key = base64.b64encode(os.urandom(16)).decode()
            reader, writer, res = await http_upgrade(srv.register_portforward(pf_req()), [
                ("Connection", "Upgrade"), ("Upgrade", "websocket"), ("Sec-WebSocket-Version", "13"),
                ("Sec-WebSocket-Key", key), ("Sec-WebSocket-Protocol", "SPDY/3.1+portforward.k8s.io")])
            assert res.status == 101 and res.header("sec-websocket-protocol") == "SPDY/3.1+portforward.k8s.io"
            tunnel = _WsBytes(reader, writer, res.rest)
            c = SpdyClient(tunnel.reader, tunnel, b"")
            err = c.open({"streamtype": "error", "port": str(echo_port), "requestid": "0"})
            data = c.open({"streamtype": "data", "port": str(echo_port), "requestid": "0"})
            c.write(data, b"through the tunnel" * 5000, fin=True)
            assert await c.read_all(data) == b"through the tunnel" * 5000
            assert await c.read_all(err) == b""
            c.close()
    run(main())
