"""cAdvisor-named metrics for ListMetricDescriptors and ListPodSandboxMetrics.

A kubelet with the PodAndContainerStatsFromCRI feature serves /metrics/cadvisor from these RPCs instead of running
cAdvisor. Names, help texts and label keys follow cAdvisor (and CRI-O, the other runtime that implements them).
CRI carries every value as a uint64, so the `_seconds_total` counters are whole seconds, truncated, as CRI-O does.

Every metric has the labels id, name, image (container id, container name, image; for pod-level metrics the
sandbox id, "POD" and ""), plus the extra keys of its descriptor.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from pycri.api import api_pb2 as cri

BASE_LABELS = ("id", "name", "image")
_NS = 1_000_000_000


@dataclass(frozen=True)
class Descriptor:
    name: str
    help: str
    extra_labels: tuple[str, ...] = ()
    counter: bool = False

    def pb(self) -> cri.MetricDescriptor:
        return cri.MetricDescriptor(name=self.name, help=self.help, label_keys=list(BASE_LABELS + self.extra_labels))


def _d(name: str, help: str, *extra: str) -> Descriptor:
    return Descriptor(name, help, tuple(extra), counter=name.endswith("_total"))


# Container-level metrics: (descriptor, stats key or function of the stats dict and the record's resources).
CPU_USER = _d("container_cpu_user_seconds_total", "Cumulative user CPU time consumed in seconds.")
CPU_SYSTEM = _d("container_cpu_system_seconds_total", "Cumulative system CPU time consumed in seconds.")
CPU_USAGE = _d("container_cpu_usage_seconds_total", "Cumulative CPU time consumed in seconds.", "cpu")
CPU_PERIODS = _d("container_cpu_cfs_periods_total", "Number of elapsed enforcement period intervals.")
CPU_THROTTLED = _d("container_cpu_cfs_throttled_periods_total", "Number of throttled period intervals.")
CPU_THROTTLED_S = _d("container_cpu_cfs_throttled_seconds_total",
                     "Total time duration the container has been throttled.")
MEM_CACHE = _d("container_memory_cache", "Number of bytes of page cache memory.")
MEM_RSS = _d("container_memory_rss", "Size of RSS in bytes.")
MEM_KERNEL = _d("container_memory_kernel_usage", "Size of kernel memory allocated in bytes.")
MEM_MAPPED = _d("container_memory_mapped_file", "Size of memory mapped files in bytes.")
MEM_SWAP = _d("container_memory_swap", "Container swap usage in bytes.")
MEM_FAILCNT = _d("container_memory_failcnt", "Number of memory usage hits limits.")
MEM_USAGE = _d("container_memory_usage_bytes",
               "Current memory usage in bytes, including all memory regardless of when it was accessed.")
MEM_MAX = _d("container_memory_max_usage_bytes", "Maximum memory usage recorded in bytes.")
MEM_WS = _d("container_memory_working_set_bytes", "Current working set in bytes.")
MEM_FAILURES = _d("container_memory_failures_total", "Cumulative count of memory allocation failures.",
                  "failure_type", "scope")
OOM_EVENTS = _d("container_oom_events_total", "Count of out of memory events observed for the container.")
PROCESSES = _d("container_processes", "Number of processes running inside the container.")
SPEC_MEM_LIMIT = _d("container_spec_memory_limit_bytes", "Memory limit for the container in bytes.")
SPEC_CPU_PERIOD = _d("container_spec_cpu_period", "CPU period of the container.")
SPEC_CPU_QUOTA = _d("container_spec_cpu_quota", "CPU quota of the container.")
SPEC_CPU_SHARES = _d("container_spec_cpu_shares", "CPU share of the container.")
LAST_SEEN = _d("container_last_seen", "Last time a container was seen by the exporter.")

# Pod-level metrics (the pod's network namespace).
NET = {
    "rx_bytes": _d("container_network_receive_bytes_total", "Cumulative count of bytes received.", "interface"),
    "rx_packets": _d("container_network_receive_packets_total", "Cumulative count of packets received.",
                     "interface"),
    "rx_dropped": _d("container_network_receive_packets_dropped_total",
                     "Cumulative count of packets dropped while receiving.", "interface"),
    "rx_errors": _d("container_network_receive_errors_total",
                    "Cumulative count of errors encountered while receiving.", "interface"),
    "tx_bytes": _d("container_network_transmit_bytes_total", "Cumulative count of bytes transmitted.", "interface"),
    "tx_packets": _d("container_network_transmit_packets_total", "Cumulative count of packets transmitted.",
                     "interface"),
    "tx_dropped": _d("container_network_transmit_packets_dropped_total",
                     "Cumulative count of packets dropped while transmitting.", "interface"),
    "tx_errors": _d("container_network_transmit_errors_total",
                    "Cumulative count of errors encountered while transmitting.", "interface"),
}

# Stats keys (runtime/cgroups stats()) served as-is.
_PLAIN = [
    (CPU_PERIODS, "cpu_periods"), (CPU_THROTTLED, "cpu_throttled_periods"),
    (MEM_CACHE, "memory_cache"), (MEM_RSS, "memory_rss"), (MEM_KERNEL, "memory_kernel"),
    (MEM_MAPPED, "memory_mapped_file"), (MEM_SWAP, "memory_swap"), (MEM_FAILCNT, "memory_failcnt"),
    (MEM_USAGE, "memory_usage"), (MEM_MAX, "memory_max_usage"), (MEM_WS, "memory_working_set"),
    (OOM_EVENTS, "oom_kills"), (PROCESSES, "pids"),
]

DESCRIPTORS: list[Descriptor] = [
    LAST_SEEN, CPU_USER, CPU_SYSTEM, CPU_USAGE, CPU_THROTTLED_S, *(d for d, _ in _PLAIN), MEM_FAILURES,
    SPEC_MEM_LIMIT, SPEC_CPU_PERIOD, SPEC_CPU_QUOTA, SPEC_CPU_SHARES, *NET.values(),
]


def _metric(desc: Descriptor, value: int, labels: list[str], now: int) -> cri.Metric:
    return cri.Metric(name=desc.name, timestamp=now, label_values=labels,
                      metric_type=cri.MetricType.COUNTER if desc.counter else cri.MetricType.GAUGE,
                      value=cri.UInt64Value(value=max(0, int(value))))


def container_metrics(container_id: str, name: str, image: str, stats: dict,
                      resources: cri.LinuxContainerResources, now: int | None = None) -> list[cri.Metric]:
    """Metrics of one container from its cgroup stats (see runtime/cgroups) and its resources in effect."""
    now = now or time.time_ns()
    base = [container_id, name, image]
    out = [_metric(LAST_SEEN, now // _NS, base, now),
           _metric(CPU_USER, stats.get("cpu_user_ns", 0) // _NS, base, now),
           _metric(CPU_SYSTEM, stats.get("cpu_system_ns", 0) // _NS, base, now),
           _metric(CPU_USAGE, stats.get("cpu_usage_ns", 0) // _NS, base + ["total"], now),
           _metric(CPU_THROTTLED_S, stats.get("cpu_throttled_ns", 0) // _NS, base, now)]
    out += [_metric(desc, stats.get(key, 0), base, now) for desc, key in _PLAIN]
    faults, major = int(stats.get("page_faults", 0)), int(stats.get("major_page_faults", 0))
    for kind, value in (("pgfault", faults - major), ("pgmajfault", major)):
        for scope in ("container", "hierarchy"):
            out.append(_metric(MEM_FAILURES, value, base + [kind, scope], now))
    limit = int(stats.get("memory_limit") or 0)
    out.append(_metric(SPEC_MEM_LIMIT, limit if 0 < limit < 1 << 62 else 0, base, now))
    out.append(_metric(SPEC_CPU_PERIOD, resources.cpu_period, base, now))
    out.append(_metric(SPEC_CPU_QUOTA, max(resources.cpu_quota, 0), base, now))
    out.append(_metric(SPEC_CPU_SHARES, resources.cpu_shares, base, now))
    return out


def network_metrics(sandbox_id: str, interfaces: dict[str, dict[str, int]], now: int | None = None
                    ) -> list[cri.Metric]:
    """Pod-level metrics of the pod's network interfaces ({name: {rx_bytes: .., ...}})."""
    now = now or time.time_ns()
    out = []
    for ifname, counters in sorted(interfaces.items()):
        for key, desc in NET.items():
            out.append(_metric(desc, counters.get(key, 0), [sandbox_id, "POD", "", ifname], now))
    return out


def read_net_dev(pid: int) -> dict[str, dict[str, int]]:
    """/proc/<pid>/net/dev of the process's netns, lo excluded: {interface: counters}."""
    try:
        with open(f"/proc/{pid}/net/dev") as f:
            lines = f.read().splitlines()[2:]
    except OSError:
        return {}
    out = {}
    for line in lines:
        name, _, data = line.partition(":")
        name, fields = name.strip(), data.split()
        if name == "lo" or len(fields) < 16:
            continue
        v = [int(x) for x in fields]
        out[name] = {"rx_bytes": v[0], "rx_packets": v[1], "rx_errors": v[2], "rx_dropped": v[3],
                     "tx_bytes": v[8], "tx_packets": v[9], "tx_errors": v[10], "tx_dropped": v[11]}
    return out
