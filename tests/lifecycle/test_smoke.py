"""The pod lifecycle end to end, as the kubelet drives it."""

from __future__ import annotations

import ipaddress

import grpc
import pytest

from pycri.api import api_pb2 as cri
from tests.lifecycle.conftest import container_config, pod_config


def test_pod_with_a_container(pod_daemon, registry, tmp_path):
    rt, img = pod_daemon.runtime, pod_daemon.image
    sid = rt.RunPodSandbox(cri.RunPodSandboxRequest(config=pod_config(log_dir=str(tmp_path)))).pod_sandbox_id
    status = rt.PodSandboxStatus(cri.PodSandboxStatusRequest(pod_sandbox_id=sid)).status
    assert status.state == cri.SANDBOX_READY
    assert ipaddress.ip_address(status.network.ip) in ipaddress.ip_network(pod_daemon.subnet)
    ref = registry.ref("busybox")
    img.PullImage(cri.PullImageRequest(image=cri.ImageSpec(image=ref)))
    cid = rt.CreateContainer(cri.CreateContainerRequest(
        pod_sandbox_id=sid, config=container_config("app", ref, ["sh", "-c", "echo hello; sleep 3600"],
                                                    log_path="app/0.log"),
        sandbox_config=pod_config(log_dir=str(tmp_path)))).container_id
    rt.StartContainer(cri.StartContainerRequest(container_id=cid))
    st = rt.ContainerStatus(cri.ContainerStatusRequest(container_id=cid)).status
    assert st.state == cri.CONTAINER_RUNNING
    r = rt.ExecSync(cri.ExecSyncRequest(container_id=cid, cmd=["hostname"], timeout=10))
    assert r.exit_code == 0 and r.stdout == b"web\n"
    rt.StopContainer(cri.StopContainerRequest(container_id=cid, timeout=2))
    st = rt.ContainerStatus(cri.ContainerStatusRequest(container_id=cid)).status
    assert st.state == cri.CONTAINER_EXITED
    assert "hello" in (tmp_path / "app" / "0.log").read_text()
    rt.StopPodSandbox(cri.StopPodSandboxRequest(pod_sandbox_id=sid))
    rt.RemovePodSandbox(cri.RemovePodSandboxRequest(pod_sandbox_id=sid))
    assert not rt.ListPodSandbox(cri.ListPodSandboxRequest()).items
    assert not rt.ListContainers(cri.ListContainersRequest()).containers
