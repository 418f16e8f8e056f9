"""CPU seconds a runtime spends over a time window: the daemon, its helpers and its per-pod processes (pycri's
monitors; containerd's shims and the runc they run), reaped children included.

The method (hack/bench_steady.py, docs/performance.md "Steady state"):

  T(p) = utime + stime + cutime + cstime of p, from /proc/<p>/stat (clock ticks; utime/stime sum all threads,
  dead ones included; cutime/cstime hold the full T of every child p has waited for, which in turn holds the T
  of the children that child had waited for).

  The runtime's set at an instant = its roots (the daemon, and the processes the runtime's `own_processes()`
  finds: shims by the command line that names its dirs, pycri's monitors also by open files under its state
  dir; processes in the bench's pod cgroups) plus every descendant of those. Zombies are read too.

  CPU(window) = sum T_end over the set at the end - sum T_start over the set at the start, processes keyed by
  (pid, start time) so a reused pid is a new process.

Why that counts a process that ended in between: if it was reaped by a parent that is in the set at the end, its
final T is inside that parent's cutime/cstime at the end; its T_start (if it existed at the start) is subtracted,
so only its time in the window remains, and a process born and reaped inside the window counts whole. This holds
for every runtime process here: containerd reaps its `shim start` and CNI plugins; a shim (child subreaper) reaps
runc and the processes runc leaves; pycri's monitors (child subreapers) reap their containers and exec'd
processes; the daemon reaps CNI plugins and its spawner's intermediate children.

What it misses (and so each run records how many processes ended): a process reaped by a parent outside the set
(e.g. by pid 1 after a reparent) or auto-reaped (SIGCHLD ignored: Linux then adds nothing to cutime); a process
that ends between the reading of its parent and its own reading (the snapshot is not atomic: read in ~10 ms);
kernel work not charged to a process (softirqs, kworkers). Resolution: one clock tick (10 ms) per field.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

from . import common
from .memory import descendants

CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass
class Stat:
    pid: int
    ppid: int
    start: int      # clock ticks after boot
    own: int        # utime + stime (ticks)
    children: int   # cutime + cstime (ticks)
    zombie: bool
    comm: str


def read_stat(pid: int) -> Stat | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            raw = f.read()
    except OSError:
        return None
    head, _, tail = raw.rpartition(")")
    rest = tail.split()
    return Stat(pid, int(rest[1]), int(rest[19]), int(rest[11]) + int(rest[12]), int(rest[13]) + int(rest[14]),
                rest[0] == "Z", head.partition("(")[2])


def stat_table() -> dict[int, Stat]:
    table = {}
    for pid in common.pids():
        st = read_stat(pid)
        if st is not None:
            table[pid] = st
    return table


def tree(table: dict[int, Stat], roots: set[int]) -> set[int]:
    """roots (those alive in table) and all their descendants."""
    alive = {r for r in roots if r in table}
    return alive | descendants(table, alive)


@dataclass
class Snapshot:
    t: float                                  # time.monotonic()
    procs: dict[tuple[int, int], Stat] = field(default_factory=dict)   # (pid, start) -> Stat
    kind: dict[tuple[int, int], str] = field(default_factory=dict)     # (pid, start) -> daemon|helper|pod
    machine_busy: int = 0                     # ticks of all CPUs not idle/iowait (/proc/stat), for context


def machine_busy_ticks() -> int:
    with open("/proc/stat") as f:
        vals = [int(x) for x in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal guest guest_nice; guest time is already in user
    return sum(vals[:8]) - vals[3] - vals[4]


def snapshot(daemon, pod_cgroup_root: str | None = None) -> Snapshot:
    """The runtime's process set now (see the module doc). `daemon` is a bench_lib runtime (Containerd/Pycri):
    its pid, its probe's daemon_pids (the daemon and the helpers it had before the first pod) and
    own_processes() (the processes its stop() would kill). The slow discovery of roots runs first, then one
    quick pass reads every /proc/<pid>/stat."""
    roots = set(daemon.own_processes())
    if daemon.pid:
        roots.add(daemon.pid)
    if pod_cgroup_root:
        roots |= pids_in_cgroup_tree(pod_cgroup_root)
    roots.discard(os.getpid())
    t = time.monotonic()
    busy = machine_busy_ticks()
    table = stat_table()
    members = tree(table, roots)
    helpers = daemon.probe.daemon_pids() if daemon.pid else set()
    snap = Snapshot(t=t, machine_busy=busy)
    for pid in members:
        st = table[pid]
        key = (pid, st.start)
        snap.procs[key] = st
        snap.kind[key] = "daemon" if pid == daemon.pid else ("helper" if pid in helpers else "pod")
    return snap


def pids_in_cgroup_tree(name: str) -> set[int]:
    """Processes in /<name>/... of any cgroup hierarchy (the bench's pod cgroups)."""
    out: set[int] = set()
    for mnt in common.cgroup_mounts():
        top = os.path.join(mnt, name)
        if not os.path.isdir(top):
            continue
        for dirpath, _dirs, files in os.walk(top):
            if "cgroup.procs" in files:
                try:
                    with open(os.path.join(dirpath, "cgroup.procs")) as f:
                        out.update(int(x) for x in f.read().split())
                except OSError:
                    pass
    return out


def window(start: Snapshot, end: Snapshot) -> dict:
    """CPU seconds between two snapshots, in total and by kind: the daemon's own time, the time of the children it
    reaped (CNI plugins, shim start-ups...), its helpers, and its per-pod processes (with their reaped children)."""
    def total(snap: Snapshot, kinds: tuple[str, ...], part: str) -> int:
        return sum(getattr(st, part) for k, st in snap.procs.items() if snap.kind[k] in kinds)

    sec = 1.0 / CLK_TCK
    out = {
        "seconds": round(end.t - start.t, 3),
        "daemon_own_s": (total(end, ("daemon",), "own") - total(start, ("daemon",), "own")) * sec,
        "daemon_children_s": (total(end, ("daemon",), "children") - total(start, ("daemon",), "children")) * sec,
    }
    for kind in ("helper", "pod"):
        out[f"{kind}_s"] = sum(total(end, (kind,), p) - total(start, (kind,), p) for p in ("own", "children")) * sec
    out["total_s"] = out["daemon_own_s"] + out["daemon_children_s"] + out["helper_s"] + out["pod_s"]
    ended = set(start.procs) - set(end.procs)
    out["processes_start"] = len(start.procs)
    out["processes_end"] = len(end.procs)
    out["processes_ended"] = len(ended)
    out["processes_new"] = len(set(end.procs) - set(start.procs))
    # an ended process whose parent is not in the set at the end: its time may be lost (see the module doc)
    end_pids = {pid for pid, _ in end.procs}
    out["ended_parent_outside"] = sum(1 for k in ended if start.procs[k].ppid not in end_pids)
    out["machine_busy_s"] = (end.machine_busy - start.machine_busy) * sec
    for k, v in list(out.items()):
        if k.endswith("_s"):
            out[k] = round(v, 3)
    return out
