"""User namespaces for pods (kubelet hostUsers: false): NamespaceOption.userns_options mode POD with one uid and one
gid mapping. Asserted inside the containers (uid_map, id, file owners), from the host (/proc/<pid>/status, owners of
what the container wrote), and for the CRI's rejection rules. The daemon fixture checks for leaked mounts (the
pinned user and network namespaces), netns and processes after each test."""

from __future__ import annotations

import json
import os
from pathlib import Path

import grpc
import pytest

from pycri.oci import spec as oci
from pycri.api import api_pb2 as cri
from runtime.launch.userns import supported
from tests.security.ctx_helpers import run_to_exit

pytestmark = pytest.mark.skipif(not supported(), reason="no user namespaces with idmapped mounts on this kernel")

HOST_ID = 1_000_000  # an unprivileged host range, as the kubelet allocates them (multiples of 65536)
LENGTH = 65536
M = cri.NamespaceMode


@pytest.fixture(autouse=True)
def searchable_workdir(request):
    """The mapped root must reach the rootfs mount points, as with runc: the daemon makes its own dirs 0711, and
    the test's temporary work dir (0700) is opened up the same way meanwhile (for the tests with a daemon)."""
    if "kubelet" not in request.fixturenames:
        yield
        return
    workdir = request.getfixturevalue("pod_daemon").workdir
    mode = workdir.stat().st_mode & 0o777
    os.chmod(workdir, 0o711)
    yield
    os.chmod(workdir, mode)


def _mapping(host_id=HOST_ID, container_id=0, length=LENGTH) -> cri.IDMapping:
    return cri.IDMapping(host_id=host_id, container_id=container_id, length=length)


def _userns(mode=M.POD, uids=None, gids=None) -> cri.UserNamespace:
    if uids is None and mode == M.POD:
        uids = [_mapping()]
    if gids is None and mode == M.POD:
        gids = [_mapping()]
    return cri.UserNamespace(mode=mode, uids=uids or [], gids=gids or [])


def _ns_opts(userns: cri.UserNamespace) -> cri.NamespaceOption:
    return cri.NamespaceOption(userns_options=userns)


def _pod_kw(userns: cri.UserNamespace, **sc) -> dict:
    return {"linux": cri.LinuxPodSandboxConfig(security_context=cri.LinuxSandboxSecurityContext(
        namespace_options=_ns_opts(userns), **sc))}


def _ctr_kw(userns: cri.UserNamespace) -> dict:
    """As the kubelet: the container's namespace options carry the pod's user namespace options too."""
    return {"linux": cri.LinuxContainerConfig(security_context=cri.LinuxContainerSecurityContext(
        namespace_options=_ns_opts(userns)))}


def _pin_files(pod_daemon) -> list[str]:
    """The daemon's pinned namespace files (netns and user namespaces) under its state dir."""
    found = []
    for root, _dirs, files in os.walk(pod_daemon.workdir):
        found += [os.path.join(root, f) for f in files if root.endswith("/ns")]
    return found


def _host_pid(kubelet, cid: str) -> int:
    resp = kubelet.rt.ContainerStatus(cri.ContainerStatusRequest(container_id=cid, verbose=True))
    return json.loads(resp.info["info"])["pid"]


def test_pod_user_namespace_inside_and_from_the_host(kubelet, pod_daemon):
    userns = _userns()
    sid, pod = kubelet.run_pod("userns", **_pod_kw(userns))
    # the pod's user namespace and its netns are pinned (both files under the daemon's ns dir)
    pins = _pin_files(pod_daemon)
    assert len([p for p in pins if p.endswith(".user")]) == 1 and len(pins) == 2, pins
    st = kubelet.pod_status(sid)
    assert st.linux.namespaces.options.userns_options.mode == M.POD
    assert st.network.ip  # CNI ran in the netns the infra made inside the user namespace

    script = ("cat /proc/self/uid_map /proc/self/gid_map; echo ID=$(id -u):$(id -g); "
              "echo BB=$(stat -c %u:%g /bin/busybox); echo ROOT=$(stat -c %u /); "
              "touch /new-in-rootfs && echo ROOTFS-WRITE=$(stat -c %u /new-in-rootfs); "
              "echo x > /etc/passwd.copy && echo ETC-WRITE; "
              "echo NET=$(cat /proc/sys/net/ipv4/ip_unprivileged_port_start); "
              "ls /sys/class/net | tr '\\n' ' '; echo; readlink /proc/self/ns/user")
    status, out = run_to_exit(kubelet, sid, pod, "inside", script, **_ctr_kw(userns))
    assert status.exit_code == 0, out
    lines = out.splitlines()
    assert lines[0].split() == ["0", str(HOST_ID), str(LENGTH)]  # uid_map: root inside is HOST_ID outside
    assert lines[1].split() == ["0", str(HOST_ID), str(LENGTH)]
    assert "ID=0:0" in out
    assert "BB=0:0" in out  # image files (owned by host root on disk) are root's inside: idmapped layers
    assert "ROOT=0" in out
    assert "ROOTFS-WRITE=0" in out and "ETC-WRITE" in out
    assert "NET=" in out and "eth0" in out  # the pod's netns (and its sysfs) inside the user namespace
    userns_link = lines[-1]
    assert userns_link != os.readlink("/proc/self/ns/user")

    # a long-running container: its process seen from the host, and an app container joining the same userns
    cid = kubelet.start(sid, pod, "sleeper", command=["sleep", "1000"], **_ctr_kw(userns))
    pid = _host_pid(kubelet, cid)
    status_text = Path(f"/proc/{pid}/status").read_text()
    uid_line = next(line for line in status_text.splitlines() if line.startswith("Uid:"))
    assert uid_line.split()[1:] == [str(HOST_ID)] * 4
    assert os.readlink(f"/proc/{pid}/ns/user") == userns_link  # all the pod's containers share it
    # exec joins it too
    r = kubelet.exec(cid, "sh", "-c", "id -u; cat /proc/self/uid_map")
    assert r.exit_code == 0, r.stderr
    assert r.stdout.split() == [b"0", b"0", str(HOST_ID).encode(), str(LENGTH).encode()]
    # what the container wrote in its writable layer is owned by HOST_ID on the host
    layer_files = [p for p in Path(pod_daemon.workdir).rglob("new-in-rootfs")]
    assert layer_files and all(p.stat().st_uid == HOST_ID for p in layer_files)

    kubelet.rt.StopPodSandbox(cri.StopPodSandboxRequest(pod_sandbox_id=sid))
    assert _pin_files(pod_daemon) == []  # unpinned at stop
    kubelet.rt.RemovePodSandbox(cri.RemovePodSandboxRequest(pod_sandbox_id=sid))


def test_volumes_plain_and_idmapped(kubelet, pod_daemon):
    userns = _userns()
    sid, pod = kubelet.run_pod("userns-vol", **_pod_kw(userns))
    plain = pod_daemon.workdir / "vol-plain"
    idmapped = pod_daemon.workdir / "vol-idmap"
    for d in (plain, idmapped):
        d.mkdir()
        os.chmod(d, 0o777)  # writable by the unprivileged host uid of the plain case
    (idmapped / "from-host").write_text("x")
    mounts = [cri.Mount(container_path="/plain", host_path=str(plain)),
              # the kubelet puts the pod's mappings on each volume: an idmapped mount (as containerd, CRI-O)
              cri.Mount(container_path="/idmap", host_path=str(idmapped), uidMappings=[_mapping()],
                        gidMappings=[_mapping()])]
    script = ("echo a > /plain/file && echo PLAIN-OK; echo b > /idmap/file && echo IDMAP-OK; "
              "echo HOSTFILE=$(stat -c %u /idmap/from-host); echo PLAINDIR=$(stat -c %u /plain)")
    status, out = run_to_exit(kubelet, sid, pod, "vols", script, mounts=mounts, **_ctr_kw(userns))
    assert status.exit_code == 0, out
    assert "PLAIN-OK" in out and "IDMAP-OK" in out
    # without idmapping, the container's root writes as its host uid; with it, as the on-disk root
    assert (plain / "file").stat().st_uid == HOST_ID
    assert (idmapped / "file").stat().st_uid == 0
    assert "HOSTFILE=0" in out  # a host root file is root's inside through the idmapped mount
    assert "PLAINDIR=65534" in out  # ... and the overflow uid through a plain one


def test_node_mode_is_the_host_user_namespace(kubelet):
    userns = _userns(mode=M.NODE)
    sid, pod = kubelet.run_pod("userns-node", **_pod_kw(userns))
    status, out = run_to_exit(kubelet, sid, pod, "node", "cat /proc/self/uid_map; readlink /proc/self/ns/user",
                              **_ctr_kw(userns))
    assert status.exit_code == 0, out
    assert out.split()[:3] == ["0", "0", "4294967295"]
    assert out.split()[3] == os.readlink("/proc/self/ns/user")


@pytest.mark.parametrize("userns, needle", [
    (_userns(uids=[_mapping(), _mapping(host_id=HOST_ID + LENGTH, container_id=LENGTH)]), "exactly one uid"),
    (_userns(gids=[]), "exactly one gid"),
    (_userns(uids=[_mapping(container_id=1)]), "container id 0"),
    (_userns(mode=M.CONTAINER), "CONTAINER"),
    (_userns(mode=M.TARGET), "TARGET"),
    (_userns(mode=M.NODE, uids=[_mapping()]), "NODE"),
])
def test_rejected_user_namespace_options(kubelet, pod_daemon, userns, needle):
    with pytest.raises(grpc.RpcError) as err:
        kubelet.run_pod("userns-bad", **_pod_kw(userns))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert needle in err.value.details()
    assert _pin_files(pod_daemon) == []


def test_container_options_must_match_the_pod(kubelet):
    sid, pod = kubelet.run_pod("userns-mismatch", **_pod_kw(_userns()))
    with pytest.raises(grpc.RpcError) as err:
        kubelet.create(sid, pod, "other", command=["true"],
                       **_ctr_kw(_userns(uids=[_mapping(host_id=HOST_ID + LENGTH)])))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "user namespace" in err.value.details()


def test_status_advertises_user_namespaces(kubelet):
    resp = kubelet.rt.Status(cri.StatusRequest())
    default = next(h for h in resp.runtime_handlers if h.name == "")
    assert default.features.user_namespaces is True


def test_spec_for_a_pod_user_namespace(tmp_path):
    """What the daemon hands the launcher: the infra makes the user and network namespaces; containers join the
    pinned user namespace; volumes the kubelet idmaps carry the mappings."""
    userns = _userns()
    pod = cri.PodSandboxConfig(metadata=cri.PodSandboxMetadata(name="p", namespace="d", uid="u"), **_pod_kw(userns))
    paths = oci.PodPaths(net_ns="/run/pin/net", shm_dir="/run/pin/shm")
    sb = oci.sandbox_spec(pod, {"config": {"Entrypoint": ["/pause"]}}, "s" * 64, paths, "cgroupfs")
    ns = {n["type"]: n for n in sb["linux"]["namespaces"]}
    assert ns["user"] == {"type": "user"} and ns["network"] == {"type": "network"}
    want = [{"containerID": 0, "hostID": HOST_ID, "size": LENGTH}]
    assert sb["linux"]["uidMappings"] == want and sb["linux"]["gidMappings"] == want
    vol = cri.Mount(container_path="/v", host_path=str(tmp_path), uidMappings=[_mapping()], gidMappings=[_mapping()])
    ctr = cri.ContainerConfig(metadata=cri.ContainerMetadata(name="c"), image=cri.ImageSpec(image="i"),
                              command=["true"], mounts=[vol], **_ctr_kw(userns))
    paths.user_ns = "/run/pin/user"
    spec = oci.container_spec(ctr, pod, {}, "c" * 64, "s" * 64, paths, "cgroupfs", "/dev/null")
    ns = {n["type"]: n for n in spec["linux"]["namespaces"]}
    assert ns["user"] == {"type": "user", "path": "/run/pin/user"}
    assert ns["network"] == {"type": "network", "path": "/run/pin/net"}
    assert spec["linux"]["uidMappings"] == want
    (m,) = [m for m in spec["mounts"] if m["destination"] == "/v"]
    assert m["uidMappings"] == want and m["gidMappings"] == want
    # no user namespace asked: none in either spec
    plain = cri.PodSandboxConfig(metadata=pod.metadata)
    sb = oci.sandbox_spec(plain, {"config": {"Entrypoint": ["/pause"]}}, "s" * 64, oci.PodPaths(), "cgroupfs")
    assert "user" not in {n["type"] for n in sb["linux"]["namespaces"]} and "uidMappings" not in sb["linux"]
