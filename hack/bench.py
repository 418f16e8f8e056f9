#!/work/main/.venv/bin/python
"""CRI benchmark: the same workload against pycri and against containerd 1.6 + runc, side by side.

    .venv/bin/python hack/bench.py                      # both runtimes, 30 iterations, with the 110-pod phase
    .venv/bin/python hack/bench.py --runtime containerd --iterations 10 --skip-110
    .venv/bin/python hack/bench.py --out /tmp/b.md      # also writes /tmp/b.json (raw samples)

It starts, all under /tmp/pycri-bench-XXXX/ and on 127.0.0.1 only: a docker-registry with the test images (and
pause as registry.k8s.io/pause:3.10 via mirror config), a CNI bridge conflist (bridge pbench0, 10.89.0.0/16), then
each runtime in turn with its own config, root, state and socket. Workload and statistics: hack/bench_lib/workload.py.
Output: a markdown table on stdout and in hack/results/bench-<date>.md, raw samples in the .json next to it.
An RPC that pycri answers UNIMPLEMENTED shows as n/a.

Everything it starts is stopped on exit, Ctrl-C or SIGTERM: pods removed through CRI, then the daemon stopped and
anything left (shims/monitors, containers, mounts, netns, cgroups under /pycri-bench-<pid>/, the bridge, IPAM
files) removed. --keep keeps the temp dir (configs, logs, daemon roots) for debugging; processes are still stopped.
Needs root.
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
from bench_lib.workload import Results, Workload  # noqa: E402

RUNTIMES = {"containerd": Containerd, "pycri": Pycri}


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runtime", choices=("containerd", "pycri", "both"), default="both")
    ap.add_argument("--iterations", type=int, default=30, help="recorded iterations per phase (default 30)")
    ap.add_argument("--warmup", type=int, default=1, help="unrecorded iterations first (default 1)")
    ap.add_argument("--skip-110", action="store_true", help="skip the 110-pod phase (ListContainers, memory)")
    ap.add_argument("--pods", type=int, default=110, help=argparse.SUPPRESS)
    ap.add_argument("--list-samples", type=int, default=300, help="ListContainers calls at 110 pods (default 300)")
    ap.add_argument("--out", type=Path, help="markdown output (default hack/results/bench-<date>.md); "
                                             "the JSON of raw samples goes next to it")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (configs, logs, roots) for debugging")
    return ap.parse_args(argv)


def run_runtime(name: str, env: BenchEnv, args) -> Results:
    daemon = RUNTIMES[name](env, keep=args.keep)
    results = Results(runtime=name, version=daemon.version())
    results.memory["loadavg_before"] = Path("/proc/loadavg").read_text().split()[:3]
    workload = None
    try:
        with common.signals_deferred():   # a Ctrl-C during start must not leave a half-started daemon unseen
            daemon.start()
        workload = Workload(daemon, env, results, args.iterations, args.warmup)
        workload.wait_ready()
        time.sleep(1)
        workload.measure_daemon("daemon_fresh")
        daemon.probe.mark_baseline()
        workload.pull_phase()
        workload.lifecycle_phase()
        time.sleep(2)
        workload.measure_daemon("daemon_idle")
        daemon.probe.mark_baseline()
        if not args.skip_110:
            workload.density_phase(args.pods, args.list_samples)
    except Exception as exc:  # noqa: BLE001 - report what we have, the other runtime still runs
        log(f"{name}: benchmark aborted: {type(exc).__name__}: {exc}")
        results.notes.append(f"aborted: {type(exc).__name__}: {exc}")
    finally:
        results.memory["loadavg_after"] = Path("/proc/loadavg").read_text().split()[:3]
        with common.signals_deferred():
            log(f"{name}: cleaning up")
            if workload is not None:
                workload.cleanup()
            daemon.stop()
    return results


def main(argv=None) -> int:
    args = parse_args(argv)
    why_not = common.preflight("hack/bench.py")
    if why_not:
        print(why_not, file=sys.stderr)
        return 2
    names = ["containerd", "pycri"] if args.runtime == "both" else [args.runtime]
    date = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    out_md = args.out or HACK / "results" / f"bench-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}.md"
    results: list[Results] = []
    try:
        with common.environment(keep=args.keep) as env:
            for name in names:
                results.append(run_runtime(name, env, args))
    except KeyboardInterrupt:
        log("interrupted; cleaned up")
        return 130
    meta = {"date": date, "machine": report.machine(), "command": shlex.join(["hack/bench.py"] + sys.argv[1:]),
            "iterations": args.iterations, "warmup": args.warmup, "skip_110": args.skip_110,
            "runtimes": names}
    text = report.render(results, meta)
    out_json = report.write(results, meta, out_md)
    print(text)
    log(f"wrote {out_md} and {out_json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
