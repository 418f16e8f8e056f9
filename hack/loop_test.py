#!/usr/bin/env python3
"""Run one test (or several) N times in a row, optionally with both cores kept busy, and count the failures.

    .venv/bin/python hack/loop_test.py -n 50 tests/lifecycle/test_chaos.py
    .venv/bin/python hack/loop_test.py -n 20 --hog 2 TEST...     # plus 2 busy-looping processes (like `stress -c 2`)

Each run is a fresh pytest process under the suite's lock (/tmp/pycri-tests.lock, as `make test` takes it). The
hog processes run at the default priority for the whole loop. A failed run's output is kept in --out (default
/tmp/pycri-loop-<time>/run-<n>.log). Prints one line a run and a summary (JSON with --json); exit status 1 when
any run failed. Timing-sensitive tests are looped this way before they land (docs/reliability.md).
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LOCK = "/tmp/pycri-tests.lock"


def _spin() -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    while True:
        pass


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("tests", nargs="+", help="pytest node ids")
    ap.add_argument("-n", "--runs", type=int, default=20)
    ap.add_argument("--hog", type=int, default=0, help="busy-looping processes beside the runs (0: none)")
    ap.add_argument("--stop-on-failure", action="store_true")
    ap.add_argument("--out", help="directory for the logs of failed runs")
    ap.add_argument("--json", help="write the summary here")
    args = ap.parse_args(argv)
    out = Path(args.out or f"/tmp/pycri-loop-{time.strftime('%Y%m%d-%H%M%S')}")
    out.mkdir(parents=True, exist_ok=True)
    hogs = [multiprocessing.Process(target=_spin, daemon=True) for _ in range(args.hog)]
    for h in hogs:
        h.start()
    results = []
    try:
        for i in range(1, args.runs + 1):
            t0 = time.monotonic()
            proc = subprocess.run(["flock", LOCK, str(REPO / ".venv/bin/pytest"), "-q", "-p", "no:cacheprovider",
                                   *args.tests], cwd=REPO, capture_output=True, text=True)
            seconds = time.monotonic() - t0
            ok = proc.returncode == 0
            results.append({"run": i, "ok": ok, "seconds": round(seconds, 1)})
            if not ok:
                (out / f"run-{i}.log").write_text(proc.stdout + proc.stderr)
            tail = proc.stdout.strip().splitlines()[-1:] or [""]
            print(f"run {i}/{args.runs}: {'ok' if ok else 'FAILED'} in {seconds:.0f}s  {tail[0]}", flush=True)
            if not ok and args.stop_on_failure:
                break
    finally:
        for h in hogs:
            h.terminate()
            h.join()
    failed = [r["run"] for r in results if not r["ok"]]
    summary = {"tests": args.tests, "runs": len(results), "failed": failed, "hog": args.hog,
               "median_seconds": sorted(r["seconds"] for r in results)[len(results) // 2] if results else 0,
               "logs": str(out), "cores": os.cpu_count()}
    print(json.dumps(summary))
    if args.json:
        Path(args.json).write_text(json.dumps({**summary, "results": results}, indent=2) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
