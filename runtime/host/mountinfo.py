"""/proc/<pid>/mountinfo, read in one place: each line as a Mount, and the mount that holds a path.

A line: `<id> <parent> <maj:min> <root> <mount point> <options> [<tag>...] - <fstype> <source> <super options>`,
where the tags are the propagation (shared:N, master:N, propagate_from:N, unbindable) and the mount point has
space, tab, newline and backslash escaped as octal (\\040...).
"""
from __future__ import annotations

import os
from typing import Iterator, NamedTuple

MOUNTINFO = "/proc/self/mountinfo"


class Mount(NamedTuple):
    id: int
    parent: int
    mount_point: str
    tags: list[str]
    fstype: str
    source: str
    super_options: str

    @property
    def shared(self) -> bool:
        return any(t.startswith("shared:") for t in self.tags)

    @property
    def slave(self) -> bool:
        return any(t.startswith("master:") for t in self.tags)


def unescape(field: str) -> str:
    if "\\" not in field:
        return field
    return field.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")


def entries(path: str = MOUNTINFO) -> Iterator[Mount]:
    """The mounts, in the kernel's order (a mount listed after another at the same point is on top of it)."""
    with open(path) as f:
        for line in f:
            pre, _, post = line.partition(" - ")
            p = pre.split()
            q = post.split()
            q += [""] * (3 - len(q))
            yield Mount(int(p[0]), int(p[1]), unescape(p[4]), p[6:], q[0], q[1], q[2])


def read(path: str = MOUNTINFO) -> list[Mount]:
    return list(entries(path))


def holding(path: str, table: list[Mount] | None = None) -> Mount:
    """The mount that holds path (resolved): the longest mount point above it, the topmost (last) of a stack."""
    path = os.path.realpath(path)
    best: Mount | None = None
    for m in table if table is not None else entries():
        mp = m.mount_point
        if path == mp or path.startswith(mp.rstrip("/") + "/"):
            if best is None or len(mp) >= len(best.mount_point):
                best = m
    assert best is not None  # "/" holds everything
    return best


def parent_of(mount_id: int) -> int:
    """The id of the mount that mount mount_id is mounted on, or -1."""
    for m in entries():
        if m.id == mount_id:
            return m.parent
    return -1


def cgroup_mounts() -> list[Mount]:
    """The cgroup (v1) and cgroup2 mounts."""
    return [m for m in entries() if m.fstype in ("cgroup", "cgroup2")]
