"""What runs on an upgraded WebSocket: exec/attach on channels 0-4, or port forwards on (data, error) channel
pairs 2i, 2i+1 whose first server message is the port (2 bytes, little endian)."""

from __future__ import annotations

import asyncio
import struct

from pycri.streaming import portforward, remotecommand, websocket
from pycri.streaming.backend import Backend
from pycri.streaming.pipe import InboundBuffer

STDIN, STDOUT, STDERR, ERROR, RESIZE = 0, 1, 2, 3, 4

# WebSocket protocol -> the remotecommand semantics it carries (status format)
_SEMANTICS = {websocket.V5: remotecommand.V5, websocket.V4: remotecommand.V4, websocket.V4_BASE64: remotecommand.V4,
              websocket.V1: remotecommand.V1, websocket.BASE64: remotecommand.V1, "": remotecommand.V1}


def remotecommand_inputs(req: remotecommand.Request) -> dict[int, InboundBuffer]:
    inputs = {}
    if req.stdin:
        inputs[STDIN] = InboundBuffer()
    if req.tty:
        inputs[RESIZE] = InboundBuffer()
    return inputs


async def serve_remotecommand(ws: websocket.WsChannels, req: remotecommand.Request, backend: Backend) -> None:
    streams = remotecommand.Streams(
        error=ws.writer(ERROR), stdin=ws.inputs.get(STDIN),
        stdout=ws.writer(STDOUT) if req.stdout else None,
        stderr=ws.writer(STDERR) if req.stderr and not req.tty else None,
        resize=ws.inputs.get(RESIZE))
    reader = asyncio.create_task(ws.serve())
    session = asyncio.create_task(remotecommand.run(req, backend, streams, _SEMANTICS[ws.protocol], ws.peer))
    done, _ = await asyncio.wait({reader, session}, return_when=asyncio.FIRST_COMPLETED)
    if session not in done:
        session.cancel()
        await asyncio.gather(session, return_exceptions=True)
    await ws.close()
    await reader


def portforward_inputs(ports: list[int]) -> dict[int, InboundBuffer]:
    return {2 * i: InboundBuffer() for i in range(len(ports))}


async def serve_portforward(ws: websocket.WsChannels, pod_sandbox_id: str, ports: list[int],
                            backend: Backend) -> None:
    for i, port in enumerate(ports):
        prefix = struct.pack("<H", port)
        await ws.send_channel(2 * i, prefix)
        await ws.send_channel(2 * i + 1, prefix)
    reader = asyncio.create_task(ws.serve())
    forwards = [asyncio.create_task(portforward.forward(backend, pod_sandbox_id, port, ws.inputs[2 * i],
                                                        ws.writer(2 * i), ws.writer(2 * i + 1), ws.peer))
                for i, port in enumerate(ports)]
    everything = asyncio.gather(*forwards, return_exceptions=True)
    done, _ = await asyncio.wait({reader, everything}, return_when=asyncio.FIRST_COMPLETED)
    if everything not in done:
        everything.cancel()
        await asyncio.gather(everything, return_exceptions=True)
    await ws.close()
    await reader
