"""pycri as a node installs it (`make install`'s steps): the wheel (.cache/dist, built by `hack/node.py test` from this
checkout) into a venv of its own, the wrapper, unit, config and default CNI network from hack/install.py, run by
systemd as a service (Delegate=yes, KillMode=process) with the systemd cgroup driver, as a kubeadm node runs it;
crictl's flow through its socket. (crictl itself is not to be had here: Debian 12 has no cri-tools and there is
no Go module proxy to build it from, so the test makes the calls each crictl command makes, in its order.)"""
from __future__ import annotations

import json
import os
import subprocess
import tarfile
from pathlib import Path

import grpc
import pytest

from pycri.api import api_pb2 as cri
from pycri.api import api_pb2_grpc
from tests.lifecycle.conftest import container_config, pod_config

REPO = Path(__file__).resolve().parents[2]
HOME = Path("/usr/local/lib/pycri")
SOCKET = "/run/pycri/pycri.sock"


def _sh(*cmd: str) -> subprocess.CompletedProcess:
    """cmd without the suite's PYTHONPATH (the checkout, whose egg-info pip would take for pycri installed)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    r = subprocess.run(list(cmd), capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, f"{cmd}: {r.stdout}\n{r.stderr}"
    return r


@pytest.fixture
def service(registry, tmp_path):
    """Installed, the pause image imported, the test registry trusted, started by systemd; stopped afterwards
    (its pods removed first)."""
    wheels = sorted((REPO / ".cache" / "dist").glob("pycri-*.whl"))
    assert wheels, "no wheel in .cache/dist (hack/node.py test builds it)"
    _sh("python3", "-m", "venv", "--clear", str(HOME))
    _sh(str(HOME / "bin/pip"), "install", "-q", "--no-index", "--find-links", str(REPO / ".cache" / "wheels"),
        str(wheels[-1]))
    _sh(str(HOME / "bin/python"), str(REPO / "hack/install.py"), "--venv", str(HOME), "--systemd", "yes")
    pause = tmp_path / "pause.tar"
    with tarfile.open(pause, "w") as tar:
        tar.add(REPO / ".cache" / "test-images" / "pause", arcname=".")
    _sh("/usr/local/bin/pycri", "images", "import", str(pause), "--name", "registry.k8s.io/pause:3.10")
    config = Path("/etc/pycri/config.toml")
    text = config.read_text()
    assert 'driver = "cgroupfs"' in text, text
    config.write_text(text.replace('driver = "cgroupfs"', 'driver = "systemd"')
                      + f'\n[registries."{registry.host}"]\ninsecure = true\n')
    _sh("systemctl", "daemon-reload")
    _sh("systemctl", "start", "pycri")
    channel = grpc.insecure_channel(f"unix:{SOCKET}")
    grpc.channel_ready_future(channel).result(timeout=60)
    rt = api_pb2_grpc.RuntimeServiceStub(channel)
    yield rt, api_pb2_grpc.ImageServiceStub(channel)
    for sb in rt.ListPodSandbox(cri.ListPodSandboxRequest()).items:
        rt.StopPodSandbox(cri.StopPodSandboxRequest(pod_sandbox_id=sb.id), timeout=60)
        rt.RemovePodSandbox(cri.RemovePodSandboxRequest(pod_sandbox_id=sb.id), timeout=60)
    channel.close()
    _sh("systemctl", "stop", "pycri")


def test_the_installed_service_runs_the_crictl_flow(service, registry):
    rt, img = service
    unit = _sh("systemctl", "show", "pycri", "-p", "ActiveState", "-p", "ExecMainPID").stdout
    state = dict(line.split("=", 1) for line in unit.split())
    assert state["ActiveState"] == "active", unit
    exe = Path(f"/proc/{state['ExecMainPID']}/cmdline").read_bytes().split(b"\0")
    assert any(part.startswith(bytes(HOME)) for part in exe), exe  # the installed venv's, not the checkout's
    v = rt.Version(cri.VersionRequest())  # crictl version
    assert (v.runtime_name, v.runtime_api_version) == ("pycri", "v1")
    conditions = {c.type: c.status for c in rt.Status(cri.StatusRequest()).status.conditions}  # crictl info
    assert conditions == {"RuntimeReady": True, "NetworkReady": True}, conditions

    ref = registry.ref("busybox")
    img.PullImage(cri.PullImageRequest(image=cri.ImageSpec(image=ref)), timeout=120)  # crictl pull
    assert ref in [t for i in img.ListImages(cri.ListImagesRequest()).images for t in i.repo_tags]  # crictl images
    image = img.ImageStatus(cri.ImageStatusRequest(image=cri.ImageSpec(image=ref), verbose=True))  # inspecti
    assert image.image.id.startswith("sha256:") and image.info, image

    # crictl runp pod.json; crictl create <pod> ctr.json pod.json; crictl start
    pod = pod_config("installed", uid="installed-uid", log_dir="/var/log/pods/installed",
                     linux=cri.LinuxPodSandboxConfig(cgroup_parent="kubepods-besteffort-podinstalled.slice"))
    Path(pod.log_directory).mkdir(parents=True, exist_ok=True)
    sid = rt.RunPodSandbox(cri.RunPodSandboxRequest(config=pod), timeout=120).pod_sandbox_id
    cid = rt.CreateContainer(cri.CreateContainerRequest(
        pod_sandbox_id=sid, sandbox_config=pod, config=container_config(
            "c", ref, ["sh", "-c", "echo started; exec sleep 3600"], log_path="c/0.log")), timeout=60).container_id
    rt.StartContainer(cri.StartContainerRequest(container_id=cid), timeout=60)
    listed = rt.ListContainers(cri.ListContainersRequest(filter=cri.ContainerFilter(pod_sandbox_id=sid)))  # ps
    assert [(c.id, c.state) for c in listed.containers] == [(cid, cri.CONTAINER_RUNNING)], listed
    inspect = rt.ContainerStatus(cri.ContainerStatusRequest(container_id=cid, verbose=True))  # crictl inspect
    pid = json.loads(inspect.info["info"])["pid"]
    cgroup = Path(f"/proc/{pid}/cgroup").read_text()
    assert cgroup.startswith("0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-podinstalled.slice/") \
        and cgroup.strip().endswith(".scope"), cgroup  # a scope of systemd's, in the kubelet's slice

    r = rt.ExecSync(cri.ExecSyncRequest(container_id=cid, cmd=["sh", "-c", "echo hi; cat /sys/fs/cgroup/pids.max"],
                                        timeout=30))  # crictl exec -s
    assert r.exit_code == 0 and r.stdout.startswith(b"hi\n"), r
    log = Path(pod.log_directory, inspect.status.log_path).read_text()  # crictl logs reads the file
    assert log.split(" ", 3)[1:] == ["stdout", "F", "started\n"], log
    ip = rt.PodSandboxStatus(cri.PodSandboxStatusRequest(pod_sandbox_id=sid)).status.network.ip  # inspectp
    assert ip.startswith("10.88."), ip  # the default network hack/install.py wrote

    stats = rt.ListContainerStats(cri.ListContainerStatsRequest()).stats  # crictl stats
    assert [s.attributes.id for s in stats] == [cid] and stats[0].memory.working_set_bytes.value > 0, stats
    pod_stats = rt.ListPodSandboxStats(cri.ListPodSandboxStatsRequest()).stats  # crictl statsp
    assert [s.attributes.id for s in pod_stats] == [sid], pod_stats
    fs = img.ImageFsInfo(cri.ImageFsInfoRequest()).image_filesystems  # crictl imagefsinfo
    assert fs and fs[0].used_bytes.value > 0, fs
    rt.UpdateContainerResources(cri.UpdateContainerResourcesRequest(  # crictl update --memory 100M
        container_id=cid, linux=cri.LinuxContainerResources(memory_limit_in_bytes=100 << 20)), timeout=60)
    scope = "/sys/fs/cgroup" + cgroup.strip()[3:]
    assert Path(scope, "memory.max").read_text() == f"{100 << 20}\n"

    _sh("systemctl", "restart", "pycri")  # KillMode=process: the pod's monitor and container live on
    channel = grpc.insecure_channel(f"unix:{SOCKET}")
    grpc.channel_ready_future(channel).result(timeout=60)
    rt = api_pb2_grpc.RuntimeServiceStub(channel)
    img = api_pb2_grpc.ImageServiceStub(channel)
    assert rt.ContainerStatus(cri.ContainerStatusRequest(container_id=cid)).status.state == cri.CONTAINER_RUNNING

    rt.StopContainer(cri.StopContainerRequest(container_id=cid, timeout=10), timeout=60)  # crictl stop
    assert rt.ContainerStatus(cri.ContainerStatusRequest(container_id=cid)).status.state == cri.CONTAINER_EXITED
    rt.RemoveContainer(cri.RemoveContainerRequest(container_id=cid), timeout=60)  # crictl rm
    rt.StopPodSandbox(cri.StopPodSandboxRequest(pod_sandbox_id=sid), timeout=60)  # crictl stopp
    rt.RemovePodSandbox(cri.RemovePodSandboxRequest(pod_sandbox_id=sid), timeout=60)  # crictl rmp
    assert not rt.ListPodSandbox(cri.ListPodSandboxRequest()).items
    assert not Path(scope).exists(), scope
    img.RemoveImage(cri.RemoveImageRequest(image=cri.ImageSpec(image=ref)), timeout=60)  # crictl rmi
    assert not img.ImageStatus(cri.ImageStatusRequest(image=cri.ImageSpec(image=ref))).HasField("image")
    channel.close()
