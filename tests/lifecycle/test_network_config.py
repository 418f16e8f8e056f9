"""UpdateRuntimeConfig's pod CIDR and pycri's default network config (pycri/network/defaultnet.py).

The kubelet sends the node's pod CIDR (comma-joined when dual-stack) once the node has one, and again after each
of its restarts. pycri rewrites its own default conflist on it, and only that: a config of someone else's, or the
default once an admin edited it, is left alone (containerd writes its conflist from the pod CIDR only when it has
none). Pods made before the change keep their addresses and are torn down on the same network."""

from __future__ import annotations

import ipaddress
import json
import subprocess
import urllib.request
from pathlib import Path

import grpc
import pytest

from pycri.api import api_pb2 as cri
from pycri.network.defaultnet import BRIDGE_NAME, DEFAULT_CONFLIST_NAME
from tests.fixtures.daemon import free_subnet
from tests.lifecycle.helpers import Kubelet

NOT_MANAGED = "pod CIDR recorded; network config not managed by pycri"
HTTPD = ["sh", "-c", "mkdir -p /www && echo served-by-$(hostname) > /www/index.html && exec httpd -f -p 80 -h /www"]


def _default_net(daemon_factory):
    """A daemon that wrote its default network on a subnet no route of the host covers, and that subnet (no pod
    runs on it: its bridge would be pycri0, the one a node's pycri uses)."""
    subnet = free_subnet()
    return daemon_factory({"cni": {"write_default_conflist": True, "default_subnet": subnet}}), subnet


def _update(d, cidr: str) -> None:
    d.runtime.UpdateRuntimeConfig(cri.UpdateRuntimeConfigRequest(
        runtime_config=cri.RuntimeConfig(network_config=cri.NetworkConfig(pod_cidr=cidr))))


def _ipam(path: Path) -> dict:
    return json.loads(path.read_text())["plugins"][0]["ipam"]


def _events(d, name: str) -> list[dict]:
    return [e for e in d.log_events() if e.get("event") == name]


def test_pod_cidr_rewrites_own_default(daemon_factory):
    d, subnet = _default_net(daemon_factory)
    path = d.cni_conf_dir / DEFAULT_CONFLIST_NAME
    assert _ipam(path)["ranges"] == [[{"subnet": subnet}]]
    _update(d, "10.243.7.0/24")
    ipam = _ipam(path)
    assert ipam["ranges"] == [[{"subnet": "10.243.7.0/24"}]] and ipam["routes"] == [{"dst": "0.0.0.0/0"}]
    assert ipam["dataDir"] == str(d.root / "cni" / "networks")
    assert json.loads(path.read_text())["name"] == "pycri"  # the same network: pods made before are torn down on it
    assert [p.name for p in d.cni_conf_dir.iterdir()] == [DEFAULT_CONFLIST_NAME]  # (no temp file left)
    written = path.stat()
    _update(d, "10.243.7.0/24")  # the kubelet sends it again after each of its restarts: nothing to write
    assert (path.stat().st_ino, path.stat().st_mtime_ns) == (written.st_ino, written.st_mtime_ns)
    assert len(_events(d, "rewrote default network config")) == 1
    assert not _events(d, NOT_MANAGED)
    _update(d, "")  # before the node has a CIDR: nothing
    assert _ipam(path)["ranges"] == [[{"subnet": "10.243.7.0/24"}]]


def test_pod_cidr_dual_stack(daemon_factory):
    d, _ = _default_net(daemon_factory)
    _update(d, " 10.243.8.0/24 , fd00:10:243::/64")
    ipam = _ipam(d.cni_conf_dir / DEFAULT_CONFLIST_NAME)
    assert ipam["ranges"] == [[{"subnet": "10.243.8.0/24"}], [{"subnet": "fd00:10:243::/64"}]]
    assert ipam["routes"] == [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}]
    _update(d, "fd00:10:244::/64")  # a single-stack IPv6 node
    ipam = _ipam(d.cni_conf_dir / DEFAULT_CONFLIST_NAME)
    assert ipam["ranges"] == [[{"subnet": "fd00:10:244::/64"}]] and ipam["routes"] == [{"dst": "::/0"}]
    with pytest.raises(grpc.RpcError) as err:  # one CIDR per family, as the API server allows
        _update(d, "10.243.8.0/24,10.243.9.0/24")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert _ipam(d.cni_conf_dir / DEFAULT_CONFLIST_NAME) == ipam


def test_pod_cidr_leaves_foreign_config(daemon_factory):
    d = daemon_factory({"cni": {"write_default_conflist": True, "default_subnet": free_subnet()}}, network=True)
    foreign = d.cni_conf_dir / "10-test.conflist"
    before = foreign.read_bytes()
    _update(d, "10.243.9.0/24")
    assert foreign.read_bytes() == before
    assert not (d.cni_conf_dir / DEFAULT_CONFLIST_NAME).exists()
    assert [e["path"] for e in _events(d, NOT_MANAGED)] == [str(foreign)]
    d.restart()  # nor at start, with the pod CIDR recorded
    assert foreign.read_bytes() == before and not (d.cni_conf_dir / DEFAULT_CONFLIST_NAME).exists()


def test_pod_cidr_leaves_default_shadowed_by_a_foreign_config(daemon_factory):
    d, _ = _default_net(daemon_factory)
    default = d.cni_conf_dir / DEFAULT_CONFLIST_NAME
    ours = default.read_bytes()
    foreign = d.cni_conf_dir / "10-other.conflist"  # installed later: it is the network in use now
    foreign.write_text(json.dumps({"cniVersion": "1.0.0", "name": "other", "plugins": [{"type": "bridge"}]}))
    _update(d, "10.243.10.0/24")
    assert default.read_bytes() == ours and len(_events(d, NOT_MANAGED)) == 1


def test_pod_cidr_leaves_edited_default(daemon_factory):
    d, _ = _default_net(daemon_factory)
    path = d.cni_conf_dir / DEFAULT_CONFLIST_NAME
    conf = json.loads(path.read_text())
    conf["plugins"][0]["mtu"] = 1400  # an admin's change
    path.write_text(json.dumps(conf))
    edited = path.read_bytes()
    _update(d, "10.243.11.0/24")
    assert path.read_bytes() == edited
    assert [e["path"] for e in _events(d, NOT_MANAGED)] == [str(path)]
    d.restart()
    assert path.read_bytes() == edited


def test_pod_cidr_survives_restart(daemon_factory):
    d, _ = _default_net(daemon_factory)
    path = d.cni_conf_dir / DEFAULT_CONFLIST_NAME
    _update(d, "10.243.12.0/24,fd00:10:245::/64")
    rewritten = path.read_bytes()
    d.stop()
    path.unlink()
    d.start()  # written again on the recorded pod CIDR, not on default_subnet
    assert path.read_bytes() == rewritten
    written = path.stat()
    d.restart()  # and left as it is when it is already right
    assert (path.stat().st_ino, path.stat().st_mtime_ns) == (written.st_ino, written.st_mtime_ns)
    _update(d, "10.243.13.0/24")  # still pycri's after the restart: rewritten
    assert _ipam(path)["ranges"] == [[{"subnet": "10.243.13.0/24"}]]


def _fetch(k: Kubelet, ip: str, name: str) -> None:
    def fetch():
        with urllib.request.urlopen(f"http://{ip}:80/", timeout=2) as r:
            return r.read()
    assert k.until(fetch, what=f"pod {name} answering over the bridge") == f"served-by-{name}\n".encode()


def test_pods_after_the_update_get_the_new_cidr_and_those_before_keep_theirs(daemon_factory, registry, tmp_path):
    if Path(f"/sys/class/net/{BRIDGE_NAME}").exists():
        pytest.skip(f"{BRIDGE_NAME} exists on this host: a pycri's own network, not the test's to remove")
    old, new = free_subnet("10.240"), free_subnet("10.243")
    d = daemon_factory({"cni": {"write_default_conflist": True, "default_subnet": old},
                        "sandbox_image": registry.ref("pause"),
                        f'registries."{registry.host}"': {"insecure": True}})
    k = Kubelet(d, registry, tmp_path)
    ipam_dir = d.root / "cni" / "networks"
    try:
        before, pod = k.run_pod("before")
        k.start(before, pod, "server", command=HTTPD)
        old_ip = k.pod_status(before).network.ip
        assert ipaddress.ip_address(old_ip) in ipaddress.ip_network(old)
        _fetch(k, old_ip, "before")
        _update(d, new)
        after, pod = k.run_pod("after")  # the bridge's gateway address moves to the new subnet (forceAddress)
        k.start(after, pod, "server", command=HTTPD)
        new_ip = k.pod_status(after).network.ip
        assert ipaddress.ip_address(new_ip) in ipaddress.ip_network(new)
        _fetch(k, new_ip, "after")
        assert k.pod_status(before).network.ip == old_ip
        show = subprocess.run(["ip", "-j", "-4", "addr", "show", "dev", BRIDGE_NAME], capture_output=True, text=True,
                              check=True).stdout
        gateways = [f"{a['local']}/{a['prefixlen']}" for link in json.loads(show) for a in link["addr_info"]]
        assert gateways == [f"{next(ipaddress.ip_network(new).hosts())}/24"]
        # (the pod from before keeps its address but not its gateway: no traffic to it from here on)
        d.remove_all_pods()  # CNI DEL on the same network releases both addresses, old range and new
        assert not [p.name for p in ipam_dir.rglob("*") if p.is_file() and p.name[0].isdigit()]
    finally:
        d.remove_all_pods()
        d.stop()
        subprocess.run(["ip", "link", "delete", BRIDGE_NAME], capture_output=True)
