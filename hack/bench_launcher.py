"""Benchmark: create+start+wait of busybox `true` through our monitor (warm) vs `runc run` and `crun run`
on the same bundle. Usage: python hack/bench_launcher.py [-n 50]. Needs root."""
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
            c.create(f"b{i}", bundle)
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


def private_cgroup_view() -> None:
    """crun refuses hybrid hosts when cgroup2 holds a controller (here: hugetlb). Run the whole benchmark,
    all runtimes alike, in a private mount namespace without /sys/fs/cgroup/unified."""
    from runtime import linux
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
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="bench-", dir="/tmp")
    try:
        rootfs = make_rootfs(os.path.join(tmp, "rootfs"))
        spec = make_spec(["/bin/true"], marker="", root={"path": rootfs, "readonly": False})
        if a.cgroup:
            spec["linux"]["cgroupsPath"] = "/pycri-bench/ctr"
        spec["process"].pop("oomScoreAdj", None)  # runc cannot lower it here (no CAP_SYS_RESOURCE)
        bundle = write_bundle(os.path.join(tmp, "bundle"), spec, rootfs)
        results = {
            "pycri-runtime (monitor, warm)": bench_ours(bundle, os.path.join(tmp, "st"), a.n),
            # crun refuses hybrid cgroups unless told not to manage them; runc uses cgroupfs v1
            "crun run": bench_oci("crun", bundle, os.path.join(tmp, "crun"), a.n, ["--cgroup-manager=disabled"]),
            "runc run": bench_oci("runc", bundle, os.path.join(tmp, "runc"), a.n, []),
        }
    finally:
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
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
