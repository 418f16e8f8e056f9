"""The lifecycle fixtures (a daemon with a network of its own, the `kubelet` driver) for the security tests."""

from tests.lifecycle.conftest import kubelet, pod_daemon  # noqa: F401
