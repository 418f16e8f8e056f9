#!/usr/bin/env python3
"""The attacks of tests/security/test_breakouts.py, run long: each race for --seconds instead of a few.

    .venv/bin/python hack/attack.py                  # 300 s per race, both ways into a container
    .venv/bin/python hack/attack.py --seconds 60 -k swapped

The races: a container opening /proc/<pid>/exe and /proc/<pid>/fd/* of every process that enters its pid
namespace (CVE-2019-5736, CVE-2024-21626), and a container exchanging a directory and a symlink to a host path in
a volume it shares with another that is started again and again with mounts below it (CVE-2021-30465). Each
runs once through pycri-init and once through the monitor's Python child. Exit status: pytest's.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RACES = "racing or swapped"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=300, help="how long each race runs (default 300)")
    ap.add_argument("-k", default=RACES, help=f"which tests (pytest -k; default {RACES!r})")
    args = ap.parse_args(argv)
    env = {**os.environ, "PYCRI_ATTACK_SECONDS": str(args.seconds)}
    return subprocess.call(["flock", "/tmp/pycri-tests.lock", str(REPO / ".venv/bin/pytest"), "-q", "-p",
                            "no:cacheprovider", "-o", f"timeout={int(args.seconds * 3 + 300)}",
                            "tests/security/test_breakouts.py", "-k", args.k], cwd=REPO, env=env)


if __name__ == "__main__":
    sys.exit(main())
