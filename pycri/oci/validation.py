"""Checks of the CRI strings that pycri writes into files or joins into paths. The kubelet validates its pods,
but the CRI socket takes anything (crictl, other clients, a compromised kubelet): a newline in a DNS search
would add a line to resolv.conf, a `..` in a log path would write a log anywhere. Each check raises
InvalidArgument naming the field."""
from __future__ import annotations

import ipaddress
import os

from pycri.api import api_pb2 as cri
from pycri.errors import InvalidArgument

HOST_NAME_MAX = 64  # the kernel's (sethostname(2))


def _printable(field: str, value: str) -> None:
    """No control characters (NUL, newlines, tabs, DEL) and no whitespace."""
    bad = next((c for c in value if c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F), None)
    if bad is not None:
        raise InvalidArgument(f"{field}: {value!r} contains {bad!r}")


def pod_config(config: cri.PodSandboxConfig) -> None:
    """What RunPodSandbox writes into the pod's files (hostname, resolv.conf) and the containers' log paths."""
    if config.hostname:
        _printable("hostname", config.hostname)
        if len(config.hostname.encode()) > HOST_NAME_MAX:
            raise InvalidArgument(f"hostname: longer than {HOST_NAME_MAX} bytes")
    if config.HasField("dns_config"):
        dns = config.dns_config
        for server in dns.servers:
            try:
                ipaddress.ip_address(server)
            except ValueError:
                raise InvalidArgument(f"dns_config.servers: {server!r} is not an IP address") from None
        for value in dns.searches:
            _printable("dns_config.searches", value)
        for value in dns.options:
            _printable("dns_config.options", value)
    if config.log_directory:
        log_directory(config.log_directory)


def log_directory(path: str) -> None:
    if "\0" in path or not os.path.isabs(path) or ".." in path.split("/"):
        raise InvalidArgument(f"log_directory: {path!r} must be an absolute path without '..'")


def log_path(path: str) -> None:
    """A container's log_path: relative to its pod's log_directory, and staying below it."""
    if "\0" in path or os.path.isabs(path) or ".." in path.split("/") or path.endswith("/"):
        raise InvalidArgument(f"log_path: {path!r} must be a file's path relative to the pod's log_directory, "
                              "without '..'")


def no_nul(field: str, value: str) -> None:
    if "\0" in value:
        raise InvalidArgument(f"{field} must not contain NUL characters")
