"""The daemon's side of the per-pod monitors: spawning them, calling them off the event loop, watching exits.

Blocking monitor calls (runtime.client.MonitorClient) run in worker threads. Ends are watched through one
runtime.exitwatch.ExitWatch: the exit records of running containers and the monitors themselves, learnt from the
kernel as soon as a monitor records them (the daemon takes them in Daemon.take_exits; docs/design.md, "Exits").
"""

from __future__ import annotations

import asyncio
import functools
import os
import time
from typing import Any, Awaitable

from runtime import state as rtstate
from runtime.client import MonitorClient, MonitorError
from runtime.exitwatch import ExitWatch
from runtime.monitor import SOCKET_NAME

from pycri import log, metrics
from pycri.errors import CRIError

_log = log.get("monitors")


class MonitorUnavailable(CRIError):
    """The pod's monitor is gone (it crashed or the host rebooted)."""


class Monitors:
    def __init__(self, spawner) -> None:
        self.spawner = spawner
        self.exits = ExitWatch(warn=_log.warning)

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

    @staticmethod
    def status_from_disk(monitor_dir: str, container_id: str) -> dict:
        """What the state files say when the monitor cannot be asked (it died, or the host rebooted)."""
        try:
            return rtstate.container_status(monitor_dir, container_id)
        except (ValueError, OSError):
            return {"id": container_id, "status": "unknown"}
