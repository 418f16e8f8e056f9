"""Container events (GetContainerEvents): a fan-out of lifecycle events to every subscribed client.

One path: the pod and container managers (pycri/pods/manager.py, pycri/containers/manager.py) emit an event where
they change what the CRI reports, right after the record is saved - a pod ready (CREATED, STARTED), no longer ready
(STOPPED), removed (DELETED); a container created, started, ended (also a start that failed, or an end learnt from
its monitor), removed - never the servicers.

Each event carries the pod as of that moment, as the kubelet's evented PLEG reads it (it drops an event without
it): the pod's PodSandboxStatus, and the ContainerStatus of every container of every sandbox of that pod (same
metadata uid, as CRI-O sends). `created_at` comes from one strictly increasing clock, `now()`, which also stamps
PodSandboxStatusResponse.timestamp: the kubelet keeps, per pod, the newest status by these stamps.
"""

from __future__ import annotations

import asyncio
import time

from pycri import log
from pycri.api import api_pb2 as cri
from pycri.containers.messages import statuses_of
from pycri.pods.messages import sandbox_status
from pycri.state.records import SandboxRecord

QUEUE_LIMIT = 1000  # a client that falls this far behind loses the oldest events, not the daemon's memory

_log = log.get("events")


class Events:
    def __init__(self, records, images) -> None:
        self._records = records  # pycri/state/records.py Records
        self._images = images  # the ImageManager: the tags a ContainerStatus shows
        self._subscribers: dict[asyncio.Queue, int] = {}  # queue -> events it lost
        self._last = 0

    def now(self) -> int:
        """Nanoseconds since the epoch, strictly increasing (a wall clock step back does not reorder a pod's
        statuses)."""
        self._last = max(time.time_ns(), self._last + 1)
        return self._last

    def subscribe(self) -> asyncio.Queue:
        q: asyncio.Queue = asyncio.Queue(QUEUE_LIMIT)
        self._subscribers[q] = 0
        return q

    def unsubscribe(self, q: asyncio.Queue) -> None:
        self._subscribers.pop(q, None)

    def emit(self, sandbox: SandboxRecord, object_id: str, event_type: int) -> None:
        """object_id: the container's id, or the sandbox's own for an event of the pod sandbox."""
        if not self._subscribers:
            return
        uid = sandbox.config.metadata.uid
        ids = {s.id for s in self._records.sandboxes.values() if s.config.metadata.uid == uid} | {sandbox.id}
        event = cri.ContainerEventResponse(container_id=object_id, container_event_type=event_type,
                                           created_at=self.now(), pod_sandbox_status=sandbox_status(sandbox),
                                           containers_statuses=statuses_of(self._records, self._images, ids))
        for q, lost in self._subscribers.items():
            if q.full():
                q.get_nowait()
                self._subscribers[q] = lost + 1
                if lost == 0 or (lost + 1) % QUEUE_LIMIT == 0:
                    _log.warning("an event client is too slow: its oldest events are dropped", lost=lost + 1)
            q.put_nowait(event)
