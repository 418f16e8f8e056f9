#!/usr/bin/env python3
"""Run the fuzz tests (tests/fuzz): `hack/fuzz.py` is the suite's short deterministic pass; `hack/fuzz.py --long`
the long randomised one (HYPOTHESIS_PROFILE=long: every test's example count times --scale, default 40; failing
examples are kept in .cache/hypothesis and replayed first next time). Extra arguments go to pytest, e.g.
`hack/fuzz.py --long -k unpack`. Daemon tests take /tmp/pycri-tests.lock like the rest of the suite's users.
See docs/reliability.md ("Fuzzing")."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--long", action="store_true", help="the long randomised run (profile 'long')")
    ap.add_argument("--scale", type=int, default=40, help="examples multiplier of the long run (default 40)")
    ap.add_argument("--no-daemon", action="store_true", help="skip the CRI test against a running daemon")
    args, rest = ap.parse_known_args()
    env = dict(os.environ, HYPOTHESIS_PROFILE="long" if args.long else "ci", PYCRI_FUZZ_SCALE=str(args.scale))
    cmd = [str(REPO / ".venv/bin/pytest"), "-q", "-p", "no:cacheprovider", "--hypothesis-show-statistics",
           "-o", "timeout=0" if args.long else "timeout=600", "tests/fuzz", *rest]
    if args.no_daemon:
        cmd += ["-k", "not cri"]
    started = time.monotonic()
    rc = subprocess.call(cmd, cwd=REPO, env=env)
    print(f"fuzz ({env['HYPOTHESIS_PROFILE']}, scale {args.scale if args.long else 1}): exit {rc} after "
          f"{time.monotonic() - started:.0f}s")
    return rc


if __name__ == "__main__":
    sys.exit(main())
