"""What every cgroup driver is (Cgroup, the interface the monitor and the launcher use), its error, and the
version of the host's hierarchy. The drivers: runtime/cgroups/cgroupfs.py and runtime/cgroups/systemd.py.
"""
from __future__ import annotations

import os
from typing import Callable

ROOT = "/sys/fs/cgroup"


class CgroupError(Exception):
    pass


def detect_version(root: str = ROOT) -> int:
    """2 when root is a cgroup2 mount (unified), 1 otherwise (legacy or hybrid)."""
    return 2 if os.path.exists(os.path.join(root, "cgroup.controllers")) else 1


class Cgroup:
    """Common interface; subclasses map OCI linux.resources onto their files."""
    version = 0

    def __init__(self, path: str):
        self.path = path

    def create(self) -> None: raise NotImplementedError

    def self_attach_paths(self) -> list[bytes] | None:
        """Files a process writes b"0" to in order to move itself in (the launcher's child does, right after
        clone), or None when only attach(pid) works. Writing "0" (the caller itself) to a v1 `tasks` file skips
        the kernel's global cgroup_threadgroup_rwsem, whose write side waits for an RCU grace period: 5-25 ms
        measured here for attach(pid) after an idle moment, ~0.3 ms for the self-attach of 8 hierarchies."""
        return None

    def make_joinable(self) -> Callable[[], None]:
        """Make the cgroup one that a process can join by itself (self_attach_paths) where it is not yet;
        returns what to call once such a process has joined."""
        return lambda: None

    def apply(self, resources: dict | None) -> list[str]: raise NotImplementedError
    def attach(self, pid: int) -> None: raise NotImplementedError
    def stats(self) -> dict: raise NotImplementedError
    def oom_kills(self) -> int: raise NotImplementedError

    def oom_watch(self) -> "OomWatch | None":
        """A watch whose fd becomes readable when the OOM killer acts in this cgroup, so the monitor reads
        oom_kills() then, while the cgroup exists: under the systemd driver an empty scope can be gone by the
        time its last process is reaped. None where the host has no such notification."""
        return None

    def pids(self) -> list[int]: raise NotImplementedError
    def remove(self) -> None: raise NotImplementedError
    def exists(self) -> bool: raise NotImplementedError

    def update(self, resources: dict) -> list[str]:
        """Live update: the same files as apply."""
        return self.apply(resources)


class OomWatch:
    """An fd to poll (cgroup v2: inotify on memory.events; v1: an eventfd registered for memory.oom_control).

    v2 signals each change of the counters, the kill's included, so reading oom_kills() on each event sees it.
    v1 signals as the OOM begins, before the kill is counted (and again when the cgroup is removed): the
    monitor then reads too early, so onset() says whether an event was an OOM rather than the removal (as
    containerd, which takes that event for the OOM kill)."""

    def __init__(self, fd: int, memory_dir: str | None = None):
        self.fd = fd
        self._memory_dir = memory_dir  # v1: the cgroup whose OOMs the eventfd signals

    def onset(self) -> bool:
        """After an event (v1): True if the cgroup is under an OOM (it still exists: not its removal)."""
        return self._memory_dir is not None and os.path.isdir(self._memory_dir)

    def drain(self) -> None:
        try:
            while os.read(self.fd, 4096):
                pass
        except (BlockingIOError, OSError):
            pass

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
