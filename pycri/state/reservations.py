"""Name reservations that make RunPodSandbox and CreateContainer idempotent under kubelet retries.

The kubelet cancels a call at its deadline and retries it with the same metadata. The creation runs as its own
task, so the cancelled call does not abort it half-way; a retry that arrives while it is in flight waits for the
same task and gets the same id. A request for a name that is already taken by a finished object fails with
ALREADY_EXISTS naming that object's id.
"""

from __future__ import annotations

import asyncio
from typing import Awaitable, Callable

from pycri.errors import AlreadyExists


class Reservations:
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._inflight: dict[str, asyncio.Task] = {}

    async def create_once(self, name: str, existing: Callable[[str], str | None],
                          create: Callable[[], Awaitable[str]]) -> str:
        task = self._inflight.get(name)
        if task is None:
            taken = existing(name)
            if taken:
                raise AlreadyExists(f'{self.kind} name "{name}" is reserved for "{taken}"')
            task = asyncio.get_running_loop().create_task(create())
            self._inflight[name] = task
            task.add_done_callback(lambda t: self._done(name, t))
        return await asyncio.shield(task)

    def _done(self, name: str, task: asyncio.Task) -> None:
        self._inflight.pop(name, None)
        if not task.cancelled():
            task.exception()  # retrieved here, so a creation whose caller went away logs no asyncio warning
