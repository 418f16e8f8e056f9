#!/work/main/.venv/bin/python
"""Restart to serving, side by side: pycri and containerd 1.6 + runc killed with SIGKILL at a node's density.

    .venv/bin/python hack/bench_restart.py                        # both runtimes, 110 then 250 pods, 5 restarts each
    .venv/bin/python hack/bench_restart.py --pods 110 --restarts 3 --runtime pycri

Per runtime: the bench environment of hack/bench.py (registry, CNI bridge, private daemon), pods with one
busybox `sleep` container each, brought up to each size in --pods. At each size, --restarts times: the daemon
is SIGKILLed, --exits containers are killed while it is down (each by its own process, SIGKILL, and the
kill waited for), and the daemon is started again. Measured from the start of the process:
  - accept: its socket accepts a connection;
  - serving: the first ListContainers that answers (retried until one does);
  - truth: whether that first answer already shows every killed container EXITED (and no other one).
The medians per size go to stdout as a markdown table and to hack/results/restart-<date>.{md,json}.
Needs root; everything it starts is removed at the end (as hack/bench.py).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import sys
import time
from pathlib import Path

HACK = Path(__file__).resolve().parent
sys.path.insert(0, str(HACK))
sys.path.insert(0, str(HACK.parent))

import grpc  # noqa: E402

from bench_lib import common, report  # noqa: E402
from bench_lib.common import BenchEnv, log  # noqa: E402
from bench_lib.containerd import Containerd  # noqa: E402
from bench_lib.memory import PodRef  # noqa: E402
from bench_lib.pycri import Pycri  # noqa: E402
from bench_lib.workload import Results, Workload  # noqa: E402
from pycri.api import api_pb2 as cri  # noqa: E402
from pycri.api import api_pb2_grpc  # noqa: E402
from tests.fixtures.daemon import wait_accepting  # noqa: E402

def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runtime", choices=("containerd", "pycri", "both"), default="both")
    ap.add_argument("--pods", default="110,250", help="pod counts, ascending (default 110,250)")
    ap.add_argument("--restarts", type=int, default=5, help="restarts per pod count (default 5)")
    ap.add_argument("--exits", type=int, default=10, help="containers killed while the daemon is down (default 10)")
    ap.add_argument("--out", type=Path, help="markdown output (default hack/results/restart-<date>.md)")
    return ap.parse_args(argv)


def first_list(endpoint: str, timeout: float = 120) -> dict[str, int]:
    """The first ListContainers that answers: {container id: state}."""
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(endpoint) as channel:
        rt = api_pb2_grpc.RuntimeServiceStub(channel)
        while True:
            try:
                resp = rt.ListContainers(cri.ListContainersRequest(), timeout=30, wait_for_ready=True)
                return {c.id: c.state for c in resp.containers}
            except grpc.RpcError as exc:  # e.g. containerd's "server is not initialized yet"
                if time.monotonic() > deadline:
                    raise RuntimeError(f"no ListContainers answer within {timeout:.0f}s: {exc.details()}") from None
                time.sleep(0.005)


def container_pids(workload: Workload, cids: list[str]) -> dict[str, int]:
    rt = workload.client.rt
    out = {}
    for cid in cids:
        info = rt.ContainerStatus(cri.ContainerStatusRequest(container_id=cid, verbose=True), timeout=30).info
        out[cid] = int(json.loads(info["info"])["pid"])
    return out


def restart_once(daemon, workload: Workload, running: list[str], exits: int, rng: random.Random) -> dict:
    victims = rng.sample(running, min(exits, len(running)))
    pids = container_pids(workload, victims)
    daemon.proc.send_signal(signal.SIGKILL)
    daemon.proc.wait()
    for pid in pids.values():
        os.kill(pid, signal.SIGKILL)
    for pid in pids.values():
        while common.alive(pid):
            time.sleep(0.001)
    time.sleep(0.2)  # the runtimes' own reapers (monitor, shim) record the exits
    t0 = time.monotonic()
    daemon.start()
    wait_accepting(daemon.socket, timeout=120)
    t_accept = time.monotonic() - t0
    states = first_list(daemon.endpoint)
    t_serving = time.monotonic() - t0
    recovery_ms = _recovery_ms(daemon)
    wrong = [cid for cid in victims if states.get(cid) != cri.CONTAINER_EXITED]
    wrong += [cid for cid in running if cid not in victims and states.get(cid) != cri.CONTAINER_RUNNING]
    for cid in victims:
        running.remove(cid)
    workload.client.close()
    workload.client = type(workload.client)(daemon.endpoint, workload.results)
    return {"accept_s": round(t_accept, 4), "serving_s": round(t_serving, 4), "first_answer_true": not wrong,
            "wrong": len(wrong), "recovery_ms": recovery_ms}


def _recovery_ms(daemon) -> float | None:
    """pycri's own figure for its recovery pass (the last "serving" line of its log); None for containerd."""
    if daemon.name != "pycri":
        return None
    for line in reversed(daemon.log_path.read_text(errors="replace").splitlines()):
        if '"serving"' in line:
            return json.loads(line).get("recovery_ms")
    return None


def add_pods(workload: Workload, n: int, running: list[str]) -> None:
    c, rt = workload.client, workload.client.rt
    for _ in range(n):
        pod = workload.pod_config(f"restart-{len(workload.live_pods)}")
        sid = c.call("RunPodSandbox", rt.RunPodSandbox, cri.RunPodSandboxRequest(config=pod),
                     record=False).pod_sandbox_id
        ref = PodRef(pod.metadata.uid, sid)
        workload.live_pods[sid] = ref
        cid = c.call("CreateContainer", rt.CreateContainer, cri.CreateContainerRequest(
            pod_sandbox_id=sid, config=workload.container_config(), sandbox_config=pod), record=False).container_id
        ref.container_ids.append(cid)
        c.call("StartContainer", rt.StartContainer, cri.StartContainerRequest(container_id=cid), record=False)
        running.append(cid)


def run_runtime(name: str, env: BenchEnv, sizes: list[int], args) -> dict:
    daemon = Containerd(env) if name == "containerd" else Pycri(env, log_level="info")  # info: "serving" is logged
    results = Results(runtime=name, version=daemon.version())
    out = {"runtime": name, "version": results.version, "sizes": {}}
    workload = None
    rng = random.Random(7)
    try:
        with common.signals_deferred():
            daemon.start()
        workload = Workload(daemon, env, results, iterations=0)
        workload.wait_ready()
        if not workload.ensure_image(env.ref("busybox")):
            raise RuntimeError("cannot pull busybox")
        running: list[str] = []
        for size in sizes:
            t0 = time.monotonic()
            add_pods(workload, size - len(workload.live_pods), running)
            log(f"{name}: {size} pods running ({time.monotonic() - t0:.0f}s); {args.restarts} restarts")
            time.sleep(2)
            runs = []
            for r in range(args.restarts):
                if len(running) < args.exits:
                    add_pods(workload, args.exits, running)
                runs.append(restart_once(daemon, workload, running, args.exits, rng))
                log(f"{name} @{size}: restart {r + 1}: {runs[-1]}")
                add_pods(workload, size - len(running), running)  # back to `size` running containers
            out["sizes"][size] = {
                "runs": runs,
                "accept_median_s": round(statistics.median(x["accept_s"] for x in runs), 3),
                "serving_median_s": round(statistics.median(x["serving_s"] for x in runs), 3),
                "first_answers_true": sum(x["first_answer_true"] for x in runs),
                "recovery_median_ms": (statistics.median(x["recovery_ms"] for x in runs)
                                       if all(x["recovery_ms"] is not None for x in runs) else None),
            }
    except Exception as exc:  # noqa: BLE001 - report what we have, the other runtime still runs
        log(f"{name}: aborted: {type(exc).__name__}: {exc}")
        out["aborted"] = f"{type(exc).__name__}: {exc}"
    finally:
        with common.signals_deferred():
            log(f"{name}: cleaning up")
            if workload is not None:
                workload.cleanup()
            daemon.stop()
    return out


def render(results: list[dict], meta: dict) -> str:
    lines = [f"# Restart to serving ({meta['date']})", "", f"Machine: {meta['machine']}", "",
             f"Command: `{meta['command']}`; {meta['exits']} containers killed while the daemon is down, "
             f"{meta['restarts']} restarts per size.", "",
             "| runtime | pods | accept, median | first ListContainers answered, median | first answer true | "
             "recovery pass (pycri's log), median |",
             "|---|---|---|---|---|---|"]
    for r in results:
        for size, s in r["sizes"].items():
            rec = f"{s['recovery_median_ms']:.1f} ms" if s.get("recovery_median_ms") is not None else "-"
            lines.append(f"| {r['runtime']} | {size} | {s['accept_median_s'] * 1000:.0f} ms | "
                         f"{s['serving_median_s'] * 1000:.0f} ms | {s['first_answers_true']}/{len(s['runs'])} | "
                         f"{rec} |")
        if r.get("aborted"):
            lines.append(f"| {r['runtime']} | aborted: {r['aborted']} | | | | |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    args = parse_args(argv)
    why_not = common.preflight("hack/bench_restart.py")
    if why_not:
        print(why_not, file=sys.stderr)
        return 2
    sizes = sorted(int(x) for x in args.pods.split(","))
    names = ["containerd", "pycri"] if args.runtime == "both" else [args.runtime]
    out_md = args.out or HACK / "results" / f"restart-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}.md"
    results = []
    try:
        with common.environment() as env:
            for name in names:
                results.append(run_runtime(name, env, sizes, args))
    except KeyboardInterrupt:
        log("interrupted; cleaned up")
        return 130
    meta = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": report.machine(),
            "command": " ".join(["hack/bench_restart.py"] + sys.argv[1:]), "exits": args.exits,
            "restarts": args.restarts}
    text = render(results, meta)
    out_md.write_text(text)
    out_md.with_suffix(".json").write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
    print(text)
    log(f"wrote {out_md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
