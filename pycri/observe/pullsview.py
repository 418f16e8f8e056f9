"""`pycri images pulls`: pulls in flight, read from the daemon's status socket (GET /pulls) and shown as a table.

On a terminal the table is redrawn every `interval` seconds (like `watch`) until Ctrl-C; otherwise it is printed
once, so scripts and `| grep` work.
"""

from __future__ import annotations

import json
import socket
import sys
import time
from pathlib import Path


class StatusUnavailable(Exception):
    """The daemon's status socket cannot be reached."""


def fetch(path: Path, timeout: float = 5.0) -> dict:
    """GET /pulls on the unix socket (HTTP/1.1, one request, the server closes)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        try:
            s.connect(str(path))
        except OSError as exc:
            raise StatusUnavailable(f"cannot reach the daemon's status socket {path}: {exc.strerror or exc} "
                                    "(is pycri running with this config?)") from None
        s.sendall(b"GET /pulls HTTP/1.1\r\nHost: pycri\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line = head.split(b"\r\n", 1)[0].decode("latin-1")
    if " 200 " not in status_line + " ":
        raise StatusUnavailable(f"{path}: {status_line or 'no answer'}")
    return json.loads(body)


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def _short(digest: str) -> str:
    return digest.split(":", 1)[-1][:12]


def render(answer: dict, now: float | None = None) -> str:
    """The listing: one line per pull, then one per layer with its phase, bytes done/total and rate."""
    pulls = answer.get("pulls") or []
    if not pulls:
        return "no pulls in flight\n"
    lines = []
    for p in pulls:
        total = p["total_bytes"]
        pct = f"{p['done_bytes'] * 100 // total}%" if total else "-"
        lines.append(f"{p['image']}  {p['phase']}  {_size(p['done_bytes'])}/{_size(total)} ({pct})  "
                     f"{_size(p['rate_bytes_per_second'])}/s  {p['elapsed_seconds']:.0f}s")
        for layer in p["layers"]:
            extra = ""
            if layer["phase"] == "downloading" and layer["idle_seconds"] >= 2:
                extra = f"  no data for {layer['idle_seconds']:.0f}s"
            rate = f"{_size(layer['rate_bytes_per_second'])}/s" if layer["phase"] == "downloading" else ""
            lines.append(f"  layer {layer['index']:<3} {_short(layer['digest'])}  {layer['phase']:<11} "
                         f"{_size(layer['done_bytes']):>10} / {_size(layer['total_bytes']):<10} {rate}{extra}".rstrip())
    return "\n".join(lines) + "\n"


def run(path: Path, interval: float, watch: bool | None = None) -> int:
    """Print the pulls once, or redraw them until interrupted when stdout is a terminal."""
    watch = sys.stdout.isatty() if watch is None else watch
    try:
        if not watch:
            sys.stdout.write(render(fetch(path)))
            return 0
        while True:
            text = render(fetch(path))
            stamp = time.strftime("%H:%M:%S")
            sys.stdout.write(f"\x1b[H\x1b[2Jpulls in flight (every {interval:g}s, Ctrl-C to quit)  {stamp}\n\n{text}")
            sys.stdout.flush()
            time.sleep(interval)
    except StatusUnavailable as exc:
        print(f"pycri: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
