"""A container's OOM kills: counted from its create, watched through its cgroup (cgroups.OomWatch), read at its
exit even when the cgroup is gone by then."""
from __future__ import annotations

import select
import selectors
import signal
import time

from runtime import cgroups


class OomTag:
    """Selector data of a container's OOM watch."""

    def __init__(self, container):
        self.container = container


def watch(sel: selectors.BaseSelector, c) -> None:
    c.oom_seen = c.oom_base
    c.oom_since = time.monotonic()
    c.oom_watch = c.cgroup.oom_watch()
    if c.oom_watch is not None:
        sel.register(c.oom_watch.fd, selectors.EVENT_READ, OomTag(c))


def event(c) -> None:
    """The OOM killer acted in c's cgroup (or a memory.events counter moved): read the count now, while the
    cgroup exists. Under the systemd driver the scope of an exited container can be removed before its
    process is reaped, and the count with it."""
    if c.oom_watch is None:
        return
    c.oom_watch.drain()
    if c.cgroup is not None:
        kills = c.cgroup.oom_kills()
        if kills <= c.oom_base and c.oom_watch.onset():  # v1: the kill is not counted yet (cgroups.OomWatch)
            kills = c.oom_base + 1
        c.oom_seen = max(c.oom_seen, kills)


def kills(c, sig: int = 0) -> int:
    """At the exit: the count now, or what was read when the kill was notified if the cgroup is gone; for
    a SIGKILL with the cgroup gone and no kill read, the kernel's log (cgroups.oom_kill_logged)."""
    if c.oom_watch is not None and select.select([c.oom_watch.fd], [], [], 0)[0]:
        event(c)  # notified, not yet handled (the exit came first in this batch)
    n = max(c.cgroup.oom_kills(), c.oom_seen)
    if n <= c.oom_base and sig == signal.SIGKILL and c.oom_since and not c.cgroup.exists() \
            and cgroups.oom_kill_logged(c.cgroup.path, c.pid, c.oom_since):
        n = c.oom_base + 1
    return n


def unwatch(sel: selectors.BaseSelector, c) -> None:
    if c.oom_watch is not None:
        sel.unregister(c.oom_watch.fd)
        c.oom_watch.close()
        c.oom_watch = None
