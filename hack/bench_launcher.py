"""Benchmark: create+start+wait of busybox `true` through our monitor (warm) vs `runc run` and `crun run`
on the same bundle. Creates are sent as the daemon sends them ("ready": "later": the start waits for the end of
the set-up, see docs/runtime.md). Also prints the kernel's floor on this machine (hack/start_floor.c).
Usage: python hack/bench_launcher.py [-n 50]. Needs root. Every runtime keeps its state on a tmpfs, as on a
node's /run (see run_tmpfs); the bundle and rootfs stay on the disk.

`--pod`: instead, the monitor operations in the shape pycri issues them for one pod (spawn, infra create/start,
app create/start in the infra's namespaces, exec, kill+wait, delete, shutdown), each timed client-side, with
an overlay rootfs, a pinned netns, per-container cgroups and pycri's mounts; no runc/crun comparison."""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from tests.runtime.rt_helpers import make_rootfs, make_spec, write_bundle  # noqa: E402

from runtime import spawner  # noqa: E402
from runtime.client import MonitorClient  # noqa: E402


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def bench_ours(bundle: str, state_dir: str, n: int) -> list[float]:
    sp = spawner.start()  # the production path: a lean spawner forks the pod monitor
    c = MonitorClient(sp.spawn_monitor("bench", state_dir))
    sp.close()
    out = []
    try:
        for i in range(n + 3):
            t = time.perf_counter()
            c.create(f"b{i}", bundle, ready_later=True)  # as the daemon creates
            c.start(f"b{i}")
            ex = c.wait(f"b{i}", timeout=30)
            dt = time.perf_counter() - t
            assert ex["exit_code"] == 0, ex
            c.delete(f"b{i}")
            if i >= 3:  # warm-up
                out.append(dt)
    finally:
        c.shutdown(force=True)
    return out


def bench_oci(binary: str, bundle: str, root: str, n: int, extra: list[str]) -> list[float] | str:
    if not shutil.which(binary):
        return f"{binary} not installed"
    out = []
    for i in range(n + 3):
        t = time.perf_counter()
        r = subprocess.run([binary, *extra, "--root", root, "run", "--bundle", bundle, f"{binary}{i}"],
                           stdin=subprocess.DEVNULL, capture_output=True)
        dt = time.perf_counter() - t
        if r.returncode != 0:
            return f"{binary} failed: {r.stderr.decode(errors='replace').strip()[:300]}"
        if i >= 3:
            out.append(dt)
    return out


def bench_floor(rootfs: str, tmp: str, n: int) -> float | str:
    """hack/start_floor.c, built here: the same namespaces and exec with no runtime around them (ms)."""
    if not shutil.which("gcc"):
        return "gcc not installed"
    binary = os.path.join(tmp, "start_floor")
    src = os.path.join(os.path.dirname(os.path.abspath(__file__)), "start_floor.c")
    r = subprocess.run(["gcc", "-O2", "-o", binary, src], capture_output=True, text=True)
    if r.returncode != 0:
        return f"start_floor.c did not build: {r.stderr.strip()[:300]}"
    r = subprocess.run([binary, rootfs, str(n)], capture_output=True, text=True)
    if r.returncode != 0:
        return f"start_floor failed (exit {r.returncode})"
    return float(r.stdout)


POD_OPS = ("spawn", "infra create", "infra start", "create", "start", "exec true", "kill+wait", "delete",
           "infra kill+wait", "infra delete", "shutdown")


def _pod_spec(args: list[str], cg: str, namespaces: list[dict], mounts: list[dict], readonly: bool) -> dict:
    spec = make_spec(args, marker="", root={"path": "rootfs", "readonly": readonly})
    spec.pop("hostname", None)
    spec["process"].pop("rlimits", None)
    spec["process"]["noNewPrivileges"] = False
    spec["mounts"] = [m for m in spec["mounts"] if m["destination"] != "/dev/shm"] + [
        {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
         "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]}] + mounts
    spec["linux"] = {**spec["linux"], "cgroupsPath": cg, "namespaces": namespaces,
                     "resources": {"devices": [{"allow": False, "access": "rwm"},
                                               {"allow": True, "type": "c", "major": -1, "minor": -1, "access": "m"},
                                               {"allow": True, "type": "b", "major": -1, "minor": -1, "access": "m"},
                                               {"allow": True, "type": "c", "major": 1, "minor": 3,
                                                "access": "rwm"}]}}
    spec["linux"]["maskedPaths"] = spec["linux"]["maskedPaths"] + ["/sys/devices/virtual/powercap"]
    return spec


def bench_pod(tmp: str, n: int, run: str) -> dict[str, list[float]]:
    """The monitor ops of one pod's life, as pycri sends them (see POD_OPS), n pods one after the other."""
    from runtime import cgroups
    from runtime.host import podns
    lower = make_rootfs(os.path.join(tmp, "lower"))
    cg_root = f"/pycri-bench-launcher-{os.getpid()}"
    times: dict[str, list[float]] = {k: [] for k in POD_OPS}
    sp = spawner.start()
    try:
        for i in range(n + 2):
            pod = os.path.join(tmp, f"p{i}")
            os.makedirs(os.path.join(pod, "shm"))
            for f in ("hostname", "hosts", "resolv.conf"):
                with open(os.path.join(pod, f), "w") as fh:
                    fh.write("x\n")
            netns = os.path.join(tmp, f"ns{i}")
            podns.create_netns(netns)
            t: dict[str, float] = {}

            def timed(name, fn, *args, **kw):
                t0 = time.perf_counter()
                out = fn(*args, **kw)
                t[name] = time.perf_counter() - t0
                return out

            def bundle(name, spec):
                b = os.path.join(pod, name)
                for d in ("rootfs", "upper", "work"):
                    os.makedirs(os.path.join(b, d))
                with open(os.path.join(b, "config.json"), "w") as fh:
                    json.dump(spec, fh)
                return b, {"lower": [lower], "upper": os.path.join(b, "upper"), "work": os.path.join(b, "work")}

            try:
                c = MonitorClient(timed("spawn", sp.spawn_monitor, f"pod{i}", os.path.join(run, f"m{i}")))
                shm = [{"destination": "/dev/shm", "type": "bind", "source": os.path.join(pod, "shm"),
                        "options": ["rbind", "rprivate", "rw"]}]
                ib, iov = bundle("infra", _pod_spec(
                    ["sleep", "3600"], f"{cg_root}/pod{i}/infra", [{"type": "mount"}, {"type": "network", "path": netns},
                                                                 {"type": "ipc"}, {"type": "uts"}, {"type": "pid"}],
                    shm, readonly=True))
                timed("infra create", c.create, "infra", ib, overlay=iov, log_path=os.devnull, ready_later=True)
                ipid = timed("infra start", c.start, "infra")["pid"]
                files = [{"destination": f"/etc/{f}", "type": "bind", "source": os.path.join(pod, f),
                          "options": ["rbind", "rprivate", "rw"]} for f in ("hostname", "hosts", "resolv.conf")]
                ab, aov = bundle("app", _pod_spec(
                    ["sleep", "3600"], f"{cg_root}/pod{i}/app",
                    [{"type": "mount"}, {"type": "network", "path": netns},
                     {"type": "ipc", "path": f"/proc/{ipid}/ns/ipc"}, {"type": "uts", "path": f"/proc/{ipid}/ns/uts"},
                     {"type": "pid"}], shm + files, readonly=False))
                timed("create", c.create, "app", ab, overlay=aov, log_path=os.path.join(pod, "app.log"),
                      ready_later=True)
                timed("start", c.start, "app")
                r = timed("exec true", c.exec, "app", {"args": ["true"]})
                assert r.exit_code == 0, r
                t0 = time.perf_counter()
                c.kill("app", "SIGKILL", all=True)
                c.wait("app", timeout=30)
                t["kill+wait"] = time.perf_counter() - t0
                timed("delete", c.delete, "app", force=True)
                t0 = time.perf_counter()
                c.kill("infra", "SIGKILL", all=True)
                c.wait("infra", timeout=30)
                t["infra kill+wait"] = time.perf_counter() - t0
                timed("infra delete", c.delete, "infra", force=True)
                timed("shutdown", c.shutdown, force=True)
            finally:
                podns.remove_netns(netns)
            if i >= 2:  # warm-up
                for k, v in t.items():
                    times[k].append(v)
    finally:
        sp.close()
        cg = cgroups.open_cgroup(cg_root)
        if cg.exists():
            cg.remove()
    return times


def run_tmpfs(tmp: str) -> str:
    """A tmpfs for every runtime's state (our monitor's, runc's and crun's --root), as /run is on a node (here /run
    and /tmp are on the disk, where creating a small file costs ~0.3 ms instead of ~0.03)."""
    from runtime.host import linux
    run = os.path.join(tmp, "run")
    os.mkdir(run)
    linux.mount("tmpfs", run, "tmpfs", linux.MS_NOSUID | linux.MS_NODEV, "mode=0700")
    return run


def release_tmpfs(run: str) -> None:
    from runtime.host import linux
    linux.umount2(run, linux.MNT_DETACH)


def private_cgroup_view() -> None:
    """crun refuses hybrid hosts when cgroup2 holds a controller (here: hugetlb). Run the whole benchmark,
    all runtimes alike, in a private mount namespace without /sys/fs/cgroup/unified."""
    from runtime.host import linux
    if not os.path.ismount("/sys/fs/cgroup/unified"):
        return
    linux.unshare(linux.CLONE_NEWNS)
    linux.mount(None, "/", None, linux.MS_REC | linux.MS_PRIVATE)
    linux.umount2("/sys/fs/cgroup/unified", linux.MNT_DETACH)


def main() -> int:
    private_cgroup_view()
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("-n", type=int, default=50)
    ap.add_argument("--cgroup", action="store_true", help="give every container a cgroup (all runtimes)")
    ap.add_argument("--pod", action="store_true", help="time the monitor ops of a pod's life (see the doc)")
    a = ap.parse_args()
    if a.pod:
        tmp = tempfile.mkdtemp(prefix="bench-", dir="/tmp")
        run = run_tmpfs(tmp)
        try:
            times = bench_pod(tmp, a.n, run)
        finally:
            release_tmpfs(run)
            shutil.rmtree(tmp, ignore_errors=True)
        print(f"monitor ops of one pod (client-side), n={a.n} pods (ms)")
        print(f"{'op':20} {'median':>8} {'p95':>8}")
        for k, xs in times.items():
            print(f"{k:20} {statistics.median(xs) * 1000:8.2f} {pct(xs, 95) * 1000:8.2f}")
        print(json.dumps({k: round(statistics.median(xs) * 1000, 2) for k, xs in times.items()}))
        return 0
    tmp = tempfile.mkdtemp(prefix="bench-", dir="/tmp")
    run = run_tmpfs(tmp)
    try:
        rootfs = make_rootfs(os.path.join(tmp, "rootfs"))
        spec = make_spec(["/bin/true"], marker="", root={"path": rootfs, "readonly": False})
        if a.cgroup:
            spec["linux"]["cgroupsPath"] = "/pycri-bench/ctr"
        spec["process"].pop("oomScoreAdj", None)  # runc cannot lower it here (no CAP_SYS_RESOURCE)
        bundle = write_bundle(os.path.join(tmp, "bundle"), spec, rootfs)
        results = {
            "pycri-runtime (monitor, warm)": bench_ours(bundle, os.path.join(run, "st"), a.n),
            # crun refuses hybrid cgroups unless told not to manage them; runc uses cgroupfs v1
            "crun run": bench_oci("crun", bundle, os.path.join(run, "crun"), a.n, ["--cgroup-manager=disabled"]),
            "runc run": bench_oci("runc", bundle, os.path.join(run, "runc"), a.n, []),
        }
        floor = bench_floor(rootfs, tmp, a.n)
    finally:
        release_tmpfs(run)
        shutil.rmtree(tmp, ignore_errors=True)
        if a.cgroup:
            from runtime import cgroups
            parent = cgroups.open_cgroup("/pycri-bench")
            if parent.exists():
                parent.remove()
    ours = statistics.median(results["pycri-runtime (monitor, warm)"])
    print(f"create+start+wait of busybox true, n={a.n} each (ms)")
    print(f"{'runtime':32} {'median':>8} {'p95':>8} {'vs ours':>8}")
    summary = {}
    for name, xs in results.items():
        if isinstance(xs, str):
            print(f"{name:32} {xs}")
            continue
        med = statistics.median(xs)
        summary[name] = {"median_ms": round(med * 1000, 2), "p95_ms": round(pct(xs, 95) * 1000, 2)}
        print(f"{name:32} {med * 1000:8.2f} {pct(xs, 95) * 1000:8.2f} {med / ours:7.2f}x")
    if isinstance(floor, str):
        print(f"{'kernel floor (start_floor.c)':32} {floor}")
    else:
        print(f"{'kernel floor (start_floor.c)':32} {floor:8.2f} {'':>8} {floor / (ours * 1000):7.2f}x")
        summary["kernel floor (start_floor.c)"] = {"median_ms": round(floor, 2)}
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
