"""Container events (GetContainerEvents): a fan-out of lifecycle events to every subscribed client.

One path: the pod and container managers (pycri/pods/manager.py, pycri/containers/manager.py) emit an event where
they change what the CRI reports - a container created, started, ended (also an end learnt from its monitor),
removed; a pod run, stopped, removed - never the servicers."""

from __future__ import annotations

import asyncio
import time

from pycri.api import api_pb2 as cri

QUEUE_LIMIT = 1000  # a client that falls this far behind loses the oldest events, not the daemon's memory


class Events:
    def __init__(self) -> None:
        self._subscribers: set[asyncio.Queue] = set()

    def subscribe(self) -> asyncio.Queue:
        q: asyncio.Queue = asyncio.Queue(QUEUE_LIMIT)
        self._subscribers.add(q)
        return q

    def unsubscribe(self, q: asyncio.Queue) -> None:
        self._subscribers.discard(q)

    def emit(self, container_id: str, event_type: int, sandbox_status=None, containers_statuses=()) -> None:
        if not self._subscribers:
            return
        event = cri.ContainerEventResponse(container_id=container_id, container_event_type=event_type,
                                           created_at=time.time_ns(), pod_sandbox_status=sandbox_status,
                                           containers_statuses=list(containers_statuses))
        for q in self._subscribers:
            if q.full():
                q.get_nowait()
            q.put_nowait(event)
