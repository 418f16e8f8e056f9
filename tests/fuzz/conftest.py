"""Loads the hypothesis profile (tests.fuzz.profiles) before any fuzz test is collected; the lifecycle fixtures
(a daemon with a network of its own, the `kubelet` driver) for the CRI fuzz test."""

from tests.fuzz import profiles  # noqa: F401
from tests.lifecycle.conftest import kubelet, pod_daemon  # noqa: F401
