"""Exec and attach end to end, over SPDY and WebSocket: real server, real processes, protocol-level clients."""

from __future__ import annotations

import asyncio
import json

import pytest

from pycri.api import api_pb2
from tests.streaming.client import SpdyClient, WsClient
from tests.streaming.helpers import exec_req, run, serving, status_of
from tests.streaming.hostbackend import HostBackend, HostContainer
from tests.streaming.sessions import open_session

TRANSPORTS = ["spdy", "websocket"]
SUCCESS = {"metadata": {}, "status": "Success"}


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_exec_echo_hello(transport):
    async def main():
        async with serving() as srv:
            req = exec_req(["echo", "hello"])
            s = await open_session(srv.register_exec(req), transport, req)
            out, err, status = await s.finish()
            assert (out, err) == (b"hello\n", b"")
            assert status_of(status) == SUCCESS
    run(main())


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_exec_exit_code_3(transport):
    async def main():
        async with serving() as srv:
            req = exec_req(["sh", "-c", "echo out; echo oops >&2; exit 3"])
            s = await open_session(srv.register_exec(req), transport, req)
            out, err, status = await s.finish()
            assert (out, err) == (b"out\n", b"oops\n")
            st = status_of(status)
            assert st["status"] == "Failure" and st["reason"] == "NonZeroExitCode"
            assert st["details"] == {"causes": [{"reason": "ExitCode", "message": "3"}]}
            assert st["message"].startswith("command terminated with non-zero exit code: ")
    run(main())


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_exec_stdin_eof_ends_cat(transport):
    async def main():
        async with serving() as srv:
            req = exec_req(["cat"], stdin=True)
            s = await open_session(srv.register_exec(req), transport, req)
            s.write(b"line one\n")
            assert await s.read_until(b"line one\n")
            s.write(b"x" * 300_000)  # more than one flow-control window
            s.close_stdin()
            out, err, status = await s.finish()
            assert out == b"line one\n" + b"x" * 300_000
            assert status_of(status) == SUCCESS
    run(main())


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_interactive_shell_with_tty_and_resize(transport):
    async def main():
        backend = HostBackend()
        async with serving(backend) as srv:
            req = exec_req(["/bin/sh"], tty=True, stdin=True)
            s = await open_session(srv.register_exec(req), transport, req)
            s.resize(100, 30)
            s.write(b"tty -s && echo IS-A-TTY; stty size\n")
            await s.read_until(b"IS-A-TTY")
            await s.read_until(b"30 100")
            s.resize(132, 43)
            for _ in range(50):  # the resize is applied asynchronously: poll stty
                await asyncio.sleep(0.05)
                if (132, 43) in backend.resizes:
                    break
            s.write(b"stty size; exit 7\n")
            await s.read_until(b"43 132")
            out, err, status = await s.finish()
            assert err == b""
            st = status_of(status)
            assert st["reason"] == "NonZeroExitCode" and st["details"]["causes"][0]["message"] == "7"
            assert backend.resizes[:2] == [(100, 30), (132, 43)]
    run(main())


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_attach(transport):
    async def main():
        backend = HostBackend()
        c = HostContainer(["sh", "-c", "while read l; do echo got:$l; [ $l = bye ] && exit 0; done"])
        await c.start()
        backend.containers["ctr"] = c
        try:
            async with serving(backend) as srv:
                req = api_pb2.AttachRequest(container_id="ctr", stdin=True, stdout=True, stderr=True)
                s = await open_session(srv.register_attach(req), transport, req)
                s.write(b"hi\n")
                await s.read_until(b"got:hi\n")
                s.write(b"bye\n")
                out, _, status = await s.finish()
                assert out == b"got:hi\ngot:bye\n"
                assert status_of(status) == SUCCESS
        finally:
            await c.stop()
    run(main())


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_unknown_container_reports_failure_status(transport):
    async def main():
        async with serving() as srv:
            req = exec_req(["true"], container_id="nope")
            s = await open_session(srv.register_exec(req), transport, req)
            _, _, status = await s.finish()
            st = status_of(status)
            assert st["status"] == "Failure" and "container not found: nope" in st["message"]
    run(main())


@pytest.mark.parametrize("protocol", ["v3.channel.k8s.io", "v2.channel.k8s.io", "channel.k8s.io"])
def test_spdy_legacy_protocols_carry_text_errors(protocol):
    async def main():
        async with serving() as srv:
            for cmd, want in ((["true"], b""), (["sh", "-c", "exit 5"], b"exit code 5")):
                req = exec_req(cmd)
                c, res = await SpdyClient.connect(srv.register_exec(req), [protocol])
                assert res.header("x-stream-protocol-version") == protocol
                err = c.open({"streamtype": "error"})
                c.open({"streamtype": "stdout"})
                c.open({"streamtype": "stderr"})
                status = await c.read_all(err)
                assert status.endswith(want) and (status == b"") == (want == b"")
                await c.wait_closed()
    run(main())


def test_spdy_negotiation_prefers_newest_and_rejects_unknown():
    async def main():
        async with serving() as srv:
            c, res = await SpdyClient.connect(srv.register_exec(exec_req(["true"])),
                                              ["v2.channel.k8s.io", "v4.channel.k8s.io", "v5.channel.k8s.io"])
            assert res.header("x-stream-protocol-version") == "v5.channel.k8s.io"
            c.close()
            c, res = await SpdyClient.connect(srv.register_exec(exec_req(["true"])), ["v9.channel.k8s.io"])
            assert c is None and res.status == 403
            assert b"unable to negotiate protocol" in res.body
    run(main())


@pytest.mark.parametrize("protocol", ["base64.channel.k8s.io", "v4.base64.channel.k8s.io"])
def test_websocket_base64_protocols(protocol):
    async def main():
        async with serving() as srv:
            req = exec_req(["sh", "-c", "cat; exit 4"], stdin=True)
            c, res = await WsClient.connect(srv.register_exec(req), [protocol])
            assert res.header("sec-websocket-protocol") == protocol
            c.send(0, b"\x00\xffbinary\n")
            await c.read_until(1, b"binary\n")
            await asyncio.sleep(0.1)
            c.writer.close()  # no close signal before v5: the client hangs up, the session ends
            await c.wait_closed()
            assert c.output(1) == b"\x00\xffbinary\n"
    run(main())


def test_websocket_v4_status_and_v5_preferred():
    async def main():
        async with serving() as srv:
            c, res = await WsClient.connect(srv.register_exec(exec_req(["sh", "-c", "exit 2"])),
                                            ["v4.channel.k8s.io", "v5.channel.k8s.io"])
            assert res.header("sec-websocket-protocol") == "v5.channel.k8s.io"
            await c.wait_closed()
            c, res = await WsClient.connect(srv.register_exec(exec_req(["sh", "-c", "exit 2"])),
                                            ["v4.channel.k8s.io"])
            await c.wait_closed()
            st = json.loads(c.output(3))
            assert st["details"]["causes"][0]["message"] == "2"
            assert c.close_code == 1000
    run(main())


def test_spdy_waits_for_all_expected_streams():
    """kubelet starts the command only once every stream the request implies exists."""
    async def main():
        backend = HostBackend()
        async with serving(backend) as srv:
            req = exec_req(["echo", "late"])
            c, _ = await SpdyClient.connect(srv.register_exec(req), ["v4.channel.k8s.io"])
            err = c.open({"streamtype": "error"})
            out = c.open({"streamtype": "stdout"})
            await asyncio.sleep(0.3)
            assert backend.exec_calls == 0  # stderr still missing
            c.open({"streamtype": "stderr"})
            assert status_of(await c.read_all(err)) == SUCCESS
            assert await c.read_all(out) == b"late\n"
    run(main())


def test_spdy_stream_creation_timeout_closes():
    async def main():
        async with serving(stream_creation_timeout=0.5) as srv:
            c, _ = await SpdyClient.connect(srv.register_exec(exec_req(["true"])), ["v4.channel.k8s.io"])
            c.open({"streamtype": "error"})
            await c.wait_closed(timeout=5)
            assert c.goaway is not None
    run(main())
