"""The CRI streaming server (exec, attach, port-forward over SPDY/3.1 and WebSocket); see docs/streaming.md."""

from pycri.streaming.backend import Backend, NotFoundError
from pycri.streaming.server import StreamingServer

__all__ = ["Backend", "NotFoundError", "StreamingServer"]
