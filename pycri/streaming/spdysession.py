"""What runs on an upgraded SPDY connection: collect the client's streams by `streamtype`, then run an exec/attach
(remotecommand) or any number of port forwards (one per data+error pair sharing a `requestid`)."""

from __future__ import annotations

import asyncio

from pycri import log
from pycri.streaming import portforward, remotecommand, spdy
from pycri.streaming.backend import Backend
from pycri.streaming.spdyconn import SpdyConnection, SpdyStream

_log = log.get("streaming.spdy")

REMOTECOMMAND_TYPES = {"error", "stdin", "stdout", "stderr", "resize"}


async def serve_remotecommand(conn: SpdyConnection, req: remotecommand.Request, backend: Backend, protocol: str,
                              creation_timeout: float) -> None:
    want = remotecommand.expected_stream_types(req, protocol)
    got: dict[str, SpdyStream] = {}
    complete = asyncio.Event()

    def on_stream(s: SpdyStream) -> None:
        kind = s.header("streamtype")
        if kind not in REMOTECOMMAND_TYPES or kind in got:
            _log.info("unexpected stream, resetting", peer=conn.peer, streamtype=kind, stream=s.id)
            conn.reset_stream(s, spdy.REFUSED_STREAM)
            return
        got[kind] = s
        if want <= got.keys():
            complete.set()

    conn.on_stream = on_stream
    reader = asyncio.create_task(conn.serve())
    waiter = asyncio.create_task(complete.wait())
    await asyncio.wait({reader, waiter}, timeout=creation_timeout, return_when=asyncio.FIRST_COMPLETED)
    if not complete.is_set():
        waiter.cancel()
        why = conn.error or ("client hung up" if reader.done() else "timed out waiting for client to create streams")
        _log.warning("remotecommand streams not created", peer=conn.peer, missing=sorted(want - got.keys()),
                     reason=why)
        await conn.close()
        await reader
        return
    streams = remotecommand.Streams(
        error=got["error"], stdin=got["stdin"].input if "stdin" in got else None, stdout=got.get("stdout"),
        stderr=got.get("stderr"), resize=got["resize"].input if "resize" in got else None)
    session = asyncio.create_task(remotecommand.run(req, backend, streams, protocol, conn.peer))
    done, _ = await asyncio.wait({reader, session}, return_when=asyncio.FIRST_COMPLETED)
    if session not in done:  # connection ended first (client gone, idle, protocol error): stop the backend
        session.cancel()
        await asyncio.gather(session, return_exceptions=True)
    await conn.close()
    await reader


class _Pair:
    def __init__(self) -> None:
        self.data: SpdyStream | None = None
        self.error: SpdyStream | None = None


async def serve_portforward(conn: SpdyConnection, pod_sandbox_id: str, allowed_ports: set[int], backend: Backend,
                            creation_timeout: float) -> None:
    pairs: dict[str, _Pair] = {}
    tasks: set[asyncio.Task] = set()

    def on_stream(s: SpdyStream) -> None:
        kind = s.header("streamtype")
        if kind not in ("data", "error"):
            _log.info("unexpected port-forward stream, resetting", peer=conn.peer, streamtype=kind)
            conn.reset_stream(s, spdy.REFUSED_STREAM)
            return
        # Old clients send no requestid: kubelet pairs data stream N with error stream N-2.
        rid = s.header("requestid") or str(s.id - 2 if kind == "data" else s.id)
        pair = pairs.setdefault(rid, _Pair())
        if getattr(pair, kind) is not None:
            conn.reset_stream(s, spdy.PROTOCOL_ERROR)
            return
        setattr(pair, kind, s)
        if pair.data is not None and pair.error is not None:
            del pairs[rid]
            t = asyncio.create_task(_run_pair(pair.data, pair.error))
        else:
            t = asyncio.create_task(_expire(rid, pair))
        tasks.add(t)
        t.add_done_callback(tasks.discard)

    async def _expire(rid: str, pair: _Pair) -> None:
        await asyncio.sleep(creation_timeout)
        if pairs.get(rid) is pair:
            del pairs[rid]
            _log.warning("port-forward stream pair incomplete, resetting", peer=conn.peer, requestid=rid)
            for s in (pair.data, pair.error):
                if s is not None:
                    conn.reset_stream(s, spdy.CANCEL)

    async def _run_pair(data: SpdyStream, error: SpdyStream) -> None:
        try:
            port = portforward.parse_port(data.header("port"))
            if allowed_ports and port not in allowed_ports:
                raise ValueError(f"port {port} was not in the port-forward request {sorted(allowed_ports)}")
        except ValueError as exc:
            data.input.discard()
            await remotecommand.quiet(error.write(str(exc).encode()))
            await remotecommand.quiet(error.close())
            await remotecommand.quiet(data.close())
            return
        await portforward.forward(backend, pod_sandbox_id, port, data.input, data, error, conn.peer)

    conn.on_stream = on_stream
    try:
        await conn.serve()
    finally:
        for t in list(tasks):
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await conn.close(linger=0.5)
