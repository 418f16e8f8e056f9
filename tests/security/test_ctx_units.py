"""Unit tests (no daemon, no mounts) for the security-context pieces: mount options, mountinfo reading, spec."""

from __future__ import annotations

import os

import pytest

from runtime.host import mountinfo
from pycri.api import api_pb2 as cri
from pycri.oci.spec import PodPaths, container_spec, host_devices
from runtime.host import linux
from runtime.launch.rootfs import parse_options, parse_recursive

P = cri.MountPropagation


def test_recursive_options_are_not_fs_data():
    flags, props, data = parse_options(["rbind", "rprivate", "ro", "rro", "rnosuid", "size=1m"])
    assert data == "size=1m"
    assert flags & linux.MS_RDONLY and flags & linux.MS_REC
    assert parse_recursive(["rbind", "ro", "rro"]) == (linux.MOUNT_ATTR_RDONLY, 0)
    assert parse_recursive(["rro", "rnoexec", "rrw"]) == (linux.MOUNT_ATTR_NOEXEC, linux.MOUNT_ATTR_RDONLY)
    assert parse_recursive(["rbind", "ro"]) == (0, 0)


MOUNTINFO = """\
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw
42 27 254:0 /run/netns /run/netns rw,relatime shared:1 - ext4 /dev/vda rw
50 27 0:60 / /srv/data rw,relatime master:3 - tmpfs tmpfs rw
51 27 0:61 / /srv/with\\040space rw,relatime shared:7 master:3 - tmpfs tmpfs rw
52 50 0:62 / /srv/data rw,relatime - tmpfs tmpfs rw
"""


def test_mountinfo_holding(tmp_path):
    path = tmp_path / "mountinfo"
    path.write_text(MOUNTINFO)
    table = mountinfo.read(str(path))
    root = mountinfo.holding("/tmp/x", table)
    assert root.mount_point == "/" and not root.shared and not root.slave
    netns = mountinfo.holding("/run/netns/foo", table)
    assert netns.mount_point == "/run/netns" and netns.shared
    spaced = mountinfo.holding("/srv/with space/a", table)
    assert spaced.mount_point == "/srv/with space" and spaced.shared and spaced.slave
    # a stack at one mount point: the topmost (the last listed) holds the path
    top = mountinfo.holding("/srv/data/a", table)
    assert top.mount_point == "/srv/data" and not top.slave
    assert mountinfo.holding("/srv/database", table).mount_point == "/"


def _spec(mounts=(), **sc) -> dict:
    config = cri.ContainerConfig(metadata=cri.ContainerMetadata(name="c"), image=cri.ImageSpec(image="i"),
                                 command=["true"], mounts=list(mounts),
                                 linux=cri.LinuxContainerConfig(security_context=cri.LinuxContainerSecurityContext(
                                     **sc)))
    pod = cri.PodSandboxConfig(metadata=cri.PodSandboxMetadata(name="p", namespace="n", uid="u"), linux=(
        cri.LinuxPodSandboxConfig(security_context=cri.LinuxSandboxSecurityContext(privileged=bool(
            sc.get("privileged"))))))
    return container_spec(config, pod, {}, "cid", "sid", PodPaths(), "cgroupfs", "")


def test_rootfs_propagation_follows_the_volumes(tmp_path):
    def vol(dest, prop, **kw):
        return cri.Mount(container_path=dest, host_path=str(tmp_path), propagation=prop, **kw)

    assert "rootfsPropagation" not in _spec([vol("/a", P.PROPAGATION_PRIVATE)])["linux"]
    assert _spec([vol("/a", P.PROPAGATION_HOST_TO_CONTAINER)])["linux"]["rootfsPropagation"] == "rslave"
    spec = _spec([vol("/a", P.PROPAGATION_HOST_TO_CONTAINER), vol("/b", P.PROPAGATION_BIDIRECTIONAL)])
    assert spec["linux"]["rootfsPropagation"] == "rshared"
    options = {m["destination"]: m["options"] for m in _spec([vol("/ro", P.PROPAGATION_PRIVATE, readonly=True,
                                                                   recursive_read_only=True)])["mounts"]}
    assert options["/ro"] == ["rbind", "rprivate", "ro", "rro"]


def test_privileged_gets_host_devices_but_not_ptmx_or_console():
    spec = _spec(privileged=True)
    paths = {d["path"] for d in spec["linux"]["devices"]}
    assert "/dev/null" in paths and "/dev/ptmx" not in paths and "/dev/console" not in paths
    assert {d["path"] for d in host_devices()} == paths
    assert spec["linux"]["resources"]["devices"] == [{"allow": True, "access": "rwm"}]
    assert "maskedPaths" not in spec["linux"] and "readonlyPaths" not in spec["linux"]
    assert _spec()["linux"]["devices"] == []
    assert all(not p.startswith("/dev/pts/") for p in paths) and os.path.exists("/dev/null")


def test_rro_without_mount_setattr_fails_clearly(monkeypatch):
    from runtime.launch import rootfs

    def enosys(path, attr_set, attr_clr=0):
        raise OSError(38, "mount_setattr: Function not implemented")
    monkeypatch.setattr(rootfs.linux, "mount_setattr_recursive", enosys)
    with pytest.raises(OSError, match="need mount_setattr"):
        rootfs._set_recursive("/data", linux.MOUNT_ATTR_RDONLY, 0)
