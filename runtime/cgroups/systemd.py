"""The systemd cgroup driver: each container is a transient scope unit, made through systemd's D-Bus API.

cgroupsPath is "<slice>:<prefix>:<name>", as runc reads it: the scope `<prefix>-<name>.scope` in `<slice>`
(the kubelet's pod slice, e.g. kubepods-burstable-pod<uid>.slice). systemd needs a process to make a scope,
so the scope is started by attach(pid) with the container's first process, the way runc does it; the limits
are given to systemd as unit properties (so a daemon-reload keeps them) and are also written to the cgroup
files by the cgroupfs code on the scope's directory (which covers what systemd has no property for, and the
v1 hierarchies systemd does not manage: cpuset, hugetlb, freezer...). Removal stops the unit.
"""

from __future__ import annotations

import os
import time
from typing import Callable

from runtime.cgroups import cgroupfs, dbus, driver

_DEST = "org.freedesktop.systemd1"
_PATH = "/org/freedesktop/systemd1"
_MANAGER = "org.freedesktop.systemd1.Manager"


def parse_path(cgroups_path: str) -> tuple[str, str]:
    """"slice:prefix:name" -> (slice, unit name). An empty slice means system.slice, as with runc."""
    parts = cgroups_path.split(":")
    if len(parts) != 3 or not parts[2] or "/" in cgroups_path:
        raise driver.CgroupError(f"cgroupsPath {cgroups_path!r} is not \"slice:prefix:name\" (systemd driver)")
    slice_name, prefix, name = parts
    slice_name = slice_name or "system.slice"
    if not slice_name.endswith(".slice"):
        raise driver.CgroupError(f"cgroupsPath {cgroups_path!r}: {slice_name!r} is not a slice")
    unit = name if name.endswith(".slice") else f"{prefix}-{name}.scope" if prefix else f"{name}.scope"
    return slice_name, unit


def expand_slice(slice_name: str) -> str:
    """systemd's slice nesting as a cgroup path: "a-b-c.slice" -> "/a.slice/a-b.slice/a-b-c.slice"."""
    if slice_name == "-.slice":
        return "/"
    stem = slice_name[:-len(".slice")]
    if not stem or stem.startswith("-") or stem.endswith("-") or "--" in stem:
        raise driver.CgroupError(f"invalid slice name {slice_name!r}")
    parts = stem.split("-")
    return "".join("/" + "-".join(parts[:i + 1]) + ".slice" for i in range(len(parts)))


def properties(resources: dict | None, version: int) -> list[tuple[str, dbus.Variant]]:
    """The unit properties for OCI linux.resources that systemd manages itself."""
    r = resources or {}
    out: list[tuple[str, dbus.Variant]] = []
    mem = r.get("memory") or {}
    if mem.get("limit") and int(mem["limit"]) > 0:
        out.append(("MemoryMax" if version == 2 else "MemoryLimit", dbus.Variant("t", int(mem["limit"]))))
    cpu = r.get("cpu") or {}
    if cpu.get("shares"):
        if version == 2:
            out.append(("CPUWeight", dbus.Variant("t", cgroupfs.shares_to_weight(int(cpu["shares"])))))
        else:
            out.append(("CPUShares", dbus.Variant("t", int(cpu["shares"]))))
    quota, period = int(cpu.get("quota") or 0), int(cpu.get("period") or 100_000)
    if quota > 0 and period > 0:
        per_sec = quota * 1_000_000 // period
        per_sec = -(-per_sec // 10_000) * 10_000  # systemd keeps 1% steps: round up, as runc does
        out.append(("CPUQuotaPerSecUSec", dbus.Variant("t", per_sec)))
        out.append(("CPUQuotaPeriodUSec", dbus.Variant("t", period)))
    pids = r.get("pids") or {}
    if pids.get("limit") and int(pids["limit"]) > 0:
        out.append(("TasksMax", dbus.Variant("t", int(pids["limit"]))))
    return out


class SystemdCgroup(driver.Cgroup):
    """A transient scope; cgroup files are read and written through the cgroupfs class at its path."""

    def __init__(self, cgroups_path: str, root: str = driver.ROOT):
        self.slice, self.unit = parse_path(cgroups_path)
        super().__init__(f"{expand_slice(self.slice).rstrip('/')}/{self.unit}")
        self.version = driver.detect_version(root)
        self.fs = (cgroupfs.CgroupV2(self.path, root) if self.version == 2
                   else cgroupfs.CgroupV1(self.path, cgroupfs.v1_mounts()))
        self._resources: dict | None = None
        self._started = False

    # the scope exists once a process is in it: create() only remembers, attach() makes the unit
    def create(self) -> None:
        pass

    def apply(self, resources: dict | None) -> list[str]:
        self._resources = resources
        if not self._started:
            return []
        props = properties(resources, self.version)
        if props:
            self._call("SetUnitProperties", "sba(sv)", [self.unit, True, props])
        return self.fs.apply(resources)

    def update(self, resources: dict) -> list[str]:
        self._started = self._started or self.exists()
        return self.apply(resources)

    def attach(self, pid: int) -> None:
        if self._started or self.exists():
            self._started = True
            self.fs.attach(pid)
            return
        props = [("Description", dbus.Variant("s", f"pycri container {self.unit}")),
                 ("Slice", dbus.Variant("s", self.slice)),
                 ("PIDs", dbus.Variant("au", [pid])),
                 ("Delegate", dbus.Variant("b", True)),
                 ("DefaultDependencies", dbus.Variant("b", False)),
                 ("MemoryAccounting", dbus.Variant("b", True)),
                 ("CPUAccounting", dbus.Variant("b", True)),
                 ("TasksAccounting", dbus.Variant("b", True))]
        props += properties(self._resources, self.version)
        try:
            self._call("StartTransientUnit", "ssa(sv)a(sa(sv))", [self.unit, "fail", props, []])
        except dbus.DBusError as exc:
            if not exc.name.endswith("UnitExists"):
                raise driver.CgroupError(f"systemd: cannot start {self.unit}: {exc}") from None
        self._wait_joined(pid)
        self._started = True
        self._join_everywhere(pid)
        self.fs.apply(self._resources)

    def _join_everywhere(self, pid: int) -> None:
        """v1: the hierarchies systemd does not manage (cpuset, hugetlb, freezer, ...) get our own directory.
        systemd may still be realizing (or trimming) its own ones as we go: retry a vanished directory. v2: one
        hierarchy, where systemd made the scope and put pid in it; the controllers the limits need are enabled
        in the ancestors' subtree_control where systemd has not (it enables one for a slice only once some unit
        there asks for it), as runc's systemd driver does (fs2.CreateCgroupPath)."""
        for attempt in range(50):
            try:
                self.fs.create()
                if self.version == 1:
                    self.fs.attach(pid)
                return
            except (FileNotFoundError, driver.CgroupError) as exc:
                if attempt == 49:
                    raise driver.CgroupError(f"cannot join the cgroups of {self.unit}: {exc}") from None
                time.sleep(0.002)

    def _wait_joined(self, pid: int, timeout: float = 10.0) -> None:
        """systemd moves the process in its own time (a job): wait until /proc/<pid>/cgroup shows the scope."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                with open(f"/proc/{pid}/cgroup") as f:
                    if any(line.rstrip().endswith("/" + self.unit) for line in f):
                        return
            except FileNotFoundError:
                raise driver.CgroupError(f"process {pid} exited before systemd put it in {self.unit}") from None
            if time.monotonic() > deadline:
                raise driver.CgroupError(f"systemd did not move process {pid} into {self.unit} in {timeout:.0f} s")
            time.sleep(0.001)

    def remove(self) -> None:
        try:
            self._call("StopUnit", "ss", [self.unit, "replace"])
        except dbus.DBusError as exc:
            if not exc.name.endswith(("NoSuchUnit", "LoadFailed")):
                raise driver.CgroupError(f"systemd: cannot stop {self.unit}: {exc}") from None
        deadline = time.monotonic() + 10
        while self.fs.exists():  # systemd removes its directories when the stop job ends; ours go here
            try:
                self.fs.remove()
            except (OSError, driver.CgroupError):
                pass
            if time.monotonic() > deadline:
                raise driver.CgroupError(f"cgroup of {self.unit} still present after stopping it")
            time.sleep(0.005)

    def self_attach_paths(self) -> list[bytes] | None:
        """None until the scope runs: its first process goes in through systemd (attach(pid))."""
        return self.fs.self_attach_paths() if self._started else None

    def make_joinable(self) -> Callable[[], None]:
        """Start the scope around a placeholder child (systemd makes a scope only with a process to put in it),
        for an OCI runtime told to leave cgroups alone, which joins it by itself; the placeholder ends when the
        returned function is called (the runtime's container is in the scope by then, which keeps it)."""
        if self._started or self.exists():
            self._started = True
            return lambda: None
        r, w = os.pipe2(os.O_CLOEXEC)
        pid = os.fork()  # (the caller is the single-threaded monitor)
        if pid == 0:
            try:
                os.close(w)
                os.read(r, 1)
            finally:
                os._exit(0)
        os.close(r)

        def release() -> None:
            os.close(w)
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:  # reaped by the caller's own reaper
                pass
        try:
            self.attach(pid)
        except BaseException:
            release()
            raise
        return release

    def exists(self) -> bool:
        return self.fs.exists()

    def pids(self) -> list[int]:
        return self.fs.pids()

    def stats(self) -> dict:
        return self.fs.stats()

    def oom_kills(self) -> int:
        return self.fs.oom_kills()

    def oom_watch(self) -> driver.OomWatch | None:
        return self.fs.oom_watch()

    def _call(self, method: str, signature: str, args: list) -> list:
        conn = dbus.connect_systemd(timeout=10)
        try:
            return conn.call(_DEST, _PATH, _MANAGER, method, signature, args)
        finally:
            conn.close()
