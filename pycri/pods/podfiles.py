"""The files a pod's containers share: /etc/hostname, /etc/hosts and /etc/resolv.conf (as containerd writes them)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from pycri.api import api_pb2 as cri

DEFAULT_HOSTS = (
    "127.0.0.1\tlocalhost\n"
    "::1\tlocalhost ip6-localhost ip6-loopback\n"
    "fe00::0\tip6-localnet\n"
    "fe00::0\tip6-mcastprefix\n"
    "fe00::1\tip6-allnodes\n"
    "fe00::2\tip6-allrouters\n"
)


def resolv_conf(dns: cri.DNSConfig | None, host_resolv: str = "/etc/resolv.conf") -> str:
    """From the pod's DNSConfig; with none given, the host's resolv.conf (kubelet's 'Default' DNS policy)."""
    if dns is None or not (dns.servers or dns.searches or dns.options):
        try:
            return Path(host_resolv).read_text()
        except OSError:
            return ""
    lines = []
    if dns.searches:
        lines.append("search " + " ".join(dns.searches))
    lines += [f"nameserver {s}" for s in dns.servers]
    if dns.options:
        lines.append("options " + " ".join(dns.options))
    return "\n".join(lines) + "\n"


def write_pod_files(pod_dir: Path, config: cri.PodSandboxConfig, host_network: bool) -> dict[str, str]:
    """Write hostname, hosts and resolv.conf into pod_dir; returns {"hostname": ..., "*_file": path}."""
    pod_dir.mkdir(parents=True, exist_ok=True)
    hostname = socket.gethostname() if host_network else (config.hostname or config.metadata.name)
    files = {
        "hostname": hostname + "\n",
        "hosts": Path("/etc/hosts").read_text() if host_network and os.path.exists("/etc/hosts") else DEFAULT_HOSTS,
        "resolv.conf": resolv_conf(config.dns_config if config.HasField("dns_config") else None),
    }
    for name, text in files.items():
        tmp = pod_dir / f".{name}.tmp"
        tmp.write_text(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, pod_dir / name)
    return {"hostname": hostname, "hostname_file": str(pod_dir / "hostname"), "hosts_file": str(pod_dir / "hosts"),
            "resolv_file": str(pod_dir / "resolv.conf")}
