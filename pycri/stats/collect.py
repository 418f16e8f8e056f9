"""Every figure the CRI asks of running containers and pods, from one place.

ContainerStats/ListContainerStats, PodSandboxStats/ListPodSandboxStats (and their Stream* forms), the writable
layers' usage for ImageFsInfo, and ListPodSandboxMetrics (the cAdvisor-named set of pycri/stats/cadvisor.py).
The cgroup figures come from the pod's monitor (runtime/cgroups stats()); a pod's network and process count
are read from the host's /proc, the writable layers' usage by walking them.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from pycri import log
from pycri.api import api_pb2 as cri
from pycri.node import MonitorError, Usage, process_count, tree_usage
from pycri.pods.monitors import MonitorUnavailable
from pycri.state.records import C_RUNNING, SB_READY, ContainerRecord, SandboxRecord, matches
from pycri.stats import cadvisor

_log = log.get("stats")
FS_USAGE_TTL = 10.0  # seconds the walk of all writable layers (ImageFsInfo) is reused: the kubelet asks often


class Stats:
    def __init__(self, ctx) -> None:
        self.ctx = ctx  # the Daemon: config, records, monitors
        self._cpu_samples: dict[str, tuple[int, int]] = {}  # id -> (time ns, usage ns): for usage_nano_cores
        self._fs_usage: tuple[float, tuple[int, int]] | None = None

    # ---- containers ----

    async def cgroup_stats(self, rec: ContainerRecord) -> dict | None:
        """The raw cgroup figures of a running container (runtime/cgroups stats()), None if unavailable."""
        sandbox = self.ctx.records.sandboxes.get(rec.sandbox_id)
        if sandbox is None:  # removed while this call read the host (_read_host)
            return None
        try:
            return await self.ctx.monitors.call(sandbox.monitor_dir, "stats", rec.id)
        except (MonitorError, MonitorUnavailable):
            return None

    async def container(self, rec: ContainerRecord) -> cri.ContainerStats:
        found = await self._host_figures([rec], [])
        return await self._container(rec, found)

    async def _container(self, rec: ContainerRecord, found: HostFigures) -> cri.ContainerStats:
        """found: what _host_figures read for the call (this container's writable layer among them)."""
        now = time.time_ns()
        attrs = cri.ContainerAttributes(id=rec.id, metadata=rec.config.metadata, labels=rec.config.labels,
                                        annotations=rec.config.annotations)
        out = cri.ContainerStats(attributes=attrs)
        if rec.state == C_RUNNING:
            st = await self.cgroup_stats(rec)
            if st:
                usage = int(st.get("cpu_usage_ns", 0))
                cpu = cri.CpuUsage(timestamp=now, usage_core_nano_seconds=cri.UInt64Value(value=usage))
                last = self._cpu_samples.get(rec.id)
                if last is not None and now > last[0] and usage >= last[1]:
                    cpu.usage_nano_cores.value = int((usage - last[1]) * 1e9 / (now - last[0]))
                self._sample(rec.id, now, usage)
                out.cpu.CopyFrom(cpu)
                working_set = int(st.get("memory_working_set", 0))
                limit = int(st.get("memory_limit") or 0)
                out.memory.CopyFrom(cri.MemoryUsage(
                    timestamp=now,
                    working_set_bytes=cri.UInt64Value(value=working_set),
                    available_bytes=cri.UInt64Value(value=max(limit - working_set, 0)) if 0 < limit < 1 << 62
                    else None,
                    usage_bytes=cri.UInt64Value(value=int(st.get("memory_usage", 0))),
                    rss_bytes=cri.UInt64Value(value=int(st.get("memory_rss", 0))),
                    page_faults=cri.UInt64Value(value=int(st.get("page_faults", 0))),
                    major_page_faults=cri.UInt64Value(value=int(st.get("major_page_faults", 0)))))
        usage = found.layers[rec.id]
        if isinstance(usage, OSError):  # this container's figures are left out, not every container's
            _log.warning("writable layer not counted", container_id=rec.id, error=str(usage))
            return out
        if not usage.complete:
            _log.warning("writable layer kept changing while counted; its usage is a lower bound",
                         container_id=rec.id)
        out.writable_layer.CopyFrom(cri.FilesystemUsage(
            timestamp=now, fs_id=cri.FilesystemIdentifier(mountpoint=found.container_fs),
            used_bytes=cri.UInt64Value(value=usage.bytes), inodes_used=cri.UInt64Value(value=usage.inodes)))
        return out

    async def _host_figures(self, containers: list[ContainerRecord], pods: list[SandboxRecord]) -> HostFigures:
        """What a stats call reads from the host itself, in one thread job for the whole call rather than one
        per container and pod (each is an event loop wake-up that other calls wait behind)."""
        return await asyncio.to_thread(_read_host, self.ctx.config.root_path, containers, pods)

    def _sample(self, cid: str, now: int, usage: int) -> None:
        """Keep the last cpu sample of a container; the samples of removed containers are dropped on the way."""
        self._cpu_samples[cid] = (now, usage)
        known = self.ctx.records.containers
        if len(self._cpu_samples) > len(known):
            for gone in [c for c in self._cpu_samples if c not in known]:
                del self._cpu_samples[gone]

    async def containers(self, flt) -> list[cri.ContainerStats]:
        wanted = [rec for rec in self.ctx.records.containers.values()
                  if rec.state == C_RUNNING and matches(flt, rec.id, rec.config.labels, sandbox_id=rec.sandbox_id)]
        found = await self._host_figures(wanted, [])
        return list(await asyncio.gather(*(self._container(rec, found) for rec in wanted)))

    async def fs_usage(self) -> tuple[str, int, int]:
        """(container fs, bytes, inodes) of all writable layers, for ImageFsInfo: the container fs is the name
        container_fs() gives (looked at on each call), the walk is cached for a few seconds because the kubelet
        asks often."""
        now = time.monotonic()
        if self._fs_usage is None or now - self._fs_usage[0] > FS_USAGE_TTL:
            usage = await asyncio.to_thread(tree_usage, self.ctx.config.root_path / "containers")
            self._fs_usage = (now, (usage.bytes, usage.inodes))
        return (container_fs(self.ctx.config.root_path), *self._fs_usage[1])

    # ---- pods ----

    def _ready_pods(self, flt) -> list[SandboxRecord]:
        return [rec for rec in self.ctx.records.sandboxes.values()
                if rec.state == SB_READY and matches(flt, rec.id, rec.config.labels)]

    async def pod(self, rec: SandboxRecord) -> cri.PodSandboxStats:
        return (await self.pods(None, [rec]))[0]

    async def pods(self, flt, recs: list[SandboxRecord] | None = None) -> list[cri.PodSandboxStats]:
        """Pod stats: the sum of its containers' cpu and memory, its netns's interfaces, its process count."""
        recs = self._ready_pods(flt) if recs is None else recs
        running = {rec.id: [c for c in self.ctx.records.containers_of(rec.id) if c.state == C_RUNNING]
                   for rec in recs}
        found = await self._host_figures([c for cs in running.values() for c in cs], recs)
        return list(await asyncio.gather(*(self._pod(rec, running[rec.id], found) for rec in recs)))

    async def _pod(self, rec: SandboxRecord, containers: list[ContainerRecord], found: HostFigures
                   ) -> cri.PodSandboxStats:
        config = rec.config
        now = time.time_ns()
        cstats = list(await asyncio.gather(*(self._container(c, found) for c in containers)))
        linux = cri.LinuxPodSandboxStats(containers=cstats)
        cpu = sum(s.cpu.usage_core_nano_seconds.value for s in cstats)
        nano = sum(s.cpu.usage_nano_cores.value for s in cstats)
        linux.cpu.CopyFrom(cri.CpuUsage(timestamp=now, usage_core_nano_seconds=cri.UInt64Value(value=cpu),
                                        usage_nano_cores=cri.UInt64Value(value=nano)))
        linux.memory.CopyFrom(cri.MemoryUsage(
            timestamp=now,
            working_set_bytes=cri.UInt64Value(value=sum(s.memory.working_set_bytes.value for s in cstats)),
            usage_bytes=cri.UInt64Value(value=sum(s.memory.usage_bytes.value for s in cstats)),
            rss_bytes=cri.UInt64Value(value=sum(s.memory.rss_bytes.value for s in cstats))))
        interfaces = found.interfaces.get(rec.id)
        if interfaces:
            usage = cri.NetworkUsage(timestamp=now, interfaces=interfaces)
            default = next((i for i in interfaces if i.name == "eth0"), interfaces[0])
            usage.default_interface.CopyFrom(default)
            linux.network.CopyFrom(usage)
        linux.process.CopyFrom(cri.ProcessUsage(timestamp=now,
                                                process_count=cri.UInt64Value(value=found.processes[rec.id])))
        attrs = cri.PodSandboxAttributes(id=rec.id, metadata=config.metadata, labels=config.labels,
                                         annotations=config.annotations)
        return cri.PodSandboxStats(attributes=attrs, linux=linux)

    # ---- cAdvisor-named metrics ----

    @staticmethod
    def metric_descriptors() -> list[cri.MetricDescriptor]:
        return [d.pb() for d in cadvisor.DESCRIPTORS]

    async def pod_metrics(self) -> list[cri.PodSandboxMetrics]:
        return list(await asyncio.gather(*(self._pod_metrics(rec) for rec in self._ready_pods(None))))

    async def _pod_metrics(self, rec: SandboxRecord) -> cri.PodSandboxMetrics:
        running = [c for c in self.ctx.records.containers_of(rec.id) if c.state == C_RUNNING]
        stats = await asyncio.gather(*(self.cgroup_stats(c) for c in running))
        out = cri.PodSandboxMetrics(pod_sandbox_id=rec.id)
        for c, st in zip(running, stats):
            if st:
                out.container_metrics.append(cri.ContainerMetrics(
                    container_id=c.id, metrics=cadvisor.container_metrics(
                        c.id, c.config.metadata.name, c.config.image.image, st, c.resources)))
        if rec.infra_pid and not rec.host_network:
            interfaces = await asyncio.to_thread(cadvisor.read_net_dev, rec.infra_pid)
            out.metrics.extend(cadvisor.network_metrics(rec.id, interfaces))
        return out


@dataclass
class HostFigures:
    """What one stats call read from the host: the containers' writable layers (a Usage, or the OSError that
    stopped the walk), the name of their file system, and per pod its interfaces and process count."""
    container_fs: str
    layers: dict[str, Usage | OSError] = field(default_factory=dict)
    interfaces: dict[str, list] = field(default_factory=dict)
    processes: dict[str, int] = field(default_factory=dict)


def _read_host(root: Path, containers: list[ContainerRecord], pods: list[SandboxRecord]) -> HostFigures:
    found = HostFigures(container_fs(root))
    for rec in containers:
        try:
            found.layers[rec.id] = tree_usage(Path(rec.layer_dir) / "upper")
        except OSError as exc:
            found.layers[rec.id] = exc
    pids: dict[str, list[int]] = {}
    for rec in containers:
        pids.setdefault(rec.sandbox_id, []).append(rec.pid)
    for rec in pods:
        if rec.state == SB_READY and rec.netns:
            found.interfaces[rec.id] = _net_dev(rec.infra_pid)
        found.processes[rec.id] = process_count(pids.get(rec.id, []))
    return found


def container_fs(root: Path) -> str:
    """The file system of the containers' writable layers as ImageFsInfo and ContainerStats name it: `<root>`, the
    image file system's name, when `<root>/containers` is on the same device as `<root>`, else `<root>/containers`.

    The 1.29-1.31 kubelet compares the two names (not devices) to decide that images and writable layers are on
    separate disks; two names for one disk made it take a split it does not support, and with
    KubeletSeparateDiskGC off stop evicting altogether (docs/operations.md, "Disks")."""
    layers = root / "containers"
    try:
        same = os.stat(root).st_dev == os.stat(layers).st_dev
    except OSError:  # (not made yet: it will be, under root)
        same = True
    return str(root) if same else str(layers)


def _net_dev(pid: int) -> list:
    """Interface counters of the netns a process is in, lo excluded."""
    return [cri.NetworkInterfaceUsage(
        name=name, rx_bytes=cri.UInt64Value(value=c["rx_bytes"]), rx_errors=cri.UInt64Value(value=c["rx_errors"]),
        tx_bytes=cri.UInt64Value(value=c["tx_bytes"]), tx_errors=cri.UInt64Value(value=c["tx_errors"]))
        for name, c in cadvisor.read_net_dev(pid).items()]
