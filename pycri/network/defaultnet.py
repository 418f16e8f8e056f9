"""The bridge network pycri writes when the CNI config dir has none, so a fresh node works out of the box.

bridge (pycri0, gateway, masquerade) + host-local IPAM on `[cni] default_subnet` + portmap (hostPort) +
bandwidth (ingress/egress limits). The file name sorts last, so a network config installed later (e.g.
10-calico.conflist) takes precedence, as libcni picks the first file.
"""

from __future__ import annotations

import ipaddress
import json
import os
from pathlib import Path

DEFAULT_CONFLIST_NAME = "99-pycri-default.conflist"
NETWORK_NAME = "pycri"
BRIDGE_NAME = "pycri0"


def default_conflist(subnet: str, ipam_data_dir: str) -> dict:
    net = ipaddress.ip_network(subnet, strict=False)
    default_route = "0.0.0.0/0" if net.version == 4 else "::/0"
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
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": str(net)}]],
                    "routes": [{"dst": default_route}],
                    "dataDir": ipam_data_dir,
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
            {"type": "bandwidth", "capabilities": {"bandwidth": True}},
        ],
    }


def write_default_conflist(conf_dir: str, subnet: str, ipam_data_dir: str) -> Path:
    """Write the default network config atomically; returns its path."""
    d = Path(conf_dir)
    d.mkdir(parents=True, exist_ok=True)
    path = d / DEFAULT_CONFLIST_NAME
    tmp = d / f".{DEFAULT_CONFLIST_NAME}.tmp"
    tmp.write_text(json.dumps(default_conflist(subnet, ipam_data_dir), indent=2) + "\n")
    os.replace(tmp, path)
    return path
