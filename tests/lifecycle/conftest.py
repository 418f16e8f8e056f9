"""A daemon with a network of the test's own and the local registry as its image source."""

from __future__ import annotations

import pytest

from pycri.api import api_pb2 as cri


@pytest.fixture
def pod_daemon(daemon_factory, registry):
    return daemon_factory({
        "sandbox_image": registry.ref("pause"),
        f'registries."{registry.host}"': {"insecure": True},
    }, network=True)


def pod_config(name: str = "web", namespace: str = "default", uid: str | None = None, attempt: int = 0,
               log_dir: str = "", **kw) -> cri.PodSandboxConfig:
    return cri.PodSandboxConfig(
        metadata=cri.PodSandboxMetadata(name=name, namespace=namespace, uid=uid or f"uid-{name}", attempt=attempt),
        hostname=name, log_directory=log_dir, **kw)


def container_config(name: str, image: str, command=(), args=(), log_path: str = "", **kw) -> cri.ContainerConfig:
    return cri.ContainerConfig(metadata=cri.ContainerMetadata(name=name), image=cri.ImageSpec(image=image),
                               command=list(command), args=list(args), log_path=log_path, **kw)


@pytest.fixture
def kubelet(pod_daemon, registry, tmp_path):
    from tests.lifecycle.helpers import Kubelet

    logs = tmp_path / "logs"
    logs.mkdir()
    return Kubelet(pod_daemon, registry, logs)
