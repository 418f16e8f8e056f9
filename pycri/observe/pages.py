"""The daemon's read-only pages and their servers: `/metrics` on `[metrics] address`, `/pulls` on the status socket.

Why pull progress goes over a unix socket and not the metrics port: it is there whether or not metrics are on
(they are off by default), it is root-only (0600, like the CRI socket's intent) where a loopback TCP port is open to
every local user, and `pycri images pulls` finds it from the same config as the CRI socket, with no port to know.
"""

from __future__ import annotations

import ipaddress
import json

from pycri import log
from pycri.observe import metrics
from pycri.config import parse_host_port
from pycri.observe.infoserver import InfoServer

_log = log.get("status")


class PagesError(Exception):
    """A status server cannot listen (address in use, bad permissions)."""


async def start(daemon) -> list[InfoServer]:
    """Start the status socket, and the metrics server when `[metrics] address` is set; returns the servers."""
    servers = []
    status = InfoServer("status", {"/pulls": lambda: pulls_page(daemon)})
    try:
        await status.start_unix(daemon.config.status_socket)
        servers.append(status)
        address = daemon.config.metrics.address
        if address:
            host, port = parse_host_port(address)
            if not ipaddress.ip_address(host).is_loopback:
                _log.warning("metrics are served beyond this host, without authentication", address=address)
            metrics.enable(daemon)
            server = InfoServer("metrics", {"/metrics": metrics_page})
            await server.start_tcp(host, port)
            servers.append(server)
    except OSError as exc:
        await stop(servers)
        metrics.disable()
        raise PagesError(f"{exc.strerror or exc}") from None
    return servers


async def stop(servers: list[InfoServer]) -> None:
    for server in servers:
        await server.stop()


def metrics_page() -> tuple[str, bytes]:
    return metrics.CONTENT_TYPE, metrics.exposition()


def pulls_page(daemon) -> tuple[str, bytes]:
    body = {"pulls": daemon.images.pulls.snapshot(),
            "progress_timeout_seconds": daemon.config.image_pull_progress_timeout}
    return "application/json", json.dumps(body).encode() + b"\n"
