"""Just enough of a kube-apiserver + kubelet for `kubectl exec/attach/port-forward` to reach the streaming
server: discovery and one pod on GET; for the pod's exec/attach/portforward subresources it does what kubelet
does (turn the query into a CRI request, register it, get a URL) and then splices the connection, unchanged
except for the request path, to that URL, so kubectl speaks SPDY or WebSocket directly to the server under test."""

from __future__ import annotations

import asyncio
import json
from urllib.parse import parse_qs, urlsplit

from pycri.api import api_pb2

POD = {
    "apiVersion": "v1", "kind": "Pod",
    "metadata": {"name": "foo", "namespace": "default", "uid": "1234"},
    "spec": {"containers": [{"name": "main", "image": "busybox"}]},
    "status": {"phase": "Running", "containerStatuses": [{"name": "main", "ready": True, "restartCount": 0,
                                                          "image": "busybox", "imageID": "", "containerID": "x://c1",
                                                          "state": {"running": {}}}]},
}
RESOURCES = {
    "kind": "APIResourceList", "groupVersion": "v1",
    "resources": [{"name": "pods", "singularName": "pod", "namespaced": True, "kind": "Pod",
                   "verbs": ["get", "list"], "shortNames": ["po"]},
                  {"name": "pods/exec", "singularName": "", "namespaced": True, "kind": "PodExecOptions",
                   "verbs": ["create", "get"]},
                  {"name": "pods/attach", "singularName": "", "namespaced": True, "kind": "PodAttachOptions",
                   "verbs": ["create", "get"]},
                  {"name": "pods/portforward", "singularName": "", "namespaced": True,
                   "kind": "PodPortForwardOptions", "verbs": ["create", "get"]}],
}


def _flag(q, name: str) -> bool:
    return q.get(name, ["false"])[0].lower() in ("true", "1")


class FakeApiServer:
    def __init__(self, streaming_server, container_id: str = "c1", pod_sandbox_id: str = "pod1") -> None:
        self.streaming = streaming_server
        self.container_id = container_id
        self.pod_sandbox_id = pod_sandbox_id
        self.upgrades: list[tuple[str, str]] = []  # (subresource, Upgrade header) seen
        self._server = None
        self.port = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._conn, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        self._server.close()
        await self._server.wait_closed()

    def _register(self, sub: str, query: dict) -> str:
        if sub == "exec":
            return self.streaming.register_exec(api_pb2.ExecRequest(
                container_id=self.container_id, cmd=query.get("command", []), tty=_flag(query, "tty"),
                stdin=_flag(query, "stdin"), stdout=_flag(query, "stdout"), stderr=_flag(query, "stderr")))
        if sub == "attach":
            return self.streaming.register_attach(api_pb2.AttachRequest(
                container_id=self.container_id, tty=_flag(query, "tty"), stdin=_flag(query, "stdin"),
                stdout=_flag(query, "stdout"), stderr=_flag(query, "stderr")))
        return self.streaming.register_portforward(api_pb2.PortForwardRequest(pod_sandbox_id=self.pod_sandbox_id))

    async def _conn(self, reader, writer) -> None:
        try:
            buf = b""
            while True:
                while b"\r\n\r\n" not in buf:
                    data = await reader.read(65536)
                    if not data:
                        return
                    buf += data
                head, buf = buf.split(b"\r\n\r\n", 1)
                lines = head.decode("latin-1").split("\r\n")
                method, target, _ = lines[0].split(" ", 2)
                headers = {}
                for line in lines[1:]:
                    k, v = line.split(":", 1)
                    headers[k.strip().lower()] = v.strip()
                n = int(headers.get("content-length", "0"))
                while len(buf) < n:
                    buf += await reader.read(65536)
                buf = buf[n:]
                u = urlsplit(target)
                sub = u.path.rsplit("/", 1)[-1]
                if u.path.startswith("/api/v1/namespaces/default/pods/foo/") and sub in ("exec", "attach",
                                                                                         "portforward"):
                    self.upgrades.append((sub, headers.get("upgrade", "")))
                    await self._splice(sub, parse_qs(u.query), lines, buf, reader, writer)
                    return
                await self._answer(writer, u.path)
        finally:
            writer.close()

    async def _answer(self, writer, path: str) -> None:
        routes = {"/api": {"kind": "APIVersions", "versions": ["v1"]},
                  "/apis": {"kind": "APIGroupList", "apiVersion": "v1", "groups": []},
                  "/api/v1": RESOURCES,
                  "/api/v1/namespaces/default/pods/foo": POD}
        body = routes.get(path)
        status = "200 OK" if body is not None else "404 Not Found"
        data = json.dumps(body if body is not None else {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                                         "reason": "NotFound", "code": 404}).encode()
        writer.write(f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n"
                     .encode() + data)
        await writer.drain()

    async def _splice(self, sub, query, lines, rest, reader, writer) -> None:
        url = urlsplit(self._register(sub, query))
        method, target, version = lines[0].split(" ", 2)
        lines = [f"{method} {url.path}?{urlsplit(target).query} {version}"] + lines[1:]
        r2, w2 = await asyncio.open_connection(url.hostname, url.port)
        w2.write(("\r\n".join(lines) + "\r\n\r\n").encode() + rest)

        async def pipe(r, w):
            try:
                while data := await r.read(65536):
                    w.write(data)
                    await w.drain()
                if w.can_write_eof():
                    w.write_eof()
            except (ConnectionError, OSError):
                pass
        await asyncio.gather(pipe(reader, w2), pipe(r2, writer))
        w2.close()
