"""The daemon's side of the per-pod monitors: spawning them, calling them off the event loop, watching exits.

Blocking monitor calls (runtime.client.MonitorClient) run in worker threads; exits are watched with one asyncio
connection per running container (the monitor answers `wait` when the process ends), so a node with hundreds
of containers costs sockets, not threads.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import time
from typing import Any, Awaitable

from runtime import state as rtstate
from runtime.client import MonitorClient, MonitorError
from runtime.monitor import SOCKET_NAME

from pycri import log, metrics
from pycri.errors import CRIError

_log = log.get("monitors")


class MonitorUnavailable(CRIError):
    """The pod's monitor is gone (it crashed or the host rebooted)."""


class Monitors:
    def __init__(self, spawner) -> None:
        self.spawner = spawner

    @staticmethod
    def socket_path(monitor_dir: str) -> str:
        return os.path.join(monitor_dir, SOCKET_NAME)

    async def spawn(self, pod_id: str, monitor_dir: str) -> MonitorClient:
        os.makedirs(monitor_dir, mode=0o700, exist_ok=True)
        started = time.perf_counter()
        sock = await asyncio.to_thread(self.spawner.spawn_monitor, pod_id, monitor_dir)
        metrics.monitor_spawn(time.perf_counter() - started)
        return MonitorClient(sock)

    def client(self, monitor_dir: str, timeout: float | None = 30.0) -> MonitorClient:
        return MonitorClient(self.socket_path(monitor_dir), timeout=timeout)

    @staticmethod
    def alive(monitor_dir: str) -> bool:
        return rtstate.monitor_alive(monitor_dir)

    async def call(self, monitor_dir: str, method: str, *args: Any, client_timeout: float | None = 30.0,
                   **kwargs: Any):
        """MonitorClient.<method>(*args, **kwargs) in a worker thread; client_timeout bounds socket I/O."""
        client = self.client(monitor_dir, timeout=client_timeout)
        try:
            return await asyncio.to_thread(getattr(client, method), *args, **kwargs)
        except MonitorError as exc:
            if not self.alive(monitor_dir):
                raise MonitorUnavailable(f"the pod's monitor is not running: {exc}") from None
            raise

    def call_now(self, monitor_dir: str, method: str, *args: Any, **kwargs: Any) -> Awaitable:
        """call(), with the request on its way (in a worker thread) before this returns, not when the result is
        first awaited: for a caller that goes on working meanwhile (see Containers._begin_monitor_create)."""
        client = self.client(monitor_dir)
        sent = asyncio.get_running_loop().run_in_executor(None, functools.partial(getattr(client, method), *args,
                                                                                   **kwargs))
        return self._answer(monitor_dir, sent)

    async def _answer(self, monitor_dir: str, sent: asyncio.Future):
        try:
            return await sent
        except MonitorError as exc:
            if not self.alive(monitor_dir):
                raise MonitorUnavailable(f"the pod's monitor is not running: {exc}") from None
            raise

    async def wait_exit(self, monitor_dir: str, container_id: str) -> dict | None:
        """Wait for the container's exit; None when the monitor went away before it answered."""
        try:
            reader, writer = await asyncio.open_unix_connection(self.socket_path(monitor_dir))
        except OSError:
            return None
        try:
            writer.write(json.dumps({"op": "wait", "id": container_id}).encode() + b"\n")
            await writer.drain()
            line = await reader.readline()
        except OSError:
            return None
        finally:
            writer.close()
        if not line:
            return None
        answer = json.loads(line)
        if not answer.get("ok"):
            _log.warning("wait refused", container_id=container_id, error=answer.get("error"))
            return None
        return answer

    @staticmethod
    def status_from_disk(monitor_dir: str, container_id: str) -> dict:
        """What the state files say when the monitor cannot be asked (it died, or the host rebooted)."""
        try:
            return rtstate.container_status(monitor_dir, container_id)
        except (ValueError, OSError):
            return {"id": container_id, "status": "unknown"}
