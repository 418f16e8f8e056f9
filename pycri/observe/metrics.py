"""Prometheus metrics: what the daemon counts, and the `GET /metrics` page.

Off by default (`[metrics] address = ""`). The hooks below (`rpc`, `monitor_spawn`, `cni_call`, `image_pull`) are
called from the hot paths whether or not metrics are on; they do nothing until `enable()` has run, and
prometheus_client is imported only then, so a daemon without metrics pays neither its import time (~0.1 s) nor
its memory (~1.5 MiB). Figures that are state rather than events (containers and sandboxes by state, pulls in
flight, bytes pulled) are read from the daemon at scrape time by a collector, never kept twice.
"""

from __future__ import annotations

from typing import Any

# Seconds; RPCs range from sub-millisecond lookups to minutes-long pulls and stops with a grace period.
RPC_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
PULL_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)
SPAWN_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
CNI_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_m: "_Metrics | None" = None


class _Metrics:
    def __init__(self, daemon: Any) -> None:
        from prometheus_client import CollectorRegistry, Histogram
        from prometheus_client.process_collector import ProcessCollector

        self.registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=self.registry)  # process_resident_memory_bytes, open fds, cpu seconds
        self.registry.register(_StateCollector(daemon))
        self.rpc = Histogram("pycri_grpc_request_duration_seconds",
                             "CRI RPCs by method and gRPC status code, and how long they took.",
                             ["method", "code"], buckets=RPC_BUCKETS, registry=self.registry)
        self.pull = Histogram("pycri_image_pull_duration_seconds",
                              "Image pulls (PullImage and the sandbox image) by result, and how long they took.",
                              ["result"], buckets=PULL_BUCKETS, registry=self.registry)
        self.spawn = Histogram("pycri_monitor_spawn_duration_seconds",
                               "Time to spawn a pod's monitor process until its socket answers.",
                               buckets=SPAWN_BUCKETS, registry=self.registry)
        self.cni = Histogram("pycri_cni_plugin_duration_seconds",
                             "CNI plugin invocations by plugin type, command (ADD, DEL, CHECK) and result.",
                             ["plugin", "command", "result"], buckets=CNI_BUCKETS, registry=self.registry)


class _StateCollector:
    """Gauges read from the daemon's records and the image manager at each scrape."""

    def __init__(self, daemon: Any) -> None:
        self.daemon = daemon

    def describe(self):
        return []  # no fixed set: the collector is only ever asked to collect

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        from pycri.state.records import C_CREATED, C_CREATING, C_EXITED, C_RUNNING, C_UNKNOWN, SB_CREATING, SB_NOTREADY, \
            SB_READY

        records = self.daemon.records
        containers = GaugeMetricFamily("pycri_containers", "Containers known to the daemon, by state.",
                                       labels=["state"])
        for state, n in _count_states(records.containers.values(),
                                      (C_CREATING, C_CREATED, C_RUNNING, C_EXITED, C_UNKNOWN)).items():
            containers.add_metric([state], n)
        yield containers
        sandboxes = GaugeMetricFamily("pycri_sandboxes", "Pod sandboxes known to the daemon, by state.",
                                      labels=["state"])
        for state, n in _count_states(records.sandboxes.values(), (SB_CREATING, SB_READY, SB_NOTREADY)).items():
            sandboxes.add_metric([state], n)
        yield sandboxes

        images = self.daemon.images
        fetched = CounterMetricFamily("pycri_image_pull_bytes",
                                      "Bytes received from registries for image blobs (including downloads that "
                                      "later failed).")
        fetched.add_metric([], images.content.bytes_fetched)
        yield fetched
        pulls = images.pulls.snapshot()
        yield GaugeMetricFamily("pycri_image_pulls_in_flight", "Image pulls in progress.", value=len(pulls))
        done = GaugeMetricFamily("pycri_image_pull_progress_bytes",
                                 "Bytes of the image's layers present so far, per pull in flight.", labels=["image"])
        total = GaugeMetricFamily("pycri_image_pull_size_bytes",
                                  "Total bytes of the image's layers, per pull in flight (0 while resolving).",
                                  labels=["image"])
        per_image: dict[str, tuple[int, int]] = {}
        for p in pulls:  # two PullImage calls for one reference share their downloads: report it once
            prev = per_image.get(p["image"], (0, 0))
            per_image[p["image"]] = (max(prev[0], p["done_bytes"]), max(prev[1], p["total_bytes"]))
        for image, (d, t) in sorted(per_image.items()):
            done.add_metric([image], d)
            total.add_metric([image], t)
        yield done
        yield total


def _count_states(records, states: tuple[str, ...]) -> dict[str, int]:
    counts = dict.fromkeys(states, 0)
    for rec in records:
        counts[rec.state] = counts.get(rec.state, 0) + 1
    return counts


def enable(daemon: Any) -> None:
    """Start counting (imports prometheus_client). Idempotent per daemon."""
    global _m
    _m = _Metrics(daemon)


def disable() -> None:
    global _m
    _m = None


def enabled() -> bool:
    return _m is not None


def exposition() -> bytes:
    """The metrics page in the Prometheus text format."""
    if _m is None:
        return b""
    from prometheus_client import generate_latest

    return generate_latest(_m.registry)


# ---- hooks (no-ops while metrics are off)

def rpc(method: str, code: str, seconds: float) -> None:
    if _m is not None:
        _m.rpc.labels(method, code).observe(seconds)


def image_pull(result: str, seconds: float) -> None:
    if _m is not None:
        _m.pull.labels(result).observe(seconds)


def monitor_spawn(seconds: float) -> None:
    if _m is not None:
        _m.spawn.observe(seconds)


def cni_call(plugin: str, command: str, result: str, seconds: float) -> None:
    if _m is not None:
        _m.cni.labels(plugin, command, result).observe(seconds)
