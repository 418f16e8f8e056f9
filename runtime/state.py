"""On-disk state a reader can trust without the monitor.

<state_dir>/monitor.sock, monitor.json {pid, start_time}
<state_dir>/<id>/state.json {id, pid, start_time, status, bundle, created_at, started_at, cgroup, log_path}
<state_dir>/<id>/exit.json  {exit_code, signal, finished_at, oom_killed}
Files are replaced atomically (write + rename).
"""
from __future__ import annotations

import json
import os
import re

from runtime.host import linux

SOCKET_NAME = "monitor.sock"  # the monitor's socket in its state dir

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def check_id(cid) -> str:
    if not isinstance(cid, str) or not _ID.match(cid):
        raise ValueError(f"invalid container id {cid!r}")
    return cid


def write_json(path: str, data: dict) -> None:
    """Write data as JSON at path, before the change is acknowledged. A new file is written in place (a
    reader may find it empty for an instant and then treats it as absent, as before it existed); an existing
    one is replaced atomically (write + rename), so a reader sees the old or the new content, never a mix.
    No fsync: the state dir is volatile (/run), and a process crash cannot lose a completed write()."""
    raw = json.dumps(data).encode()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        pass
    else:
        try:
            os.write(fd, raw)
        finally:
            os.close(fd)
        return
    tmp = f"{path}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, raw)
    finally:
        os.close(fd)
    os.rename(tmp, path)


def write_private(path: str, data: bytes) -> None:
    """Replace path with data, mode 0600 from the start (a bundle's config.json holds the container's env:
    secrets): written to a temporary file beside it, then renamed over it."""
    head, name = os.path.split(path)
    tmp = os.path.join(head, f".{name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        os.fchmod(fd, 0o600)  # (a leftover of the same name kept its mode)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)
    os.replace(tmp, path)


def read_json(path: str) -> dict | None:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def container_status(state_dir: str, cid: str) -> dict:
    """State of a container from disk alone: status is created/running/stopped/unknown.

    A container whose process is gone without an exit file (its monitor died) reports stopped with
    exit_code None and reason "monitor-lost".
    """
    check_id(cid)
    base = os.path.join(state_dir, cid)
    st = read_json(os.path.join(base, "state.json"))
    if st is None:
        return {"id": cid, "status": "unknown"}
    ex = read_json(os.path.join(base, "exit.json"))
    if ex is not None:
        return {**st, **ex, "status": "stopped"}
    if st.get("pid") and linux.is_alive(st["pid"], st.get("start_time")):
        return st
    return {**st, "status": "stopped", "exit_code": None, "reason": "monitor-lost"}


def monitor_alive(state_dir: str) -> bool:
    m = read_json(os.path.join(state_dir, "monitor.json"))
    return bool(m) and linux.is_alive(m.get("pid", 0), m.get("start_time"))
