"""Processes of the host seen through /proc: how many a tree holds."""
from __future__ import annotations

import os


def process_count(pids: list[int]) -> int:
    """Processes in the trees of pids (a pod's containers' pid namespaces): children counted via
    /proc/<pid>/task/*/children."""
    seen: set[int] = set()
    todo = [p for p in pids if p]
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        try:
            for task in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{task}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
        except OSError:
            continue
    return len(seen)
