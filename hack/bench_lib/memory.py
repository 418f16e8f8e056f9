"""Memory: the daemon's resident set, and the private memory of the processes that belong to a pod.

A pod's *overhead* processes are what the runtime adds per pod, apart from the app containers themselves:
for containerd, the containerd-shim-runc-v2 of the pod and the pause process; for pycri, the per-pod monitor and the
infra process. They are found the same way for both (a probe per runtime, so pycri's side can be refined):

  1. processes whose cgroup path (any hierarchy) contains `pod<uid>` are the pod's; those whose cgroup path
     contains an app container's id are app processes, the rest are the infra (pause);
  2. walking up the parent chain of those, every ancestor that is not the daemon itself (nor one of the daemon's
     helpers present before the first pod), not pid 1, and that was started after the daemon, is a per-pod
     monitor (the shim); the monitor's other descendants that are not app processes count too;
  3. a probe may add processes by its own rule (`extra_pod_pids`).

Private memory is Private_Clean + Private_Dirty + Private_Hugetlb from /proc/<pid>/smaps_rollup: pages no other
process maps, i.e. what the pod really costs. Pss is reported alongside.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

from . import common

KIB = 1024
MIB = 1024 * 1024


@dataclass
class Proc:
    pid: int
    ppid: int
    start: int          # clock ticks after boot
    cgroups: list[str]
    cmd: str


def process_table() -> dict[int, Proc]:
    table = {}
    for pid in common.pids():
        try:
            with open(f"/proc/{pid}/stat") as f:
                rest = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if rest[0] == "Z":
            continue
        table[pid] = Proc(pid, int(rest[1]), int(rest[19]), common.cgroup_paths(pid), common.cmdline(pid))
    return table


def smaps_rollup(pid: int) -> dict[str, int]:
    """Rss, Pss, Private (bytes) of one process; zeros if it is gone."""
    vals = {"rss": 0, "pss": 0, "private": 0}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                key, _, rest = line.partition(":")
                parts = rest.split()
                if not parts or not parts[0].isdigit():
                    continue
                kib = int(parts[0]) * KIB
                if key == "Rss":
                    vals["rss"] = kib
                elif key == "Pss":
                    vals["pss"] = kib
                elif key in ("Private_Clean", "Private_Dirty", "Private_Hugetlb"):
                    vals["private"] += kib
    except OSError:
        pass
    return vals


def vm_rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * KIB
    except OSError:
        pass
    return 0


def descendants(table: dict[int, Proc], roots: set[int]) -> set[int]:
    children: dict[int, list[int]] = {}
    for p in table.values():
        children.setdefault(p.ppid, []).append(p.pid)
    out, todo = set(), list(roots)
    while todo:
        pid = todo.pop()
        for c in children.get(pid, []):
            if c not in out:
                out.add(c)
                todo.append(c)
    return out


@dataclass
class PodRef:
    """What the workload knows about a pod, for finding its processes."""
    uid: str
    sandbox_id: str
    container_ids: list[str] = field(default_factory=list)


@dataclass
class PodMemory:
    overhead_pids: list[int]
    app_pids: list[int]
    private: int            # bytes, overhead processes
    pss: int
    rss: int
    app_private: int        # bytes, app containers (for information)
    by_process: dict[str, int]  # "<pid> <cmd>" -> private bytes


class CgroupPodProbe:
    """Finds daemon and per-pod processes by cgroup and parent chain (see the module doc)."""

    def __init__(self, runtime):
        self.runtime = runtime
        self.baseline: set[int] = set()

    # -- daemon
    def daemon_pids(self, table: dict[int, Proc] | None = None) -> set[int]:
        """The daemon and its own helpers: its process tree as it was before the first pod (see mark_baseline)."""
        pid = self.runtime.pid
        if pid is None:
            return set()
        table = table or process_table()
        tree = {pid} | descendants(table, {pid})
        return (tree & self.baseline) | {pid} if self.baseline else tree

    def mark_baseline(self) -> None:
        """Call while no pod exists: the daemon's process tree now is 'the daemon'."""
        table = process_table()
        pid = self.runtime.pid
        self.baseline = ({pid} | descendants(table, {pid})) if pid else set()

    def daemon_memory(self) -> dict[str, int]:
        table = process_table()
        dp = self.daemon_pids(table)
        return {"rss": vm_rss(self.runtime.pid) if self.runtime.pid else 0,
                "tree_rss": sum(vm_rss(p) for p in dp),
                "tree_private": sum(smaps_rollup(p)["private"] for p in dp),
                "pids": sorted(dp)}

    # -- pods
    def extra_pod_pids(self, pod: PodRef, table: dict[int, Proc]) -> set[int]:
        return set()

    def pod_memory(self, pods: list[PodRef]) -> list[PodMemory]:
        table = process_table()
        daemon = self.runtime.pid
        daemon_start = table[daemon].start if daemon in table else 0
        stop = {0, 1} | self.daemon_pids(table) | _own_ancestors(table)
        results = []
        for pod in pods:
            tag = f"pod{pod.uid}"
            in_pod = {p.pid for p in table.values() if any(tag in cg for cg in p.cgroups)}
            app = {p for p in in_pod
                   if any(cid and cid in cg for cid in pod.container_ids for cg in table[p].cgroups)}
            infra = in_pod - app
            monitors = set()
            for pid in in_pod:
                anc = table[pid].ppid
                while anc in table and anc not in stop and anc not in in_pod:
                    if table[anc].start < daemon_start:
                        break
                    monitors.add(anc)
                    anc = table[anc].ppid
            overhead = infra | monitors | self.extra_pod_pids(pod, table)
            overhead |= descendants(table, monitors) - app - in_pod - stop
            app |= descendants(table, app)
            overhead -= app
            per = {p: smaps_rollup(p) for p in overhead}
            results.append(PodMemory(
                overhead_pids=sorted(overhead), app_pids=sorted(app),
                private=sum(v["private"] for v in per.values()),
                pss=sum(v["pss"] for v in per.values()),
                rss=sum(v["rss"] for v in per.values()),
                app_private=sum(smaps_rollup(p)["private"] for p in app),
                by_process={f"{p} {table[p].cmd[:60]}": v["private"] for p, v in per.items()},
            ))
        return results


class PycriPodProbe(CgroupPodProbe):
    """pycri: as above, plus any process (not the daemon's) whose command line names the pod's sandbox id or uid,
    e.g. a monitor started as `... --sandbox <id>`. Refine here once the per-pod monitor's shape is settled."""

    def extra_pod_pids(self, pod: PodRef, table: dict[int, Proc]) -> set[int]:
        daemon_pids = self.daemon_pids(table)
        keys = [k for k in (pod.sandbox_id, pod.uid) if k]
        return {p.pid for p in table.values()
                if p.pid not in daemon_pids and any(k in p.cmd for k in keys)}


def _own_ancestors(table: dict[int, Proc]) -> set[int]:
    out, pid = set(), os.getpid()
    while pid in table and pid not in out:
        out.add(pid)
        pid = table[pid].ppid
    return out
