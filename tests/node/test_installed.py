"""pycri as a node installs it (`make install`'s steps): the wheel (.cache/dist, built by `make node-test` from this
checkout) into a venv of its own, the wrapper, unit, config and default CNI network from hack/install.py, run by
systemd as a service (Delegate=yes, KillMode=process); a pod and a container through its socket, as crictl would."""
from __future__ import annotations

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
    assert wheels, "no wheel in .cache/dist (make node-test builds it)"
    _sh("python3", "-m", "venv", "--clear", str(HOME))
    _sh(str(HOME / "bin/pip"), "install", "-q", "--no-index", "--find-links", str(REPO / ".cache" / "wheels"),
        str(wheels[-1]))
    _sh(str(HOME / "bin/python"), str(REPO / "hack/install.py"), "--venv", str(HOME), "--systemd", "yes")
    pause = tmp_path / "pause.tar"
    with tarfile.open(pause, "w") as tar:
        tar.add(REPO / ".cache" / "test-images" / "pause", arcname=".")
    _sh("/usr/local/bin/pycri", "images", "import", str(pause), "--name", "registry.k8s.io/pause:3.10")
    with open("/etc/pycri/config.toml", "a") as f:
        f.write(f'\n[registries."{registry.host}"]\ninsecure = true\n')
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


def test_the_installed_service_runs_a_pod(service, registry):
    rt, img = service
    unit = _sh("systemctl", "show", "pycri", "-p", "ActiveState", "-p", "ExecMainPID").stdout
    state = dict(line.split("=", 1) for line in unit.split())
    assert state["ActiveState"] == "active", unit
    exe = Path(f"/proc/{state['ExecMainPID']}/cmdline").read_bytes().split(b"\0")
    assert any(part.startswith(bytes(HOME)) for part in exe), exe  # the installed venv's, not the checkout's
    v = rt.Version(cri.VersionRequest())
    assert (v.runtime_name, v.runtime_api_version) == ("pycri", "v1")

    pod = pod_config("installed", log_dir="/var/log/pods/installed")
    Path(pod.log_directory).mkdir(parents=True, exist_ok=True)
    sid = rt.RunPodSandbox(cri.RunPodSandboxRequest(config=pod), timeout=120).pod_sandbox_id
    ref = registry.ref("busybox")
    img.PullImage(cri.PullImageRequest(image=cri.ImageSpec(image=ref)), timeout=120)
    cid = rt.CreateContainer(cri.CreateContainerRequest(
        pod_sandbox_id=sid, sandbox_config=pod, config=container_config("c", ref, ["sleep", "3600"],
                                                                          log_path="c/0.log")),
        timeout=60).container_id
    rt.StartContainer(cri.StartContainerRequest(container_id=cid), timeout=60)
    r = rt.ExecSync(cri.ExecSyncRequest(container_id=cid, cmd=["sh", "-c", "echo hi; cat /sys/fs/cgroup/pids.max"],
                                        timeout=30))
    assert r.exit_code == 0 and r.stdout.startswith(b"hi\n"), r
    ip = rt.PodSandboxStatus(cri.PodSandboxStatusRequest(pod_sandbox_id=sid)).status.network.ip
    assert ip.startswith("10.88."), ip  # the default network hack/install.py wrote
    _sh("systemctl", "restart", "pycri")  # KillMode=process: the pod's monitor and container live on
    channel = grpc.insecure_channel(f"unix:{SOCKET}")
    grpc.channel_ready_future(channel).result(timeout=60)
    st = api_pb2_grpc.RuntimeServiceStub(channel).ContainerStatus(cri.ContainerStatusRequest(container_id=cid))
    channel.close()
    assert st.status.state == cri.CONTAINER_RUNNING
