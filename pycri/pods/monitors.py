"""The daemon's side of the per-pod monitors: spawning them, calling them, watching exits.

Calls go through runtime.aclient.AsyncMonitorClient and wait in the event loop, never in a worker thread: a call
that waits long for a container (an ExecSync, a StopContainer's grace period) must not hold a thread of the
default pool, which every pod shares (6 threads on 2 cores). ExecSyncs also wait for a slot of their pod
(ExecSlots). Ends are watched through one runtime.exitwatch.ExitWatch: the exit records of running containers and
the monitors themselves, learnt from the kernel as soon as a monitor records them (the daemon takes them in
Daemon.take_exits; docs/design.md, "Exits").
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any, Awaitable

from pycri import log
from pycri.observe import metrics
from pycri.errors import CRIError
from pycri.node import AsyncMonitorClient, ExitWatch, MonitorClient, MonitorError, monitor_state

_log = log.get("monitors")


class MonitorUnavailable(CRIError):
    """The pod's monitor is gone (it crashed or the host rebooted)."""


class ExecSlots:
    """At most `limit` ExecSyncs of one pod in flight; the pod's others wait for a slot, first come first served.

    A pod's flood of execs then holds at most limit connections to its monitor, processes in its container and
    answers (each up to the exec's output cap) in the daemon at once; other pods' calls never wait for a slot."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._pods: dict[str, list] = {}  # pod id -> [its semaphore, how many hold or wait for a slot]

    def waiting(self, pod_id: str) -> int:
        """How many of the pod's execs hold or wait for a slot."""
        entry = self._pods.get(pod_id)
        return entry[1] if entry else 0

    async def acquire(self, pod_id: str, timeout: float | None) -> None:
        """One of the pod's slots; TimeoutError if none is free within timeout (None: wait as long as it takes).
        Every acquire that returns is followed by one release(pod_id)."""
        entry = self._pods.get(pod_id)
        if entry is None:
            entry = self._pods[pod_id] = [asyncio.Semaphore(self.limit), 0]
        entry[1] += 1
        try:
            async with asyncio.timeout(timeout):
                await entry[0].acquire()
        except BaseException:
            self._done(pod_id, entry)
            raise

    def release(self, pod_id: str) -> None:
        entry = self._pods[pod_id]
        entry[0].release()
        self._done(pod_id, entry)

    def _done(self, pod_id: str, entry: list) -> None:
        entry[1] -= 1
        if not entry[1]:
            del self._pods[pod_id]


class Monitors:
    def __init__(self, spawner, exec_sync_per_pod: int = 64) -> None:
        self.spawner = spawner
        self.exits = ExitWatch(warn=_log.warning)
        self.exec_slots = ExecSlots(exec_sync_per_pod)

    @staticmethod
    def socket_path(monitor_dir: str) -> str:
        return os.path.join(monitor_dir, monitor_state.SOCKET_NAME)

    async def spawn(self, pod_id: str, monitor_dir: str) -> MonitorClient:
        os.makedirs(monitor_dir, mode=0o700, exist_ok=True)
        started = time.perf_counter()
        sock = await asyncio.to_thread(self.spawner.spawn_monitor, pod_id, monitor_dir)
        metrics.monitor_spawn(time.perf_counter() - started)
        return MonitorClient(sock)

    def client(self, monitor_dir: str, timeout: float | None = 30.0) -> MonitorClient:
        """A blocking client, for code that runs in a thread of its own (the streaming server's opens)."""
        return MonitorClient(self.socket_path(monitor_dir), timeout=timeout)

    @staticmethod
    def alive(monitor_dir: str) -> bool:
        return monitor_state.monitor_alive(monitor_dir)

    async def call(self, monitor_dir: str, method: str, *args: Any, client_timeout: float | None = 30.0,
                   **kwargs: Any):
        """AsyncMonitorClient.<method>(*args, **kwargs); client_timeout bounds each wait for socket I/O."""
        return await self.call_now(monitor_dir, method, *args, client_timeout=client_timeout, **kwargs)

    def call_now(self, monitor_dir: str, method: str, *args: Any, client_timeout: float | None = 30.0,
                 **kwargs: Any) -> Awaitable:
        """call(), with the request on its way before this returns, not when the result is first awaited: for a
        caller that goes on working meanwhile (see Containers._begin_monitor_create)."""
        client = AsyncMonitorClient(self.socket_path(monitor_dir), timeout=client_timeout)
        return self._answer(monitor_dir, getattr(client, method)(*args, **kwargs))

    async def _answer(self, monitor_dir: str, sent: Awaitable):
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
            return monitor_state.container_status(monitor_dir, container_id)
        except (ValueError, OSError):
            return {"id": container_id, "status": "unknown"}
