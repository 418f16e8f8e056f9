"""The HTTP/1.1 request head reading and plain answers that the daemon's two HTTP servers share: the streaming
server (pycri/streaming/server.py) and the info server of the metrics and status pages
(pycri/observe/infoserver.py). Both run in the event loop on h11, one request per connection."""

from __future__ import annotations

import asyncio

import h11

from pycri import log

_log = log.get("http")

MAX_HEAD = 16 * 1024  # bytes of a request head (line and headers): more is a protocol error


def connection() -> h11.Connection:
    return h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)


async def read_request(conn: h11.Connection, reader: asyncio.StreamReader, chunk: int = 16384
                       ) -> h11.Request | None:
    """The request head, or None when the client closed the connection without sending one. Raises
    h11.RemoteProtocolError for a malformed or oversized head, ConnectionError as the reader does."""
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            data = await reader.read(chunk)
            conn.receive_data(data)
            if not data and conn.their_state == h11.IDLE:
                return None
            continue
        if isinstance(event, h11.Request):
            return event
        return None  # h11.ConnectionClosed: nothing else comes before a request


async def respond(conn: h11.Connection, writer: asyncio.StreamWriter, status: int, content_type: str, body: bytes,
                  headers: list[tuple[str, str]] | None = None, head_only: bool = False) -> None:
    """A whole answer with `Connection: close`; a client gone meanwhile is logged at debug level only."""
    hdrs = [("Content-Type", content_type), ("Content-Length", str(len(body))), ("Connection", "close")]
    try:
        writer.write(conn.send(h11.Response(status_code=status, headers=hdrs + (headers or []))))
        if not head_only:
            writer.write(conn.send(h11.Data(data=body)))
        writer.write(conn.send(h11.EndOfMessage()))
        await writer.drain()
    except (h11.LocalProtocolError, ConnectionError) as exc:
        _log.debug("could not send the answer", status=status, error=str(exc))
