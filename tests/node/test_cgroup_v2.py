"""cgroup v2 with both cgroup drivers, as a kubelet's node runs them: device rules (an eBPF program per
container), a cgroup namespace of each container's own, OOM kills told as OOMKilled; limits, their updates and
the stats read from the v2 files under each runtime handler (the built-in launcher, runc, crun)."""
from __future__ import annotations

import os

import pytest

from pycri.api import api_pb2 as cri
from runtime.cgroups import open_cgroup, shares_to_weight
from tests.lifecycle.conftest import pod_config
from tests.lifecycle.helpers import Kubelet
from tests.security.ctx_helpers import run_to_exit

DRIVERS = ["cgroupfs", "systemd"]
# runc makes its own cgroups (through systemd with the systemd driver); crun runs in the ones the monitor made
OCI_RUNTIMES = {"runc": {"type": "oci", "path": "/usr/bin/runc"},
                "crun": {"type": "oci", "path": "/usr/bin/crun", "cgroup_manager": "pycri"}}


@pytest.fixture(params=DRIVERS)
def node(request, daemon_factory, registry, tmp_path):
    """A kubelet on a daemon with this cgroup driver; pods get the cgroup parent the kubelet would give."""
    driver = request.param
    d = daemon_factory({"sandbox_image": registry.ref("pause"), f'registries."{registry.host}"': {"insecure": True},
                        "cgroup": {"driver": driver},
                        **{f"runtimes.{name}": rt for name, rt in OCI_RUNTIMES.items()}}, network=True)
    logs = tmp_path / "logs"
    logs.mkdir()
    k = Kubelet(d, registry, logs)
    k.cgroup_parent = "kubepods-besteffort-podnodetest.slice" if driver == "systemd" else "/kubepods-test/podnode"
    yield k
    if driver == "cgroupfs":  # the kubelet's own pod cgroup, once the pods are gone (systemd removes an empty slice)
        d.remove_all_pods()
        for path in (k.cgroup_parent, "/kubepods-test"):
            cg = open_cgroup(path)
            if cg.exists():
                cg.remove()


def _pod(k: Kubelet, name: str, privileged: bool = False, handler: str = ""):
    config = pod_config(name, log_dir=k.log_dir, linux=cri.LinuxPodSandboxConfig(
        cgroup_parent=k.cgroup_parent, security_context=cri.LinuxSandboxSecurityContext(privileged=privileged)))
    sid = k.rt.RunPodSandbox(cri.RunPodSandboxRequest(config=config, runtime_handler=handler),
                             timeout=120).pod_sandbox_id
    return sid, config


def test_a_default_container_cannot_read_a_disk_it_made_a_node_for(node):
    """CAP_MKNOD is in the default set: a container may make any device node, and must not open one outside
    the default allow-list (the node's root disk here)."""
    st = os.stat("/")
    major, minor = os.major(st.st_dev), os.minor(st.st_dev)
    sid, pod = _pod(node, "disk")
    status, out = run_to_exit(node, sid, pod, "disk",
                       f"mknod /tmp/disk b {major} {minor} && echo MKNOD=ok; "
                       "if head -c 512 /tmp/disk >/dev/null 2>&1; then echo BLOCK_READ=ok; else echo BLOCK_READ=no; fi;"
                       "if head -c 1 /dev/urandom >/dev/null; then echo URANDOM=ok; fi")
    assert status.exit_code == 0, out
    assert "MKNOD=ok" in out and "URANDOM=ok" in out and "BLOCK_READ=no" in out, out


def test_a_container_sees_its_own_cgroup_and_memory_limit(node):
    """A cgroup namespace of its own: /proc/self/cgroup is "0::/", and /sys/fs/cgroup is its cgroup, whose
    memory.max is the limit the kubelet set (what the JVM, Go and Node size themselves by)."""
    sid, pod = _pod(node, "ns")
    res = cri.LinuxContainerResources(memory_limit_in_bytes=64 << 20)
    status, out = run_to_exit(node, sid, pod, "ns", "cat /proc/self/cgroup; echo MAX=$(cat /sys/fs/cgroup/memory.max)",
                       linux=cri.LinuxContainerConfig(resources=res))
    assert status.exit_code == 0, out
    assert "0::/\n" in out and f"MAX={64 << 20}" in out, out


def test_a_privileged_container_sees_the_nodes_cgroups(node):
    sid, pod = _pod(node, "priv", privileged=True)
    status, out = run_to_exit(node, sid, pod, "priv", "cat /proc/self/cgroup",
                       linux=cri.LinuxContainerConfig(security_context=cri.LinuxContainerSecurityContext(
                           privileged=True)))
    assert status.exit_code == 0 and "0::/\n" not in out and "0::/" in out, out


def test_an_oom_kill_is_reported_as_oomkilled(node):
    sid, pod = _pod(node, "oom")
    res = cri.LinuxContainerResources(memory_limit_in_bytes=16 << 20)
    status, out = run_to_exit(node, sid, pod, "hog", "dd if=/dev/zero of=/dev/shm/fill bs=1M count=64",
                       linux=cri.LinuxContainerConfig(resources=res))
    assert (status.exit_code, status.reason) == (137, "OOMKilled"), (status, out)


SHOW = ("cat /proc/self/cgroup; echo MEM=$(cat /sys/fs/cgroup/memory.max) CPU=$(cat /sys/fs/cgroup/cpu.max) "
        "WEIGHT=$(cat /sys/fs/cgroup/cpu.weight)")


@pytest.mark.parametrize("handler", ["", "runc", "crun"], ids=["builtin", "runc", "crun"])
def test_limits_updates_stats_and_devices_under_each_handler(node, handler):
    """What the kubelet sets and reads on every pod: the limits reach the v2 files the container sees as its own,
    UpdateContainerResources changes them while it runs, the stats come from the v2 files, and an exec (which
    the OCI runtime starts for runc and crun) cannot open a disk either."""
    sid, pod = _pod(node, f"res-{handler or 'builtin'}", handler=handler)
    res = cri.LinuxContainerResources(memory_limit_in_bytes=64 << 20, cpu_period=100000, cpu_quota=50000,
                                      cpu_shares=512)
    cid = node.start(sid, pod, "app", command=["sh", "-c", "while :; do :; done & sleep 3600"],
                     linux=cri.LinuxContainerConfig(resources=res))
    r = node.exec(cid, "sh", "-c", SHOW, timeout=60)
    out = r.stdout.decode()
    assert r.exit_code == 0 and "0::/\n" in out, (r, out)
    assert f"MEM={64 << 20} CPU=50000 100000 WEIGHT={shares_to_weight(512)}" in out, out

    update = cri.LinuxContainerResources(memory_limit_in_bytes=128 << 20, cpu_period=100000, cpu_quota=25000,
                                         cpu_shares=1024)
    node.rt.UpdateContainerResources(cri.UpdateContainerResourcesRequest(container_id=cid, linux=update), timeout=60)
    out = node.exec(cid, "sh", "-c", SHOW, timeout=60).stdout.decode()
    assert f"MEM={128 << 20} CPU=25000 100000 WEIGHT={shares_to_weight(1024)}" in out, out
    assert node.status(cid).resources.linux.memory_limit_in_bytes == 128 << 20

    def busy_stats():
        s = node.rt.ContainerStats(cri.ContainerStatsRequest(container_id=cid)).stats
        return s if s.cpu.usage_core_nano_seconds.value > 0 and s.memory.working_set_bytes.value > 0 else None
    stats = node.until(busy_stats, timeout=60, what="cpu and memory in ContainerStats")
    assert stats.memory.working_set_bytes.value < 128 << 20, stats
    pod_stats = node.rt.PodSandboxStats(cri.PodSandboxStatsRequest(pod_sandbox_id=sid)).stats
    assert pod_stats.linux.process.process_count.value >= 2, pod_stats  # the loop and sleep

    st = os.stat("/")
    r = node.exec(cid, "sh", "-c", f"mknod /tmp/disk b {os.major(st.st_dev)} {os.minor(st.st_dev)} && "
                  "if head -c 512 /tmp/disk >/dev/null 2>&1; then echo BLOCK_READ=ok; else echo BLOCK_READ=no; fi",
                  timeout=60)
    assert r.stdout.decode().strip() == "BLOCK_READ=no", r
