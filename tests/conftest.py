"""Shared fixtures: the real daemon (tests.fixtures.daemon), the local registry (tests.fixtures.registry) and a
leak check (tests.fixtures.leaks)."""

from tests.fixtures.daemon import daemon, daemon_factory  # noqa: F401
from tests.fixtures.leaks import no_leaks  # noqa: F401
from tests.fixtures.registry import registry, registry_factory  # noqa: F401
