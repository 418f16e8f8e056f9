"""Shared fixtures: the real daemon (tests.fixtures.daemon) and, when present, the local registry."""

from tests.fixtures.daemon import daemon, daemon_factory  # noqa: F401

try:
    from tests.fixtures.registry import registry, registry_factory  # noqa: F401
except ImportError:  # the registry fixture is not there yet
    pass
