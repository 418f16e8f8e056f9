"""Trees far deeper than Python's recursion limit (and than PATH_MAX): a container that digs one in its writable
layer, an image whose layer is one, and leftovers of both at start-up. Stats, removal and start-up work at any
depth; a removal that leaves files behind is an error, never an OK (issue #21)."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import time

import grpc
import pytest

from pycri.api import api_pb2 as cri
from runtime.host import linux
from tests.fuzz.tarbuild import build
from tests.images.test_pull import push_image

_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC

# /t1500: mkdir d && cd d, 1,500 times (as in the issue); /t5000: made from the bottom up (mkdir e, mv d e/, mv e d),
# since busybox's cd fails once the path it keeps passes PATH_MAX. A file at the bottom of each.
DIG_1500 = ("mkdir /t1500 && cd /t1500 || exit 1; i=0; while [ $i -lt 1500 ]; do mkdir d && cd d || exit 1; "
            "i=$((i+1)); done; echo x > f; ")
DIG_5000 = ("mkdir /t5000 && cd /t5000 && mkdir d && echo x > d/f || exit 1; i=1; "
            "while [ $i -lt 5000 ]; do mkdir e && mv d e/ && mv e d || exit 1; i=$((i+1)); done; ")
DIG = DIG_1500 + DIG_5000 + "touch /done; exec sleep 3600"
DUG = 2 + 1_500 + 5_000 + 2 + 1  # /t1500 /t5000, the d's, the two f's, /done


def make_deep(top, depth: int) -> None:
    """top/d/.../d, depth levels (top is made), through fds: no path of that length could be used."""
    os.makedirs(top)
    fd = os.open(top, _DIR)
    try:
        for _ in range(depth):
            os.mkdir("d", dir_fd=fd)
            nfd = os.open("d", _DIR, dir_fd=fd)
            os.close(fd)
            fd = nfd
    finally:
        os.close(fd)


def du(path) -> tuple[int, int]:
    """(bytes, entries) below path as GNU du counts them (fts: any depth), the top itself taken out."""
    top = os.lstat(path)
    used = int(subprocess.run(["du", "-sxB1", str(path)], capture_output=True, text=True, check=True)
               .stdout.split()[0])
    inodes = int(subprocess.run(["du", "-sx", "--inodes", str(path)], capture_output=True, text=True, check=True)
                 .stdout.split()[0])
    return used - top.st_blocks * 512, inodes - 1


def test_a_container_digging_5000_deep_breaks_no_stats_removal_or_restart(kubelet, pod_daemon):
    d = pod_daemon
    sid, pod = kubelet.run_pod("deep")
    cid = kubelet.start(sid, pod, "digger", command=["sh", "-c", DIG])
    upper = d.root / "containers" / cid / "upper"
    kubelet.until(lambda: (upper / "done").exists(), timeout=300, what="the container's trees")
    used, inodes = du(upper)
    assert inodes >= DUG and used > 0

    stats = kubelet.rt.ContainerStats(cri.ContainerStatsRequest(container_id=cid), timeout=60).stats
    layer = stats.writable_layer
    assert (layer.used_bytes.value, layer.inodes_used.value) == (used, inodes)
    listed = kubelet.rt.ListContainerStats(cri.ListContainerStatsRequest(), timeout=60).stats
    assert [s.writable_layer.inodes_used.value for s in listed if s.attributes.id == cid] == [inodes]
    fs = kubelet.img.ImageFsInfo(cri.ImageFsInfoRequest(), timeout=60)
    assert fs.container_filesystems[0].inodes_used.value >= inodes
    assert fs.image_filesystems[0].inodes_used.value > 0

    kubelet.rt.StopContainer(cri.StopContainerRequest(container_id=cid, timeout=0), timeout=60)
    status = kubelet.rt.ContainerStatus(cri.ContainerStatusRequest(container_id=cid, verbose=True))
    bundle = json.loads(status.info["info"])["bundle"]
    kubelet.rt.RemoveContainer(cri.RemoveContainerRequest(container_id=cid), timeout=120)
    assert not (d.root / "containers" / cid).exists()  # gone when the answer is OK, not some time after
    assert bundle and not os.path.exists(bundle)
    d.restart()
    assert d.runtime.Version(cri.VersionRequest()).runtime_name == "pycri"
    assert not d.runtime.ListContainers(cri.ListContainersRequest()).containers


def test_a_layer_that_cannot_be_removed_fails_remove_container_and_a_retry_finishes(kubelet, pod_daemon):
    """A mount left inside a stopped container's writable layer (here a tmpfs 1,200 levels down): the layer is
    not emptied through it, RemoveContainer says so, the container stays listed; once it is unmounted the
    retried RemoveContainer removes it all."""
    d = pod_daemon
    sid, pod = kubelet.run_pod("stuck")
    cid = kubelet.start(sid, pod, "digger", command=["sh", "-c", DIG_1500 + "touch /done; exec sleep 3600"])
    upper = d.root / "containers" / cid / "upper"
    kubelet.until(lambda: (upper / "done").exists(), timeout=300, what="the container's trees")
    kubelet.rt.StopContainer(cri.StopContainerRequest(container_id=cid, timeout=0), timeout=60)
    fd = os.open(upper / "t1500", _DIR)
    for _ in range(1_200):
        nfd = os.open("d", _DIR, dir_fd=fd)
        os.close(fd)
        fd = nfd
    target = f"/proc/self/fd/{fd}/d"
    linux.mount("tmpfs", target, "tmpfs", 0, "size=1m")
    try:
        with open(f"{target}/keep", "w") as f:
            f.write("a mount's file\n")
        with pytest.raises(grpc.RpcError) as err:
            kubelet.rt.RemoveContainer(cri.RemoveContainerRequest(container_id=cid), timeout=120)
        assert err.value.code() == grpc.StatusCode.INTERNAL
        assert "could not be removed" in err.value.details() and "Traceback" not in err.value.details()
        assert os.path.exists(f"{target}/keep")  # not entered
        assert [c.id for c in kubelet.rt.ListContainers(cri.ListContainersRequest()).containers] == [cid]
        assert any(e.get("event") == "container files not removed" and e.get("container_id") == cid
                   for e in d.log_events())
    finally:
        linux.umount2(target)
        os.close(fd)
    kubelet.rt.RemoveContainer(cri.RemoveContainerRequest(container_id=cid), timeout=120)
    assert not (d.root / "containers" / cid).exists()
    assert not kubelet.rt.ListContainers(cri.ListContainersRequest()).containers


def test_a_3000_deep_image_layer_pulls_counts_and_removes(daemon_factory, registry):
    d = daemon_factory({f'registries."{registry.host}"': {"insecure": True}})
    deep = ["d"] * 3_000
    layer = build([("dir", "/".join(deep[:k]), None, {}) for k in range(1, 3_001)]
                  + [("file", "/".join(deep + ["bottom"]), b"deep\n", {})])
    push_image(registry, "pycri-test/deep", [gzip.compress(layer)])
    ref = f"{registry.host}/pycri-test/deep:latest"
    started = time.monotonic()
    d.image.PullImage(cri.PullImageRequest(image=cri.ImageSpec(image=ref)), timeout=300)
    pulled = time.monotonic() - started
    snapshots = [p for p in (d.root / "snapshots").iterdir() if p.name.isdigit()]
    assert len(snapshots) == 1
    fs = d.image.ImageFsInfo(cri.ImageFsInfoRequest(), timeout=60).image_filesystems[0]
    assert fs.inodes_used.value > 3_000
    d.image.RemoveImage(cri.RemoveImageRequest(image=cri.ImageSpec(image=ref)), timeout=120)
    assert not snapshots[0].exists()
    assert not [p for p in (d.root / "snapshots").iterdir()]
    print(f"pull of the 3,000-deep layer: {pulled:.1f} s")


def test_leftover_deep_trees_are_removed_at_start_and_one_that_cannot_be_does_not_stop_it(daemon):
    """What a crash leaves (an unrecorded writable layer and snapshot, an unfinished extraction), 5,000 deep: the
    next start removes them. One with a mount inside is logged and left; the daemon serves all the same, and the
    start after the unmount removes it."""
    d = daemon
    d.stop()
    layer = d.root / "containers" / ("ab" * 32)
    for top in (layer / "upper", d.root / "snapshots" / "999" / "fs", d.root / "snapshots" / "tmp-0123456789ab"):
        make_deep(top, 5_000)
    stuck = d.root / "containers" / ("cd" * 32)
    make_deep(stuck / "upper", 2_000)
    os.mkdir(stuck / "mnt")
    linux.mount("tmpfs", str(stuck / "mnt"), "tmpfs", 0, "size=1m")
    try:
        d.start(timeout=120)  # (17,000 levels to remove first: seconds on a busy machine)
        assert d.runtime.Version(cri.VersionRequest()).runtime_name == "pycri"
        assert not layer.exists()
        assert sorted(p.name for p in (d.root / "snapshots").iterdir()) == []
        assert (stuck / "mnt").is_dir() and not (stuck / "upper").exists()  # all but the mount point
        assert any(e.get("event") == "leftover writable layer not removed" and e.get("path") == str(stuck)
                   for e in d.log_events())
    finally:
        linux.umount2(str(stuck / "mnt"))
    d.restart()
    assert not stuck.exists()
