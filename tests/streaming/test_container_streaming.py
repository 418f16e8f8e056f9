"""Exec, attach and port-forward on real containers: the daemon's Exec/Attach/PortForward RPCs hand out URLs on its
streaming server, and the protocol-level clients (SPDY and WebSocket) drive busybox containers in real pods
(their own network namespace, or the host's)."""

from __future__ import annotations

import asyncio
import os
import socket

import grpc
import pytest

from pycri.api import api_pb2 as cri
from tests.lifecycle.conftest import kubelet, pod_daemon  # noqa: F401 - fixtures
from tests.streaming.client import SpdyClient, WsClient, http_upgrade, port_prefix
from tests.streaming.helpers import run, status_of
from tests.streaming.sessions import open_session

TRANSPORTS = ["spdy", "websocket"]
SUCCESS = {"metadata": {}, "status": "Success"}
HTTPD = "mkdir -p /www && echo {body} > /www/index.html && exec httpd -f -p {port} -h /www"


@pytest.fixture(autouse=True)
def daemon_log_is_clean(pod_daemon):
    """No session may end in a traceback or an error line in the daemon's log."""
    yield
    bad = [e for e in pod_daemon.log_events() if e.get("level") in ("error", "critical") or "exception" in e]
    assert not bad, bad


def exec_url(kubelet, cid: str, cmd: list[str], tty=False, stdin=False, stdout=True, stderr=None):
    req = cri.ExecRequest(container_id=cid, cmd=cmd, tty=tty, stdin=stdin, stdout=stdout,
                          stderr=(not tty) if stderr is None else stderr)
    return kubelet.rt.Exec(req, timeout=10).url, req


def sleeper(kubelet, name="pod", **kw) -> tuple[str, str]:
    sid, pod = kubelet.run_pod(name)
    return sid, kubelet.start(sid, pod, "c", command=["sleep", "3600"], **kw)


def processes(kubelet, cid: str) -> list[str]:
    """Command lines in the container's pid namespace (pod-shared: pause is there too)."""
    out = kubelet.exec(cid, "ps", "-o", "pid,args").stdout.decode().splitlines()[1:]
    return [line.split(None, 1)[1] for line in out if line.strip()]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_exec_echo_hello_and_exit_code_3(kubelet, transport):
    _, cid = sleeper(kubelet)

    async def main():
        url, req = exec_url(kubelet, cid, ["echo", "hello"])
        assert url.startswith("http://127.0.0.1:") and "/exec/" in url
        s = await open_session(url, transport, req)
        out, err, status = await s.finish()
        assert (out, err) == (b"hello\n", b"")
        assert status_of(status) == SUCCESS

        url, req = exec_url(kubelet, cid, ["sh", "-c", "echo out; echo oops >&2; exit 3"])
        s = await open_session(url, transport, req)
        out, err, status = await s.finish()
        assert (out, err) == (b"out\n", b"oops\n")
        st = status_of(status)
        assert st["status"] == "Failure" and st["reason"] == "NonZeroExitCode"
        assert st["details"] == {"causes": [{"reason": "ExitCode", "message": "3"}]}

        # the command really runs in the container: its hostname, its root
        url, req = exec_url(kubelet, cid, ["sh", "-c", "hostname; cat /etc/hostname; ls /bin/busybox"])
        s = await open_session(url, transport, req)
        out, _, status = await s.finish()
        assert out == b"pod\npod\n/bin/busybox\n" and status_of(status) == SUCCESS
    run(main())


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_exec_interactive_shell_with_tty_and_resize(kubelet, transport):
    _, cid = sleeper(kubelet)

    async def main():
        url, req = exec_url(kubelet, cid, ["sh"], tty=True, stdin=True)
        s = await open_session(url, transport, req)
        s.resize(100, 30)
        s.write(b"tty; stty size\n")
        await s.read_until(b"/dev/pts/")
        await s.read_until(b"30 100")
        s.resize(132, 43)
        for _ in range(20):  # the resize is applied asynchronously: ask until it shows
            s.write(b"stty size\n")
            try:
                await asyncio.wait_for(s.read_until(b"43 132"), 0.5)
                break
            except asyncio.TimeoutError:
                continue
        s.write(b"exit 7\n")
        out, err, status = await s.finish()
        assert b"43 132" in out and err == b""
        st = status_of(status)
        assert st["reason"] == "NonZeroExitCode" and st["details"]["causes"][0]["message"] == "7"
    run(main())


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_exec_stdin_eof_ends_cat(kubelet, transport):
    _, cid = sleeper(kubelet)

    async def main():
        url, req = exec_url(kubelet, cid, ["cat"], stdin=True)
        s = await open_session(url, transport, req)
        s.write(b"line one\n")
        await s.read_until(b"line one\n")
        payload = os.urandom(150_000).hex().encode()  # 300 KB: several flow-control windows each way
        s.write(payload)
        s.close_stdin()
        out, err, status = await s.finish()
        assert out == b"line one\n" + payload and err == b""
        assert status_of(status) == SUCCESS
    run(main())


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_attach_to_a_container_with_stdin_and_tty(kubelet, transport):
    sid, pod = kubelet.run_pod("att")
    cid = kubelet.start(sid, pod, "c", command=["sh"], stdin=True, tty=True)

    async def main():
        req = cri.AttachRequest(container_id=cid, stdin=True, stdout=True, tty=True)
        url = kubelet.rt.Attach(req, timeout=10).url
        assert "/attach/" in url
        s = await open_session(url, transport, req)
        s.resize(90, 20)
        s.write(b"echo attached-$((6*7)); stty size\n")
        await s.read_until(b"attached-42")
        await s.read_until(b"20 90")
        s.write(b"exit 0\n")  # the main process ends: the attach ends with it
        out, _, status = await s.finish()
        assert status_of(status) == SUCCESS
    run(main())
    assert kubelet.wait_exited(cid).exit_code == 0


def test_attach_detaches_on_stdin_eof_and_the_container_keeps_running(kubelet):
    sid, pod = kubelet.run_pod("att2")
    cid = kubelet.start(sid, pod, "c", command=["sh"], stdin=True, tty=True)

    async def main():
        for word in (b"first", b"second"):  # a second attach works after the first detached
            req = cri.AttachRequest(container_id=cid, stdin=True, stdout=True, tty=True)
            s = await open_session(kubelet.rt.Attach(req, timeout=10).url, "websocket", req)
            s.write(b"echo " + word + b"-$((1+1))\n")
            await s.read_until(word + b"-2")
            s.close_stdin()
            _, _, status = await s.finish()
            assert status_of(status) == SUCCESS
    run(main())
    assert kubelet.status(cid).state == cri.CONTAINER_RUNNING


def test_attach_stdin_once_closes_the_container_stdin(kubelet):
    """StdinOnce without a tty: the client's EOF closes the container's stdin, the output runs to the exit."""
    sid, pod = kubelet.run_pod("once")
    cid = kubelet.start(sid, pod, "c", command=["sh", "-c", "cat; echo done-after-eof"], stdin=True,
                        stdin_once=True)

    async def main():
        req = cri.AttachRequest(container_id=cid, stdin=True, stdout=True, stderr=True)
        s = await open_session(kubelet.rt.Attach(req, timeout=10).url, "spdy", req)
        s.write(b"through-cat\n")
        await s.read_until(b"through-cat\n")
        s.close_stdin()
        out, _, status = await s.finish()
        assert out == b"through-cat\ndone-after-eof\n" and status_of(status) == SUCCESS
    run(main())
    assert kubelet.wait_exited(cid).exit_code == 0


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_client_hang_up_kills_the_exec_process(kubelet, transport):
    _, cid = sleeper(kubelet)

    async def main():
        url, req = exec_url(kubelet, cid, ["sh", "-c", "echo started; exec sleep 4242"], stdin=True)
        s = await open_session(url, transport, req)
        await s.read_until(b"started")
        assert "sleep 4242" in processes(kubelet, cid)
        s.c.writer.close()  # hang up without a word
    run(main())
    kubelet.until(lambda: "sleep 4242" not in processes(kubelet, cid), timeout=10, what="exec process killed")
    assert kubelet.status(cid).state == cri.CONTAINER_RUNNING  # the container itself is untouched


def test_exec_errors(kubelet):
    _, cid = sleeper(kubelet)
    exited = kubelet.start(*kubelet.run_pod("gone")[:2], "x", command=["true"])
    kubelet.wait_exited(exited)

    with pytest.raises(grpc.RpcError) as e:
        exec_url(kubelet, "no-such-container", ["true"])
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as e:
        exec_url(kubelet, exited, ["true"])
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "not running" in e.value.details()
    with pytest.raises(grpc.RpcError) as e:
        kubelet.rt.Attach(cri.AttachRequest(container_id=exited, stdout=True), timeout=10)
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    with pytest.raises(grpc.RpcError) as e:
        exec_url(kubelet, cid, ["true"], tty=True, stderr=True)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    async def main():
        # a command that does not exist: the launcher's message on the error stream
        url, req = exec_url(kubelet, cid, ["no-such-binary"])
        s = await open_session(url, "spdy", req)
        _, _, status = await s.finish()
        st = status_of(status)
        assert st["status"] == "Failure" and "no-such-binary" in st["message"], st
        # the container stops between the RPC and the connection: a clear message, not a crash
        url, req = exec_url(kubelet, cid, ["true"])
        kubelet.rt.StopContainer(cri.StopContainerRequest(container_id=cid, timeout=1), timeout=30)
        s = await open_session(url, "websocket", req)
        _, _, status = await s.finish()
        st = status_of(status)
        assert st["status"] == "Failure" and f"container {cid} is not running" in st["message"], st
    run(main())


def test_bad_and_reused_tokens_get_404(kubelet):
    _, cid = sleeper(kubelet)

    async def main():
        url, req = exec_url(kubelet, cid, ["true"])
        base, token = url.rsplit("/", 2)[0], url.rsplit("/", 1)[1]
        for bad in (f"{base}/exec/not-a-token", f"{base}/attach/{token}", f"{base}/portforward/{token}"):
            c, res = await SpdyClient.connect(bad, ["v4.channel.k8s.io"])
            assert c is None and res.status == 404, res.body  # (a wrong-kind use spends the token)
        url, req = exec_url(kubelet, cid, ["true"])
        s = await open_session(url, "spdy", req)
        _, _, status = await s.finish()
        assert status_of(status) == SUCCESS
        c, res = await WsClient.connect(url, ["v5.channel.k8s.io"])  # single use
        assert c is None and res.status == 404
    run(main())


async def _spdy_forward(url: str, port: int, payload: bytes, rid: int = 0) -> tuple[bytes, bytes]:
    c, res = await SpdyClient.connect(url, ["portforward.k8s.io"])
    assert res.status == 101, res.body
    try:
        err = c.open({"streamtype": "error", "port": str(port), "requestid": str(rid)})
        data = c.open({"streamtype": "data", "port": str(port), "requestid": str(rid)})
        c.write(data, payload, fin=True)
        return await c.read_all(data), await c.read_all(err)
    finally:
        c.close()


def _pf_url(kubelet, sid: str, *ports: int) -> str:
    return kubelet.rt.PortForward(cri.PortForwardRequest(pod_sandbox_id=sid, port=list(ports)), timeout=10).url


def test_port_forward_into_the_pod_network_namespace(kubelet):
    sid, pod = kubelet.run_pod("pf")
    kubelet.start(sid, pod, "web", command=["sh", "-c", HTTPD.format(body="from-the-pod", port=80)])
    # something else on the host's port 80 would be the wrong answer: make sure nothing is there
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", 80)) != 0

    async def main():
        get = b"GET / HTTP/1.0\r\n\r\n"
        for _ in range(100):  # httpd starting
            body, err = await _spdy_forward(_pf_url(kubelet, sid), 80, get)
            if body:
                break
            await asyncio.sleep(0.1)
        assert body.startswith(b"HTTP/1.") and body.endswith(b"\r\n\r\nfrom-the-pod\n"), (body, err)
        assert err == b""

        # several connections on one SPDY session
        c, _ = await SpdyClient.connect(_pf_url(kubelet, sid), ["portforward.k8s.io"])

        async def one(rid: int) -> bytes:
            e = c.open({"streamtype": "error", "port": "80", "requestid": str(rid)})
            d = c.open({"streamtype": "data", "port": "80", "requestid": str(rid)})
            c.write(d, get, fin=True)
            got = await c.read_all(d)
            assert await c.read_all(e) == b""
            return got

        results = await asyncio.gather(*(one(i) for i in range(6)))
        assert all(r.endswith(b"from-the-pod\n") for r in results)
        c.close()

        # WebSocket (v4.channel.k8s.io): data channel 0, error channel 1, each prefixed with the port
        ws, res = await WsClient.connect(_pf_url(kubelet, sid) + "?port=80", ["v4.channel.k8s.io"])
        assert res.status == 101
        await ws.read_until(1, port_prefix(80))
        ws.send(0, get)
        await ws.read_until(0, b"from-the-pod\n")
        ws.writer.close()
        await ws.wait_closed()

        # a closed port: the connect error goes to the error stream
        body, err = await _spdy_forward(_pf_url(kubelet, sid), 81, get)
        assert body == b"" and b"failed to connect to localhost:81 inside the network namespace" in err, err

        # a port that is open on the host's 127.0.0.1 only: not reachable from the pod's namespace
        host = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
        try:
            host_port = host.sockets[0].getsockname()[1]
            body, err = await _spdy_forward(_pf_url(kubelet, sid), host_port, get)
            assert body == b"" and b"Connection refused" in err, err
        finally:
            host.close()
    run(main())


def test_socket_in_netns_errors_leave_the_caller_where_it_was(tmp_path):
    from runtime.host.netns_socket import NetnsError, socket_in_netns

    before = os.readlink("/proc/thread-self/ns/net")
    with pytest.raises(NetnsError, match="cannot open network namespace"):
        socket_in_netns(str(tmp_path / "missing"))
    with pytest.raises(NetnsError, match="cannot enter network namespace"):
        socket_in_netns("/proc/self/ns/uts")  # not a network namespace: EINVAL
    with socket_in_netns(f"/proc/{os.getpid()}/ns/net") as s:  # our own namespace, by path
        s.bind(("127.0.0.1", 0))
    assert os.readlink("/proc/thread-self/ns/net") == before


def test_port_forward_in_a_host_network_pod(kubelet):
    opts = cri.NamespaceOption(network=cri.NamespaceMode.NODE)
    linux = cri.LinuxPodSandboxConfig(security_context=cri.LinuxSandboxSecurityContext(namespace_options=opts))
    sid, pod = kubelet.run_pod("hostpf", linux=linux)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sc = cri.LinuxContainerSecurityContext(namespace_options=opts)
    kubelet.start(sid, pod, "web", command=["sh", "-c", HTTPD.format(body="from-the-host-netns", port=port)],
                  linux=cri.LinuxContainerConfig(security_context=sc))

    async def main():
        for _ in range(100):
            body, err = await _spdy_forward(_pf_url(kubelet, sid), port, b"GET / HTTP/1.0\r\n\r\n")
            if body:
                break
            await asyncio.sleep(0.1)
        assert body.endswith(b"from-the-host-netns\n"), (body, err)
    run(main())
    # and the same port is really the host's
    _, _, res = run(http_upgrade(f"http://127.0.0.1:{port}/", []))
    assert res.status == 200


def test_port_forward_errors(kubelet):
    with pytest.raises(grpc.RpcError) as e:
        _pf_url(kubelet, "no-such-pod", 80)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    sid, _ = kubelet.run_pod("stopped")
    url = _pf_url(kubelet, sid, 80)
    kubelet.rt.StopPodSandbox(cri.StopPodSandboxRequest(pod_sandbox_id=sid), timeout=60)
    with pytest.raises(grpc.RpcError) as e:
        _pf_url(kubelet, sid, 80)
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION

    async def main():  # the URL handed out before the stop: the error stream says why
        body, err = await _spdy_forward(url, 80, b"x")
        assert body == b"" and b"is not ready" in err, err
    run(main())
