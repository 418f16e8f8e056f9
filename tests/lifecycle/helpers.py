"""A small kubelet-like driver for lifecycle tests: pull, run a pod, create and start containers, wait."""

from __future__ import annotations

import time

import grpc

from pycri.api import api_pb2 as cri
from tests.lifecycle.conftest import container_config, pod_config


class Kubelet:
    def __init__(self, daemon, registry, log_dir) -> None:
        self.d = daemon
        self.registry = registry
        self.log_dir = str(log_dir)
        self.rt = daemon.runtime
        self.img = daemon.image

    def pull(self, name: str) -> str:
        ref = self.registry.ref(name)
        self.img.PullImage(cri.PullImageRequest(image=cri.ImageSpec(image=ref)), timeout=120)
        return ref

    def run_pod(self, name: str = "web", **kw) -> tuple[str, cri.PodSandboxConfig]:
        config = pod_config(name, log_dir=self.log_dir, **kw)
        sid = self.rt.RunPodSandbox(cri.RunPodSandboxRequest(config=config), timeout=120).pod_sandbox_id
        return sid, config

    def create(self, sid: str, pod: cri.PodSandboxConfig, name: str, image: str = "busybox", command=(),
               args=(), **kw) -> str:
        ref = self.pull(image)
        config = container_config(name, ref, command, args, log_path=f"{name}/0.log", **kw)
        return self.rt.CreateContainer(cri.CreateContainerRequest(pod_sandbox_id=sid, config=config,
                                                                  sandbox_config=pod), timeout=60).container_id

    def start(self, sid: str, pod: cri.PodSandboxConfig, name: str, image: str = "busybox", command=(),
              args=(), **kw) -> str:
        cid = self.create(sid, pod, name, image, command, args, **kw)
        self.rt.StartContainer(cri.StartContainerRequest(container_id=cid), timeout=60)
        return cid

    def status(self, cid: str) -> cri.ContainerStatus:
        return self.rt.ContainerStatus(cri.ContainerStatusRequest(container_id=cid)).status

    def pod_status(self, sid: str) -> cri.PodSandboxStatus:
        return self.rt.PodSandboxStatus(cri.PodSandboxStatusRequest(pod_sandbox_id=sid)).status

    def wait_exited(self, cid: str, timeout: float = 30) -> cri.ContainerStatus:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            st = self.status(cid)
            if st.state == cri.CONTAINER_EXITED:
                return st
            time.sleep(0.05)
        raise AssertionError(f"container {cid} did not exit within {timeout}s: {self.status(cid)}")

    def exec(self, cid: str, *cmd: str, timeout: int = 20) -> cri.ExecSyncResponse:
        return self.rt.ExecSync(cri.ExecSyncRequest(container_id=cid, cmd=list(cmd), timeout=timeout),
                                timeout=timeout + 30)

    def until(self, fn, timeout: float = 20, what: str = "condition"):
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            try:
                last = fn()
                if last:
                    return last
            except (grpc.RpcError, OSError) as exc:  # not up yet: refused, reset, not found
                last = exc
            time.sleep(0.1)
        raise AssertionError(f"{what} not reached within {timeout}s (last: {last})")
