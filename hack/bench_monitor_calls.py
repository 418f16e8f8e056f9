#!/usr/bin/env python3
"""The cost of a monitor call from an event loop: the blocking client in a worker thread vs the asyncio client.

    flock /tmp/pycri-tests.lock .venv/bin/python hack/bench_monitor_calls.py [--calls 2000]

Spawns one pod monitor (no containers) and times `ping`: one after another (median, p99) and 50 at once (mean
per call). docs/reliability.md, "One pod's execs and another pod's calls", has this machine's figures.
"""
from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from runtime import spawner  # noqa: E402
from runtime.aclient import AsyncMonitorClient  # noqa: E402
from runtime.client import MonitorClient  # noqa: E402


async def measure(path: str, calls: int) -> None:
    blocking, aio = MonitorClient(path), AsyncMonitorClient(path)
    for name, one in (("worker thread", lambda: asyncio.to_thread(blocking.ping)), ("asyncio", aio.ping)):
        for _ in range(calls // 10):  # warm-up
            await one()
        took = []
        for _ in range(calls):
            t0 = time.perf_counter()
            await one()
            took.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        for _ in range(calls // 50):
            await asyncio.gather(*(one() for _ in range(50)))
        burst = (time.perf_counter() - t0) / (calls // 50 * 50)
        took.sort()
        print(f"{name}: one at a time median {statistics.median(took) * 1e6:.0f} us, "
              f"p99 {took[int(len(took) * 0.99)] * 1e6:.0f} us; 50 at once {burst * 1e6:.0f} us a call")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=2000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="pycri-bench-mon-") as d:
        sp = spawner.start()
        try:
            path = sp.spawn_monitor("bench", d)
            try:
                asyncio.run(measure(path, max(args.calls, 100)))
            finally:
                MonitorClient(path).shutdown(force=True)
        finally:
            sp.close()


if __name__ == "__main__":
    main()
