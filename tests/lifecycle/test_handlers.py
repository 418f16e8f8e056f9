"""The core pod lifecycle under each runtime handler: the built-in launcher, and runc and crun driven by the monitor
through their command line (docs/runtime.md, "OCI runtime handlers")."""

from __future__ import annotations

import os
import time
from pathlib import Path

import grpc
import pytest

from pycri.api import api_pb2 as cri
from tests.lifecycle.conftest import container_config, pod_config

OCI_RUNTIMES = {"runc": "/usr/bin/runc", "crun": "/usr/bin/crun"}
# crun 1.8 refuses a cgroup v1 host whose cgroup2 mount holds controllers (hybrid, as here): the monitor makes
# the cgroups and crun runs inside them with --cgroup-manager=disabled
CGROUP_MANAGER = {"crun": {"cgroup_manager": "pycri"}}
HANDLERS = ["", "runc", "crun"]  # "": the default (built-in) handler, as the kubelet asks for it


@pytest.fixture
def handler_daemon(daemon_factory, registry):
    missing = [p for p in OCI_RUNTIMES.values() if not os.access(p, os.X_OK)]
    if missing:
        pytest.skip(f"OCI runtimes not installed: {missing} (make deps)")
    overrides = {"sandbox_image": registry.ref("pause"), f'registries."{registry.host}"': {"insecure": True}}
    for name, path in OCI_RUNTIMES.items():
        overrides[f"runtimes.{name}"] = {"type": "oci", "path": path, **CGROUP_MANAGER.get(name, {})}
    return daemon_factory(overrides, network=True)


def _runtime_dirs(d, cid: str) -> list[Path]:
    """The OCI runtime's state for a container (<monitor dir>/<cid>/oci/<cid>), wherever the pod's monitor lives."""
    return [Path(top) for top, dirs, _ in os.walk(d.state)  # os.walk: dirs removed meanwhile are skipped
            if top.endswith(f"/{cid}/oci") and cid in dirs]


def _wait_for(fn, timeout: float = 20, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = fn()
        if got:
            return got
        time.sleep(0.05)
    raise AssertionError(f"{what} not reached within {timeout}s")


def _status(rt, cid: str) -> cri.ContainerStatus:
    return rt.ContainerStatus(cri.ContainerStatusRequest(container_id=cid)).status


@pytest.mark.parametrize("handler", HANDLERS, ids=["builtin", "runc", "crun"])
def test_lifecycle_under_handler(handler_daemon, registry, tmp_path, handler):
    d = handler_daemon
    rt, img = d.runtime, d.image
    ref = registry.ref("busybox")
    img.PullImage(cri.PullImageRequest(image=cri.ImageSpec(image=ref)), timeout=120)
    pod = pod_config("web", log_dir=str(tmp_path))
    sid = rt.RunPodSandbox(cri.RunPodSandboxRequest(config=pod, runtime_handler=handler), timeout=120).pod_sandbox_id
    pstat = rt.PodSandboxStatus(cri.PodSandboxStatusRequest(pod_sandbox_id=sid)).status
    assert pstat.state == cri.SANDBOX_READY and pstat.runtime_handler == handler
    pod_ip = pstat.network.ip
    assert pod_ip

    script = ("echo out-line; echo err-line >&2; trap 'echo got-term; exit 3' TERM; "
              "while true; do sleep 0.1; done")
    cid = rt.CreateContainer(cri.CreateContainerRequest(
        pod_sandbox_id=sid, sandbox_config=pod,
        config=container_config("app", ref, ["sh", "-c", script], log_path="app/0.log")), timeout=60).container_id
    rt.StartContainer(cri.StartContainerRequest(container_id=cid), timeout=60)
    assert _status(rt, cid).state == cri.CONTAINER_RUNNING
    # the container really is run by the asked runtime: its state lives in our root for it, or nowhere
    assert bool(_runtime_dirs(d, cid)) == bool(handler), _runtime_dirs(d, cid)

    log = tmp_path / "app" / "0.log"
    text = _wait_for(lambda: log.exists() and "err-line" in log.read_text() and log.read_text(), what="log lines")
    lines = text.splitlines()
    assert any(" stdout F out-line" in line for line in lines), lines
    assert any(" stderr F err-line" in line for line in lines), lines

    r = rt.ExecSync(cri.ExecSyncRequest(container_id=cid, cmd=["sh", "-c", "echo hi; echo oops >&2; exit 7"],
                                        timeout=20), timeout=60)
    assert (r.stdout, r.stderr, r.exit_code) == (b"hi\n", b"oops\n", 7)
    # the pod's namespaces: its IP (network), its hostname (uts), the infra as pid 1 (pid, shared by default: no)
    r = rt.ExecSync(cri.ExecSyncRequest(container_id=cid, cmd=["sh", "-c", "ip -o -4 addr show; hostname"],
                                        timeout=20), timeout=60)
    assert r.exit_code == 0 and f"inet {pod_ip}/" in r.stdout.decode(), r.stdout
    assert r.stdout.decode().splitlines()[-1] == "web"
    with pytest.raises(grpc.RpcError) as err:
        rt.ExecSync(cri.ExecSyncRequest(container_id=cid, cmd=["sleep", "30"], timeout=1), timeout=60)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED

    # a terminal container: the runtime's pty, read by the monitor
    tty_cid = rt.CreateContainer(cri.CreateContainerRequest(
        pod_sandbox_id=sid, sandbox_config=pod,
        config=container_config("tty", ref, ["sh", "-c", "[ -t 1 ] && echo is-a-tty; exit 5"],
                                log_path="tty/0.log", tty=True)), timeout=60).container_id
    rt.StartContainer(cri.StartContainerRequest(container_id=tty_cid), timeout=60)
    st = _wait_for(lambda: (s := _status(rt, tty_cid)).state == cri.CONTAINER_EXITED and s, what="tty exit")
    assert st.exit_code == 5 and st.finished_at >= st.started_at > 0
    assert "is-a-tty" in (tmp_path / "tty" / "0.log").read_text()

    started = time.monotonic()
    rt.StopContainer(cri.StopContainerRequest(container_id=cid, timeout=10), timeout=60)
    assert time.monotonic() - started < 8  # SIGTERM did it, not the SIGKILL after the grace period
    st = _status(rt, cid)
    assert st.state == cri.CONTAINER_EXITED and st.exit_code == 3, st
    assert "got-term" in log.read_text()

    for c in (cid, tty_cid):
        rt.RemoveContainer(cri.RemoveContainerRequest(container_id=c), timeout=60)
        assert not _runtime_dirs(d, c)
    rt.StopPodSandbox(cri.StopPodSandboxRequest(pod_sandbox_id=sid), timeout=60)
    rt.RemovePodSandbox(cri.RemovePodSandboxRequest(pod_sandbox_id=sid), timeout=60)
    assert not rt.ListContainers(cri.ListContainersRequest()).containers
    assert not [top for top, dirs, _ in os.walk(d.state) if "oci" in dirs]
    # mounts, cgroups, netns and processes: checked by the daemon fixture at teardown


def test_status_lists_handlers_and_unknown_handler_is_refused(handler_daemon, tmp_path):
    rt = handler_daemon.runtime
    handlers = rt.Status(cri.StatusRequest()).runtime_handlers
    assert [h.name for h in handlers] == ["", "crun", "pycri", "runc"]
    with pytest.raises(grpc.RpcError) as err:
        rt.RunPodSandbox(cri.RunPodSandboxRequest(config=pod_config("nope", log_dir=str(tmp_path)),
                                                  runtime_handler="kata"), timeout=60)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "'kata'" in err.value.details()
    assert not rt.ListPodSandbox(cri.ListPodSandboxRequest()).items


@pytest.mark.parametrize("handler", ["runc", "crun"])
def test_oci_container_survives_a_daemon_restart(handler_daemon, registry, tmp_path, handler):
    """The monitor (and so the runtime's state) outlives the daemon: after a restart the container is still
    running, its exits and execs are still seen, and its runtime state is cleaned at removal."""
    d = handler_daemon
    rt = d.runtime
    ref = registry.ref("busybox")
    d.image.PullImage(cri.PullImageRequest(image=cri.ImageSpec(image=ref)), timeout=120)
    pod = pod_config("restart", log_dir=str(tmp_path))
    sid = rt.RunPodSandbox(cri.RunPodSandboxRequest(config=pod, runtime_handler=handler), timeout=120).pod_sandbox_id
    cid = rt.CreateContainer(cri.CreateContainerRequest(
        pod_sandbox_id=sid, sandbox_config=pod,
        config=container_config("app", ref, ["sh", "-c", "read line; echo got $line; exit 4"],
                                log_path="app/0.log", stdin=True)), timeout=60).container_id
    rt.StartContainer(cri.StartContainerRequest(container_id=cid), timeout=60)
    d.kill()  # kill -9: nothing graceful
    d.start()
    rt = d.runtime
    assert _status(rt, cid).state == cri.CONTAINER_RUNNING
    r = rt.ExecSync(cri.ExecSyncRequest(container_id=cid, cmd=["echo", "still"], timeout=20), timeout=60)
    assert (r.stdout, r.exit_code) == (b"still\n", 0)
    rt.StopContainer(cri.StopContainerRequest(container_id=cid, timeout=0), timeout=60)
    st = _status(rt, cid)
    assert st.state == cri.CONTAINER_EXITED and st.exit_code == 137, st
    rt.RemoveContainer(cri.RemoveContainerRequest(container_id=cid), timeout=60)
    assert not _runtime_dirs(d, cid)
    rt.StopPodSandbox(cri.StopPodSandboxRequest(pod_sandbox_id=sid), timeout=60)
    rt.RemovePodSandbox(cri.RemovePodSandboxRequest(pod_sandbox_id=sid), timeout=60)
