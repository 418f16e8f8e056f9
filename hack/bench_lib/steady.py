"""A kubelet's steady state against one runtime (hack/bench_steady.py): N pods brought up side by side, then a timed
window of the calls a kubelet makes all the time, then every pod removed through CRI.

  ramp      N pods, each RunPodSandbox + CreateContainer (busybox `sleep 3600`) + StartContainer, `concurrency` pods
            at a time (the kubelet's pod workers run side by side); the time until every container is running.
  floor     after the pods settled, 200 Version calls one after another: the cost of a call that does nothing
            (client, gRPC, server), to tell per-call overhead from the Lists' per-record work
  load      for `seconds`, each task on its own schedule, the calls overlapping as a kubelet's do:
              relist    every 1 s: ListPodSandbox, then ListContainers (no filter: the generic PLEG's relist)
              stats     every 10 s: ListPodSandboxStats, ListContainerStats, ImageFsInfo
              probe     per pod every 10 s, the pods spread evenly over the period: ExecSync `true`, timeout 5
              status    per pod every 10 s, spread evenly, half a slot after its probe: PodSandboxStatus, then
                        ContainerStatus (the pod worker's GetPodStatus)
            A task never overlaps itself (a kubelet's loop waits for its call): a run that is due while the previous
            one is still out is skipped and counted. The calls go out from a thread pool over one gRPC channel;
            the time from a call's due time to its start ("dispatch lag") and the client's own CPU show whether the
            client kept up.
  teardown  every pod removed through CRI (StopContainer, RemoveContainer, StopPodSandbox, RemovePodSandbox).

Runtime CPU over the window: cpu.py. Memory after the window: memory.py (daemon RSS, private memory per pod).
"""
from __future__ import annotations

import heapq
import resource
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field

from pycri.api import api_pb2 as cri

from . import common, cpu
from .common import BenchEnv, log
from .memory import PodRef
from .workload import Results, Skip, Workload, summarize

RELIST_PERIOD = 1.0
STATS_PERIOD = 10.0
POD_PERIOD = 10.0
EXEC_TIMEOUT = 5
EXEC_RPC_TIMEOUT = EXEC_TIMEOUT + 10.0
LOAD_WORKERS = 64
FLOOR_CALLS = 200
SETTLE_SECONDS = 5.0     # after the ramp, before the window: start-up work of the new pods (spare forks) ends
RAMP_OPS = ("ramp RunPodSandbox", "ramp CreateContainer", "ramp StartContainer")
FLOOR_OP = "Version (sequential, before the load)"
LOAD_OPS = ("relist", "ListPodSandbox", "ListContainers", "PodSandboxStatus", "ContainerStatus", "ExecSync",
            "stats", "ListPodSandboxStats", "ListContainerStats", "ImageFsInfo", FLOOR_OP)


@dataclass(eq=False)
class Task:
    name: str
    period: float
    offset: float
    fn: object
    busy: bool = False
    runs: int = 0
    skipped: int = 0


@dataclass
class Load:
    lags: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


class Steady:
    def __init__(self, daemon, env: BenchEnv, results: Results, concurrency: int = 10):
        self.daemon = daemon
        self.env = env
        self.results = results
        self.concurrency = concurrency
        self.wl = Workload(daemon, env, results, iterations=0)
        self.client = self.wl.client
        self.pods: list[PodRef] = []

    # -- set-up
    def prepare(self) -> None:
        """Runtime ready, pause and busybox present (untimed), the daemon's own processes marked (memory.py)."""
        self.wl.wait_ready()
        for ref in (common.SANDBOX_IMAGE, self.env.ref("busybox")):
            if not self.wl.ensure_image(ref):
                raise RuntimeError(f"cannot pull {ref}")
        time.sleep(1)
        self.daemon.probe.mark_baseline()

    def _make_pod(self, i: int) -> PodRef:
        c, rt = self.client, self.client.rt
        pod = self.wl.pod_config(f"steady-{i}")
        sid = c.call("ramp RunPodSandbox", rt.RunPodSandbox, cri.RunPodSandboxRequest(config=pod)).pod_sandbox_id
        ref = PodRef(pod.metadata.uid, sid)
        self.wl.live_pods[sid] = ref
        cid = c.call("ramp CreateContainer", rt.CreateContainer, cri.CreateContainerRequest(
            pod_sandbox_id=sid, config=self.wl.container_config(), sandbox_config=pod)).container_id
        ref.container_ids.append(cid)
        c.call("ramp StartContainer", rt.StartContainer, cri.StartContainerRequest(container_id=cid))
        return ref

    def ramp(self, n: int) -> None:
        """n pods, `concurrency` at a time; memory["ramp_s"] = time until the last container started."""
        log(f"{self.daemon.name}: ramp to {n} pods, {self.concurrency} at a time")
        failed = []
        t0 = time.monotonic()
        with ThreadPoolExecutor(self.concurrency, thread_name_prefix="ramp") as pool:
            futures = {pool.submit(self._make_pod, i): i for i in range(n)}
            for done, fut in enumerate(as_completed(futures), 1):
                try:
                    self.pods.append(fut.result())
                except Skip as s:
                    failed.append(f"pod {futures[fut]}: {s}")
                if done % 50 == 0:
                    log(f"{self.daemon.name}: {done}/{n} pods ({time.monotonic() - t0:.0f}s)")
        ramp_s = time.monotonic() - t0
        m = self.results.memory
        m["ramp_s"] = round(ramp_s, 3)
        m["ramp_failures"] = failed
        running = self.client.call("ListContainers", self.client.rt.ListContainers, cri.ListContainersRequest(
            filter=cri.ContainerFilter(state=cri.ContainerStateValue(state=cri.CONTAINER_RUNNING))), record=False)
        m["pods_running"] = len(running.containers)
        log(f"{self.daemon.name}: {len(self.pods)}/{n} pods up in {ramp_s:.1f}s, {m['pods_running']} containers "
            f"running" + (f"; {len(failed)} failed, first: {failed[0]}" if failed else ""))
        if failed:
            self.results.notes.append(f"ramp: {len(failed)} of {n} pods failed; first: {failed[0][:160]}")
        if m["pods_running"] != n:
            self.results.notes.append(f"ramp: {m['pods_running']} of {n} containers running after the ramp")

    # -- the load
    def _relist(self) -> None:
        c = self.client
        t0 = time.perf_counter()
        c.call("ListPodSandbox", c.rt.ListPodSandbox, cri.ListPodSandboxRequest())
        c.call("ListContainers", c.rt.ListContainers, cri.ListContainersRequest(filter=cri.ContainerFilter()))
        self.results.samples["relist"].append(time.perf_counter() - t0)

    def _stats(self) -> None:
        c = self.client
        t0 = time.perf_counter()
        c.call("ListPodSandboxStats", c.rt.ListPodSandboxStats, cri.ListPodSandboxStatsRequest())
        c.call("ListContainerStats", c.rt.ListContainerStats, cri.ListContainerStatsRequest())
        c.call("ImageFsInfo", c.img.ImageFsInfo, cri.ImageFsInfoRequest())
        self.results.samples["stats"].append(time.perf_counter() - t0)

    def _probe(self, ref: PodRef) -> None:
        c = self.client
        r = c.call("ExecSync", c.rt.ExecSync, cri.ExecSyncRequest(container_id=ref.container_ids[0], cmd=["true"],
                                                                   timeout=EXEC_TIMEOUT), timeout=EXEC_RPC_TIMEOUT)
        if r.exit_code != 0:
            self.results.errors["ExecSync"].append(f"exit {r.exit_code} stderr {r.stderr[:80]!r}")

    def _status(self, ref: PodRef) -> None:
        c = self.client
        c.call("PodSandboxStatus", c.rt.PodSandboxStatus, cri.PodSandboxStatusRequest(pod_sandbox_id=ref.sandbox_id))
        c.call("ContainerStatus", c.rt.ContainerStatus, cri.ContainerStatusRequest(container_id=ref.container_ids[0]))

    def floor(self, k: int = FLOOR_CALLS) -> None:
        """k Version calls one after another before the window: the per-call cost of client + server + gRPC with
        no work in the handler, to tell it apart from the per-record work of the Lists."""
        c = self.client
        for _ in range(k):
            try:
                c.call(FLOOR_OP, c.rt.Version, cri.VersionRequest())
            except Skip:
                return

    def _run(self, task: Task, due: float, load: Load) -> None:
        lag = time.monotonic() - due
        try:
            task.fn()
        except Skip:
            pass  # booked in results.errors by CRIClient.call
        except Exception as exc:  # noqa: BLE001 - one failing call must not stop the load
            with load.lock:
                load.failures.append(f"{task.name}: {type(exc).__name__}: {exc}")
        finally:
            with load.lock:
                load.lags.append(lag)
            task.busy = False

    def tasks(self) -> list[Task]:
        out = [Task("relist", RELIST_PERIOD, 0.0, self._relist), Task("stats", STATS_PERIOD, 0.25, self._stats)]
        n = len(self.pods)
        for i, ref in enumerate(self.pods):
            out.append(Task("probe", POD_PERIOD, i * POD_PERIOD / n, lambda ref=ref: self._probe(ref)))
            out.append(Task("status", POD_PERIOD, (i + 0.5) * POD_PERIOD / n, lambda ref=ref: self._status(ref)))
        return out

    def load(self, seconds: float) -> None:
        """The kubelet-like load for `seconds`; runtime CPU, client CPU and dispatch lag into results.memory."""
        if not self.pods:
            self.results.notes.append("load: no pod is running; skipped")
            return
        tasks = self.tasks()
        load = Load()
        time.sleep(SETTLE_SECONDS)
        self.floor()
        log(f"{self.daemon.name}: load for {seconds:.0f}s over {len(self.pods)} pods ({len(tasks)} tasks)")
        before = cpu.snapshot(self.daemon, self.env.cgroup_root)
        ru0 = resource.getrusage(resource.RUSAGE_SELF)
        t0 = time.monotonic()
        end = t0 + seconds
        heap = [(t0 + t.offset, seq, t) for seq, t in enumerate(tasks)]
        heapq.heapify(heap)
        seq = len(heap)
        with ThreadPoolExecutor(LOAD_WORKERS, thread_name_prefix="load") as pool:
            while heap[0][0] < end:
                due, _, task = heapq.heappop(heap)
                wait = due - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                if task.busy:
                    task.skipped += 1
                else:
                    task.busy = True
                    task.runs += 1
                    pool.submit(self._run, task, due, load)
                seq += 1
                heapq.heappush(heap, (due + task.period, seq, task))
        # the calls still out when the window closed belong to it: the pool's exit waited for them
        ru1 = resource.getrusage(resource.RUSAGE_SELF)
        after = cpu.snapshot(self.daemon, self.env.cgroup_root)
        window = cpu.window(before, after)
        m = self.results.memory
        m["cpu"] = window
        client_s = (ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime)
        m["client_cpu_s"] = round(client_s, 3)
        m["load_calls"] = sum(len(self.results.samples.get(op, [])) for op in LOAD_OPS
                              if op not in ("relist", "stats", FLOOR_OP))
        m["client_cpu_ms_per_call"] = round(1000 * client_s / max(1, m["load_calls"]), 3)
        m["dispatch_lag_ms"] = {k: round(v * 1000, 3) for k, v in (summarize(load.lags) or {}).items() if k != "n"}
        m["task_runs"] = {name: sum(t.runs for t in tasks if t.name == name) for name in ("relist", "stats", "probe",
                                                                                          "status")}
        m["task_skipped"] = {name: sum(t.skipped for t in tasks if t.name == name)
                             for name in ("relist", "stats", "probe", "status")}
        m["load_failures"] = load.failures[:20]
        log(f"{self.daemon.name}: runtime CPU {window['total_s']:.2f}s over {window['seconds']:.0f}s "
            f"(daemon {window['daemon_own_s']:.2f} + its reaped children {window['daemon_children_s']:.2f} + helpers "
            f"{window['helper_s']:.2f} + per-pod {window['pod_s']:.2f}; {window['processes_end']} processes, "
            f"{window['processes_ended']} ended); client CPU {client_s:.2f}s; dispatch lag p99 "
            f"{m['dispatch_lag_ms'].get('p99', 0):.1f} ms; skipped {m['task_skipped']}")
        if load.failures:
            self.results.notes.append(f"load: {len(load.failures)} tasks raised; first: {load.failures[0][:160]}")

    # -- after the load
    def measure(self) -> None:
        self.wl.measure_pods(self.pods, key="daemon_steady")

    def teardown(self) -> None:
        """Every pod removed through CRI, `concurrency` at a time (untimed calls; the whole is timed)."""
        log(f"{self.daemon.name}: removing {len(self.wl.live_pods)} pods")
        t0 = time.monotonic()
        refs = list(self.wl.live_pods.values())
        with ThreadPoolExecutor(self.concurrency, thread_name_prefix="teardown") as pool:
            list(pool.map(lambda r: self.wl.remove_pod(r.sandbox_id, r.container_ids[0] if r.container_ids else None),
                          refs))
        self.results.memory["teardown_s"] = round(time.monotonic() - t0, 3)

    def cleanup(self) -> None:
        self.wl.cleanup()
