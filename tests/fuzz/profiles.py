"""Hypothesis profiles for the fuzz tests, chosen by $HYPOTHESIS_PROFILE (default "ci").

ci:   deterministic (derandomize: the same examples on every run, no example database), bounded, for the suite.
long: random, many more examples, failures kept in .cache/hypothesis so a rerun replays them first.
budget(n) scales a test's own example count by the profile (a daemon round trip costs more than a parse)."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings
from hypothesis.database import DirectoryBasedExampleDatabase

PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "ci")
_SCALE = {"ci": 1, "long": int(os.environ.get("PYCRI_FUZZ_SCALE", "40"))}
_QUIET = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much,
          HealthCheck.function_scoped_fixture, HealthCheck.large_base_example]

settings.register_profile("ci", max_examples=200, derandomize=True, database=None, deadline=None,
                          suppress_health_check=_QUIET, print_blob=True)
settings.register_profile("long", max_examples=200 * _SCALE["long"], derandomize=False, deadline=None,
                          database=DirectoryBasedExampleDatabase(
                              os.path.join(os.path.dirname(__file__), "..", "..", ".cache", "hypothesis")),
                          suppress_health_check=_QUIET, print_blob=True)
settings.load_profile(PROFILE if PROFILE in _SCALE else "ci")


def budget(n: int) -> int:
    """n examples in the ci profile, n * scale in the long one."""
    return n * _SCALE.get(PROFILE, 1)


def corpus(kind: str) -> list[tuple[str, bytes]]:
    """The seed files of tests/fuzz/corpus/<kind>/, sorted: (name, bytes)."""
    d = os.path.join(os.path.dirname(__file__), "corpus", kind)
    return [(n, open(os.path.join(d, n), "rb").read()) for n in sorted(os.listdir(d))]
