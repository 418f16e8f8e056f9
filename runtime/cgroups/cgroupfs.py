"""The cgroupfs driver: a container's cgroup as directories and files under the v1 hierarchies or the v2 unified
one (CgroupV1, CgroupV2), the interface of runtime/cgroups/driver.py; what the systemd driver writes too.
"""
from __future__ import annotations

import errno
import os
import signal
import time

from runtime.cgroups.driver import ROOT, Cgroup, CgroupError, OomWatch
from runtime.host import linux
from runtime.host.mountinfo import MOUNTINFO, entries

_V1_CONTROLLERS = ("cpu", "cpuacct", "cpuset", "memory", "pids", "devices", "freezer", "blkio", "hugetlb",
                   "net_cls", "net_prio", "perf_event")
_V2_CONTROLLERS = ("cpuset", "cpu", "io", "memory", "hugetlb", "pids")


def validate_path(path: str) -> str:
    if not isinstance(path, str) or not path:
        raise CgroupError("cgroupsPath must be a non-empty string")
    if ":" in path:
        raise CgroupError(f"cgroupsPath {path!r} looks like a systemd slice path; driver is cgroupfs")
    parts = [p for p in path.split("/") if p]
    if not parts or any(p in (".", "..") for p in parts):
        raise CgroupError(f"bad cgroupsPath {path!r}")
    return "/" + "/".join(parts)


_V1_MOUNTS: dict[str, str] | None = None


def v1_mounts(mountinfo: str = MOUNTINFO) -> dict[str, str]:
    """controller -> mount point, for each v1 hierarchy (co-mounted controllers share a mount point).
    Read once per process (parsing mountinfo costs ~0.5 ms; hierarchies do not move while we run)."""
    global _V1_MOUNTS
    if mountinfo == MOUNTINFO and _V1_MOUNTS:
        return dict(_V1_MOUNTS)
    out = _read_v1_mounts(mountinfo)
    if mountinfo == MOUNTINFO:
        _V1_MOUNTS = dict(out)
    return out


def _read_v1_mounts(mountinfo: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for m in entries(mountinfo):
        if m.fstype == "cgroup":
            for opt in m.super_options.split(","):
                if opt in _V1_CONTROLLERS:
                    out.setdefault(opt, m.mount_point)
    return out


def _write(path: str, value) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, str(value).encode())
    except OSError as exc:
        raise CgroupError(f"write {value!r} to {path}: {exc.strerror}") from None
    finally:
        os.close(fd)


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def _read_kv(path: str) -> dict[str, int]:
    out = {}
    try:
        for line in _read(path).splitlines():
            k, _, v = line.partition(" ")
            if v.strip().lstrip("-").isdigit():
                out[k] = int(v)
    except OSError:
        pass
    return out


def _read_int(path: str, default: int = 0) -> int:
    try:
        raw = _read(path).strip()
    except OSError:
        return default
    return int(raw) if raw.lstrip("-").isdigit() else default


def _rm_dir(path: str, timeout: float = 2.0) -> None:
    """rmdir a cgroup dir (children first), killing what is inside and retrying on EBUSY."""
    try:
        os.rmdir(path)  # the common case: an empty leaf (one syscall)
        return
    except FileNotFoundError:
        return
    except OSError:
        pass
    if not os.path.isdir(path):
        return
    for entry in os.scandir(path):
        if entry.is_dir(follow_symlinks=False):
            _rm_dir(entry.path, timeout)
    deadline = time.monotonic() + timeout
    while True:
        try:
            os.rmdir(path)
            return
        except FileNotFoundError:
            return
        except OSError as exc:
            if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                raise CgroupError(f"rmdir {path}: {exc.strerror}") from None
        for pid in _procs(path):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.001)


def _procs(path: str) -> list[int]:
    try:
        return [int(x) for x in _read(os.path.join(path, "cgroup.procs")).split()]
    except OSError:
        return []


def _swap_total(mem: dict) -> int | None:
    swap = mem.get("swap")
    return None if swap is None else int(swap)


def oom_kill_logged(path: str, pid: int, since: float) -> bool:
    """Whether the kernel's log (/dev/kmsg) tells of an OOM kill, since `since` (time.monotonic()), of a task
    in the cgroup at `path` (as this process's cgroup namespace names it: the log names it from the root) or
    of the process `pid`. For a cgroup gone before its count was read: under the systemd driver, systemd
    removes the scope once its last process has exited, which can come before the monitor reaps that process,
    and the kernel delays the memory.events notification of the kill when another came within 10 ms.
    The kernel writes the log before it sends the SIGKILL; its summary line ("oom-kill:...,task_memcg=...") is
    rate-limited, its "Killed process <pid>" line is not."""
    try:
        fd = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return False
    killed = b": Killed process %d (" % pid
    try:
        while True:
            try:
                record = os.read(fd, 8192)  # one record per read: "<prio>,<seq>,<usec>,<flags>;<text>"
            except BrokenPipeError:  # overwritten while we read: go on from the oldest left
                continue
            except OSError:  # EAGAIN: the end
                return False
            head, _, text = record.partition(b";")
            fields = head.split(b",")
            if len(fields) < 3 or not fields[2].isdigit() or int(fields[2]) / 1e6 < since - 1:
                continue  # (1 s: the log's clock and CLOCK_MONOTONIC may differ a little)
            if killed in text and text.startswith(b"Memory cgroup out of memory"):
                return True
            if text.startswith(b"oom-kill:"):
                start, end = text.find(b",task_memcg="), text.rfind(b",task=")
                memcg = text[start + len(b",task_memcg="):end].decode(errors="replace") if 0 <= start < end else ""
                if memcg == path or (path.startswith("/") and memcg.endswith(path)):
                    return True
    finally:
        os.close(fd)


class CgroupV1(Cgroup):
    version = 1

    def __init__(self, path: str, mounts: dict[str, str]):
        super().__init__(path)
        self.mounts = mounts

    def dir(self, controller: str) -> str | None:
        mp = self.mounts.get(controller)
        return None if mp is None else mp + self.path

    def _dirs(self) -> list[str]:
        return sorted({mp + self.path for mp in self.mounts.values()})

    def exists(self) -> bool:
        return any(os.path.isdir(d) for d in self._dirs())

    def create(self) -> None:
        for d in self._dirs():
            try:
                os.mkdir(d, 0o755)  # usually only the leaf is new: one syscall
            except FileExistsError:
                pass
            except FileNotFoundError:
                os.makedirs(d, exist_ok=True)
        cpuset = self.mounts.get("cpuset")
        if cpuset:  # a new v1 cpuset is empty: copy cpus/mems down from the nearest ancestor that has them
            d = cpuset + self.path
            empty = []
            while d != cpuset and not (_read(f"{d}/cpuset.cpus").strip() and _read(f"{d}/cpuset.mems").strip()):
                empty.append(d)
                d = os.path.dirname(d)
            for d in reversed(empty):
                parent = os.path.dirname(d)
                for f in ("cpuset.cpus", "cpuset.mems"):
                    if not _read(f"{d}/{f}").strip():
                        _write(f"{d}/{f}", _read(f"{parent}/{f}").strip())

    def self_attach_paths(self) -> list[bytes] | None:
        return [os.fsencode(f"{d}/tasks") for d in self._dirs()]

    def apply(self, resources: dict | None) -> list[str]:
        r = resources or {}
        warnings: list[str] = []
        cpu = r.get("cpu") or {}
        if d := self.dir("cpu"):
            if cpu.get("shares"):
                _write(f"{d}/cpu.shares", int(cpu["shares"]))
            if cpu.get("period"):
                _write(f"{d}/cpu.cfs_period_us", int(cpu["period"]))
            if cpu.get("quota") is not None:
                _write(f"{d}/cpu.cfs_quota_us", int(cpu["quota"]) if int(cpu["quota"]) > 0 else -1)
        if (d := self.dir("cpuset")) and (cpu.get("cpus") or cpu.get("mems")):
            if cpu.get("cpus"):
                _write(f"{d}/cpuset.cpus", cpu["cpus"])
            if cpu.get("mems"):
                _write(f"{d}/cpuset.mems", cpu["mems"])
        mem = r.get("memory") or {}
        if (d := self.dir("memory")) and mem:
            self._apply_memory(d, mem, warnings)
        pids = r.get("pids") or {}
        if (d := self.dir("pids")) and "limit" in pids:
            _write(f"{d}/pids.max", int(pids["limit"]) if int(pids["limit"]) > 0 else "max")
        if d := self.dir("hugetlb"):
            for hp in r.get("hugepageLimits") or []:
                _write(f"{d}/hugetlb.{hp['pageSize']}.limit_in_bytes", int(hp["limit"]))
        elif r.get("hugepageLimits"):
            warnings.append("hugetlb controller not mounted: hugepageLimits ignored")
        blkio = r.get("blockIO") or {}
        if (d := self.dir("blkio")) and blkio.get("weight"):
            path = f"{d}/blkio.weight" if os.path.exists(f"{d}/blkio.weight") else f"{d}/blkio.bfq.weight"
            if os.path.exists(path):
                _write(path, int(blkio["weight"]))
            else:
                warnings.append("blkio weight not supported by this kernel's I/O scheduler")
        if (d := self.dir("devices")) and r.get("devices"):
            for rule in r["devices"]:
                _write(f"{d}/devices.{'allow' if rule.get('allow') else 'deny'}", _device_rule(rule))
        if r.get("unified"):
            warnings.append("linux.resources.unified ignored on cgroup v1")
        return warnings

    @staticmethod
    def _apply_memory(d: str, mem: dict, warnings: list[str]) -> None:
        limit = mem.get("limit")
        swap = _swap_total(mem)
        has_memsw = os.path.exists(f"{d}/memory.memsw.limit_in_bytes")
        if swap is not None and not has_memsw:
            warnings.append("swap accounting disabled: memory.swap ignored")
            swap = None
        if limit is not None:
            limit = int(limit) if int(limit) > 0 else -1
            # memsw must stay >= limit: order the writes according to the direction of change
            if swap is not None:
                try:
                    _write(f"{d}/memory.limit_in_bytes", limit)
                    _write(f"{d}/memory.memsw.limit_in_bytes", swap)
                except CgroupError:
                    _write(f"{d}/memory.memsw.limit_in_bytes", swap)
                    _write(f"{d}/memory.limit_in_bytes", limit)
            else:
                _write(f"{d}/memory.limit_in_bytes", limit)
        elif swap is not None:
            _write(f"{d}/memory.memsw.limit_in_bytes", swap)
        if mem.get("reservation") is not None:
            _write(f"{d}/memory.soft_limit_in_bytes", int(mem["reservation"]))
        if mem.get("swappiness") is not None and 0 <= int(mem["swappiness"]) <= 100:
            _write(f"{d}/memory.swappiness", int(mem["swappiness"]))
        if mem.get("disableOOMKiller"):
            _write(f"{d}/memory.oom_control", 1)

    def attach(self, pid: int) -> None:
        for d in self._dirs():
            _write(f"{d}/cgroup.procs", pid)

    def pids(self) -> list[int]:
        d = self.dir("pids") or self.dir("memory") or (self._dirs() or [None])[0]
        return _procs(d) if d else []

    def stats(self) -> dict:
        mem = self.dir("memory")
        ms = _read_kv(f"{mem}/memory.stat") if mem else {}
        usage = _read_int(f"{mem}/memory.usage_in_bytes") if mem else 0
        inactive = ms.get("total_inactive_file", 0)
        acct = self.dir("cpuacct")
        pids = self.dir("pids")
        return {
            "timestamp_ns": time.time_ns(),
            "cpu_usage_ns": _read_int(f"{acct}/cpuacct.usage") if acct else 0,
            "memory_usage": usage,
            "memory_working_set": max(0, usage - inactive),
            "memory_rss": ms.get("total_rss", 0),
            "memory_cache": ms.get("total_cache", 0),
            "page_faults": ms.get("total_pgfault", 0),
            "major_page_faults": ms.get("total_pgmajfault", 0),
            "memory_limit": _read_int(f"{mem}/memory.limit_in_bytes") if mem else 0,
            "pids": _read_int(f"{pids}/pids.current") if pids else len(self.pids()),
            "oom_kills": self.oom_kills(),
            **self._extra_stats(mem, ms, acct),
        }

    def _extra_stats(self, mem: str | None, ms: dict, acct: str | None) -> dict:
        """The figures only the cAdvisor-style metrics need (ListPodSandboxMetrics)."""
        ticks = _read_kv(f"{acct}/cpuacct.stat") if acct else {}
        hz = os.sysconf("SC_CLK_TCK")
        cpu = self.dir("cpu")
        cs = _read_kv(f"{cpu}/cpu.stat") if cpu else {}
        return {
            "cpu_user_ns": ticks.get("user", 0) * 1_000_000_000 // hz,
            "cpu_system_ns": ticks.get("system", 0) * 1_000_000_000 // hz,
            "cpu_periods": cs.get("nr_periods", 0),
            "cpu_throttled_periods": cs.get("nr_throttled", 0),
            "cpu_throttled_ns": cs.get("throttled_time", 0),
            "memory_swap": ms.get("total_swap", 0),
            "memory_mapped_file": ms.get("total_mapped_file", 0),
            "memory_max_usage": _read_int(f"{mem}/memory.max_usage_in_bytes") if mem else 0,
            "memory_failcnt": _read_int(f"{mem}/memory.failcnt") if mem else 0,
            "memory_kernel": _read_int(f"{mem}/memory.kmem.usage_in_bytes") if mem else 0,
        }

    def oom_kills(self) -> int:
        mem = self.dir("memory")
        return _read_kv(f"{mem}/memory.oom_control").get("oom_kill", 0) if mem else 0

    def oom_watch(self) -> OomWatch | None:
        """cgroup.event_control: "<eventfd> <fd of memory.oom_control>" (the kernel signals the eventfd when
        the cgroup runs out of memory, and when it is removed)."""
        mem = self.dir("memory")
        if not mem:
            return None
        efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        try:
            ofd = os.open(f"{mem}/memory.oom_control", os.O_RDONLY | os.O_CLOEXEC)
            try:
                _write(f"{mem}/cgroup.event_control", f"{efd} {ofd}")
            finally:
                os.close(ofd)
        except (OSError, CgroupError):
            os.close(efd)
            return None
        return OomWatch(efd, mem)

    def remove(self) -> None:
        for d in self._dirs():
            _rm_dir(d)


def _device_rule(rule: dict) -> str:
    kind = rule.get("type") or "a"
    if kind == "a":
        return "a"
    major = "*" if rule.get("major") in (None, -1) else int(rule["major"])
    minor = "*" if rule.get("minor") in (None, -1) else int(rule["minor"])
    access = rule.get("access") or "rwm"
    if kind not in "cb" or not set(access) <= set("rwm"):
        raise CgroupError(f"bad device rule {rule!r}")
    return f"{kind} {major}:{minor} {access}"


def shares_to_weight(shares: int) -> int:
    """cgroup v1 cpu.shares [2, 262144] -> v2 cpu.weight [1, 10000] (the runc/kubernetes formula)."""
    if shares <= 0:
        return 100
    shares = min(max(shares, 2), 262144)
    return 1 + ((shares - 2) * 9999) // 262142


def blkio_weight_to_io(weight: int) -> int:
    """v1 blkio.weight [10, 1000] -> v2 io.weight [1, 10000]."""
    return 1 + (weight - 10) * 9999 // 990


class CgroupV2(Cgroup):
    version = 2

    def __init__(self, path: str, root: str = ROOT):
        super().__init__(path)
        self.root = root
        self.dir = root + path

    def exists(self) -> bool:
        return os.path.isdir(self.dir)

    def create(self) -> None:
        parts = [p for p in self.path.split("/") if p]
        cur = self.root
        for part in parts:
            # enable the controllers we use for the children of each ancestor
            avail = _read(os.path.join(cur, "cgroup.controllers")).split()
            enabled = _read(os.path.join(cur, "cgroup.subtree_control")).split()
            want = [c for c in _V2_CONTROLLERS if c in avail and c not in enabled]
            if want:
                _write(os.path.join(cur, "cgroup.subtree_control"), " ".join("+" + c for c in want))
            cur = os.path.join(cur, part)
            os.makedirs(cur, exist_ok=True)

    def files_for(self, resources: dict | None) -> tuple[dict[str, str], list[str]]:
        """The v2 file -> value mapping for OCI resources (pure: unit-testable without a cgroup2 mount)."""
        r = resources or {}
        out: dict[str, str] = {}
        warnings: list[str] = []
        cpu = r.get("cpu") or {}
        if cpu.get("shares"):
            out["cpu.weight"] = str(shares_to_weight(int(cpu["shares"])))
        if cpu.get("quota") is not None or cpu.get("period"):
            quota = cpu.get("quota")
            period = int(cpu.get("period") or 100000)
            out["cpu.max"] = f"{'max' if quota is None or int(quota) <= 0 else int(quota)} {period}"
        if cpu.get("cpus"):
            out["cpuset.cpus"] = str(cpu["cpus"])
        if cpu.get("mems"):
            out["cpuset.mems"] = str(cpu["mems"])
        mem = r.get("memory") or {}
        limit = mem.get("limit")
        if limit is not None:
            out["memory.max"] = str(int(limit)) if int(limit) > 0 else "max"
        swap = _swap_total(mem)
        if swap is not None:
            if swap < 0:
                out["memory.swap.max"] = "max"
            elif limit is not None and int(limit) > 0:
                if swap < int(limit):
                    raise CgroupError(f"memory.swap ({swap}) must be >= memory.limit ({limit})")
                out["memory.swap.max"] = str(swap - int(limit))  # OCI swap is memory+swap
            else:
                warnings.append("memory.swap without memory.limit ignored on cgroup v2")
        if mem.get("reservation") is not None:
            out["memory.low"] = str(int(mem["reservation"]))
        if mem.get("disableOOMKiller"):
            warnings.append("disableOOMKiller is not supported on cgroup v2")
        pids = r.get("pids") or {}
        if "limit" in pids:
            out["pids.max"] = str(int(pids["limit"])) if int(pids["limit"]) > 0 else "max"
        for hp in r.get("hugepageLimits") or []:
            out[f"hugetlb.{hp['pageSize']}.max"] = str(int(hp["limit"]))
        blkio = r.get("blockIO") or {}
        if blkio.get("weight"):
            out["io.weight"] = f"default {blkio_weight_to_io(int(blkio['weight']))}"
        for key, value in (r.get("unified") or {}).items():
            if "/" in key or key.startswith("cgroup.") or key in ("", ".", ".."):
                raise CgroupError(f"bad unified cgroup key {key!r}")
            out[key] = str(value)
        return out, warnings

    def apply(self, resources: dict | None) -> list[str]:
        """The files of files_for, and the device rules as a program attached to the cgroup (devicefilter.py;
        each apply with rules attaches one more, and all must allow: the CRI never updates device rules)."""
        files, warnings = self.files_for(resources)
        for name, value in files.items():
            path = os.path.join(self.dir, name)
            if not os.path.exists(path):
                if name.startswith(("memory.swap", "hugetlb.", "io.")):
                    warnings.append(f"{name} not available: ignored")
                    continue
                raise CgroupError(f"cgroup file {path} does not exist (controller not enabled?)")
            _write(path, value)
        devices = (resources or {}).get("devices")
        if devices:
            from runtime.cgroups import devicefilter  # (only where there is cgroup v2)
            try:
                devicefilter.attach(self.dir, devices)
            except (OSError, devicefilter.DeviceRuleError) as exc:
                raise CgroupError(f"device rules of {self.path}: {exc}") from None
        return warnings

    def self_attach_paths(self) -> list[bytes] | None:
        """cgroup.procs: "0" moves the writer's whole process (v2 has no per-thread `tasks` file, and takes the
        threadgroup lock either way). Lets an OCI runtime started by the monitor start in the cgroup."""
        return [os.fsencode(os.path.join(self.dir, "cgroup.procs"))]

    def attach(self, pid: int) -> None:
        _write(os.path.join(self.dir, "cgroup.procs"), pid)

    def pids(self) -> list[int]:
        return _procs(self.dir)

    def stats(self) -> dict:
        cpu = _read_kv(os.path.join(self.dir, "cpu.stat"))
        ms = _read_kv(os.path.join(self.dir, "memory.stat"))
        usage = _read_int(os.path.join(self.dir, "memory.current"))
        raw_max = ""
        try:
            raw_max = _read(os.path.join(self.dir, "memory.max")).strip()
        except OSError:
            pass
        return {
            "timestamp_ns": time.time_ns(),
            "cpu_usage_ns": cpu.get("usage_usec", 0) * 1000,
            "memory_usage": usage,
            "memory_working_set": max(0, usage - ms.get("inactive_file", 0)),
            "memory_rss": ms.get("anon", 0),
            "memory_cache": ms.get("file", 0),
            "page_faults": ms.get("pgfault", 0),
            "major_page_faults": ms.get("pgmajfault", 0),
            "memory_limit": int(raw_max) if raw_max.isdigit() else 0,
            "pids": _read_int(os.path.join(self.dir, "pids.current"), len(self.pids())),
            "oom_kills": self.oom_kills(),
            "cpu_user_ns": cpu.get("user_usec", 0) * 1000,
            "cpu_system_ns": cpu.get("system_usec", 0) * 1000,
            "cpu_periods": cpu.get("nr_periods", 0),
            "cpu_throttled_periods": cpu.get("nr_throttled", 0),
            "cpu_throttled_ns": cpu.get("throttled_usec", 0) * 1000,
            "memory_swap": _read_int(os.path.join(self.dir, "memory.swap.current")),
            "memory_mapped_file": ms.get("file_mapped", 0),
            "memory_max_usage": _read_int(os.path.join(self.dir, "memory.peak")),
            "memory_failcnt": _read_kv(os.path.join(self.dir, "memory.events")).get("max", 0),
            "memory_kernel": ms.get("kernel", 0) or ms.get("kernel_stack", 0) + ms.get("slab", 0),
        }

    def oom_kills(self) -> int:
        return _read_kv(os.path.join(self.dir, "memory.events")).get("oom_kill", 0)

    def oom_watch(self) -> OomWatch | None:
        """inotify on memory.events: the kernel notifies a modification when one of its counters moves."""
        try:
            return OomWatch(linux.inotify_watch(os.path.join(self.dir, "memory.events")))
        except OSError:
            return None

    def remove(self) -> None:
        _rm_dir(self.dir)
