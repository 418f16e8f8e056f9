"""pycri with `[cgroup] driver = "systemd"`: the daemon runs next to a real systemd (tests/runtime/systemd_box.py)
and every sandbox and container becomes a transient scope in the kubelet's pod slice."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import grpc
import pytest

from pycri.api import api_pb2 as cri
from tests.fixtures import leaks
from tests.fixtures.daemon import PYCRI, REPO, DaemonProcess
from tests.lifecycle.conftest import container_config, pod_config
from tests.runtime.systemd_box import MEMORY_LIMIT, V2, SystemdBox, available

POD_SLICE = "kubepods-besteffort-podsdtest.slice"


class BoxedDaemon(DaemonProcess):
    """The daemon started inside the box (its mount, pid and cgroup namespaces) through nsenter."""

    def __init__(self, box: SystemdBox, workdir: Path, overrides: dict) -> None:
        super().__init__(workdir, overrides)
        self.box = box
        self._log_from = 0

    def start(self, timeout: float = 30) -> "BoxedDaemon":
        self._log_from = len(self.log_events())
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.box.command(PYCRI + ["--config", str(self.config_path)]), stdout=log,
                                     stderr=log, cwd=REPO, preexec_fn=self.box.enter_cgroups)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"pycri exited with {self.proc.returncode}:\n{self.log_text()}")
            if any(e.get("event") == "serving" for e in self.log_events()[self._log_from:]):
                self.channel = grpc.insecure_channel(f"unix:{self.socket}")
                grpc.channel_ready_future(self.channel).result(timeout=max(0.1, deadline - time.monotonic()))
                return self
            time.sleep(0.05)
        raise RuntimeError(f"pycri did not serve within {timeout}s:\n{self.log_text()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> int | None:
        """nsenter forks the daemon and does not pass signals on: signal the daemon itself."""
        self._close_channel()
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
        for pid in children:
            os.kill(int(pid), sig)
        return self.proc.wait(timeout)


@pytest.fixture
def boxed(registry):
    if reason := available():
        pytest.skip(reason)
    before = leaks.snapshot()
    workdir = Path(tempfile.mkdtemp(prefix="pycri-t-", dir="/tmp"))
    box = SystemdBox().start()
    d = BoxedDaemon(box, workdir, {
        "sandbox_image": registry.ref("pause"),
        f'registries."{registry.host}"': {"insecure": True},
        "cgroup": {"driver": "systemd"},
    })
    try:
        yield d.start()
        d.remove_all_pods()
    finally:
        d.stop()
        box.stop()
        problems = leaks.leaks_since(before, str(workdir))
        shutil.rmtree(workdir, ignore_errors=True)
    assert not problems, "left behind:\n" + "\n".join(problems)


def _unit(box: SystemdBox, unit: str) -> dict:
    out = box.run(["systemctl", "show", unit, "-p", "ActiveState", "-p", "LoadState", "-p", "Slice",
                   "-p", MEMORY_LIMIT, "-p", "ControlGroup"], check=False).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def _host_network_pod(name: str, parent: str) -> cri.PodSandboxConfig:
    return pod_config(name, linux=cri.LinuxPodSandboxConfig(
        cgroup_parent=parent, security_context=cri.LinuxSandboxSecurityContext(
            namespace_options=cri.NamespaceOption(network=cri.NamespaceMode.NODE))))


def test_pods_and_containers_are_scopes_in_the_pod_slice(boxed, registry):
    rt, box = boxed.runtime, boxed.box
    assert rt.RuntimeConfig(cri.RuntimeConfigRequest()).linux.cgroup_driver == cri.CgroupDriver.SYSTEMD
    ref = registry.ref("busybox")
    boxed.image.PullImage(cri.PullImageRequest(image=cri.ImageSpec(image=ref)), timeout=120)
    pod = _host_network_pod("sd", POD_SLICE)
    sid = rt.RunPodSandbox(cri.RunPodSandboxRequest(config=pod), timeout=120).pod_sandbox_id
    infra = _unit(box, f"pycri-{sid}.scope")
    assert (infra["ActiveState"], infra["Slice"]) == ("active", POD_SLICE), infra

    limits = cri.LinuxContainerConfig(resources=cri.LinuxContainerResources(memory_limit_in_bytes=64 << 20))
    cid = rt.CreateContainer(cri.CreateContainerRequest(
        pod_sandbox_id=sid, sandbox_config=pod,
        config=container_config("app", ref, ["sleep", "3600"], linux=limits)), timeout=60).container_id
    rt.StartContainer(cri.StartContainerRequest(container_id=cid), timeout=60)
    unit = _unit(box, f"pycri-{cid}.scope")
    assert (unit["ActiveState"], unit["Slice"], unit[MEMORY_LIMIT]) == ("active", POD_SLICE, str(64 << 20)), unit
    group = unit["ControlGroup"]
    assert group == f"/kubepods.slice/kubepods-besteffort.slice/{POD_SLICE}/pycri-{cid}.scope"
    out = rt.ExecSync(cri.ExecSyncRequest(container_id=cid, cmd=["cat", "/proc/self/cgroup"], timeout=20)).stdout
    if V2:  # an exec joins the container's scope, the root of its cgroup namespace
        assert out == b"0::/\n", out
    else:
        assert any(line.endswith(f":memory:{group}") for line in out.decode().splitlines()), out
    stats = rt.ContainerStats(cri.ContainerStatsRequest(container_id=cid)).stats
    assert stats.memory.working_set_bytes.value > 0

    rt.StopPodSandbox(cri.StopPodSandboxRequest(pod_sandbox_id=sid), timeout=60)
    rt.RemovePodSandbox(cri.RemovePodSandboxRequest(pod_sandbox_id=sid), timeout=60)
    for scope in (f"pycri-{cid}.scope", f"pycri-{sid}.scope"):
        st = _unit(box, scope)
        assert st.get("LoadState") == "not-found" or st.get("ActiveState") == "inactive", (scope, st)


def test_a_cgroup_parent_that_is_not_a_slice_is_refused(boxed):
    with pytest.raises(grpc.RpcError) as err:
        boxed.runtime.RunPodSandbox(cri.RunPodSandboxRequest(config=_host_network_pod("bad", "/kubepods/podx")),
                                    timeout=60)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "not a systemd slice" in err.value.details()
