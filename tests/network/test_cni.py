"""CNI plugin execution with the real plugins (containernetworking-plugins) on a netns and bridge of our own."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import subprocess
import uuid
from pathlib import Path

import pytest

from pycri.network.cni import CNI, CNIError, PodNetworkArgs, pod_ips
from pycri.network.cniconf import load_network_config, network_status, parse_network_config
from pycri.network.defaultnet import DEFAULT_CONFLIST_NAME, default_conflist, write_default_conflist

BIN_DIRS = ["/opt/cni/bin", "/usr/lib/cni"]
SUBNET = "10.234.77.0/24"


def _run(*cmd: str) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout


@pytest.fixture
def netns():
    name = f"pycri-t-{uuid.uuid4().hex[:8]}"
    _run("ip", "netns", "add", name)
    yield name, f"/run/netns/{name}"
    subprocess.run(["ip", "netns", "delete", name], check=False)


@pytest.fixture
def network(tmp_path):
    bridge = f"pycrit{uuid.uuid4().hex[:6]}"
    conf = default_conflist(SUBNET, str(tmp_path / "ipam"))
    conf["name"] = f"net-{bridge}"
    conf["plugins"][0]["bridge"] = bridge
    conf_dir = tmp_path / "net.d"
    conf_dir.mkdir()
    (conf_dir / "10-test.conflist").write_text(json.dumps(conf))
    yield load_network_config(str(conf_dir)), tmp_path
    subprocess.run(["ip", "link", "delete", bridge], check=False, capture_output=True)


def test_add_check_delete_on_a_real_bridge(netns, network):
    ns_name, ns_path = netns
    net, tmp = network
    cni = CNI(BIN_DIRS, tmp / "cache")
    pod = PodNetworkArgs(pod_id="p" * 64, netns=ns_path, name="web", namespace="default", uid="u-1",
                         port_mappings=[{"hostPort": 18080, "containerPort": 80, "protocol": "tcp"}])
    result = asyncio.run(cni.add(net, pod))
    ips = pod_ips(result)
    assert len(ips) == 1 and ips[0].startswith("10.234.77.")
    assert f"inet {ips[0]}/24" in _run("ip", "-n", ns_name, "addr", "show", "eth0")
    assert cni.cache_path(net, pod).exists()
    assert (tmp / "ipam" / net.name / ips[0]).exists()  # host-local's reservation
    # CHECK of the bridge alone: Debian's portmap/bandwidth 1.1.1 fail CHECK on a v4-only pod (ip6tables chain
    # lookup; nil dereference without a bandwidth config). CRI itself never asks for CHECK.
    asyncio.run(cni.check(dataclasses.replace(net, plugins=net.plugins[:1]), pod))

    asyncio.run(cni.delete(net, pod))
    assert not cni.cache_path(net, pod).exists()
    assert not (tmp / "ipam" / net.name / ips[0]).exists()  # the IP is released
    assert "eth0" not in _run("ip", "-n", ns_name, "link")
    asyncio.run(cni.delete(net, pod))  # DEL is idempotent


def test_delete_after_the_netns_is_gone_releases_the_ip(network):
    """After a reboot the netns is gone before DEL: the IP is still released. (With ipMasq the bridge plugin
    could not find the pod's address to remove its masquerade chain, hence pycri's DEL-first order.)"""
    net, tmp = network
    net.plugins[0]["ipMasq"] = False
    name = f"pycri-t-{uuid.uuid4().hex[:8]}"
    _run("ip", "netns", "add", name)
    cni = CNI(BIN_DIRS, tmp / "cache")
    pod = PodNetworkArgs(pod_id="q" * 64, netns=f"/run/netns/{name}", name="a", namespace="b", uid="c")
    ip = pod_ips(asyncio.run(cni.add(net, pod)))[0]
    _run("ip", "netns", "delete", name)  # the fast teardown order: netns first, then DEL
    asyncio.run(cni.delete(net, pod))
    assert not (tmp / "ipam" / net.name / ip).exists()


def test_plugin_failure_is_reported_with_the_plugin_message(netns, network):
    _, ns_path = netns
    net, tmp = network
    net.plugins[0]["ipam"]["ranges"] = [[{"subnet": "not-a-subnet"}]]
    cni = CNI(BIN_DIRS, tmp / "cache")
    pod = PodNetworkArgs(pod_id="r" * 64, netns=ns_path, name="a", namespace="b", uid="c")
    with pytest.raises(CNIError, match="bridge failed"):
        asyncio.run(cni.add(net, pod))


def test_capability_args_go_only_to_plugins_that_ask():
    cni = CNI(BIN_DIRS, Path("/nonexistent"))
    net = parse_network_config_from(default_conflist(SUBNET, "/tmp/x"))
    pod = PodNetworkArgs(pod_id="i", netns="/n", name="a", namespace="b", uid="c",
                         port_mappings=[{"hostPort": 1, "containerPort": 2, "protocol": "tcp"}],
                         bandwidth={"ingressRate": 1000})
    bridge = json.loads(cni._stdin("ADD", net, net.plugins[0], pod, None))
    portmap = json.loads(cni._stdin("ADD", net, net.plugins[1], pod, {"ips": []}))
    bandwidth = json.loads(cni._stdin("ADD", net, net.plugins[2], pod, {"ips": []}))
    assert "runtimeConfig" not in bridge and "prevResult" not in bridge
    assert portmap["runtimeConfig"] == {"portMappings": pod.port_mappings}
    assert portmap["prevResult"] == {"ips": []}
    assert bandwidth["runtimeConfig"] == {"bandwidth": {"ingressRate": 1000}}
    assert pod.cni_args() == ("IgnoreUnknown=1;K8S_POD_NAMESPACE=b;K8S_POD_NAME=a;"
                              "K8S_POD_INFRA_CONTAINER_ID=i;K8S_POD_UID=c")


def parse_network_config_from(conf: dict, tmp=Path("/tmp")):
    path = tmp / f"pycri-conf-{uuid.uuid4().hex}.conflist"
    path.write_text(json.dumps(conf))
    try:
        return parse_network_config(path)
    finally:
        path.unlink()


def test_default_conflist_is_written_and_ready(tmp_path):
    path = write_default_conflist(str(tmp_path / "net.d"), "10.88.0.0/16", "/var/lib/pycri/cni/networks")
    assert path.name == DEFAULT_CONFLIST_NAME
    conf = load_network_config(str(tmp_path / "net.d"))
    assert [p["type"] for p in conf.plugins] == ["bridge", "portmap", "bandwidth"]
    assert network_status(str(tmp_path / "net.d"), BIN_DIRS) == (True, "", "")
    assert not [p for p in os.listdir(tmp_path / "net.d") if p.endswith(".tmp")]


def test_first_valid_config_wins_and_single_plugin_conf_is_lifted(tmp_path):
    (tmp_path / "00-broken.conflist").write_text("{")
    (tmp_path / "05-single.conf").write_text(json.dumps({"cniVersion": "0.4.0", "name": "one", "type": "bridge"}))
    (tmp_path / "10-other.conflist").write_text(json.dumps({"name": "two", "plugins": [{"type": "bridge"}]}))
    conf = load_network_config(str(tmp_path))
    assert conf.name == "one" and conf.plugins == [{"type": "bridge"}]
