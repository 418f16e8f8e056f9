"""Strings of the CRI that end up in a pod's files or in host paths, sent as an attacker with the CRI socket (or a
buggy client) would: refused with INVALID_ARGUMENT naming the field, nothing written; the log opened without
following symlinks; user ids only in ASCII digits; ExecSync output cut to fit a kubelet's message limit; a
default pids limit for containers when the config sets one."""
from __future__ import annotations

import json
import os
from pathlib import Path

import grpc
import pytest

from pycri.api import api_pb2 as cri
from pycri.api import api_pb2_grpc
from tests.lifecycle.conftest import container_config, pod_config
from tests.lifecycle.helpers import Kubelet
from tests.security.ctx_helpers import security

KUBELET_MAX_MESSAGE = 16 * 1024 * 1024  # k8s.io/cri-client: maxMsgSize


def _refused(call, field: str) -> None:
    with pytest.raises(grpc.RpcError) as err:
        call()
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value
    assert field in err.value.details(), err.value.details()


@pytest.mark.parametrize("field, kw", [
    ("hostname", {"hostname": "web\n10.0.0.1 kubernetes.default"}),
    ("hostname", {"hostname": "h" * 65}),
    ("dns_config.servers", {"dns_config": cri.DNSConfig(servers=["10.0.0.10\nnameserver 6.6.6.6"])}),
    ("dns_config.servers", {"dns_config": cri.DNSConfig(servers=["not-an-address"])}),
    ("dns_config.searches", {"dns_config": cri.DNSConfig(searches=["svc.cluster.local\nnameserver 6.6.6.6"])}),
    ("dns_config.options", {"dns_config": cri.DNSConfig(options=["ndots:5\rnameserver 6.6.6.6"])}),
    ("log_directory", {"log_directory": "/relative/logs"[1:]}),
    ("log_directory", {"log_directory": "/var/log/pods/../../../etc"}),
], ids=["hostname-newline", "hostname-long", "server-newline", "server-name", "search-newline", "option-cr",
        "logdir-relative", "logdir-dotdot"])
def test_pod_strings_that_would_add_lines_or_escape_are_refused(pod_daemon, tmp_path, field, kw):
    d = pod_daemon
    config = pod_config("hostile", log_dir=str(tmp_path))
    config.MergeFrom(cri.PodSandboxConfig(**kw))
    _refused(lambda: d.runtime.RunPodSandbox(cri.RunPodSandboxRequest(config=config), timeout=60), field)
    assert not d.runtime.ListPodSandbox(cri.ListPodSandboxRequest()).items


def test_a_pods_own_dns_is_written_as_given(kubelet):
    dns = cri.DNSConfig(servers=["10.96.0.10", "fd00::a"], searches=["default.svc.cluster.local"],
                        options=["ndots:5", "edns0"])
    sid, pod = kubelet.run_pod("dns", dns_config=dns)
    cid = kubelet.start(sid, pod, "c", command=["sleep", "3600"])
    r = kubelet.exec(cid, "cat", "/etc/resolv.conf")
    assert r.stdout.decode().splitlines() == ["search default.svc.cluster.local", "nameserver 10.96.0.10",
                                              "nameserver fd00::a", "options ndots:5 edns0"], r


@pytest.mark.parametrize("log_path", ["../escaped.log", "/tmp/escaped.log", "c/../../escaped.log", "c/"])
def test_container_log_paths_outside_the_pods_log_directory_are_refused(kubelet, tmp_path, log_path):
    sid, pod = kubelet.run_pod("logs")
    ref = kubelet.pull("busybox")
    config = container_config("c", ref, ["sleep", "3600"], log_path=log_path)
    _refused(lambda: kubelet.rt.CreateContainer(cri.CreateContainerRequest(
        pod_sandbox_id=sid, config=config, sandbox_config=pod), timeout=60), "log_path")
    assert not kubelet.rt.ListContainers(cri.ListContainersRequest()).containers
    assert not (Path(kubelet.log_dir).parent / "escaped.log").exists()


@pytest.mark.parametrize("where", ["file", "dir"])
def test_the_log_is_not_opened_through_a_symlink(kubelet, tmp_path, where):
    """A pod with a hostPath of the node's log directory could plant links there: the log (and the container's
    log directory) are opened without following one."""
    target = tmp_path / "target"
    target.mkdir()
    log_dir = Path(kubelet.log_dir)
    if where == "file":
        (log_dir / "c").mkdir()
        (log_dir / "c" / "0.log").symlink_to(target / "0.log")
    else:
        (log_dir / "c").symlink_to(target)
    sid, pod = kubelet.run_pod("links")
    with pytest.raises(grpc.RpcError) as err:
        kubelet.start(sid, pod, "c", command=["echo", "written"])
    assert err.value.code() in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.INVALID_ARGUMENT), err.value
    assert "symbolic link" in err.value.details() or "symlink" in err.value.details(), err.value.details()
    assert not any(target.iterdir()), list(target.iterdir())


def test_a_nul_in_a_container_name_is_refused(kubelet):
    sid, pod = kubelet.run_pod("nul")
    ref = kubelet.pull("busybox")
    config = container_config("c\0d", ref, ["sleep", "3600"], log_path="c/0.log")
    _refused(lambda: kubelet.rt.CreateContainer(cri.CreateContainerRequest(
        pod_sandbox_id=sid, config=config, sandbox_config=pod), timeout=60), "container metadata")


@pytest.mark.parametrize("user", ["\u0660", "\u00b2", "1\u0661"])
def test_only_ascii_digits_are_a_user_id(kubelet, user):
    """U+0660 (ARABIC-INDIC DIGIT ZERO) is a digit to str.isdigit and int() reads it as 0: it must be a name
    (and no such user is in busybox's /etc/passwd), never uid 0."""
    sid, pod = kubelet.run_pod("users")
    ref = kubelet.pull("busybox")
    config = container_config("c", ref, ["id", "-u"], log_path="c/0.log",
                              linux=security(run_as_username=user))
    _refused(lambda: kubelet.rt.CreateContainer(cri.CreateContainerRequest(
        pod_sandbox_id=sid, config=config, sandbox_config=pod), timeout=60), "user")


@pytest.mark.parametrize("script", ["head -c 20000000 /dev/zero",
                                    "head -c 10000000 /dev/zero; head -c 10000000 /dev/zero >&2"],
                         ids=["stdout", "both"])
def test_exec_sync_output_is_cut_to_fit_a_kubelets_message(kubelet, pod_daemon, script):
    sid, pod = kubelet.run_pod("big")
    cid = kubelet.start(sid, pod, "c", command=["sleep", "3600"])
    channel = grpc.insecure_channel(f"unix:{pod_daemon.socket}", options=[
        ("grpc.max_receive_message_length", KUBELET_MAX_MESSAGE),
        ("grpc.max_send_message_length", KUBELET_MAX_MESSAGE)])
    try:
        r = api_pb2_grpc.RuntimeServiceStub(channel).ExecSync(
            cri.ExecSyncRequest(container_id=cid, cmd=["sh", "-c", script], timeout=60), timeout=120)
    finally:
        channel.close()
    assert r.exit_code == 0
    assert r.ByteSize() <= KUBELET_MAX_MESSAGE
    assert len(r.stdout) + len(r.stderr) > 15 * 1024 * 1024
    assert set(r.stdout) == {0}, "stdout is the command's own"
    assert r.stderr.endswith(b"the rest was cut]\n"), r.stderr[-200:]
    assert os.path.exists(pod_daemon.socket)


def _pids_dir(pid: int) -> Path:
    """The pids controller's directory of a process, on the host (v1: the pids hierarchy; v2: the one tree)."""
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        num, controllers, path = line.split(":", 2)
        if "pids" in controllers.split(",") or (num == "0" and not Path("/sys/fs/cgroup/pids").is_dir()):
            return Path("/sys/fs/cgroup/pids" if num != "0" else "/sys/fs/cgroup", path.lstrip("/"))
    raise AssertionError(f"no pids cgroup for {pid}")


@pytest.mark.parametrize("limit", [0, 40])
def test_a_configured_pids_limit_stops_a_fork_bomb(daemon_factory, registry, tmp_path, limit):
    d = daemon_factory({"sandbox_image": registry.ref("pause"), f'registries."{registry.host}"': {"insecure": True},
                        "cgroup": {"pids_limit": limit}}, network=True)
    logs = tmp_path / "logs"
    logs.mkdir()
    k = Kubelet(d, registry, logs)
    sid, pod = k.run_pod("forks")
    # (the inner shell dies at its first fork refused; the outer one goes on without forking)
    cid = k.start(sid, pod, "bomb", command=["sh", "-c", "sh -c 'for i in $(seq 100); do sleep 3600 & done'; "
                                                         "echo forked; exec sleep 3600"])
    k.until(lambda: b"forked" in (logs / "bomb" / "0.log").read_bytes(), timeout=60, what="the loop's end")
    pid = json.loads(k.rt.ContainerStatus(cri.ContainerStatusRequest(container_id=cid, verbose=True))
                     .info["info"])["pid"]
    pids = _pids_dir(pid)
    current = int((pids / "pids.current").read_text())
    if limit:
        assert (pids / "pids.max").read_text().strip() == str(limit)
        assert current <= limit
    else:
        assert (pids / "pids.max").read_text().strip() == "max"  # off by default, as in containerd
        assert current > 100
