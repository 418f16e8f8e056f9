"""Interop with the real Go client stack: kubectl (client-go remotecommand over WebSocket v5 and SPDY, port-forward
over SPDY and over SPDY-in-WebSocket) talks to the server through a fake apiserver that only
splices connections (tests/streaming/fake_apiserver.py). Skipped when kubectl is not installed."""

from __future__ import annotations

import asyncio
import os
import shutil

import pytest

from tests.streaming.fake_apiserver import FakeApiServer
from tests.streaming.helpers import run, serving
from tests.streaming.hostbackend import HostBackend, HostContainer
from tests.streaming.test_portforward import echo_server

pytestmark = pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")

MODES = {"websocket": {"KUBECTL_REMOTE_COMMAND_WEBSOCKETS": "true"},
         "spdy": {"KUBECTL_REMOTE_COMMAND_WEBSOCKETS": "false"}}


async def kubectl(api: FakeApiServer, *args: str, stdin: bytes | None = None, env: dict | None = None):
    proc = await asyncio.create_subprocess_exec(
        "kubectl", f"--server=http://127.0.0.1:{api.port}", "--request-timeout=20s", *args,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env=dict(os.environ, KUBECONFIG="/dev/null", **(env or {})))
    out, err = await asyncio.wait_for(proc.communicate(stdin), 60)
    return proc.returncode, out, err


@pytest.mark.parametrize("mode", MODES)
def test_kubectl_exec(mode):
    async def main():
        async with serving() as srv:
            api = FakeApiServer(srv)
            await api.start()
            try:
                rc, out, err = await kubectl(api, "exec", "foo", "--", "sh", "-c", "echo hello; echo oops >&2; exit 3",
                                             env=MODES[mode])
                assert (rc, out) == (3, b"hello\n"), err
                assert b"oops\n" in err and b"command terminated with exit code 3" in err
                payload = os.urandom(300_000)
                rc, out, err = await kubectl(api, "exec", "-i", "foo", "--", "cat", stdin=payload, env=MODES[mode])
                assert rc == 0 and out == payload, err
                assert {u for _, u in api.upgrades} == {"websocket" if mode == "websocket" else "SPDY/3.1"}
            finally:
                await api.stop()
    run(main(), timeout=120)


def test_kubectl_attach():
    async def main():
        backend = HostBackend()
        c = HostContainer(["sh", "-c", "read l; echo got:$l"])
        await c.start()
        backend.containers["c1"] = c
        try:
            async with serving(backend) as srv:
                api = FakeApiServer(srv)
                await api.start()
                try:
                    rc, out, err = await kubectl(api, "attach", "-i", "foo", stdin=b"ping\n")
                    assert rc == 0 and b"got:ping" in out, err
                finally:
                    await api.stop()
        finally:
            await c.stop()
    run(main(), timeout=120)


@pytest.mark.parametrize("websockets", ["false", "true"])
def test_kubectl_port_forward(websockets):
    async def main():
        async with echo_server() as echo_port, serving() as srv:
            api = FakeApiServer(srv)
            await api.start()
            proc = await asyncio.create_subprocess_exec(
                "kubectl", f"--server=http://127.0.0.1:{api.port}", "port-forward", "--address", "127.0.0.1",
                "pod/foo", f"0:{echo_port}", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                env=dict(os.environ, KUBECONFIG="/dev/null", KUBECTL_PORT_FORWARD_WEBSOCKETS=websockets))
            try:
                line = await asyncio.wait_for(proc.stdout.readline(), 30)
                assert line.startswith(b"Forwarding from 127.0.0.1:"), line
                local = int(line.split(b"127.0.0.1:")[1].split()[0])

                async def one(i: int) -> None:
                    r, w = await asyncio.open_connection("127.0.0.1", local)
                    data = bytes([i]) * 200_000
                    w.write(data)
                    await w.drain()
                    assert await asyncio.wait_for(r.readexactly(len(data)), 30) == data
                    w.close()
                await asyncio.gather(*(one(i) for i in range(4)))
                # WebSocket on: SPDY tunnelled in WebSocket (SPDY/3.1+portforward.k8s.io), no fallback needed
                want = "websocket" if websockets == "true" else "SPDY/3.1"
                assert {u for _, u in api.upgrades} == {want}
            finally:
                proc.terminate()
                await proc.wait()
                await api.stop()
    run(main(), timeout=120)
