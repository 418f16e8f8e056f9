#!/usr/bin/env python3
"""Chaos: CRI load from several client threads while the daemon is killed with SIGKILL at random moments.

    flock /tmp/pycri-tests.lock .venv/bin/python hack/chaos.py --kills 200 [--workers 4] [--seed N] [--json out]

A private daemon (tests/fixtures/daemon.py: temp root and state, a CNI bridge network of its own) and the local
registry (hack/registry.py) with the test images. Each worker thread drives its own pods the way the kubelet does:
RunPodSandbox, CreateContainer (every other container with an image volume), StartContainer, ExecSync,
StopContainer, RemoveContainer, StopPodSandbox, RemovePodSandbox, and one also removes and pulls an image now and
then; a request that fails because the daemon is down is retried (same name, same id) until it is answered.
Meanwhile the main thread kills the daemon with SIGKILL after a random 0.05-1.5 s of load, and restarts it. After
every restart the workers are held between two requests and the invariants are checked:

  - every acknowledged RunPodSandbox / CreateContainer is listed (unless its removal was acknowledged), in the
    state the acknowledged requests left it: READY / CREATED / RUNNING / EXITED;
  - no removed object comes back;
  - nothing half-made is visible: a READY sandbox has its pinned netns; an object nobody asked for is only
    allowed while its create is unanswered;
  - no end is contradicted: nothing whose end its monitor had recorded (exit file, dead monitor: read from the
    state dir before each request) is answered READY / RUNNING; a process found gone after a live answer (it
    ended during the check) is reported ended within 10 s.

Every few restarts one pod is wounded: its monitor, or its infra (pause) process, is SIGKILLed, with the daemon up
or down. Its containers must become EXITED (infra killed: exit 137 "Error", the kernel kills the pod's pid
namespace; monitor killed: exit 255 "Unknown", nothing recorded the end) and the sandbox NOTREADY; its worker then
stops and removes it. At the end every pod is removed and the machine is checked for leaks: mounts, netns, veths,
cgroups, processes, iptables chains, host-local IPs, pod dirs, writable layers, and blobs / snapshots not
referenced by an image.

Exit status 0 when every check passed; the figures (kills, requests, retries, checks) are printed as JSON.
Clean-up (processes, mounts, cgroups, bridge) runs even when the run fails or is interrupted.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import grpc  # noqa: E402

from pycri.api import api_pb2 as cri  # noqa: E402
from pycri.api import api_pb2_grpc  # noqa: E402
from runtime import state as rtstate  # noqa: E402
from tests.fixtures import leaks  # noqa: E402
from tests.fixtures.daemon import DaemonProcess  # noqa: E402
from tests.fixtures.pace import scaled  # noqa: E402

RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED, grpc.StatusCode.DEADLINE_EXCEEDED,
             grpc.StatusCode.UNKNOWN}
CHANNEL_OPTIONS = [("grpc.initial_reconnect_backoff_ms", 50), ("grpc.min_reconnect_backoff_ms", 50),
                   ("grpc.max_reconnect_backoff_ms", 300), ("grpc.max_receive_message_length", 16 << 20)]
NAMESPACE = "chaos"
RPC_TIMEOUT = scaled(60)
RETRY_SECONDS = scaled(60)  # a worker gives up after 600 retries of a request, and no sooner than this


def say(msg: str) -> None:
    print(f"[chaos {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- the daemon

class ChaosDaemon(DaemonProcess):
    """DaemonProcess that finds its "serving" line from where the log was when it started (the log of hundreds of
    restarts is long), and is killed with SIGKILL."""

    _offset = 0

    def start(self, timeout: float = scaled(30)) -> "ChaosDaemon":
        self._offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        return super().start(timeout)

    def _serving(self) -> bool:
        with open(self.log_path, "rb") as f:
            f.seek(self._offset)
            data = f.read()
        for line in data.splitlines():
            if b'"serving"' in line:
                with contextlib.suppress(ValueError):
                    if json.loads(line).get("pid") == self.proc.pid:
                        return True
        return False

    def sigkill(self) -> None:
        self._close_channel()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def log_since(self, offset: int) -> list[dict]:
        with open(self.log_path, "rb") as f:
            f.seek(offset)
            data = f.read()
        out = []
        for line in data.splitlines():
            if line.startswith(b"{"):
                with contextlib.suppress(ValueError):
                    out.append(json.loads(line))
        return out


# ---------------------------------------------------------------- the model of what was acknowledged

@dataclass
class PodM:
    sid: str
    name: str
    config: cri.PodSandboxConfig
    owner: int
    state: str = "ready"  # ready | notready
    wounded: str = ""  # "" | "monitor" | "infra"
    containers: dict = field(default_factory=dict)  # cid -> ContM


@dataclass
class ContM:
    cid: str
    sid: str
    name: str
    state: str = "created"  # created | running | exited
    reason: str = ""  # expected reason once wounded
    exit_code: int | None = None


class Model:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.pods: dict[str, PodM] = {}
        self.conts: dict[str, ContM] = {}
        self.removed: set[str] = set()  # ids whose removal was acknowledged
        self.uncertain: set[str] = set()  # ids / names with a request in flight (not yet answered)


class Gate:
    """Workers pass checkpoint() between requests (and between retries); pause() holds them all there."""

    def __init__(self) -> None:
        self.cv = threading.Condition()
        self.paused = False
        self.idle = 0
        self.active = 0

    def checkpoint(self) -> None:
        with self.cv:
            if not self.paused:
                return
            self.idle += 1
            self.cv.notify_all()
            while self.paused:
                self.cv.wait()
            self.idle -= 1

    def pause(self, timeout: float = 120) -> None:
        with self.cv:
            self.paused = True
            if not self.cv.wait_for(lambda: self.idle >= self.active, timeout):
                raise Failure(f"workers did not reach a checkpoint within {timeout}s "
                              f"({self.idle}/{self.active} idle): a request hangs")

    def resume(self) -> None:
        with self.cv:
            self.paused = False
            self.cv.notify_all()

    def enter(self) -> None:
        with self.cv:
            self.active += 1

    def leave(self) -> None:
        with self.cv:
            self.active -= 1
            self.cv.notify_all()


class Failure(AssertionError):
    pass


class Rejected(Exception):
    def __init__(self, op: str, code, details: str, attempts: int) -> None:
        super().__init__(f"{op}: {code.name}: {details} (attempt {attempts + 1})")
        self.code, self.details, self.attempts = code, details, attempts


# ---------------------------------------------------------------- the workers

class Worker(threading.Thread):
    def __init__(self, n: int, chaos: "Chaos") -> None:
        super().__init__(name=f"chaos-worker-{n}", daemon=True)
        self.n = n
        self.chaos = chaos
        self.rng = random.Random(chaos.seed * 1000 + n)
        self.channel = grpc.insecure_channel(f"unix:{chaos.daemon.socket}", options=CHANNEL_OPTIONS)
        self.rt = api_pb2_grpc.RuntimeServiceStub(self.channel)
        self.img = api_pb2_grpc.ImageServiceStub(self.channel)
        self.seq = 0
        self.error: BaseException | None = None

    # -- requests

    def call(self, op: str, method, request, timeout: float = RPC_TIMEOUT):
        """Send until answered (kubelet-like retries of the same request); Rejected on an error answer."""
        attempts = 0
        stats = self.chaos.stats
        give_up = time.monotonic() + RETRY_SECONDS
        while True:
            paused = time.monotonic()
            self.chaos.gate.checkpoint()
            give_up += time.monotonic() - paused  # (time held at a checkpoint is not time the daemon was down)
            try:
                resp = method(request, timeout=timeout)
                stats.bump("requests_ok")
                return resp
            except grpc.RpcError as exc:
                code = exc.code()
                if code in RETRYABLE:  # the daemon is down, or the channel has not reconnected yet
                    attempts += 1
                    stats.bump("retries")
                    if attempts > 600 and time.monotonic() > give_up:
                        raise Failure(f"{op}: still failing after {attempts} attempts in {RETRY_SECONDS:.0f}s: "
                                      f"{exc.details()}")
                    time.sleep(0.05 + self.rng.random() * 0.1)
                    continue
                stats.bump("rejected")
                raise Rejected(op, code, exc.details() or "", attempts) from None

    @contextlib.contextmanager
    def inflight(self, *keys: str):
        m = self.chaos.model
        with m.lock:
            m.uncertain.update(keys)
        try:
            yield
        finally:
            with m.lock:
                m.uncertain.difference_update(keys)

    # -- the loop

    def run(self) -> None:
        self.chaos.gate.enter()
        try:
            while not self.chaos.finished.is_set():
                self.chaos.gate.checkpoint()
                self.step()
                self.chaos.stats.bump("steps")
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            self.error = exc
            self.chaos.fail(f"worker {self.n}: {type(exc).__name__}: {exc}")
        finally:
            self.chaos.gate.leave()
            self.channel.close()

    def my_pods(self) -> list[PodM]:
        with self.chaos.model.lock:
            return [p for p in self.chaos.model.pods.values() if p.owner == self.n]

    def step(self) -> None:
        r = self.rng.random()
        pods = self.my_pods()
        wounded = [p for p in pods if p.wounded or p.state != "ready"]
        if wounded:
            self.remove_pod(wounded[0])
            return
        if self.n == 0 and r < 0.04:
            self.churn_image()
            return
        if not pods or (len(pods) < self.chaos.pods_per_worker and r < 0.25):
            self.run_pod()
            return
        pod = self.rng.choice(pods)
        conts = list(pod.containers.values())
        if r < 0.08:
            self.remove_pod(pod)
        elif len(conts) < 2 and r < 0.5:
            cid = self.create(pod)
            if cid and self.rng.random() < 0.8:
                self.start_c(pod, pod.containers[cid])
        elif conts:
            c = self.rng.choice(conts)
            if c.state == "created":
                self.start_c(pod, c)
            elif c.state == "running":
                if self.rng.random() < 0.75:
                    self.exec(c)
                else:
                    self.stop(c)
            else:
                self.remove(pod, c)
        else:
            self.create(pod)

    # -- operations

    def run_pod(self) -> None:
        self.seq += 1
        name = f"w{self.n}-p{self.seq}"
        config = cri.PodSandboxConfig(
            metadata=cri.PodSandboxMetadata(name=name, namespace=NAMESPACE, uid=f"uid-{name}-{self.chaos.tag}"),
            hostname=name, log_directory=str(self.chaos.log_dir / name),
            linux=cri.LinuxPodSandboxConfig(cgroup_parent=self.chaos.cgroup_parent))
        with self.inflight(name):
            try:
                sid = self.call("RunPodSandbox", self.rt.RunPodSandbox, cri.RunPodSandboxRequest(config=config),
                                timeout=120).pod_sandbox_id
            except Rejected as exc:
                if exc.code != grpc.StatusCode.ALREADY_EXISTS or exc.attempts == 0:
                    raise
                # as with containerd, a retry after a crash finds the name taken by the sandbox the lost answer
                # was about; the kubelet then finds it by listing
                self.chaos.stats.bump("adopted_after_already_exists")
                sid = self.find_sandbox(name)
            with self.chaos.model.lock:
                self.chaos.model.pods[sid] = PodM(sid, name, config, self.n)
        self.chaos.stats.bump("pods_run")

    def create(self, pod: PodM) -> str | None:
        self.seq += 1
        name = f"c{self.seq}"
        # every other container mounts an image volume (one host mount per pod, counted by container record)
        mounts = [cri.Mount(container_path="/vol", readonly=True, image=cri.ImageSpec(image=self.chaos.volume_id),
                            image_sub_path="etc" if self.seq % 4 == 1 else "")] if self.seq % 2 else []
        config = cri.ContainerConfig(metadata=cri.ContainerMetadata(name=name),
                                     image=cri.ImageSpec(image=self.chaos.busybox),
                                     command=["sh", "-c", "trap 'exit 0' TERM; while :; do sleep 1; done"],
                                     log_path=f"{name}/0.log", mounts=mounts)
        key = f"{pod.name}/{name}"
        with self.inflight(key, pod.sid):
            try:
                cid = self.call("CreateContainer", self.rt.CreateContainer, cri.CreateContainerRequest(
                    pod_sandbox_id=pod.sid, config=config, sandbox_config=pod.config)).container_id
            except Rejected as exc:
                if exc.code != grpc.StatusCode.ALREADY_EXISTS or exc.attempts == 0:
                    self.chaos.fail(f"CreateContainer in {pod.name} rejected: {exc}")
                    return None
                self.chaos.stats.bump("adopted_after_already_exists")
                cid = self.find_container(pod.sid, name)
            c = ContM(cid, pod.sid, name)
            with self.chaos.model.lock:
                pod.containers[c.cid] = c
                self.chaos.model.conts[c.cid] = c
        self.chaos.stats.bump("containers_created")
        return c.cid

    def find_sandbox(self, name: str) -> str:
        items = self.call("ListPodSandbox", self.rt.ListPodSandbox, cri.ListPodSandboxRequest()).items
        found = [s.id for s in items if s.metadata.name == name and s.metadata.namespace == NAMESPACE]
        if len(found) != 1:
            raise Failure(f"RunPodSandbox {name}: ALREADY_EXISTS, but {len(found)} sandboxes have that name")
        return found[0]

    def find_container(self, sid: str, name: str) -> str:
        items = self.call("ListContainers", self.rt.ListContainers, cri.ListContainersRequest(
            filter=cri.ContainerFilter(pod_sandbox_id=sid))).containers
        found = [c.id for c in items if c.metadata.name == name]
        if len(found) != 1:
            raise Failure(f"CreateContainer {name}: ALREADY_EXISTS, but {len(found)} containers have that name")
        return found[0]

    def start_c(self, pod: PodM, c: ContM) -> None:
        with self.inflight(c.cid):
            try:
                self.call("StartContainer", self.rt.StartContainer, cri.StartContainerRequest(container_id=c.cid))
            except Rejected as exc:
                if exc.attempts == 0:
                    self.chaos.fail(f"StartContainer {c.cid[:12]} rejected: {exc}")
                self.adopt(c)  # a retry after a kill: the first attempt may have started it
                return
            c.state = "running"
        self.chaos.stats.bump("containers_started")

    def adopt(self, c: ContM) -> None:
        """Take the state the daemon reports for a container whose request's outcome is unknown."""
        try:
            st = self.call("ContainerStatus", self.rt.ContainerStatus,
                           cri.ContainerStatusRequest(container_id=c.cid)).status
        except Rejected as exc:
            self.chaos.fail(f"ContainerStatus {c.cid[:12]} after a retried request: {exc}")
            return
        c.state = {cri.CONTAINER_CREATED: "created", cri.CONTAINER_RUNNING: "running"}.get(st.state, "exited")
        if c.state == "exited":
            c.reason, c.exit_code = st.reason, st.exit_code

    def exec(self, c: ContM) -> None:
        with self.inflight(c.cid):
            try:
                resp = self.call("ExecSync", self.rt.ExecSync,
                                 cri.ExecSyncRequest(container_id=c.cid, cmd=["echo", "ok"], timeout=20))
            except Rejected as exc:
                self.chaos.fail(f"ExecSync in {c.cid[:12]} (model: {c.state}) rejected: {exc}")
                return
            if resp.stdout != b"ok\n" or resp.exit_code != 0:
                self.chaos.fail(f"ExecSync in {c.cid[:12]}: {resp.exit_code} {resp.stdout!r} {resp.stderr!r}")
        self.chaos.stats.bump("execs")

    def stop(self, c: ContM) -> None:
        with self.inflight(c.cid):
            try:
                self.call("StopContainer", self.rt.StopContainer,
                          cri.StopContainerRequest(container_id=c.cid, timeout=self.rng.choice([0, 2])))
            except Rejected as exc:
                self.chaos.fail(f"StopContainer {c.cid[:12]} rejected: {exc}")
                return
            c.state = "exited"
        self.chaos.stats.bump("containers_stopped")

    def remove(self, pod: PodM, c: ContM) -> None:
        with self.inflight(c.cid):
            try:
                self.call("RemoveContainer", self.rt.RemoveContainer, cri.RemoveContainerRequest(container_id=c.cid))
            except Rejected as exc:
                self.chaos.fail(f"RemoveContainer {c.cid[:12]} rejected: {exc}")
                return
            with self.chaos.model.lock:
                pod.containers.pop(c.cid, None)
                self.chaos.model.conts.pop(c.cid, None)
                self.chaos.model.removed.add(c.cid)
        self.chaos.stats.bump("containers_removed")

    def remove_pod(self, pod: PodM) -> None:
        keys = [pod.sid, *pod.containers]
        with self.inflight(*keys):
            try:
                self.call("StopPodSandbox", self.rt.StopPodSandbox, cri.StopPodSandboxRequest(pod_sandbox_id=pod.sid))
                with self.chaos.model.lock:
                    pod.state = "notready"
                    for c in pod.containers.values():
                        if c.state == "running":
                            c.state = "exited"
                self.call("RemovePodSandbox", self.rt.RemovePodSandbox,
                          cri.RemovePodSandboxRequest(pod_sandbox_id=pod.sid))
            except Rejected as exc:
                self.chaos.fail(f"Stop/RemovePodSandbox {pod.sid[:12]} rejected: {exc}")
                return
            with self.chaos.model.lock:
                m = self.chaos.model
                m.pods.pop(pod.sid, None)
                m.removed.add(pod.sid)
                for cid in pod.containers:
                    m.conts.pop(cid, None)
                    m.removed.add(cid)
        self.chaos.stats.bump("pods_removed")

    def churn_image(self) -> None:
        ref = self.chaos.churn_image
        with self.inflight("image:" + ref):
            try:
                self.call("RemoveImage", self.img.RemoveImage, cri.RemoveImageRequest(image=cri.ImageSpec(image=ref)))
                self.call("PullImage", self.img.PullImage, cri.PullImageRequest(image=cri.ImageSpec(image=ref)),
                          timeout=120)
            except Rejected as exc:
                self.chaos.fail(f"image churn {ref}: {exc}")
                return
        self.chaos.stats.bump("image_churns")


class Stats:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.counts: dict[str, int] = {}

    def bump(self, key: str, n: int = 1) -> None:
        with self.lock:
            self.counts[key] = self.counts.get(key, 0) + n


# ---------------------------------------------------------------- the run

def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False


class Chaos:
    def __init__(self, daemon: ChaosDaemon, registry, *, kills: int, workers: int = 4, seed: int | None = None,
                 pods_per_worker: int = 3, wound_every: int = 5, min_gap: float = 0.05, max_gap: float = 1.5,
                 log=say) -> None:
        self.daemon = daemon
        self.registry = registry
        self.kills = kills
        self.n_workers = workers
        self.seed = seed if seed is not None else random.randrange(1 << 30)
        self.rng = random.Random(self.seed)
        self.pods_per_worker = pods_per_worker
        self.wound_every = wound_every
        self.min_gap, self.max_gap = min_gap, max_gap
        self.log = log
        self.tag = daemon.workdir.name[-6:].replace("_", "x")
        self.cgroup_parent = f"/pycri-chaos-{self.tag}"
        self.log_dir = daemon.workdir / "logs"
        self.busybox = registry.ref("busybox")
        self.churn_image = registry.ref("multilayer")
        self.volume_image = registry.ref("users")  # image volumes of containers (never churned: in use, it stays)
        self.volume_id = ""
        self.model = Model()
        self.gate = Gate()
        self.stats = Stats()
        self.finished = threading.Event()
        self.failures: list[str] = []
        self.kills_done = 0
        self.checks = 0
        self.objects_checked = 0
        self.wounds: list[dict] = []
        self.restart_seconds: list[float] = []
        self._pending_wound = None

    def fail(self, msg: str) -> None:
        self.log("FAIL " + msg)
        with self.model.lock:
            self.failures.append(msg)

    # -- clients of the main thread

    @property
    def rt(self) -> api_pb2_grpc.RuntimeServiceStub:
        return self.daemon.runtime

    def prepare(self) -> None:
        img = self.daemon.image
        for ref in (self.busybox, self.churn_image, self.volume_image):
            img.PullImage(cri.PullImageRequest(image=cri.ImageSpec(image=ref)), timeout=120)
        self.volume_id = img.ImageStatus(cri.ImageStatusRequest(image=cri.ImageSpec(image=self.volume_image))).image.id

    def _await_answers(self, n: int) -> None:
        """Until the daemon has answered n more requests: each kill then meets a daemon at work, not one still
        coming back (on a slow machine the random gaps alone can all fall inside restarts)."""
        with self.stats.lock:
            want = self.stats.counts.get("requests_ok", 0) + n
        deadline = time.monotonic() + RETRY_SECONDS
        while self.stats.counts.get("requests_ok", 0) < want:
            if time.monotonic() > deadline:
                self.fail(f"the daemon answered fewer than {n} requests in {RETRY_SECONDS:.0f}s after a restart")
                return
            time.sleep(0.02)

    def run(self) -> dict:
        started = time.monotonic()
        self.prepare()
        workers = [Worker(i, self) for i in range(self.n_workers)]
        for w in workers:
            w.start()
        try:
            for k in range(self.kills):
                self._await_answers(self.n_workers)
                time.sleep(self.rng.uniform(self.min_gap, self.max_gap))
                self.daemon.sigkill()
                self.kills_done += 1
                wound_now = self.wound_every and (k + 1) % self.wound_every == 0
                down_wound = wound_now and self.rng.random() < 0.5
                if down_wound:
                    self.gate.pause()
                    self.wound(daemon_up=False)
                    self.gate.resume()
                time.sleep(self.rng.uniform(0, 0.3))  # requests meet a dead socket
                t0 = time.monotonic()
                self.daemon.start(timeout=scaled(60))
                self.restart_seconds.append(time.monotonic() - t0)
                self.gate.pause()
                try:
                    if self._pending_wound is not None:
                        self.check_wound(*self._pending_wound)
                        self._pending_wound = None
                    self.check(f"after kill {k + 1}")
                    if wound_now and not down_wound:
                        self.wound(daemon_up=True)
                finally:
                    self.gate.resume()
                if (k + 1) % 10 == 0:
                    self.log(f"{k + 1}/{self.kills} kills; {dict(self.stats.counts)}; failures {len(self.failures)}")
                if len(self.failures) > 20:
                    break
        finally:
            self.finished.set()
            self.gate.resume()
            for w in workers:
                w.join(timeout=RPC_TIMEOUT * 3)
                if w.is_alive():
                    self.fail(f"worker {w.n} did not finish")
        self.check("at the end of the load")
        removed = self.remove_everything()
        return {"seed": self.seed, "kills": self.kills_done, "workers": self.n_workers, "checks": self.checks,
                "objects_checked": self.objects_checked, "wounds": self.wounds, "removed_at_end": removed,
                "restart_seconds_max": round(max(self.restart_seconds, default=0), 3),
                "restart_seconds_median": round(sorted(self.restart_seconds)[len(self.restart_seconds) // 2], 3)
                if self.restart_seconds else 0,
                "counts": dict(self.stats.counts), "seconds": round(time.monotonic() - started, 1),
                "failures": list(self.failures)}

    # -- invariants

    def check(self, when: str) -> None:
        self.checks += 1
        m = self.model
        rt = self.rt
        ended = self.recorded_ends()  # before the lists: what they must not show as READY / RUNNING
        sbs = {s.id: s for s in rt.ListPodSandbox(cri.ListPodSandboxRequest(), timeout=RPC_TIMEOUT).items}
        cs = {c.id: c for c in rt.ListContainers(cri.ListContainersRequest(), timeout=RPC_TIMEOUT).containers}
        with m.lock:
            pods = {sid: (p.name, p.state, set(p.containers)) for sid, p in m.pods.items()}
            conts = {cid: (c.sid, c.name, c.state, c.reason, c.exit_code) for cid, c in m.conts.items()}
            uncertain = set(m.uncertain)
            removed = set(m.removed)
            names = {p.name for p in m.pods.values()}
        want_sb = {"ready": cri.SANDBOX_READY, "notready": cri.SANDBOX_NOTREADY}
        want_c = {"created": cri.CONTAINER_CREATED, "running": cri.CONTAINER_RUNNING,
                  "exited": cri.CONTAINER_EXITED}
        for sid, (name, state, _) in pods.items():
            if sid in uncertain:
                continue
            self.objects_checked += 1
            sb = sbs.get(sid)
            if sb is None:
                self.fail(f"{when}: acknowledged sandbox {name} {sid[:12]} is not listed")
            elif sb.state != want_sb[state]:
                self.fail(f"{when}: sandbox {name} {sid[:12]} is {cri.PodSandboxState.Name(sb.state)}, "
                          f"expected {state}")
        for cid, (sid, name, state, reason, code) in conts.items():
            if cid in uncertain or sid in uncertain:
                continue
            self.objects_checked += 1
            c = cs.get(cid)
            if c is None:
                self.fail(f"{when}: acknowledged container {name} {cid[:12]} is not listed")
            elif c.state != want_c[state]:
                self.fail(f"{when}: container {name} {cid[:12]} is {cri.ContainerState.Name(c.state)}, "
                          f"expected {state}")
        for rid in removed & (set(sbs) | set(cs)):
            self.fail(f"{when}: removed object {rid[:12]} is listed again")
        # nothing half-made visible; nothing nobody asked for
        for sid, sb in sbs.items():
            if sid not in pods and sb.metadata.name not in uncertain and sb.metadata.name not in names:
                self.fail(f"{when}: sandbox {sb.metadata.name} {sid[:12]} was never requested")
            if sb.state != cri.SANDBOX_READY:
                continue
            info = self._live(when, f"sandbox {sb.metadata.name} {sid[:12]}", sid, sid, ended,
                              functools.partial(rt.PodSandboxStatus, cri.PodSandboxStatusRequest(
                                  pod_sandbox_id=sid, verbose=True)), "READY",
                              lambda resp: resp.status.state == cri.SANDBOX_READY)
            if info is None:
                continue
            netns = info.get("netNamespacePath")
            if not netns or not _is_mount(netns):
                self.fail(f"{when}: READY sandbox {sb.metadata.name} {sid[:12]} has no pinned netns ({netns!r})")
        for cid, c in cs.items():
            owner = sbs.get(c.pod_sandbox_id)
            if cid not in conts and (owner is None or f"{owner.metadata.name}/{c.metadata.name}" not in uncertain):
                self.fail(f"{when}: container {c.metadata.name} {cid[:12]} was never requested")
            if c.pod_sandbox_id not in sbs:
                self.fail(f"{when}: container {cid[:12]} is listed, its sandbox {c.pod_sandbox_id[:12]} is not")
            if c.state == cri.CONTAINER_EXITED:
                self._check_exited(when, c, pods)
            if c.state != cri.CONTAINER_RUNNING:
                continue
            self._live(when, f"container {cid[:12]}", cid, c.pod_sandbox_id, ended,
                       functools.partial(rt.ContainerStatus, cri.ContainerStatusRequest(container_id=cid,
                                                                                        verbose=True)),
                       "RUNNING", lambda resp: resp.status.state == cri.CONTAINER_RUNNING)

    def _live(self, when: str, what: str, oid: str, sid: str, ended: dict, status, live: str, is_live
              ) -> dict | None:
        """An object the list showed `live` (READY / RUNNING; `ended` was read before the list): its end must not
        have been recorded before the list nor before its status (`status`, verbose) answers live; a process
        that ended meanwhile must be reported ended soon. The verbose info of a live answer, else None."""
        if oid in ended:
            self.fail(f"{when}: {what} listed {live} after its monitor had recorded its end ({ended[oid]})")
        try:
            before = self.recorded_ends(sid[:16])
            resp = status(timeout=RPC_TIMEOUT)
        except grpc.RpcError as exc:
            self.fail(f"{when}: status of {what}, listed {live}: {exc.details()}")
            return None
        if not is_live(resp):
            return None
        if oid in before:
            self.fail(f"{when}: {what} {live} after its monitor had recorded its end ({before[oid]})")
        info = json.loads(resp.info["info"])
        if not info.get("pid"):
            self.fail(f"{when}: {live} {what} has no pid")
        elif not _alive(info["pid"]):
            self._end_reported(when, f"{live} {what}", info["pid"],
                               lambda: not is_live(status(timeout=RPC_TIMEOUT)))
        return info

    def recorded_ends(self, pod: str = "*") -> dict[str, str]:
        """The containers (infra ones under the sandbox's id) whose end their monitor has recorded, read from the
        state dir now: an exit file (written once the output is in the log), or the pod's monitor gone. Read
        before a request, what it names must not be answered READY / RUNNING."""
        out = {}
        for pod_dir in (self.daemon.state / "p").glob(pod):
            monitor_gone = not rtstate.monitor_alive(str(pod_dir))
            try:
                subs = [p for p in pod_dir.iterdir() if p.is_dir()]
            except OSError:
                continue
            for sub in subs:
                ex = rtstate.read_json(str(sub / "exit.json"))
                if ex is not None:
                    out[sub.name] = f"exit file: {ex}"
                elif monitor_gone and (sub / "state.json").exists():
                    out[sub.name] = "its monitor is gone"
        return out

    def _end_reported(self, when: str, what: str, pid: int, reported, within: float = 10) -> None:
        """A process that was answered alive and is gone now ended during the check (an interrupted stop's
        SIGTERM, say): its end must be reported within `within` s (not READY / RUNNING any more)."""
        self.stats.bump("ended_during_check")
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            try:
                if reported():
                    return
            except grpc.RpcError as exc:
                self.fail(f"{when}: {what}: status after its process {pid} ended: {exc.details()}")
                return
            time.sleep(0.02)
        self.fail(f"{when}: {what}: process {pid} ended and the runtime still reports it alive after {within}s")

    def _check_exited(self, when: str, c, pods: dict) -> None:
        """An EXITED container has no process left in its cgroup (a half-recorded start or stop would leave one);
        except after its monitor was killed, where nothing may be left to kill it until Stop/Remove (counted)."""
        try:
            info = json.loads(self.rt.ContainerStatus(cri.ContainerStatusRequest(container_id=c.id, verbose=True),
                                                      timeout=RPC_TIMEOUT).info["info"])
        except grpc.RpcError:
            return
        pid = info.get("pid")
        if not pid or not _alive(pid):
            return
        try:
            in_cgroup = c.id in Path(f"/proc/{pid}/cgroup").read_text()
        except OSError:
            return
        if not in_cgroup:
            return
        with self.model.lock:
            pod = self.model.pods.get(c.pod_sandbox_id)
            wounded = pod.wounded if pod else ""
        if wounded == "monitor":
            self.stats.bump("exited_with_live_process_after_monitor_kill")
        else:
            self.fail(f"{when}: EXITED container {c.id[:12]} still has its process {pid} running")

    # -- wounds: a pod's monitor or infra process killed

    def wound(self, daemon_up: bool) -> None:
        m = self.model
        with m.lock:
            candidates = [p for p in m.pods.values() if p.state == "ready" and not p.wounded
                          and p.sid not in m.uncertain and not (set(p.containers) & m.uncertain)
                          and any(c.state == "running" for c in p.containers.values())]
        if not candidates:
            return
        pod = self.rng.choice(candidates)
        kind = self.rng.choice(["monitor", "infra"])
        pod_dir = self.daemon.state / "p" / pod.sid[:16]
        try:
            if kind == "monitor":
                pid = json.loads((pod_dir / "monitor.json").read_text())["pid"]
            else:  # the infra container's id is the sandbox id; the monitor keeps its state in the pod dir
                pid = json.loads((pod_dir / pod.sid / "state.json").read_text())["pid"]
        except (OSError, ValueError, KeyError) as exc:
            self.fail(f"wound: cannot find the {kind} pid of {pod.sid[:12]}: {exc}")
            return
        os.kill(pid, signal.SIGKILL)
        running = [c for c in pod.containers.values() if c.state == "running"]
        expect = ("Error", 137) if kind == "infra" else ("Unknown", 255)
        with m.lock:
            pod.wounded = kind
            pod.state = "notready"
            for c in running:
                c.state, (c.reason, c.exit_code) = "exited", expect
        self.wounds.append({"kind": kind, "daemon_up": daemon_up, "containers": len(running)})
        if not daemon_up:
            self._pending_wound = (pod, running, expect)  # checked once the daemon is back
            return
        self.check_wound(pod, running, expect)

    def check_wound(self, pod: PodM, running: list[ContM], expect: tuple[str, int]) -> None:
        deadline = time.monotonic() + 20
        pending = {c.cid for c in running}
        sb_state = None
        while time.monotonic() < deadline:
            for cid in list(pending):
                st = self.rt.ContainerStatus(cri.ContainerStatusRequest(container_id=cid), timeout=RPC_TIMEOUT).status
                if st.state == cri.CONTAINER_EXITED:
                    pending.discard(cid)
                    if (st.reason, st.exit_code) != expect:
                        self.fail(f"wounded ({pod.wounded}) pod {pod.sid[:12]}: container {cid[:12]} exited with "
                                  f"{st.reason!r} {st.exit_code}, expected {expect}")
            sb_state = self.rt.PodSandboxStatus(cri.PodSandboxStatusRequest(pod_sandbox_id=pod.sid),
                                                timeout=RPC_TIMEOUT).status.state
            if not pending and sb_state == cri.SANDBOX_NOTREADY:
                return
            time.sleep(0.1)
        self.fail(f"wounded ({pod.wounded}) pod {pod.sid[:12]}: containers {sorted(c[:12] for c in pending)} "
                  f"not EXITED / sandbox {sb_state} not NOTREADY within 20s")

    # -- the end

    def remove_everything(self) -> int:
        n = 0
        rt = self.rt
        for sb in rt.ListPodSandbox(cri.ListPodSandboxRequest(), timeout=RPC_TIMEOUT).items:
            try:
                rt.StopPodSandbox(cri.StopPodSandboxRequest(pod_sandbox_id=sb.id), timeout=RPC_TIMEOUT)
                rt.RemovePodSandbox(cri.RemovePodSandboxRequest(pod_sandbox_id=sb.id), timeout=RPC_TIMEOUT)
                n += 1
            except grpc.RpcError as exc:
                self.fail(f"final removal of {sb.id[:12]}: {exc.code().name}: {exc.details()}")
        left = list(rt.ListPodSandbox(cri.ListPodSandboxRequest(), timeout=RPC_TIMEOUT).items)
        left_c = list(rt.ListContainers(cri.ListContainersRequest(), timeout=RPC_TIMEOUT).containers)
        if left or left_c:
            self.fail(f"after removing everything: {len(left)} sandboxes, {len(left_c)} containers listed")
        return n


def _is_mount(path: str) -> bool:
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == path for line in f)


# ---------------------------------------------------------------- leak checks after the daemon stopped

def store_leaks(root: Path) -> list[str]:
    """Blobs and snapshots not referenced by an image; snapshot dirs without a record; the store's integrity."""
    problems = []
    db = sqlite3.connect(f"file:{root / 'metadata.db'}?mode=ro", uri=True)
    try:
        ok = db.execute("PRAGMA integrity_check").fetchone()[0]
        if ok != "ok":
            problems.append(f"metadata store integrity_check: {ok}")
        blobs, chains = set(), set()
        for (data,) in db.execute("SELECT data FROM images"):
            d = json.loads(data)
            blobs.update(d.get("blobs", []))
            chains.update(d.get("chain_ids", []))
        snaps = {c: n for c, n in db.execute("SELECT chain_id, num FROM snapshots")}
        for table in ("sandboxes", "containers"):
            n = db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
            if n:
                problems.append(f"{n} rows left in {table}")
    finally:
        db.close()
    blob_dir = root / "blobs" / "sha256"
    on_disk = {f"sha256:{p.name}" for p in blob_dir.iterdir()} if blob_dir.is_dir() else set()
    problems += [f"blob not referenced by an image: {b}" for b in sorted(on_disk - blobs)]
    problems += [f"snapshot not referenced by an image: {c}" for c in sorted(set(snaps) - chains)]
    snap_dir = root / "snapshots"
    if snap_dir.is_dir():
        nums = {str(n) for n in snaps.values()}
        problems += [f"snapshot dir without a record: {p.name}" for p in snap_dir.iterdir() if p.name not in nums]
    for sub in ("containers", "ingest"):
        d = root / sub
        if d.is_dir() and any(d.iterdir()):
            problems.append(f"{d} not empty: {[p.name for p in d.iterdir()][:5]}")
    return problems


def state_leaks(d: DaemonProcess, cgroup_parent: str) -> list[str]:
    problems = []
    for sub in ("p", "ns"):
        p = d.state / sub
        if p.is_dir() and any(p.iterdir()):
            problems.append(f"{p} not empty: {[x.name for x in p.iterdir()][:5]}")
    if d.ipam_dir and d.ipam_dir.exists():
        problems += [f"IP left reserved in host-local: {p.name}" for p in d.ipam_dir.rglob("*")
                     if p.is_file() and p.name[0].isdigit()]
    name = cgroup_parent.strip("/")
    for top in ("/sys/fs/cgroup/memory", "/sys/fs/cgroup/pids", "/sys/fs/cgroup/cpu", "/sys/fs/cgroup/unified",
                "/sys/fs/cgroup"):
        parent = Path(top) / name
        if parent.is_dir():
            kids = [p.name for p in parent.iterdir() if p.is_dir()]
            if kids:
                problems.append(f"cgroups left under {parent}: {kids[:5]}")
    return problems


def _remove_parent_cgroup(cgroup_parent: str) -> None:
    with open("/proc/self/mountinfo") as f:
        tops = {line.split(" - ")[0].split()[4] for line in f if " - cgroup" in line}
    for top in tops:
        with contextlib.suppress(OSError):
            os.rmdir(os.path.join(top, cgroup_parent.strip("/")))


def force_cleanup(d: DaemonProcess, cgroup_parent: str) -> list[str]:
    """Whatever is left, by force: the daemon, monitors and containers, mounts, cgroups, the bridge, iptables.
    Returns what had to be removed."""
    sys.path.insert(0, str(REPO / "hack"))
    from bench_lib import common  # noqa: PLC0415 - hack/ is no package

    done = []
    with contextlib.suppress(Exception):
        d.sigkill()
    pids = sorted(set(common.processes_under(d.workdir, fds=True)))
    name = cgroup_parent.strip("/")
    for pid in common.pids():
        if any(p.startswith(cgroup_parent + "/") or p == cgroup_parent for p in common.cgroup_paths(pid)):
            pids.append(pid)
    if pids:
        done.append(f"killed {len(set(pids))} processes")
        common.kill_and_wait(sorted(set(pids)))
    n = common.unmount_under(d.workdir)
    if n:
        done.append(f"unmounted {n}")
    n = common.remove_cgroup_tree(name)
    if n:
        done.append(f"removed {n} cgroup dirs")
    if d.bridge and common.link_exists(d.bridge):
        common.delete_link(d.bridge)
    _flush_chains(d)
    return done


def _flush_chains(d: DaemonProcess) -> None:
    """Per-pod nat chains the test's pods left (tagged with the network name in their comments)."""
    if not d.bridge:
        return
    rules = subprocess.run(["iptables", "-t", "nat", "-S"], capture_output=True, text=True).stdout.splitlines()
    chains = set()
    import shlex

    for rule in rules:
        if rule.startswith("-A ") and f"net-{d.bridge}" in rule:
            parts = shlex.split(rule)
            if "-j" in parts:
                chains.add(parts[parts.index("-j") + 1])
            subprocess.run(["iptables", "-t", "nat", "-D"] + parts[1:], capture_output=True)
    for chain in chains:
        if chain.startswith("CNI-") and "HOSTPORT" not in chain:
            subprocess.run(["iptables", "-t", "nat", "-F", chain], capture_output=True)
            subprocess.run(["iptables", "-t", "nat", "-X", chain], capture_output=True)


def run_chaos(workdir: Path, registry, *, kills: int, workers: int = 4, seed: int | None = None,
              subnet: str = "10.241.0.0/22", log=say, keep_log: str | None = None, **kw) -> dict:
    """The whole run in `workdir`: daemon, load and kills, invariants, removal, leak checks, clean-up.
    Returns the figures; result["failures"] lists every broken invariant (empty: passed)."""
    before = leaks.snapshot()
    d = ChaosDaemon(workdir, {"sandbox_image": registry.ref("pause"), "log_level": "info",
                              f'registries."{registry.host}"': {"insecure": True}})
    d.add_network(subnet)
    chaos = None
    result: dict = {}
    try:
        d.start(timeout=scaled(60))
        chaos = Chaos(d, registry, kills=kills, workers=workers, seed=seed, log=log, **kw)
        log(f"seed {chaos.seed}; {kills} kills, {workers} workers; work dir {workdir}")
        result = chaos.run()
        # a daemon start with nothing to do must find nothing to undo
        d.sigkill()
        d.start(timeout=60)
        d.stop()
        problems = store_leaks(d.root) + state_leaks(d, chaos.cgroup_parent)
        _remove_parent_cgroup(chaos.cgroup_parent)  # the kubelet's own (the pods' parent), empty by now
        d.bridge and subprocess.run(["ip", "link", "delete", d.bridge], capture_output=True)
        problems += leaks.leaks_since(before, str(workdir))
        result["failures"] += [f"leak: {p}" for p in problems]
        result["invariants"] = ["acknowledged objects listed in their state", "removed objects stay removed",
                                "READY sandbox: pinned netns", "no READY / RUNNING after a recorded end",
                                "no object nobody asked for", "wounded pods: EXITED with the right reason, NOTREADY",
                                "after removal: no mounts, netns, links, cgroups, processes, nat chains, IPs",
                                "no pod dirs, writable layers, unreferenced blobs/snapshots; integrity_check ok"]
        return result
    except BaseException as exc:
        result.setdefault("failures", []).append(f"{type(exc).__name__}: {exc}")
        if chaos is not None:
            result["failures"] += chaos.failures
            result["kills"] = chaos.kills_done
        raise
    finally:
        forced = force_cleanup(d, chaos.cgroup_parent if chaos else "/pycri-chaos-none")
        if forced:
            result.setdefault("forced_cleanup", forced)
            log(f"forced clean-up: {forced}")
        if keep_log and d.log_path.exists():
            shutil.copy(d.log_path, keep_log)
        with open("/proc/self/mountinfo") as f:
            mounted = any(line.split()[4].startswith(str(d.workdir)) for line in f)
        if not mounted:
            shutil.rmtree(d.workdir, ignore_errors=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kills", type=int, default=200)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--pods-per-worker", type=int, default=3)
    ap.add_argument("--wound-every", type=int, default=5, help="wound a pod every N kills (0: never)")
    ap.add_argument("--seed", type=int)
    ap.add_argument("--json", help="write the figures here")
    ap.add_argument("--keep-log", help="copy the daemon's log here")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("chaos.py needs root (namespaces, mounts, cgroups)", file=sys.stderr)
        return 2
    sys.path.insert(0, str(REPO / "hack"))
    from tests.fixtures.registry import RegistryServer, images_dir

    workdir = Path(tempfile.mkdtemp(prefix="pycri-chaos-", dir="/tmp"))
    regdir = Path(tempfile.mkdtemp(prefix="pycri-chaos-reg-", dir="/tmp"))
    result: dict = {}

    def on_term(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    try:
        with RegistryServer(regdir) as reg:
            reg.push_test_images(images_dir())
            result = run_chaos(workdir, reg, kills=args.kills, workers=args.workers, seed=args.seed,
                               pods_per_worker=args.pods_per_worker, wound_every=args.wound_every,
                               keep_log=args.keep_log)
    finally:
        shutil.rmtree(regdir, ignore_errors=True)
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 1 if result.get("failures") else 0


if __name__ == "__main__":
    sys.exit(main())
