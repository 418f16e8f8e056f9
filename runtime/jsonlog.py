"""A tiny structured logger for the monitor: one JSON object a line, structlog-like calls.

structlog costs ~100 ms to import here (it pulls in asyncio) and ~1 ms more per fork of every
process that imported it; monitors fork on the container hot path, so they use this instead.
"""
from __future__ import annotations

import json
import os
import sys
import time
import traceback

_stream = sys.stderr
# debug lines (an exec of every probe, ...) are written only when the monitor's environment asks for them: the
# daemon's, when it was started with PYCRI_MONITOR_DEBUG=1 (docs/operations.md, "Logs")
_debug = os.environ.get("PYCRI_MONITOR_DEBUG") == "1"


def configure(path: str | None) -> None:
    """Send log lines to path (appended, line-buffered) or stderr."""
    global _stream
    if path:  # (root's alone: what a pod's containers did)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        _stream = os.fdopen(fd, "a", buffering=1)  # noqa: SIM115 - lives with the process
    else:
        _stream = sys.stderr
# debug lines (an exec of every probe, ...) are written only when the monitor's environment asks for them: the
# daemon's, when it was started with PYCRI_MONITOR_DEBUG=1 (docs/operations.md, "Logs")
_debug = os.environ.get("PYCRI_MONITOR_DEBUG") == "1"


class Logger:
    def __init__(self, context: dict):
        self._context = context

    def bind(self, **kw) -> "Logger":
        return Logger({**self._context, **kw})

    def _log(self, level: str, event: str, kw: dict) -> None:
        rec = {"timestamp": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + f".{time.time_ns() % 10**9 // 1000:06d}Z",
               "level": level, "event": event, **self._context, **kw}
        try:
            _stream.write(json.dumps(rec, default=str) + "\n")
        except (OSError, ValueError):
            pass  # logging must never take the monitor down

    def debug(self, event: str, **kw) -> None:
        if _debug:
            self._log("debug", event, kw)

    def info(self, event: str, **kw) -> None:
        self._log("info", event, kw)

    def warning(self, event: str, **kw) -> None:
        self._log("warning", event, kw)

    def error(self, event: str, **kw) -> None:
        self._log("error", event, kw)

    def exception(self, event: str, **kw) -> None:
        self._log("error", event, {**kw, "exception": traceback.format_exc()})


def get_logger(name: str = "") -> Logger:
    return Logger({"logger": name} if name else {})
