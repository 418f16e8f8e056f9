"""The HTTP side, tokens, robustness (malformed input, idle sessions), flow control and concurrency."""

from __future__ import annotations

import asyncio
import struct
import time

import pytest

from pycri.api import api_pb2
from pycri.errors import InvalidArgument
from pycri.streaming import spdy
from pycri.streaming.tokens import TokenCache
from tests.fixtures.pace import scaled
from tests.streaming.client import SpdyClient, WsClient, http_upgrade
from tests.streaming.helpers import exec_req, run, serving, status_of
from tests.streaming.sessions import open_session

SPDY_HEADERS = [("Connection", "Upgrade"), ("Upgrade", "SPDY/3.1"), ("X-Stream-Protocol-Version", "v4.channel.k8s.io")]


async def echo_works(srv) -> None:
    """The server still serves a normal exec."""
    req = exec_req(["echo", "still here"])
    s = await open_session(srv.register_exec(req), "spdy", req)
    out, _, status = await s.finish()
    assert out == b"still here\n" and status_of(status)["status"] == "Success"


def test_urls_and_validation():
    async def main():
        async with serving() as srv:
            url = srv.register_exec(exec_req(["true"]))
            assert url.startswith(f"http://127.0.0.1:{srv.port}/exec/")
            assert len(url.rsplit("/", 1)[1]) >= 32
            assert srv.register_attach(api_pb2.AttachRequest(container_id="c", stdout=True)).split("/")[3] == "attach"
            assert "/portforward/" in srv.register_portforward(api_pb2.PortForwardRequest(pod_sandbox_id="p"))
            with pytest.raises(InvalidArgument, match="tty and stderr"):
                srv.register_exec(exec_req(["sh"], tty=True, stderr=True))
            with pytest.raises(InvalidArgument, match="one of stdin, stdout, or stderr"):
                srv.register_exec(exec_req(["sh"], stdout=False, stderr=False))
            with pytest.raises(InvalidArgument, match="command"):
                srv.register_exec(exec_req([]))
    run(main())


def test_bad_reused_and_expired_tokens_get_404():
    async def main():
        async with serving(token_ttl=0.3) as srv:
            base = srv.base_url
            _, _, res = await http_upgrade(f"{base}/exec/not-a-token", SPDY_HEADERS)
            assert res.status == 404 and b"token not found, expired or already used" in res.body
            url = srv.register_exec(exec_req(["true"]))
            s = await open_session(url, "spdy", exec_req(["true"]))
            await s.finish()
            _, _, res = await http_upgrade(url, SPDY_HEADERS)  # reused
            assert res.status == 404
            url = srv.register_exec(exec_req(["true"]))
            await asyncio.sleep(0.5)
            _, _, res = await http_upgrade(url, SPDY_HEADERS)  # expired
            assert res.status == 404
            # a token is bound to its kind
            url = srv.register_exec(exec_req(["true"]))
            _, _, res = await http_upgrade(url.replace("/exec/", "/attach/"), SPDY_HEADERS)
            assert res.status == 404
            _, _, res = await http_upgrade(f"{base}/nothing/here", SPDY_HEADERS)
            assert res.status == 404 and b"expected /exec/<token>" in res.body
            await echo_works(srv)
    run(main())


def test_token_cache_unit():
    now = [0.0]
    cache = TokenCache(10, clock=lambda: now[0])
    t1 = cache.insert("exec", "a")
    t2 = cache.insert("exec", "b")
    assert t1 != t2
    assert cache.consume("exec", t1) == "a" and cache.consume("exec", t1) is None
    now[0] = 11
    assert cache.consume("exec", t2) is None
    cache.insert("exec", "c")
    assert len(cache) == 1


def test_bad_http_requests():
    async def main():
        async with serving() as srv:
            url = srv.register_exec(exec_req(["true"]))
            _, _, res = await http_upgrade(url, [])  # no upgrade headers
            assert res.status == 400 and b"missing upgrade headers" in res.body
            url = srv.register_exec(exec_req(["true"]))
            _, _, res = await http_upgrade(url, [("Connection", "Upgrade"), ("Upgrade", "h2c")])
            assert res.status == 400 and b"unsupported protocol" in res.body
            url = srv.register_exec(exec_req(["true"]))
            _, _, res = await http_upgrade(url, [("Connection", "Upgrade"), ("Upgrade", "websocket")])
            assert res.status == 400 and b"Sec-WebSocket-Key" in res.body
            url = srv.register_exec(exec_req(["true"]))
            c, res = await WsClient.connect(url, ["v9.channel.k8s.io"])
            assert res.status == 400 and b"not supported" in res.body
            _, _, res = await http_upgrade(url, SPDY_HEADERS, method="DELETE")
            assert res.status == 405
            # garbage instead of HTTP
            r, w = await asyncio.open_connection("127.0.0.1", srv.port)
            w.write(b"\x16\x03\x01 this is not http\r\n\r\n")
            answer = await asyncio.wait_for(r.read(), 5)
            assert answer.startswith(b"HTTP/1.1 400")
            w.close()
            await echo_works(srv)
    run(main())


@pytest.mark.parametrize("garbage", [
    struct.pack(">HHI", 0x8003, 1, 14) + struct.pack(">IIBB", 1, 0, 0, 0) + b"\xde\xad\xbe\xef",  # bad zlib
    struct.pack(">HHI", 0x8002, 6, 4) + b"\0\0\0\1",  # SPDY/2
    struct.pack(">II", 0, 3) + b"abc",  # DATA on stream 0
])
def test_malformed_spdy_frames_close_the_connection_and_server_keeps_serving(garbage):
    async def main():
        async with serving() as srv:
            c, _ = await SpdyClient.connect(srv.register_exec(exec_req(["sleep", "30"])), ["v4.channel.k8s.io"])
            c.send_raw(garbage)
            await c.wait_closed(timeout=5)
            assert c.goaway is not None and c.goaway.status == spdy.GOAWAY_PROTOCOL_ERROR
            await echo_works(srv)
    run(main())


def test_bad_stream_frames_get_rst_stream_and_session_continues():
    async def main():
        async with serving() as srv:
            req = exec_req(["cat"], stdin=True)
            c, _ = await SpdyClient.connect(srv.register_exec(req), ["v4.channel.k8s.io"])
            err = c.open({"streamtype": "error"})
            stdin = c.open({"streamtype": "stdin"})
            out = c.open({"streamtype": "stdout"})
            c.open({"streamtype": "stderr"})
            bogus = c.open({"streamtype": "video"})  # unknown stream type
            c.send(spdy.Data(99, b"nobody"))  # DATA for a stream that does not exist
            c.send(spdy.SynStream(1, {"streamtype": ["stdin"]}))  # reused stream id
            c.write(stdin, b"ok\n", fin=True)
            assert await c.read_all(out) == b"ok\n"
            assert status_of(await c.read_all(err))["status"] == "Success"
            rsts = {f.stream_id: f.status for f in c.frames if isinstance(f, spdy.RstStream)}
            assert rsts == {bogus.id: spdy.REFUSED_STREAM, 99: spdy.INVALID_STREAM, 1: spdy.STREAM_IN_USE}
    run(main())


def test_malformed_websocket_frames_close_and_server_keeps_serving():
    async def main():
        async with serving() as srv:
            req = exec_req(["sleep", "30"], stdin=True)
            c, _ = await WsClient.connect(srv.register_exec(req), ["v5.channel.k8s.io"])
            c.writer.write(b"\x82\x05hello")  # unmasked client frame: a protocol violation
            await c.wait_closed(timeout=5)
            assert c.close_code == 1002
            c, _ = await WsClient.connect(srv.register_exec(req), ["base64.channel.k8s.io"])
            c.writer.write(c.ws.send(__import__("wsproto").events.TextMessage(data="0!!!notbase64")))
            await c.wait_closed(timeout=5)
            assert c.close_code == 1007
            await echo_works(srv)
    run(main())


def test_ping_is_answered():
    async def main():
        async with serving() as srv:
            c, _ = await SpdyClient.connect(srv.register_exec(exec_req(["sleep", "1"])), ["v4.channel.k8s.io"])
            c.send(spdy.Ping(7))
            for _ in range(100):
                if spdy.Ping(7) in c.frames:
                    break
                await asyncio.sleep(0.02)
            assert spdy.Ping(7) in c.frames
            c.close()
    run(main())


@pytest.mark.parametrize("transport", ["spdy", "websocket"])
def test_idle_timeout_ends_sessions(transport):
    async def main():
        async with serving(idle_timeout=1.0) as srv:
            req = exec_req(["sleep", "30"], stdin=True)
            start = time.monotonic()  # (before the handshake: its last frame starts the idle clock)
            s = await open_session(srv.register_exec(req), transport, req)
            await s.c.closed.wait()
            assert 1.0 <= time.monotonic() - start < scaled(5)
            # a busy session is not idle
            req = exec_req(["sh", "-c", "for i in 1 2 3 4 5 6; do echo $i; sleep 0.3; done"])
            s = await open_session(srv.register_exec(req), transport, req)
            out, _, status = await s.finish()
            assert out == b"1\n2\n3\n4\n5\n6\n" and status_of(status)["status"] == "Success"
    run(main())


def test_flow_control_server_respects_client_window():
    """A client that does flow control and grants 64 KiB: the server stops at the window until WINDOW_UPDATE."""
    async def main():
        async with serving() as srv:
            req = exec_req(["head", "-c", "300000", "/dev/zero"])
            c, _ = await SpdyClient.connect(srv.register_exec(req), ["v4.channel.k8s.io"], flow_control=True,
                                            window=65536, auto_window=False)
            err = c.open({"streamtype": "error"})
            out = c.open({"streamtype": "stdout"})
            c.open({"streamtype": "stderr"})

            async def settles_at(n: int) -> None:
                for _ in range(250):
                    if c.received_data >= n:
                        break
                    await asyncio.sleep(0.02)
                await asyncio.sleep(0.3)  # and goes no further
                assert c.received_data == n

            await settles_at(65536)
            assert not err.fin.is_set()
            c.send(spdy.WindowUpdate(out.id, 100_000))
            c.send(spdy.WindowUpdate(0, 1_000_000))
            await settles_at(165536)
            c.send(spdy.WindowUpdate(out.id, 1_000_000))
            assert len(await c.read_all(out)) == 300000
            assert status_of(await c.read_all(err))["status"] == "Success"
    run(main())


def test_flow_control_server_sends_window_updates_and_enforces_windows():
    async def main():
        async with serving() as srv:
            req = exec_req(["cat"], stdin=True)
            c, _ = await SpdyClient.connect(srv.register_exec(req), ["v4.channel.k8s.io"], flow_control=True)
            err = c.open({"streamtype": "error"})
            stdin = c.open({"streamtype": "stdin"})
            out = c.open({"streamtype": "stdout"})
            c.open({"streamtype": "stderr"})
            await c.write_flow(stdin, b"y" * 500_000, fin=True)  # only possible with the server's WINDOW_UPDATEs
            assert await c.read_all(out) == b"y" * 500_000
            assert status_of(await c.read_all(err))["status"] == "Success"
            ups = [f for f in c.frames if isinstance(f, spdy.WindowUpdate) and f.stream_id == stdin.id]
            assert sum(f.delta for f in ups) >= 500_000 - 65536
            # overrunning the window is a FLOW_CONTROL_ERROR on that stream
            c2, _ = await SpdyClient.connect(srv.register_exec(req), ["v4.channel.k8s.io"], flow_control=True)
            c2.open({"streamtype": "error"})
            stdin2 = c2.open({"streamtype": "stdin"})
            c2.open({"streamtype": "stdout"})
            c2.open({"streamtype": "stderr"})
            c2.write(stdin2, b"z" * 70_000)
            await asyncio.wait_for(stdin2.fin.wait(), 5)
            assert stdin2.reset_status == spdy.FLOW_CONTROL_ERROR
            c2.close()
    run(main())


def test_twenty_concurrent_sessions():
    async def main():
        async with serving() as srv:
            async def one(i: int) -> None:
                transport = "spdy" if i % 2 else "websocket"
                req = exec_req(["sh", "-c", f"read x; echo $x-{i}; exit {i % 4}"], stdin=True)
                s = await open_session(srv.register_exec(req), transport, req)
                s.write(f"hello{i}\n".encode())
                out, _, status = await s.finish()
                assert out == f"hello{i}-{i}\n".encode()
                st = status_of(status)
                assert st["status"] == ("Success" if i % 4 == 0 else "Failure")
            await asyncio.gather(*(one(i) for i in range(20)))
    run(main())


def test_stop_ends_running_sessions():
    async def main():
        srv_cm = serving()
        srv = await srv_cm.__aenter__()
        c, _ = await SpdyClient.connect(srv.register_exec(exec_req(["sleep", "30"])), ["v4.channel.k8s.io"])
        c.open({"streamtype": "error"})
        c.open({"streamtype": "stdout"})
        c.open({"streamtype": "stderr"})
        await asyncio.sleep(0.2)
        start = time.monotonic()
        await srv_cm.__aexit__(None, None, None)
        await c.wait_closed(timeout=5)
        assert time.monotonic() - start < 5
    run(main())


@pytest.mark.parametrize("transport", ["spdy", "websocket"])
def test_client_hangup_stops_the_backend_process(transport):
    async def main():
        async with serving() as srv:
            marker = f"31.{transport.__len__()}7"  # a unique sleep argument to find the process by
            req = exec_req(["sleep", marker])
            s = await open_session(srv.register_exec(req), transport, req)

            async def running() -> bool:
                p = await asyncio.create_subprocess_exec("pgrep", "-f", f"sleep {marker}",
                                                         stdout=asyncio.subprocess.DEVNULL)
                return await p.wait() == 0
            for _ in range(50):
                if await running():
                    break
                await asyncio.sleep(0.05)
            assert await running()
            s.c.writer.close()  # abrupt: no status read, no close handshake
            for _ in range(100):
                if not await running():
                    break
                await asyncio.sleep(0.05)
            assert not await running()
            await echo_works(srv)
    run(main())


def test_hangup_while_server_waits_for_window():
    """A writer blocked on an exhausted window must fail cleanly when the client goes, not spin or hang."""
    async def main():
        async with serving() as srv:
            req = exec_req(["head", "-c", "300000", "/dev/zero"])
            c, _ = await SpdyClient.connect(srv.register_exec(req), ["v4.channel.k8s.io"], flow_control=True,
                                            auto_window=False)
            c.open({"streamtype": "error"})
            c.open({"streamtype": "stdout"})
            c.open({"streamtype": "stderr"})
            for _ in range(250):
                if c.received_data >= 65536:
                    break
                await asyncio.sleep(0.02)
            assert c.received_data == 65536
            c.close()
            await asyncio.wait_for(echo_works(srv), 10)
            for _ in range(100):
                if not srv._connections or len(srv._connections) == 0:
                    break
                await asyncio.sleep(0.02)
            assert not srv._connections  # the blocked session ended too
    run(main())


def test_token_cache_is_bounded():
    from pycri.streaming import tokens
    from pycri.errors import ResourceExhausted
    cache = TokenCache(60)
    for i in range(tokens.MAX_IN_FLIGHT):
        cache.insert("exec", i)
    with pytest.raises(ResourceExhausted, match="waiting for their client"):
        cache.insert("exec", "one too many")
