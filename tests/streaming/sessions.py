"""One test-side view of an exec/attach session over either transport, so each behaviour is tested over both."""

from __future__ import annotations

import json

from tests.streaming.client import SpdyClient, WsClient

STDIN, STDOUT, STDERR, ERROR, RESIZE = 0, 1, 2, 3, 4


class SpdySession:
    def __init__(self, client: SpdyClient, req) -> None:
        self.c = client
        self.error = client.open({"streamtype": "error"})
        self.stdin = client.open({"streamtype": "stdin"}) if req.stdin else None
        self.stdout = client.open({"streamtype": "stdout"}) if req.stdout else None
        self.stderr = client.open({"streamtype": "stderr"}) if req.stderr and not req.tty else None
        self.resize_s = client.open({"streamtype": "resize"}) if req.tty else None

    def write(self, data: bytes) -> None:
        self.c.write(self.stdin, data)

    def close_stdin(self) -> None:
        self.c.write(self.stdin, b"", fin=True)

    def resize(self, w: int, h: int) -> None:
        self.c.write(self.resize_s, json.dumps({"Width": w, "Height": h}).encode())

    async def read_until(self, needle: bytes) -> bytes:
        return await self.c.read_until(self.stdout, needle)

    async def finish(self) -> tuple[bytes, bytes, bytes]:
        status = await self.c.read_all(self.error)
        out = await self.c.read_all(self.stdout) if self.stdout else b""
        err = await self.c.read_all(self.stderr) if self.stderr else b""
        await self.c.wait_closed()
        return out, err, status


class WsSession:
    def __init__(self, client: WsClient) -> None:
        self.c = client

    def write(self, data: bytes) -> None:
        self.c.send(STDIN, data)

    def close_stdin(self) -> None:
        self.c.send_close_signal(STDIN)

    def resize(self, w: int, h: int) -> None:
        self.c.resize(w, h)

    async def read_until(self, needle: bytes) -> bytes:
        return await self.c.read_until(STDOUT, needle)

    async def finish(self) -> tuple[bytes, bytes, bytes]:
        await self.c.wait_closed()
        return self.c.output(STDOUT), self.c.output(STDERR), self.c.output(ERROR)


async def open_session(url: str, transport: str, req, protocol: str | None = None):
    if transport == "spdy":
        client, res = await SpdyClient.connect(url, [protocol or "v5.channel.k8s.io", "v4.channel.k8s.io"])
        assert res.status == 101, res.body
        return SpdySession(client, req)
    client, res = await WsClient.connect(url, [protocol or "v5.channel.k8s.io"])
    assert res.status == 101, res.body
    return WsSession(client)
