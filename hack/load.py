#!/usr/bin/env python3
"""Load: many pods created in parallel, then minutes of ExecSync probes; zombies, file descriptors and memory watched.

    flock /tmp/pycri-tests.lock .venv/bin/python hack/load.py [--pods 110] [--clients 8] [--minutes 10] [--json out]

A private daemon (temp root and state, a CNI bridge network of its own; see hack/chaos.py) and the local registry.
`--pods` pods with 2 busybox containers each are created and started by `--clients` threads in parallel; then for
`--minutes` every container gets one ExecSync probe (`true`) a second, spread over the clients. Every
`--sample` seconds the run records:

  - zombies: processes in state Z whose parent is the daemon or a pod monitor (a zombie seen in two samples
    in a row, i.e. not reaped within the sampling interval, is a failure);
  - open file descriptors of the daemon and (summed) of the monitors;
  - RSS of the daemon and (summed) of the monitors.

Bounds (checked from the first sample after 30 s of probing, the warm-up, to the last), documented in
docs/reliability.md: daemon fds grow by at most 16, monitors' fds by at most 1 + pods/10 in total, daemon RSS by
at most max(24 MiB, 15 %), monitors' RSS by at most 10 % in total; no probe fails; no lasting zombie. Then
everything is removed and the machine checked for leaks, as in hack/chaos.py.
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import importlib.util
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import grpc  # noqa: E402

from pycri.api import api_pb2 as cri  # noqa: E402
from pycri.api import api_pb2_grpc  # noqa: E402
from tests.fixtures import leaks  # noqa: E402


def _chaos():
    name = "pycri_hack_chaos"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, REPO / "hack" / "chaos.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
    return sys.modules[name]


chaos = _chaos()
MIB = 1 << 20
WARMUP_SECONDS = 30


def say(msg: str) -> None:
    print(f"[load {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _status_field(pid: int, key: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def _stat(pid: int) -> tuple[str, int]:
    """(state, ppid)"""
    try:
        with open(f"/proc/{pid}/stat") as f:
            rest = f.read().rsplit(")", 1)[1].split()
        return rest[0], int(rest[1])
    except (OSError, IndexError):
        return "", 0


def monitor_pids(state: Path) -> list[int]:
    out = []
    for m in (state / "p").glob("*/monitor.json"):
        try:
            out.append(json.loads(m.read_text())["pid"])
        except (OSError, ValueError, KeyError):
            continue
    return out


def sample(daemon_pid: int, state: Path, t0: float) -> dict:
    monitors = monitor_pids(state)
    parents = set(monitors) | {daemon_pid}
    zombies = []
    for p in os.listdir("/proc"):
        if p.isdigit():
            st, ppid = _stat(int(p))
            if st == "Z" and ppid in parents:
                zombies.append(int(p))
    return {"t": round(time.monotonic() - t0, 1), "monitors": len(monitors),
            "daemon_fds": _fds(daemon_pid), "monitor_fds": sum(_fds(p) for p in monitors),
            "daemon_rss_kib": _status_field(daemon_pid, "VmRSS"),
            "monitor_rss_kib": sum(_status_field(p, "VmRSS") for p in monitors),
            "zombies": sorted(zombies)}


class Load:
    def __init__(self, d, registry, *, pods: int, clients: int, minutes: float, sample_every: float,
                 log=say) -> None:
        self.d = d
        self.registry = registry
        self.pods = pods
        self.clients = clients
        self.minutes = minutes
        self.sample_every = sample_every
        self.log = log
        self.channels = [grpc.insecure_channel(f"unix:{d.socket}", options=chaos.CHANNEL_OPTIONS)
                         for _ in range(clients)]
        self.rts = [api_pb2_grpc.RuntimeServiceStub(c) for c in self.channels]
        self.tag = d.workdir.name[-6:].replace("_", "x")
        self.cgroup_parent = f"/pycri-load-{self.tag}"
        self.containers: list[str] = []
        self.lock = threading.Lock()
        self.probe_ms: list[float] = []
        self.probe_errors: list[str] = []
        self.rounds_late = 0

    def close(self) -> None:
        for c in self.channels:
            c.close()

    def create_pod(self, i: int) -> list[str]:
        rt = self.rts[i % self.clients]
        name = f"load-{i}"
        pod = cri.PodSandboxConfig(
            metadata=cri.PodSandboxMetadata(name=name, namespace="load", uid=f"uid-{name}-{self.tag}"),
            hostname=name, log_directory=str(self.d.workdir / "logs" / name),
            linux=cri.LinuxPodSandboxConfig(cgroup_parent=self.cgroup_parent))
        sid = rt.RunPodSandbox(cri.RunPodSandboxRequest(config=pod), timeout=300).pod_sandbox_id
        out = []
        for c in ("app", "sidecar"):
            config = cri.ContainerConfig(metadata=cri.ContainerMetadata(name=c),
                                         image=cri.ImageSpec(image=self.registry.ref("busybox")),
                                         command=["sh", "-c", "while :; do sleep 5; done"], log_path=f"{c}/0.log")
            cid = rt.CreateContainer(cri.CreateContainerRequest(pod_sandbox_id=sid, config=config,
                                                                sandbox_config=pod), timeout=120).container_id
            rt.StartContainer(cri.StartContainerRequest(container_id=cid), timeout=120)
            out.append(cid)
        return out

    def probe(self, k: int, cid: str) -> None:
        t = time.perf_counter()
        try:
            resp = self.rts[k % self.clients].ExecSync(cri.ExecSyncRequest(container_id=cid, cmd=["true"], timeout=10),
                                                       timeout=30)
            ok = resp.exit_code == 0
            err = f"exit {resp.exit_code}"
        except grpc.RpcError as exc:
            ok, err = False, f"{exc.code().name}: {exc.details()}"
        dt = (time.perf_counter() - t) * 1000
        with self.lock:
            self.probe_ms.append(dt)
            if not ok:
                self.probe_errors.append(f"{cid[:12]}: {err}")

    def run(self) -> dict:
        img = api_pb2_grpc.ImageServiceStub(self.channels[0])
        img.PullImage(cri.PullImageRequest(image=cri.ImageSpec(image=self.registry.ref("busybox"))), timeout=120)
        t0 = time.monotonic()
        with cf.ThreadPoolExecutor(self.clients) as pool:
            for cids in pool.map(self.create_pod, range(self.pods)):
                self.containers += cids
        created_s = time.monotonic() - t0
        self.log(f"{self.pods} pods, {len(self.containers)} containers running after {created_s:.1f}s")
        samples = []
        t0 = time.monotonic()
        end = t0 + self.minutes * 60
        next_sample = t0
        rounds = 0
        with cf.ThreadPoolExecutor(self.clients) as pool:
            while time.monotonic() < end:
                start = time.monotonic()
                if start >= next_sample:
                    samples.append(sample(self.d.proc.pid, self.d.state, t0))
                    next_sample += self.sample_every
                    s = samples[-1]
                    self.log(f"t={s['t']}s fds {s['daemon_fds']}/{s['monitor_fds']} rss "
                             f"{s['daemon_rss_kib'] // 1024}/{s['monitor_rss_kib'] // 1024} MiB zombies "
                             f"{len(s['zombies'])} probes {len(self.probe_ms)} errors {len(self.probe_errors)}")
                list(pool.map(lambda kc: self.probe(*kc), enumerate(self.containers)))
                rounds += 1
                took = time.monotonic() - start
                if took > 1.0:
                    self.rounds_late += 1
                else:
                    time.sleep(1.0 - took)
        samples.append(sample(self.d.proc.pid, self.d.state, t0))
        return self.verdict(samples, rounds, created_s)

    def verdict(self, samples: list[dict], rounds: int, created_s: float) -> dict:
        failures = []
        base = next((s for s in samples if s["t"] >= WARMUP_SECONDS), samples[0])
        last = samples[-1]
        growth = {k: last[k] - base[k] for k in ("daemon_fds", "monitor_fds", "daemon_rss_kib", "monitor_rss_kib")}
        if growth["daemon_fds"] > 16:
            failures.append(f"daemon fds grew by {growth['daemon_fds']} (bound 16)")
        if growth["monitor_fds"] > 1 + self.pods // 10:
            failures.append(f"monitor fds grew by {growth['monitor_fds']} (bound {1 + self.pods // 10})")
        if growth["daemon_rss_kib"] > max(24 * 1024, base["daemon_rss_kib"] * 0.15):
            failures.append(f"daemon RSS grew by {growth['daemon_rss_kib'] // 1024} MiB")
        if growth["monitor_rss_kib"] > base["monitor_rss_kib"] * 0.10:
            failures.append(f"monitors' RSS grew by {growth['monitor_rss_kib'] // 1024} MiB")
        for a, b in zip(samples, samples[1:]):
            lasting = set(a["zombies"]) & set(b["zombies"])
            if lasting:
                failures.append(f"zombies not reaped between t={a['t']} and t={b['t']}: {sorted(lasting)[:10]}")
        if self.probe_errors:
            failures.append(f"{len(self.probe_errors)} probes failed, e.g. {self.probe_errors[:3]}")
        ms = sorted(self.probe_ms)
        return {"pods": self.pods, "containers": len(self.containers), "clients": self.clients,
                "create_seconds": round(created_s, 1), "minutes": self.minutes, "probe_rounds": rounds,
                "probe_rounds_over_1s": self.rounds_late, "probes": len(ms),
                "probe_ms": {"median": round(statistics.median(ms), 2) if ms else None,
                             "p99": round(ms[int(len(ms) * 0.99)], 2) if ms else None,
                             "max": round(ms[-1], 2) if ms else None},
                "baseline": base, "last": last, "growth": growth,
                "max_zombies_seen": max(len(s["zombies"]) for s in samples),
                "samples": samples, "failures": failures}

    def remove_all(self) -> None:
        rt = self.rts[0]
        items = rt.ListPodSandbox(cri.ListPodSandboxRequest(), timeout=60).items

        def rm(k_sb):
            k, sb = k_sb
            r = self.rts[k % self.clients]
            r.StopPodSandbox(cri.StopPodSandboxRequest(pod_sandbox_id=sb.id), timeout=120)
            r.RemovePodSandbox(cri.RemovePodSandboxRequest(pod_sandbox_id=sb.id), timeout=120)

        with cf.ThreadPoolExecutor(self.clients) as pool:
            list(pool.map(rm, enumerate(items)))


def run_load(workdir: Path, registry, *, pods: int, clients: int, minutes: float, sample_every: float = 10,
             subnet: str = "10.243.0.0/22", log=say) -> dict:
    before = leaks.snapshot()
    d = chaos.ChaosDaemon(workdir, {"sandbox_image": registry.ref("pause"), "log_level": "info",
                                    f'registries."{registry.host}"': {"insecure": True}})
    d.add_network(subnet)
    load = None
    result: dict = {"failures": []}
    try:
        d.start(timeout=60)
        load = Load(d, registry, pods=pods, clients=clients, minutes=minutes, sample_every=sample_every, log=log)
        try:
            result = load.run()
        finally:
            t = time.monotonic()
            load.remove_all()
            result["remove_seconds"] = round(time.monotonic() - t, 1)
            load.close()
        d.stop()
        problems = chaos.store_leaks(d.root) + chaos.state_leaks(d, load.cgroup_parent)
        chaos._remove_parent_cgroup(load.cgroup_parent)
        d.bridge and __import__("subprocess").run(["ip", "link", "delete", d.bridge], capture_output=True)
        problems += leaks.leaks_since(before, str(workdir))
        result["failures"] += [f"leak: {p}" for p in problems]
        return result
    except BaseException as exc:
        result["failures"].append(f"{type(exc).__name__}: {exc}")
        raise
    finally:
        forced = chaos.force_cleanup(d, load.cgroup_parent if load else "/pycri-load-none")
        if forced:
            result["forced_cleanup"] = forced
            log(f"forced clean-up: {forced}")
        with open("/proc/self/mountinfo") as f:
            mounted = any(line.split()[4].startswith(str(workdir)) for line in f)
        if not mounted:
            shutil.rmtree(workdir, ignore_errors=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pods", type=int, default=110)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--minutes", type=float, default=10)
    ap.add_argument("--sample", type=float, default=10, help="seconds between samples")
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("load.py needs root", file=sys.stderr)
        return 2
    from tests.fixtures.registry import RegistryServer, images_dir

    workdir = Path(tempfile.mkdtemp(prefix="pycri-load-", dir="/tmp"))
    regdir = Path(tempfile.mkdtemp(prefix="pycri-load-reg-", dir="/tmp"))
    try:
        with RegistryServer(regdir) as reg:
            reg.push_test_images(images_dir())
            result = run_load(workdir, reg, pods=args.pods, clients=args.clients, minutes=args.minutes,
                              sample_every=args.sample)
    finally:
        shutil.rmtree(regdir, ignore_errors=True)
    summary = {k: v for k, v in result.items() if k != "samples"}
    print(json.dumps(summary, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 1 if result.get("failures") else 0


if __name__ == "__main__":
    sys.exit(main())
