"""The CRI workload, timed per RPC over gRPC (the generated pycri stubs), and its statistics.

Phases, per runtime:
  pull       N x: remove the test images, PullImage multilayer; remove them, PullImage busybox
  lifecycle  N x: RunPodSandbox, PodSandboxStatus, CreateContainer (busybox `sleep 3600`), StartContainer,
                  ContainerStatus, ExecSync `true`, ExecSync `echo hi`, StopContainer (timeout 0),
                  RemoveContainer, StopPodSandbox, RemovePodSandbox
  density    110 pods with one running container each: ListContainers / ListPodSandbox p50/p95/p99, daemon RSS,
             private memory per pod (see memory.py)
An RPC that answers UNIMPLEMENTED makes its operation "n/a" (and the steps that need it "not reached"), never a
crash. The first `warmup` iterations of each phase are not recorded.
"""
from __future__ import annotations

import math
import statistics
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field

import grpc

from pycri.api import api_pb2 as cri
from pycri.api import api_pb2_grpc

from . import common
from .common import BenchEnv, log
from .memory import MIB, PodRef

RPC_TIMEOUT = 120.0
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
POD_NAMESPACE = "pycri-bench"
PULL_IMAGES = ("multilayer", "busybox")
LIFECYCLE_OPS = ("RunPodSandbox", "PodSandboxStatus", "CreateContainer", "StartContainer", "ContainerStatus",
                 "ExecSync[true]", "ExecSync[echo hi]", "StopContainer", "RemoveContainer", "StopPodSandbox",
                 "RemovePodSandbox")
DENSITY_OPS = ("ListContainers@110", "ListPodSandbox@110")


class Skip(Exception):
    """An RPC failed or is not implemented; the rest of this iteration is skipped."""

    def __init__(self, op: str, reason: str):
        super().__init__(f"{op}: {reason}")
        self.op, self.reason = op, reason


# ---------------------------------------------------------------- statistics

def percentile(xs: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    s = sorted(xs)
    k = (len(s) - 1) * q
    f = math.floor(k)
    c = min(f + 1, len(s) - 1)
    return s[f] + (s[c] - s[f]) * (k - f)


def summarize(xs: list[float]) -> dict | None:
    if not xs:
        return None
    return {"n": len(xs), "median": statistics.median(xs), "p95": percentile(xs, 0.95),
            "p99": percentile(xs, 0.99), "min": min(xs), "max": max(xs), "mean": statistics.fmean(xs)}


@dataclass
class Results:
    runtime: str
    version: str = ""
    samples: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))   # op -> seconds
    unavailable: dict[str, str] = field(default_factory=dict)                            # op -> why n/a
    not_reached: dict[str, str] = field(default_factory=dict)                            # op -> what blocked it
    errors: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    memory: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def stats(self, op: str) -> dict | None:
        return summarize(self.samples.get(op, []))

    def why_missing(self, op: str) -> str:
        if op in self.unavailable:
            return self.unavailable[op]
        if self.errors.get(op):
            return f"failed: {self.errors[op][-1][:80]}"
        return self.not_reached.get(op, "not measured")

    def to_json(self) -> dict:
        return {"runtime": self.runtime, "version": self.version,
                "samples_ms": {k: [round(v * 1000, 3) for v in vs] for k, vs in self.samples.items()},
                "stats_ms": {k: {m: (round(x * 1000, 3) if m != "n" else x) for m, x in s.items()}
                             for k in self.samples if (s := self.stats(k))},
                "unavailable": self.unavailable, "not_reached": self.not_reached, "errors": dict(self.errors),
                "memory": self.memory,
                "notes": self.notes}


# ---------------------------------------------------------------- the client

class CRIClient:
    """Blocking CRI client; `call` times one RPC and books it under `op`."""

    def __init__(self, endpoint: str, results: Results):
        self.channel = grpc.insecure_channel(endpoint, options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES)])
        self.rt = api_pb2_grpc.RuntimeServiceStub(self.channel)
        self.img = api_pb2_grpc.ImageServiceStub(self.channel)
        self.results = results

    def close(self) -> None:
        self.channel.close()

    def call(self, op: str, method, request, record: bool = True, timeout: float = RPC_TIMEOUT):
        if op in self.results.unavailable:
            raise Skip(op, self.results.unavailable[op])
        t0 = time.perf_counter()
        try:
            resp = method(request, timeout=timeout)
        except grpc.RpcError as exc:
            code = exc.code()
            if code == grpc.StatusCode.UNIMPLEMENTED:
                self.results.unavailable[op] = "UNIMPLEMENTED"
                raise Skip(op, "UNIMPLEMENTED") from None
            msg = f"{code.name}: {exc.details()}"
            self.results.errors[op].append(msg)
            raise Skip(op, msg) from None
        if record:
            self.results.samples[op].append(time.perf_counter() - t0)
        return resp

    def quiet(self, method, request, timeout: float = 60.0):
        """An untimed best-effort call (clean-up): returns None on any error."""
        try:
            return method(request, timeout=timeout)
        except grpc.RpcError:
            return None


# ---------------------------------------------------------------- the workload

class Workload:
    def __init__(self, daemon, env: BenchEnv, results: Results, iterations: int, warmup: int = 1):
        self.daemon = daemon
        self.env = env
        self.results = results
        self.iterations = iterations
        self.warmup = warmup
        self.client = CRIClient(daemon.endpoint, results)
        self.live_pods: dict[str, PodRef] = {}       # sandbox id -> pod, for clean-up

    # -- helpers
    def pod_config(self, name: str) -> cri.PodSandboxConfig:
        uid = str(uuid.uuid4())
        logdir = self.env.pod_log_dir(self.daemon.name, uid)
        logdir.mkdir(parents=True, exist_ok=True)
        unconfined = cri.SecurityProfile(profile_type=cri.SecurityProfile.Unconfined)
        return cri.PodSandboxConfig(
            metadata=cri.PodSandboxMetadata(name=name, uid=uid, namespace=POD_NAMESPACE, attempt=0),
            hostname=name,
            log_directory=str(logdir),
            labels={"io.pycri.bench": "true"},
            linux=cri.LinuxPodSandboxConfig(
                cgroup_parent=f"/{self.env.cgroup_root}/pod{uid}",
                security_context=cri.LinuxSandboxSecurityContext(
                    namespace_options=cri.NamespaceOption(network=cri.POD, pid=cri.CONTAINER, ipc=cri.POD),
                    seccomp=unconfined)))

    def container_config(self) -> cri.ContainerConfig:
        return cri.ContainerConfig(
            metadata=cri.ContainerMetadata(name="sleep", attempt=0),
            image=cri.ImageSpec(image=self.env.ref("busybox")),
            command=["sleep", "3600"],
            log_path="sleep/0.log",
            linux=cri.LinuxContainerConfig(
                security_context=cri.LinuxContainerSecurityContext(
                    namespace_options=cri.NamespaceOption(network=cri.POD, pid=cri.CONTAINER, ipc=cri.POD),
                    seccomp=cri.SecurityProfile(profile_type=cri.SecurityProfile.Unconfined))))

    def wait_ready(self, timeout: float = 30.0) -> None:
        c = self.client
        v = c.call("Version", c.rt.Version, cri.VersionRequest(), record=False)
        self.results.notes.append(f"Version: {v.runtime_name} {v.runtime_version} (CRI {v.runtime_api_version})")
        deadline = time.monotonic() + timeout
        conds = {}
        while time.monotonic() < deadline:
            try:
                st = c.call("Status", c.rt.Status, cri.StatusRequest(), record=False)
            except Skip:
                break
            conds = {x.type: x.status for x in st.status.conditions}
            if conds.get("RuntimeReady") and conds.get("NetworkReady"):
                return
            time.sleep(0.2)
        log(f"{self.daemon.name}: not ready after {timeout:.0f}s: {conds}; going on")

    def remove_image(self, ref: str) -> None:
        """Untimed; NOT_FOUND is fine. UNIMPLEMENTED propagates as Skip."""
        try:
            self.client.call("RemoveImage", self.client.img.RemoveImage,
                             cri.RemoveImageRequest(image=cri.ImageSpec(image=ref)), record=False)
        except Skip as s:
            if "NOT_FOUND" in s.reason:
                self.results.errors.pop("RemoveImage", None)
                return
            raise

    def ensure_image(self, ref: str) -> bool:
        c = self.client
        try:
            st = c.call("ImageStatus", c.img.ImageStatus, cri.ImageStatusRequest(image=cri.ImageSpec(image=ref)),
                        record=False)
            if st.image.id:
                return True
        except Skip:
            pass
        try:
            c.call("PullImage (untimed)", c.img.PullImage, cri.PullImageRequest(image=cri.ImageSpec(image=ref)),
                   record=False)
            return True
        except Skip as s:
            log(f"{self.daemon.name}: cannot pull {ref}: {s.reason}")
            return False

    def not_reached(self, ops, after: Skip) -> None:
        for op in ops:
            if not self.results.samples.get(op) and op not in self.results.unavailable:
                self.results.not_reached.setdefault(op, f"not reached ({after.op}: {after.reason[:60]})")

    # -- phases
    def pull_phase(self) -> None:
        c = self.client
        log(f"{self.daemon.name}: pull phase ({self.warmup} warm-up + {self.iterations} x {', '.join(PULL_IMAGES)})")
        refs = [self.env.ref(n) for n in PULL_IMAGES]
        for i in range(self.warmup + self.iterations):
            record = i >= self.warmup
            for name in PULL_IMAGES:
                op = f"PullImage[{name}]"
                try:
                    for r in refs:
                        self.remove_image(r)
                except Skip as s:
                    if i == 0 and s.reason == "UNIMPLEMENTED":
                        self.first_pulls_only()
                    else:
                        self.not_reached([f"PullImage[{n}]" for n in PULL_IMAGES], s)
                    return
                try:
                    c.call(op, c.img.PullImage, cri.PullImageRequest(image=cri.ImageSpec(image=self.env.ref(name))),
                           record=record)
                except Skip as s:
                    if s.reason == "UNIMPLEMENTED":
                        return
                    log(f"{self.daemon.name}: {op} failed: {s.reason}")
            if sum(len(self.results.errors.get(f"PullImage[{n}]", [])) for n in PULL_IMAGES) > 3:
                log(f"{self.daemon.name}: pulls keep failing; pull phase stopped")
                return

    def first_pulls_only(self) -> None:
        """Without RemoveImage only the first pull of each image (into the fresh root) is a real pull: one sample."""
        c = self.client
        for name in PULL_IMAGES:
            try:
                c.call(f"PullImage[{name}]", c.img.PullImage,
                       cri.PullImageRequest(image=cri.ImageSpec(image=self.env.ref(name))))
            except Skip as s:
                log(f"{self.daemon.name}: PullImage[{name}]: {s.reason}")
        if any(self.results.samples.get(f"PullImage[{n}]") for n in PULL_IMAGES):
            self.results.notes.append("RemoveImage is UNIMPLEMENTED: PullImage has one sample per image (the first "
                                      "pull into an empty root; multilayer first, so busybox finds its base layer)")

    def lifecycle_phase(self) -> None:
        log(f"{self.daemon.name}: lifecycle phase ({self.warmup} warm-up + {self.iterations} iterations)")
        if not (self.ensure_image(common.SANDBOX_IMAGE) and self.ensure_image(self.env.ref("busybox"))):
            self.results.notes.append("lifecycle: the pause or busybox image could not be pulled beforehand")
        failures = 0
        for i in range(self.warmup + self.iterations):
            err = self.lifecycle_once(i, record=i >= self.warmup)
            if err is None:
                failures = 0
                continue
            if err.reason == "UNIMPLEMENTED" or err.op in self.results.unavailable:
                if err.op == "RunPodSandbox":
                    log(f"{self.daemon.name}: {err.op} is UNIMPLEMENTED; lifecycle phase stopped")
                    return
                continue  # the steps before it are still measured
            failures += 1
            log(f"{self.daemon.name}: iteration {i}: {err}")
            if failures >= 3:
                log(f"{self.daemon.name}: 3 failed iterations in a row; lifecycle phase stopped")
                return

    def lifecycle_once(self, i: int, record: bool) -> Skip | None:
        """One pod's life. A failing required step ends the iteration (what it made is removed untimed); the
        status and exec steps are optional: their failure is booked and the iteration goes on."""
        c, rt = self.client, self.client.rt
        pod = self.pod_config(f"bench-{i}")
        sid = cid = None

        def optional(op, method, request):
            try:
                return c.call(op, method, request, record=record)
            except Skip:
                return None

        try:
            sid = c.call("RunPodSandbox", rt.RunPodSandbox, cri.RunPodSandboxRequest(config=pod),
                         record=record).pod_sandbox_id
            self.live_pods[sid] = PodRef(pod.metadata.uid, sid)
            optional("PodSandboxStatus", rt.PodSandboxStatus, cri.PodSandboxStatusRequest(pod_sandbox_id=sid))
            cid = c.call("CreateContainer", rt.CreateContainer, cri.CreateContainerRequest(
                pod_sandbox_id=sid, config=self.container_config(), sandbox_config=pod), record=record).container_id
            c.call("StartContainer", rt.StartContainer, cri.StartContainerRequest(container_id=cid), record=record)
            st = optional("ContainerStatus", rt.ContainerStatus, cri.ContainerStatusRequest(container_id=cid))
            if st is not None and st.status.state != cri.CONTAINER_RUNNING:
                self.results.errors["ContainerStatus"].append(f"state {cri.ContainerState.Name(st.status.state)}")
            for op, cmd, want in (("ExecSync[true]", ["true"], b""), ("ExecSync[echo hi]", ["echo", "hi"], b"hi\n")):
                r = optional(op, rt.ExecSync, cri.ExecSyncRequest(container_id=cid, cmd=cmd, timeout=10))
                if r is not None and (r.exit_code != 0 or r.stdout != want):
                    self.results.errors[op].append(f"exit {r.exit_code} stdout {r.stdout[:40]!r} "
                                                   f"stderr {r.stderr[:80]!r}")
            c.call("StopContainer", rt.StopContainer, cri.StopContainerRequest(container_id=cid, timeout=0),
                   record=record)
            c.call("RemoveContainer", rt.RemoveContainer, cri.RemoveContainerRequest(container_id=cid), record=record)
            cid = None
            c.call("StopPodSandbox", rt.StopPodSandbox, cri.StopPodSandboxRequest(pod_sandbox_id=sid), record=record)
            c.call("RemovePodSandbox", rt.RemovePodSandbox, cri.RemovePodSandboxRequest(pod_sandbox_id=sid),
                   record=record)
            self.live_pods.pop(sid, None)
            sid = None
            return None
        except Skip as s:
            self.not_reached(LIFECYCLE_OPS[LIFECYCLE_OPS.index(s.op) + 1:], s)
            return s
        finally:
            self.remove_pod(sid, cid)

    def remove_pod(self, sid: str | None, cid: str | None = None) -> None:
        """Untimed best-effort removal of a pod (and a container of it)."""
        c, rt = self.client, self.client.rt
        if cid:
            c.quiet(rt.StopContainer, cri.StopContainerRequest(container_id=cid, timeout=0))
            c.quiet(rt.RemoveContainer, cri.RemoveContainerRequest(container_id=cid))
        if sid:
            c.quiet(rt.StopPodSandbox, cri.StopPodSandboxRequest(pod_sandbox_id=sid))
            c.quiet(rt.RemovePodSandbox, cri.RemovePodSandboxRequest(pod_sandbox_id=sid))
            self.live_pods.pop(sid, None)

    def density_phase(self, pods: int = 110, list_samples: int = 300) -> None:
        c, rt = self.client, self.client.rt
        log(f"{self.daemon.name}: density phase ({pods} pods, {list_samples} x ListContainers)")
        made: list[PodRef] = []
        t0 = time.monotonic()
        try:
            for i in range(pods):
                pod = self.pod_config(f"dense-{i}")
                try:
                    sid = c.call("RunPodSandbox", rt.RunPodSandbox, cri.RunPodSandboxRequest(config=pod),
                                 record=False).pod_sandbox_id
                    ref = PodRef(pod.metadata.uid, sid)
                    self.live_pods[sid] = ref
                    cid = c.call("CreateContainer", rt.CreateContainer, cri.CreateContainerRequest(
                        pod_sandbox_id=sid, config=self.container_config(), sandbox_config=pod),
                        record=False).container_id
                    ref.container_ids.append(cid)
                    c.call("StartContainer", rt.StartContainer, cri.StartContainerRequest(container_id=cid),
                           record=False)
                    made.append(ref)
                except Skip as s:
                    self.results.memory["density_error"] = f"pod {i}: {s}"
                    log(f"{self.daemon.name}: density: pod {i}: {s}")
                    if not made:
                        self.not_reached(DENSITY_OPS, s)
                        return
                    self.results.notes.append(f"density: only {len(made)} pods could be started; "
                                              f"the @110 figures are at {len(made)} pods")
                    break
                if (i + 1) % 10 == 0:
                    log(f"{self.daemon.name}: {i + 1}/{pods} pods running ({time.monotonic() - t0:.0f}s)")
            self.results.memory["density_ramp_seconds"] = round(time.monotonic() - t0, 1)
            time.sleep(3)  # let the shims/monitors settle before reading memory
            self.measure_pods(made)
            for op, method, req in (("ListContainers@110", rt.ListContainers, cri.ListContainersRequest()),
                                    ("ListPodSandbox@110", rt.ListPodSandbox, cri.ListPodSandboxRequest())):
                try:
                    for j in range(list_samples + 5):
                        resp = c.call(op, method, req, record=j >= 5)
                    n = len(getattr(resp, "containers", None) or getattr(resp, "items", []))
                    self.results.notes.append(f"{op}: the response lists {n} objects")
                except Skip as s:
                    log(f"{self.daemon.name}: {op}: {s.reason}")
        finally:
            log(f"{self.daemon.name}: removing {len(self.live_pods)} pods")
            for ref in list(self.live_pods.values()):
                for cid in ref.container_ids:
                    self.remove_pod(None, cid)
                self.remove_pod(ref.sandbox_id)

    # -- memory
    def measure_daemon(self, key: str) -> None:
        m = self.daemon.probe.daemon_memory()
        self.results.memory[key] = m
        log(f"{self.daemon.name}: daemon RSS ({key}): {m['rss'] / MIB:.1f} MiB"
            f" (process tree {m['tree_rss'] / MIB:.1f} MiB, {len(m['pids'])} processes)")

    def measure_pods(self, pods: list[PodRef], key: str = "daemon_110_pods") -> None:
        self.measure_daemon(key)
        per = self.daemon.probe.pod_memory(pods)
        priv = [p.private for p in per]
        self.results.memory["per_pod"] = {
            "pods": len(per),
            "private_bytes": priv,
            "pss_bytes": [p.pss for p in per],
            "rss_bytes": [p.rss for p in per],
            "app_private_bytes": [p.app_private for p in per],
            "overhead_processes": [len(p.overhead_pids) for p in per],
            "example": per[0].by_process if per else {},
        }
        if priv:
            log(f"{self.daemon.name}: per-pod private memory: median {statistics.median(priv) / MIB:.2f} MiB "
                f"over {len(per)} pods ({statistics.median([len(p.overhead_pids) for p in per])} processes/pod;"
                f" e.g. {per[0].by_process})")

    def cleanup(self) -> None:
        """Remove every pod this workload still has (untimed), then close the channel."""
        for sid in list(self.live_pods):
            self.remove_pod(sid)
        # pods the workload never learnt the id of (a RunPodSandbox cut short by Ctrl-C): find them by label
        c, rt = self.client, self.client.rt
        resp = c.quiet(rt.ListPodSandbox, cri.ListPodSandboxRequest(
            filter=cri.PodSandboxFilter(label_selector={"io.pycri.bench": "true"})), timeout=10)
        for item in (resp.items if resp is not None else []):
            self.remove_pod(item.id)
        self.client.close()
