"""The bridge network pycri writes when the CNI config dir has none, so a fresh node works out of the box.

bridge (pycri0, gateway, masquerade) + host-local IPAM on `[cni] default_subnet`, or on the kubelet's pod CIDR once
UpdateRuntimeConfig gave one + portmap (hostPort) + bandwidth (ingress/egress limits). The file name sorts last,
so a network config installed later (e.g. 10-calico.conflist) takes precedence, as libcni picks the first file.

pycri rewrites the file for a new pod CIDR only while it owns it: the network in use is this file, under its name,
with exactly the content pycri wrote (sync_default_conflist). A config of someone else's, or this file once an
admin edited it, is never rewritten (containerd writes its conflist from the pod CIDR only when it has none).
"""

from __future__ import annotations

import ipaddress
import json
import os
from pathlib import Path

from pycri.network.cniconf import load_network_config

DEFAULT_CONFLIST_NAME = "99-pycri-default.conflist"
NETWORK_NAME = "pycri"
BRIDGE_NAME = "pycri0"


def subnets_of(text: str) -> list[str]:
    """The networks of a comma-joined list ("10.244.1.0/24,fd00:10:244:1::/64", as the kubelet sends a dual-stack
    pod CIDR), each trimmed and with host bits cleared, at most one per address family (the API server's rule for
    podCIDRs; the bridge carries one gateway per family); ValueError names what is wrong."""
    nets = [ipaddress.ip_network(part.strip(), strict=False) for part in text.split(",")]
    if len({n.version for n in nets}) < len(nets):
        raise ValueError("more than one network of an address family")
    return [str(n) for n in nets]


def default_conflist(subnets: str | list[str], ipam_data_dir: str) -> dict:
    """The default network on `subnets` (a list, or a comma-joined string): one host-local range set per subnet (a
    pod gets an address of each) and a default route for each address family present."""
    nets = [ipaddress.ip_network(s, strict=False) for s in (subnets_of(subnets) if isinstance(subnets, str)
                                                            else subnets)]
    routes = [{"dst": dst} for version, dst in ((4, "0.0.0.0/0"), (6, "::/0"))
              if any(n.version == version for n in nets)]
    return {
        "cniVersion": "1.0.0",
        "name": NETWORK_NAME,
        "plugins": [
            {
                "type": "bridge",
                "bridge": BRIDGE_NAME,
                "isGateway": True,
                "ipMasq": True,
                "hairpinMode": True,
                # A new subnet moves the bridge's gateway address (the plugin keeps one IPv4 address on a bridge
                # and, without this, fails every ADD on another subnet once the bridge has one)
                "forceAddress": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": str(n)}] for n in nets],
                    "routes": routes,
                    "dataDir": ipam_data_dir,
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
            {"type": "bandwidth", "capabilities": {"bandwidth": True}},
        ],
    }


def write_default_conflist(conf_dir: str, subnets: str | list[str], ipam_data_dir: str) -> Path:
    """Write the default network config atomically (a reader sees the old file or the new one, whole); returns
    its path."""
    d = Path(conf_dir)
    d.mkdir(parents=True, exist_ok=True)
    path = d / DEFAULT_CONFLIST_NAME
    tmp = d / f".{DEFAULT_CONFLIST_NAME}.tmp"  # (not a config name: libcni and load_network_config skip it)
    with open(tmp, "w") as f:
        f.write(json.dumps(default_conflist(subnets, ipam_data_dir), indent=2) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


WRITTEN, REWRITTEN, UNCHANGED, NOT_OURS = "written", "rewritten", "unchanged", "not ours"
OFF = "off"  # ([cni] write_default_conflist = false: pycri writes no network config)


def sync_default_conflist(conf_dir: str, subnets: list[str], ipam_data_dir: str, written_with: list[str],
                          legacy: bool = False) -> tuple[str, Path | None]:
    """Make the network in use the default one on `subnets` if pycri owns it; (outcome, path of the config in use).

    No valid config in conf_dir: the default is written (WRITTEN). The config in use is the default file with the
    content pycri wrote on `written_with` (the subnets it was last written with) or already on `subnets`: it is
    rewritten when that changes something (REWRITTEN, else UNCHANGED). Anything else, another file or the default
    file as an admin edited it, is left alone (NOT_OURS). `legacy`: no record of the subnets, the file is as an
    older pycri wrote it (on default_subnet, without forceAddress) or an admin's."""
    conf = load_network_config(conf_dir)
    if conf is None:
        return WRITTEN, write_default_conflist(conf_dir, subnets, ipam_data_dir)
    if conf.path.name != DEFAULT_CONFLIST_NAME:
        return NOT_OURS, conf.path
    if conf.raw == default_conflist(subnets, ipam_data_dir):
        return UNCHANGED, conf.path  # (the kubelet sends its pod CIDR again after each of its restarts)
    ours = default_conflist(written_with, ipam_data_dir)
    if conf.raw != ours and not (legacy and conf.raw == _before_force_address(ours)):
        return NOT_OURS, conf.path
    return REWRITTEN, write_default_conflist(conf_dir, subnets, ipam_data_dir)


def _before_force_address(conf: dict) -> dict:
    """The default as pycri wrote it before it set the bridge's forceAddress."""
    old = json.loads(json.dumps(conf))
    del old["plugins"][0]["forceAddress"]
    return old
