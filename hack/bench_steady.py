#!/work/main/.venv/bin/python
"""A kubelet's steady state, side by side: the load a kubelet puts on its runtime all the time, against pycri and
against containerd 1.6 + runc, one after the other in one run (issue #24).

    .venv/bin/python hack/bench_steady.py                              # both, 110 and 250 pods, 60 s, 1 run
    .venv/bin/python hack/bench_steady.py --pods 110 --seconds 30 --runs 3
    .venv/bin/python hack/bench_steady.py --runtime pycri --pods 3 --seconds 10     # a smoke run

Per runtime and pod count, a fresh daemon in the environment of hack/bench.py (registry, CNI bridge pbench0, all
under /tmp/pycri-bench-XXXX, traffic only on 127.0.0.1 and the bench's bridge; see docs/performance.md):
  1. N pods, one busybox `sleep` container each, --concurrency pods at a time: the time until all are running;
  2. --seconds of a kubelet's load: a PLEG relist every 1 s (ListPodSandbox, ListContainers; timed apart and
     together as "relist"), CRI stats every 10 s (ListPodSandboxStats, ListContainerStats, ImageFsInfo), and per
     pod every 10 s, spread evenly: an ExecSync probe (`true`, timeout 5) and a PodSandboxStatus + ContainerStatus;
     the calls overlap (a thread pool over one channel), each task never overlaps itself;
  3. p50/p95/p99 and count per call; runtime CPU seconds over the window (daemon, helpers, monitors/shims, runc,
     their reaped children: hack/bench_lib/cpu.py); private memory after the window (hack/bench_lib/memory.py);
     the client's own CPU and dispatch lag, to show that the client kept up;
  4. every pod removed through CRI, the daemon stopped and everything it left removed; what is still there is
     reported (mounts, processes, cgroups, new links).
With --runs K the runtimes alternate (containerd first in odd runs, pycri first in even ones) and the figures are the
medians over the K runs. Output: a markdown table on stdout and hack/results/steady-<date>.md, the raw samples in
the .json beside it. Needs root.
"""
from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

HACK = Path(__file__).resolve().parent
sys.path.insert(0, str(HACK))
sys.path.insert(0, str(HACK.parent))

from bench_lib import common, report  # noqa: E402
from bench_lib.common import BenchEnv, log  # noqa: E402
from bench_lib.containerd import Containerd  # noqa: E402
from bench_lib.pycri import Pycri  # noqa: E402
from bench_lib.steady import Steady  # noqa: E402
from bench_lib.workload import Results  # noqa: E402

RUNTIMES = {"containerd": Containerd, "pycri": Pycri}


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runtime", choices=("containerd", "pycri", "both"), default="both")
    ap.add_argument("--pods", default="110,250", help="pod counts, comma-separated (default 110,250)")
    ap.add_argument("--seconds", type=float, default=60, help="length of the load window (default 60)")
    ap.add_argument("--runs", type=int, default=1, help="runs per runtime and pod count; medians over them")
    ap.add_argument("--concurrency", type=int, default=10, help="pods created (and removed) at a time (default 10)")
    ap.add_argument("--out", type=Path, help="markdown output (default hack/results/steady-<date>.md); "
                                             "the JSON of raw samples goes next to it")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (configs, logs, roots) for debugging")
    args = ap.parse_args(argv)
    args.pod_counts = [int(x) for x in args.pods.split(",") if x.strip()]
    if not args.pod_counts or min(args.pod_counts) < 1 or args.runs < 1 or args.seconds <= 0:
        ap.error("--pods, --runs and --seconds must be positive")
    return args


def run_one(name: str, env: BenchEnv, pods: int, args) -> Results:
    """A fresh daemon, N pods, the load, memory, teardown, the daemon stopped; what it left goes into the notes."""
    daemon = RUNTIMES[name](env, keep=args.keep)
    results = Results(runtime=name, version=daemon.version())
    links_before = common.link_names()
    steady = None
    try:
        with common.signals_deferred():   # a Ctrl-C during start must not leave a half-started daemon unseen
            daemon.start()
        steady = Steady(daemon, env, results, args.concurrency)
        steady.prepare()
        steady.ramp(pods)
        steady.load(args.seconds)
        steady.measure()
    except Exception as exc:  # noqa: BLE001 - report what we have, the other runtime still runs
        log(f"{name}: aborted: {type(exc).__name__}: {exc}")
        results.notes.append(f"aborted: {type(exc).__name__}: {exc}")
    finally:
        with common.signals_deferred():
            log(f"{name}: cleaning up")
            if steady is not None:
                steady.teardown()
                steady.cleanup()
            daemon.stop()
            left = common.leftovers(env, daemon.dir, links_before)
            if left:
                log(f"{name}: left after clean-up: {left[:10]}")
                results.notes.append(f"left after clean-up ({len(left)}; links may be another test's): "
                                     f"{', '.join(left[:8])}")
    return results


def main(argv=None) -> int:
    args = parse_args(argv)
    why_not = common.preflight("hack/bench_steady.py")
    if why_not:
        print(why_not, file=sys.stderr)
        return 2
    names = ["containerd", "pycri"] if args.runtime == "both" else [args.runtime]
    date = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    out_md = args.out or HACK / "results" / f"steady-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}.md"
    entries: list[dict] = []
    try:
        with common.environment(keep=args.keep) as env:
            for run in range(args.runs):
                order = names if run % 2 == 0 else names[::-1]
                for pods in args.pod_counts:
                    for name in order:
                        log(f"run {run + 1}/{args.runs}: {name} at {pods} pods")
                        entries.append({"runtime": name, "pods": pods, "run": run + 1,
                                        "results": run_one(name, env, pods, args)})
    except KeyboardInterrupt:
        log("interrupted; cleaned up")
        return 130
    meta = {"date": date, "machine": report.machine(), "command": shlex.join(["hack/bench_steady.py"] + sys.argv[1:]),
            "pods": args.pod_counts, "seconds": args.seconds, "runs": args.runs, "concurrency": args.concurrency,
            "runtimes": names}
    text, out_json = report.write_steady(entries, meta, out_md)
    print(text)
    log(f"wrote {out_md} and {out_json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
