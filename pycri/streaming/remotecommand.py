"""Exec and attach sessions, independent of the transport (SPDY streams or WebSocket channels): run the backend
with the client's streams, feed it resize events, then report the outcome on the error stream.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any, Protocol

from pycri import log
from pycri.streaming import status
from pycri.streaming.backend import Backend, NotFoundError
from pycri.streaming.pipe import InboundBuffer

_log = log.get("streaming.remotecommand")

# Protocols newest first: the server's preference when negotiating.
V5, V4, V3, V2, V1 = "v5.channel.k8s.io", "v4.channel.k8s.io", "v3.channel.k8s.io", "v2.channel.k8s.io", \
    "channel.k8s.io"
SPDY_PROTOCOLS = [V5, V4, V3, V2, V1]


class Output(Protocol):
    async def write(self, data: bytes) -> None: ...

    async def close(self) -> None: ...


@dataclass
class Streams:
    """What the client opened. `error` is required; the rest per the request's flags."""
    error: Output
    stdin: InboundBuffer | None = None
    stdout: Output | None = None
    stderr: Output | None = None
    resize: InboundBuffer | None = None


@dataclass
class Request:
    kind: str  # "exec" or "attach"
    container_id: str
    cmd: list[str]
    tty: bool
    stdin: bool
    stdout: bool
    stderr: bool


def expected_stream_types(req: Request, protocol: str) -> set[str]:
    """The stream types kubelet waits for before starting (remotecommand v1-v5 over SPDY)."""
    want = {"error"}
    if req.stdin:
        want.add("stdin")
    if req.stdout:
        want.add("stdout")
    if req.stderr and not (req.tty and protocol != V1):
        want.add("stderr")
    if req.tty and protocol in (V3, V4, V5):
        want.add("resize")
    return want


async def _pump_resize(source: InboundBuffer, queue: asyncio.Queue, peer: str) -> None:
    """Parse a stream of JSON TerminalSize objects ({"Width":..,"Height":..}) into (width, height) tuples."""
    decoder = json.JSONDecoder()
    buf = ""
    while True:
        chunk = await source.read(4096)
        if not chunk:
            return
        buf += chunk.decode("utf-8", "replace")
        while True:
            buf = buf.lstrip()
            if not buf:
                break
            try:
                obj, end = decoder.raw_decode(buf)
            except json.JSONDecodeError:
                if len(buf) > 4096:
                    _log.warning("bad resize stream, ignoring further resize events", peer=peer)
                    source.discard()
                    return
                break  # incomplete object: wait for more
            buf = buf[end:]
            size = _terminal_size(obj)
            if size is None:
                _log.warning("bad resize event", peer=peer, event=str(obj)[:200])
                continue
            queue.put_nowait(size)


def _terminal_size(obj: Any) -> tuple[int, int] | None:
    if not isinstance(obj, dict):
        return None
    w, h = obj.get("Width"), obj.get("Height")
    if not isinstance(w, int) or not isinstance(h, int) or not (0 <= w < 65536 and 0 <= h < 65536):
        return None
    return w, h


async def run(req: Request, backend: Backend, streams: Streams, protocol: str, peer: str = "") -> None:
    """Run the exec/attach, then write the status and close every stream we write to."""
    resize_q: asyncio.Queue[tuple[int, int]] = asyncio.Queue()
    pump = None
    if streams.resize is not None:
        pump = asyncio.create_task(_pump_resize(streams.resize, resize_q, peer))
    code: int | None = None
    error: str | None = None
    try:
        if req.kind == "exec":
            code = await backend.exec(req.container_id, req.cmd, req.tty, streams.stdin, streams.stdout,
                                      streams.stderr, resize_q)
        else:
            await backend.attach(req.container_id, req.tty, streams.stdin, streams.stdout, streams.stderr, resize_q)
            code = 0
    except NotFoundError as exc:
        error = f"container not found: {exc}"
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # noqa: BLE001 - any backend failure is reported to the client
        error = f"error {'executing command' if req.kind == 'exec' else 'attaching'} in container: {exc}"
        _log.warning("streaming backend failed", kind=req.kind, container_id=req.container_id, error=str(exc))
    finally:
        if pump is not None:
            pump.cancel()
        for buf in (streams.stdin, streams.resize):
            if buf is not None:
                buf.discard()
    _log.info("streaming session ended", kind=req.kind, container_id=req.container_id, exit_code=code,
              error=error, protocol=protocol, peer=peer)
    for out in (streams.stdout, streams.stderr):
        if out is not None:
            await quiet(out.close())
    if protocol in (V4, V5):
        if error is not None:
            body = status.internal_error(error)
        elif code:
            body = status.exit_code(req.cmd, code)
        else:
            body = status.success()
    else:
        body = status.legacy_text(code, error, req.cmd)
    if body:
        await quiet(streams.error.write(body))
    await quiet(streams.error.close())


async def quiet(aw) -> None:
    """The client may have gone: writing its status is best effort."""
    try:
        await aw
    except Exception as exc:  # noqa: BLE001
        _log.debug("write to a gone client", error=str(exc))
