"""SPDY/3.1 frames and the WebSocket channel protocol against random input.

Unit level: the SPDY decoder fed random bytes (in random splits) raises only ProtocolError/StreamError, and frames
the encoder writes decode back equal. Server level: a real StreamingServer (host backend) gets random frames and
random bytes after a valid upgrade, on SPDY and on WebSocket: no connection ends in an unexpected exception (the
server's "streaming connection failed" log, or an exception left in a task), the connection closes within a few
seconds once the client stops sending, and the server still serves a normal exec afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from wsproto import ConnectionType
from wsproto.connection import Connection
from wsproto.events import BytesMessage, CloseConnection, Ping, TextMessage

import pycri.streaming.server as server_mod
from pycri.streaming import spdy
from tests.fuzz.profiles import budget, corpus
from tests.streaming.client import http_upgrade
from tests.streaming.helpers import exec_req, serving, status_of
from tests.streaming.sessions import open_session

SPDY_SEEDS = corpus("spdy")
WS_SEEDS = corpus("websocket")

# -- frame strategies --------------------------------------------------------------------------------------------

_sid = st.one_of(st.integers(0, 9), st.integers(0, 2 ** 31 - 1))
_u32 = st.one_of(st.integers(0, 10), st.integers(0, 2 ** 32 - 1))
_headers = st.dictionaries(st.one_of(st.sampled_from(["streamtype", "port", "requestid", "x"]),
                                     st.text("abcdefghij-", min_size=1, max_size=8)),
                           st.lists(st.one_of(st.sampled_from(["stdin", "stdout", "stderr", "error", "resize",
                                                               "data", "80", "0", "-1", "99999"]),
                                              st.text(st.characters(min_codepoint=1, max_codepoint=127),
                                                      max_size=6)),  # ASCII: the encoder writes UTF-8, the
                                    # decoder reads latin-1 (k8s header values are ASCII)
                                    min_size=1, max_size=2), max_size=3)
frames = st.one_of(
    st.builds(spdy.SynStream, _sid, _headers, _sid, st.integers(0, 7), st.integers(0, 255), st.integers(0, 3)),
    st.builds(spdy.SynReply, _sid, _headers, st.integers(0, 3)),
    st.builds(spdy.HeadersFrame, _sid, _headers, st.integers(0, 3)),
    st.builds(spdy.RstStream, _sid, _u32),
    st.builds(spdy.Settings, st.dictionaries(st.integers(0, 2 ** 24 - 1), _u32, max_size=3), st.integers(0, 1)),
    st.builds(spdy.Ping, _u32),
    st.builds(spdy.GoAway, _sid, _u32),
    st.builds(spdy.WindowUpdate, _sid, st.one_of(st.integers(0, 2 ** 31 - 1), st.just(2 ** 31 - 1))),
    st.builds(spdy.Data, st.integers(1, 9), st.binary(max_size=64), st.integers(0, 3)),
)


def raw_control(ftype: int, flags: int, payload: bytes, version: int = 3) -> bytes:
    return struct.pack(">HHI", 0x8000 | version, ftype, (flags << 24) | len(payload)) + payload


raw_frames = st.one_of(
    st.builds(raw_control, st.integers(0, 12), st.integers(0, 255), st.binary(max_size=40)),
    st.builds(raw_control, st.integers(0, 12), st.integers(0, 255), st.binary(max_size=8), st.integers(0, 5)),
    st.builds(lambda sid, flags, data: struct.pack(">II", sid, (flags << 24) | len(data)) + data,
              st.integers(0, 2 ** 31 - 1), st.integers(0, 255), st.binary(max_size=40)),
    st.binary(min_size=1, max_size=64),
)


# -- unit level --------------------------------------------------------------------------------------------------

def decode_all(chunks: list[bytes]) -> list:
    """Feed the chunks; every frame out, or the error that ended the connection (only the two SPDY errors)."""
    dec = spdy.Decoder()
    out = []
    for chunk in chunks:
        dec.feed(chunk)
        while True:
            try:
                out.extend(dec.frames())
                break
            except spdy.StreamError as exc:
                out.append(exc)  # that frame is consumed: carry on, as the connection does
            except spdy.ProtocolError as exc:
                out.append(exc)
                return out
    return out


@given(st.lists(st.one_of(raw_frames, st.binary(max_size=32)), max_size=8), st.integers(1, 64))
@settings(max_examples=budget(1000))
def test_decoder_raises_only_protocol_errors(parts, split):
    data = b"".join(parts)
    decode_all([data[i:i + split] for i in range(0, len(data), split)])


@given(st.lists(frames, min_size=1, max_size=6), st.integers(1, 50))
@settings(max_examples=budget(500))
def test_encoded_frames_decode_back(fs, split):
    enc = spdy.Encoder()
    data = b"".join(enc.encode(f) for f in fs)
    got = decode_all([data[i:i + split] for i in range(0, len(data), split)])
    want = []
    for f in fs:  # what the decoder is specified to refuse
        if isinstance(f, (spdy.SynStream, spdy.SynReply, spdy.HeadersFrame)) and f.stream_id == 0:
            want.append(spdy.ProtocolError)
            break
        if isinstance(f, spdy.RstStream) and (f.stream_id == 0 or f.status == 0):
            want.append(spdy.ProtocolError)
            break
        if isinstance(f, spdy.WindowUpdate) and f.delta == 0:
            want.append(spdy.StreamError)
            continue
        want.append(f)
    assert [g if not isinstance(g, Exception) else type(g) for g in got] == want


@given(st.binary(max_size=200))
@settings(max_examples=budget(500))
def test_header_block_parser(raw):
    try:
        headers = spdy.parse_header_block(raw)
    except spdy.ProtocolError:
        return
    assert all(k == k.lower() for k in headers)


@pytest.mark.parametrize("name,data", SPDY_SEEDS, ids=[n for n, _ in SPDY_SEEDS])
def test_spdy_seeds_unit(name, data):
    decode_all([data])


# -- server level ------------------------------------------------------------------------------------------------

class Watch:
    """Records the server's "connection failed" log and exceptions nobody retrieved from a task."""

    def __init__(self) -> None:
        self.failures: list[str] = []

    @contextlib.contextmanager
    def installed(self, loop):
        real = server_mod._log

        class Proxy:
            def __getattr__(_, name):
                return getattr(real, name)

            def exception(_, event, **kw):
                self.failures.append(f"{event} {kw}")
                real.exception(event, **kw)

        server_mod._log = Proxy()
        loop.set_exception_handler(lambda lp, ctx: self.failures.append(repr(ctx.get("exception") or ctx)))
        try:
            yield self
        finally:
            server_mod._log = real


async def still_serves(srv) -> None:
    req = exec_req(["echo", "alive"])
    s = await open_session(srv.register_exec(req), "spdy", req)
    out, _, status = await s.finish()
    assert out == b"alive\n" and status_of(status)["status"] == "Success"


async def wait_closed(reader, timeout: float = 8) -> None:
    """The server closes the connection once we stop sending (or says nothing more and we time out: a hang)."""
    async def drain():
        while await reader.read(65536):
            pass
    await asyncio.wait_for(drain(), timeout)


def run_server_case(body):
    """Run body(srv) against a fresh server with the watch on; fail on any recorded unexpected exception."""
    watch = Watch()

    async def main():
        with watch.installed(asyncio.get_running_loop()):
            async with serving(idle_timeout=3) as srv:
                await body(srv)
                await still_serves(srv)
    asyncio.run(asyncio.wait_for(main(), 60))
    assert not watch.failures, watch.failures


def _cmd(kind: str):
    return exec_req(["cat"], stdin=True) if kind == "cat" else exec_req(["sleep", "1"])


async def raw_session(url: str, headers: list[tuple[str, str]], payload: bytes) -> None:
    """Upgrade, send payload, half-close; the server must then close within a few seconds. A raw client: nothing
    on our side answers or writes after the half-close."""
    reader, writer, res = await http_upgrade(url, headers)
    assert res.status == 101, (res.status, res.body)
    try:
        writer.write(payload)
        await writer.drain()
        writer.write_eof()
        await wait_closed(reader)
    except ConnectionError:
        pass  # the server reset the connection: closed, too
    finally:
        writer.close()


SPDY_UPGRADE = [("Connection", "Upgrade"), ("Upgrade", "SPDY/3.1"), ("X-Stream-Protocol-Version", "v4.channel.k8s.io")]


def ws_upgrade(protocol: str) -> list[tuple[str, str]]:
    return [("Connection", "Upgrade"), ("Upgrade", "websocket"), ("Sec-WebSocket-Version", "13"),
            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="), ("Sec-WebSocket-Protocol", protocol)]


async def spdy_garbage(srv, payload: bytes, kind: str) -> None:
    await raw_session(srv.register_exec(_cmd(kind)), SPDY_UPGRADE, payload)


@given(st.lists(st.one_of(frames, raw_frames), min_size=1, max_size=6), st.sampled_from(["cat", "sleep"]))
@settings(max_examples=budget(150))
def test_spdy_server_random_frames(fs, kind):
    def body_bytes():
        enc = spdy.Encoder()
        return b"".join(f if isinstance(f, bytes) else enc.encode(f) for f in fs)

    run_server_case(lambda srv: spdy_garbage(srv, body_bytes(), kind))


@pytest.mark.parametrize("name,data", SPDY_SEEDS, ids=[n for n, _ in SPDY_SEEDS])
def test_spdy_server_seeds(name, data):
    run_server_case(lambda srv: spdy_garbage(srv, data, "cat"))


def ws_messages():
    return st.one_of(
        st.builds(BytesMessage, data=st.binary(max_size=40), message_finished=st.booleans()),
        st.builds(BytesMessage, data=st.builds(lambda c, d: bytes([c]) + d, st.sampled_from([0, 4, 255]),
                                               st.binary(max_size=4))),
        st.builds(TextMessage, data=st.text(max_size=20), message_finished=st.booleans()),
        st.builds(TextMessage, data=st.builds(lambda c, d: c + d, st.sampled_from("0123459"),
                                              st.text("QUJDRA==!", max_size=12))),
        st.builds(Ping, payload=st.binary(max_size=8)),
        st.builds(CloseConnection, code=st.sampled_from([1000, 1002, 1005, 4000, 3000]),
                  reason=st.text(max_size=5)),
    )


def _encode_ws(events) -> bytes:
    client = Connection(ConnectionType.CLIENT)  # an upgraded (open) client connection: frames only
    out = b""
    for ev in events:
        if isinstance(ev, bytes):
            out += ev
            continue
        try:
            out += client.send(ev)
        except Exception:  # noqa: BLE001 - the client refuses (e.g. sending after its own close): skip it
            continue
    return out


async def ws_garbage(srv, payload: bytes, protocol: str, kind: str) -> None:
    await raw_session(srv.register_exec(_cmd(kind)), ws_upgrade(protocol), payload)


@given(st.lists(st.one_of(ws_messages(), st.binary(min_size=1, max_size=24)), min_size=1, max_size=6),
       st.sampled_from(["v5.channel.k8s.io", "v4.channel.k8s.io", "base64.channel.k8s.io", "channel.k8s.io"]),
       st.sampled_from(["cat", "sleep"]))
@settings(max_examples=budget(150))
def test_websocket_server_random_messages(events, protocol, kind):
    run_server_case(lambda srv: ws_garbage(srv, _encode_ws(events), protocol, kind))


@pytest.mark.parametrize("name,data", WS_SEEDS, ids=[n for n, _ in WS_SEEDS])
def test_websocket_server_seeds(name, data):
    run_server_case(lambda srv: ws_garbage(srv, data, "v5.channel.k8s.io", "cat"))


@given(st.binary(max_size=300))
@settings(max_examples=budget(100))
def test_http_side_random_bytes(data):
    async def body(srv):
        r, w = await asyncio.open_connection("127.0.0.1", srv.port)
        w.write(data)
        await w.drain()
        w.write_eof()
        try:
            await wait_closed(r)
        finally:
            w.close()
    run_server_case(body)
