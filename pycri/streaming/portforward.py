"""Port-forward sessions: one backend.port_forward call per (data, error) stream pair, shared by both transports."""

from __future__ import annotations

import asyncio

from pycri import log
from pycri.streaming.backend import Backend, NotFoundError
from pycri.streaming.pipe import InboundBuffer
from pycri.streaming.remotecommand import Output, quiet

_log = log.get("streaming.portforward")

PROTOCOL_V1 = "portforward.k8s.io"


def parse_port(value: str | None) -> int:
    """A port header/query value; ValueError with the message kubelet uses for bad ones."""
    if value is None or value == "":
        raise ValueError("port header is required")
    try:
        port = int(value, 10)
    except ValueError:
        raise ValueError(f"unable to parse {value!r} as a port") from None
    if not 0 < port < 65536:
        raise ValueError(f"port {port} must be in 1-65535")
    return port


async def forward(backend: Backend, pod_sandbox_id: str, port: int, reader: InboundBuffer, data: Output,
                  error: Output, peer: str = "") -> None:
    """Run one forward; a failure goes to the error stream as text (what kubectl prints), then both close."""
    message = None
    try:
        await backend.port_forward(pod_sandbox_id, port, reader, data)
    except asyncio.CancelledError:
        raise
    except NotFoundError as exc:
        message = f"error forwarding port {port} to pod {pod_sandbox_id}: pod sandbox not found: {exc}"
    except Exception as exc:  # noqa: BLE001 - the client is told why
        message = f"error forwarding port {port} to pod {pod_sandbox_id}: {exc}"
    finally:
        reader.discard()  # nobody reads this input any more: do not let it hold up the connection
    _log.info("port forward ended", pod_sandbox_id=pod_sandbox_id, port=port, error=message, peer=peer)
    if message:
        await quiet(error.write(message.encode()))
    await quiet(data.close())
    await quiet(error.close())
