"""CRI config -> OCI spec (pure logic) and user resolution."""

from __future__ import annotations

import pytest

from pycri.oci import spec as s
from pycri.api import api_pb2 as cri
from pycri.errors import InvalidArgument
from pycri.oci.users import resolve

# a container's own cgroup namespace, on a cgroup v2 host (test_on_cgroup_v2_a_container_gets_... checks both)
_OWN_CGROUPNS = {"cgroup": None} if s.host_cgroup_v2() else {}

IMAGE = {"config": {"Entrypoint": ["/entry"], "Cmd": ["default-arg"], "Env": ["PATH=/bin", "A=image"],
                    "WorkingDir": "/work"}}


def _container(**kw) -> cri.ContainerConfig:
    return cri.ContainerConfig(metadata=cri.ContainerMetadata(name="c"), image=cri.ImageSpec(image="busybox"), **kw)


def _sandbox(**kw) -> cri.PodSandboxConfig:
    return cri.PodSandboxConfig(metadata=cri.PodSandboxMetadata(name="p", namespace="ns", uid="u"), **kw)


PATHS = s.PodPaths(hostname="p", hosts_file="/pod/hosts", resolv_file="/pod/resolv.conf",
                   hostname_file="/pod/hostname", shm_dir="/pod/shm", net_ns="/run/pycri/ns/net-x",
                   ipc_ns="/proc/7/ns/ipc", uts_ns="/proc/7/ns/uts", pid_ns="/proc/7/ns/pid")


@pytest.mark.parametrize("command,args,expected", [
    ([], [], ["/entry", "default-arg"]),
    ([], ["x"], ["/entry", "x"]),
    (["/cmd"], [], ["/cmd"]),  # command drops the image Cmd
    (["/cmd"], ["y"], ["/cmd", "y"]),
])
def test_command_merge_follows_the_kubelet_rule(command, args, expected):
    assert s.merge_command(_container(command=command, args=args), IMAGE) == expected


def test_no_command_is_invalid():
    with pytest.raises(InvalidArgument, match="no command"):
        s.merge_command(_container(), {"config": {}})


def test_env_later_values_replace_earlier_ones_in_place():
    env = s.merge_env(["PATH=/bin", "A=1", "B=2"], [("A", "3"), ("C", "4")])
    assert env == ["PATH=/bin", "A=3", "B=2", "C=4"]
    assert s.merge_env([], [])[0].startswith("PATH=")


def test_capabilities_add_drop_all():
    sc = cri.LinuxContainerSecurityContext
    assert s.capabilities(None) == s.DEFAULT_CAPABILITIES
    caps = s.capabilities(sc(capabilities=cri.Capability(add_capabilities=["NET_ADMIN"],
                                                         drop_capabilities=["CAP_KILL"])))
    assert "CAP_NET_ADMIN" in caps and "CAP_KILL" not in caps
    assert s.capabilities(sc(capabilities=cri.Capability(drop_capabilities=["ALL"]))) == []
    assert s.capabilities(sc(capabilities=cri.Capability(add_capabilities=["CHOWN"], drop_capabilities=["ALL"]))) \
        == ["CAP_CHOWN"]
    assert s.capabilities(sc(capabilities=cri.Capability(add_capabilities=["ALL"]))) == s.ALL_CAPABILITIES
    assert s.capabilities(sc(privileged=True)) == s.ALL_CAPABILITIES
    with pytest.raises(InvalidArgument, match="unknown capability"):
        s.capabilities(sc(capabilities=cri.Capability(add_capabilities=["CAP_FLY"])))


def test_cgroups_path_per_driver():
    assert s.cgroups_path("cgroupfs", "/kubepods/burstable/podabc", "cid") == "/kubepods/burstable/podabc/cid"
    assert s.cgroups_path("systemd", "kubepods-burstable-podabc.slice", "cid") == \
        "kubepods-burstable-podabc.slice:pycri:cid"
    with pytest.raises(InvalidArgument):
        s.cgroups_path("systemd", "/kubepods/pod1", "cid")


def test_container_spec_joins_the_pod_namespaces(tmp_path):
    host_dir = tmp_path / "real"
    host_dir.mkdir()
    (tmp_path / "link").symlink_to(host_dir)
    config = _container(
        envs=[cri.KeyValue(key="A", value="ctr")], working_dir="",
        mounts=[cri.Mount(container_path="/data", host_path=str(tmp_path / "link"), readonly=True,
                          propagation=cri.MountPropagation.PROPAGATION_HOST_TO_CONTAINER),
                cri.Mount(container_path="/new", host_path=str(tmp_path / "made"))],
        linux=cri.LinuxContainerConfig(resources=cri.LinuxContainerResources(
            cpu_shares=512, cpu_quota=50000, cpu_period=100000, memory_limit_in_bytes=64 << 20,
            oom_score_adj=500)))
    sandbox = _sandbox(hostname="p", linux=cri.LinuxPodSandboxConfig(cgroup_parent="/kubepods/podu"))
    spec = s.container_spec(config, sandbox, IMAGE, "cid", "sid", PATHS, "cgroupfs", "/logs/c/0.log")
    ns = {n["type"]: n.get("path") for n in spec["linux"]["namespaces"]}
    assert ns == {"mount": None, "network": "/run/pycri/ns/net-x", "ipc": "/proc/7/ns/ipc",
                  "uts": "/proc/7/ns/uts", "pid": "/proc/7/ns/pid", **_OWN_CGROUPNS}
    assert spec["process"]["env"] == ["PATH=/bin", "A=ctr", "HOSTNAME=p"]
    assert spec["process"]["cwd"] == "/work"
    assert spec["process"]["oomScoreAdj"] == 500
    assert spec["linux"]["cgroupsPath"] == "/kubepods/podu/cid"
    assert spec["linux"]["resources"]["cpu"] == {"shares": 512, "quota": 50000, "period": 100000}
    assert spec["linux"]["resources"]["memory"] == {"limit": 64 << 20}
    data = next(m for m in spec["mounts"] if m["destination"] == "/data")
    assert data["source"] == str(host_dir) and data["options"] == ["rbind", "rslave", "ro"]
    assert (tmp_path / "made").is_dir()  # a missing host path is created, as containerd does
    shm = next(m for m in spec["mounts"] if m["destination"] == "/dev/shm")
    assert shm["source"] == "/pod/shm"
    assert spec["annotations"][s.ANN_LOG_PATH] == "/logs/c/0.log"
    assert spec["linux"]["maskedPaths"] == s.DEFAULT_MASKED_PATHS


def test_host_namespaces_and_privileged():
    opts = cri.NamespaceOption(network=cri.NamespaceMode.NODE, pid=cri.NamespaceMode.NODE,
                               ipc=cri.NamespaceMode.NODE)
    sc = cri.LinuxContainerSecurityContext(privileged=True, namespace_options=opts)
    sandbox = _sandbox(linux=cri.LinuxPodSandboxConfig(security_context=cri.LinuxSandboxSecurityContext(
        privileged=True, namespace_options=opts)))
    paths = s.PodPaths(shm_dir=None, net_ns=None, ipc_ns=None, uts_ns=None)
    spec = s.container_spec(_container(linux=cri.LinuxContainerConfig(security_context=sc)), sandbox, IMAGE,
                            "cid", "sid", paths, "cgroupfs", "/l")
    assert [n["type"] for n in spec["linux"]["namespaces"]] == ["mount"]
    assert "maskedPaths" not in spec["linux"]
    assert spec["process"]["capabilities"]["bounding"] == s.ALL_CAPABILITIES
    assert next(m for m in spec["mounts"] if m["destination"] == "/dev/shm")["source"] == "/dev/shm"


def test_privileged_container_needs_a_privileged_sandbox():
    sc = cri.LinuxContainerSecurityContext(privileged=True)
    with pytest.raises(InvalidArgument, match="privileged pod sandbox"):
        s.container_spec(_container(linux=cri.LinuxContainerConfig(security_context=sc)), _sandbox(), IMAGE,
                         "c", "s", PATHS, "cgroupfs", "/l")


def test_sandbox_spec():
    config = _sandbox(hostname="web-0", linux=cri.LinuxPodSandboxConfig(
        cgroup_parent="/kubepods/podu", sysctls={"net.ipv4.ip_unprivileged_port_start": "0",
                                                  "kernel.shm_rmid_forced": "1"}))
    spec = s.sandbox_spec(config, {"config": {"Entrypoint": ["/pause"]}}, "sid", PATHS, "cgroupfs")
    assert spec["process"]["args"] == ["/pause"]
    assert spec["hostname"] == "web-0"
    assert spec["root"]["readonly"] is True
    assert spec["linux"]["cgroupsPath"] == "/kubepods/podu/sid"
    ns = {n["type"]: n.get("path") for n in spec["linux"]["namespaces"]}
    assert ns == {"mount": None, "network": "/run/pycri/ns/net-x", "ipc": None, "uts": None, "pid": None,
                  **_OWN_CGROUPNS}
    assert spec["linux"]["sysctl"] == {"net.ipv4.ip_unprivileged_port_start": "0", "kernel.shm_rmid_forced": "1"}


@pytest.mark.parametrize("name,opts,message", [
    ("kernel.panic", cri.NamespaceOption(), "not namespaced"),
    ("net.core.somaxconn", cri.NamespaceOption(network=cri.NamespaceMode.NODE), "host network"),
    ("kernel.shmmax", cri.NamespaceOption(ipc=cri.NamespaceMode.NODE), "host IPC"),
])
def test_sysctls_are_validated(name, opts, message):
    with pytest.raises(InvalidArgument, match=message):
        s.validate_sysctls({name: "1"}, opts)


def _files(passwd: str, group: str):
    files = {"/etc/passwd": passwd.encode(), "/etc/group": group.encode()}
    return files.get


PASSWD = "root:x:0:0::/root:/bin/sh\nuser1:x:1000:1000::/home/u:/bin/sh\nwww-data:x:33:33::/var/www:/bin/sh\n"
GROUP = "root:x:0:\nuser1:x:1000:\ngroup50000:x:50000:user1\nwww-data:x:33:\n"


def test_user_resolution():
    read = _files(PASSWD, GROUP)
    assert resolve("", read).__dict__ == {"uid": 0, "gid": 0, "additional_gids": []}
    assert resolve("1000", read).__dict__ == {"uid": 1000, "gid": 1000, "additional_gids": [50000]}
    assert resolve("1000", read, merge_groups=False).additional_gids == []
    assert resolve("www-data", read).__dict__ == {"uid": 33, "gid": 33, "additional_gids": []}
    assert resolve("1003:1004", read).__dict__ == {"uid": 1003, "gid": 1004, "additional_gids": []}
    assert resolve("user1:www-data", read).gid == 33
    assert resolve("", read, uid=1000, supplemental=[7]).additional_gids == [50000, 7]
    with pytest.raises(InvalidArgument, match="not found"):
        resolve("nobody-here", read)


@pytest.mark.parametrize("name, dot_form, path", [
    ("net.ipv4.ip_forward", "net.ipv4.ip_forward", "/proc/sys/net/ipv4/ip_forward"),
    ("net/ipv4/ip_forward", "net.ipv4.ip_forward", "/proc/sys/net/ipv4/ip_forward"),
    # an interface name with a dot: the slash form keeps it, the dot form writes it as a slash (kubelet, sysctl.d)
    ("net/ipv4/conf/eth0.100/forwarding", "net.ipv4.conf.eth0/100.forwarding",
     "/proc/sys/net/ipv4/conf/eth0.100/forwarding"),
    ("net.ipv4.conf.eth0/100.forwarding", "net.ipv4.conf.eth0/100.forwarding",
     "/proc/sys/net/ipv4/conf/eth0.100/forwarding"),
])
def test_sysctl_names_in_either_form(name, dot_form, path):
    from runtime.launch.rootfs import sysctl_path
    assert s.sysctl_dot_form(name) == dot_form
    assert sysctl_path(name) == sysctl_path(dot_form) == path


@pytest.mark.parametrize("bad", ["", "net..ipv4", "net/../../etc", "net.ipv4.", "/net/ipv4"])
def test_bad_sysctl_paths_are_refused(bad):
    from runtime.launch.rootfs import sysctl_path
    with pytest.raises(ValueError):
        sysctl_path(bad)


def test_on_cgroup_v2_a_container_gets_a_cgroup_namespace_unless_privileged(monkeypatch, tmp_path):
    """containerd's rule: on a cgroup v2 host, non-privileged containers (and sandboxes) get a cgroup namespace of
    their own (their /sys/fs/cgroup is their cgroup, with their memory.max); privileged ones and v1 hosts keep
    the host's."""
    for v2 in (True, False):
        monkeypatch.setattr(s, "host_cgroup_v2", lambda v2=v2: v2)
        for privileged in (False, True):
            kinds = [n["type"] for n in s._namespaces(s.PodPaths(), new_pid=True, privileged=privileged)]
            assert ("cgroup" in kinds) == (v2 and not privileged), (v2, privileged, kinds)


def test_image_volumes_become_placeholders_in_their_place(tmp_path):
    """An image mount is checked and kept in its place among the volumes (sorted by depth as the others), for
    pycri/containers/imagevols.py to fill in; the rest stay as they were."""
    host = tmp_path / "host"
    host.mkdir()
    mounts = [cri.Mount(container_path="/data/x", host_path=str(host)),
              cri.Mount(container_path="/data", readonly=True, image=cri.ImageSpec(image="sha256:" + "a" * 64),
                        image_sub_path="sub/dir", recursive_read_only=True)]
    out = s.cri_mounts(mounts)
    assert out[0]["source"] == str(host) and s.IMAGE_VOLUME not in out[0]
    assert out[1] == {"destination": "/data", "type": "bind", "source": "",
                      "options": ["rbind", "rprivate", "ro", "nosuid", "nodev", "noexec", "rro"],
                      s.IMAGE_VOLUME: {"index": 1, "image": "sha256:" + "a" * 64, "subPath": "sub/dir"}}
    spec = s.container_spec(_container(mounts=mounts), _sandbox(), IMAGE, "cid", "sid", PATHS, "cgroupfs", "")
    assert [m["destination"] for m in spec["mounts"]][-2:] == ["/data", "/data/x"]


@pytest.mark.parametrize("kw,code,needle", [
    ({"host_path": "/tmp"}, "InvalidArgument", "host_path"),
    ({"readonly": False}, "InvalidArgument", "readonly"),
    ({"propagation": cri.PROPAGATION_BIDIRECTIONAL}, "InvalidArgument", "propagation"),
    ({"image_sub_path": "/abs"}, "InvalidArgument", "relative"),
    ({"image_sub_path": "a/../../b"}, "InvalidArgument", "relative"),
    ({"image_sub_path": "a\0b"}, "InvalidArgument", "NUL"),
    ({"uidMappings": [cri.IDMapping(length=1)], "gidMappings": [cri.IDMapping(length=1)]}, "FailedPrecondition",
     "idmapped"),
])
def test_image_volume_requests_are_checked(kw, code, needle):
    m = cri.Mount(container_path="/vol", image=cri.ImageSpec(image="img"), **{"readonly": True, **kw})
    with pytest.raises(Exception) as err:
        s.cri_mounts([m])
    assert type(err.value).__name__ == code and needle in str(err.value)
