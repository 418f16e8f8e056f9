"""ImageFsInfo as the kubelet's eviction manager reads it: 1.29-1.31 decide that images and writable layers are
on separate disks by comparing the two mountpoint strings, and take a split they cannot handle (or, with
KubeletSeparateDiskGC off, evict nothing at all) when they differ. One file system is one answer in both lists
(as CRI-O gives); a `<root>/containers` on a device of its own is reported as a file system of its own."""

from __future__ import annotations

import subprocess

from pycri.api import api_pb2 as cri
from tests.lifecycle.helpers import Kubelet

WRITE_3M = ["sh", "-c", "dd if=/dev/zero of=/big bs=1M count=3 && touch /written; sleep 3600"]


def _layer_fs_ids(k: Kubelet) -> list[str]:
    return [s.writable_layer.fs_id.mountpoint for s in k.rt.ListContainerStats(cri.ListContainerStatsRequest()).stats]


def test_one_file_system_is_one_answer_in_both_lists(kubelet):
    before = kubelet.img.ImageFsInfo(cri.ImageFsInfoRequest())
    assert list(before.container_filesystems) == list(before.image_filesystems)
    sid, pod = kubelet.run_pod("onefs")
    cid = kubelet.start(sid, pod, "c", command=WRITE_3M)
    kubelet.until(lambda: kubelet.exec(cid, "ls", "/written").exit_code == 0, what="file written")
    busybox = kubelet.img.ImageStatus(cri.ImageStatusRequest(image=cri.ImageSpec(image=kubelet.pull("busybox"))))
    # the layer's 3 MiB with the image's blobs (its size) and snapshot; the walk of the writable layers is cached
    # for 10 s (pycri/stats/collect.py FS_USAGE_TTL)
    info = kubelet.until(lambda: (i := kubelet.img.ImageFsInfo(cri.ImageFsInfoRequest())).image_filesystems[0]
                         .used_bytes.value >= (3 << 20) + busybox.image.size and i, timeout=30,
                         what="the layer's 3 MiB counted with the images")
    assert len(info.image_filesystems) == len(info.container_filesystems) == 1
    images, containers = info.image_filesystems[0], info.container_filesystems[0]
    assert images == containers  # byte-identical: the kubelet compares the mountpoints
    assert images.fs_id.mountpoint == str(kubelet.d.root)
    assert _layer_fs_ids(kubelet) == [str(kubelet.d.root)]


def test_containers_on_their_own_device_are_a_file_system_of_their_own(daemon_factory, registry, tmp_path):
    d = daemon_factory({"sandbox_image": registry.ref("pause"), f'registries."{registry.host}"': {"insecure": True}},
                       network=True, start=False)
    layers = d.root / "containers"
    layers.mkdir(parents=True, mode=0o700)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m,mode=0700", "pycri-test-layers", str(layers)],
                   check=True)
    try:
        d.start()
        assert any(e.get("event") == "writable layers on another file system than the images"
                   for e in d.log_events())
        logs = tmp_path / "logs"
        logs.mkdir()
        k = Kubelet(d, registry, logs)
        empty = k.img.ImageFsInfo(cri.ImageFsInfoRequest()).container_filesystems
        assert [(fs.fs_id.mountpoint, fs.used_bytes.value) for fs in empty] == [(str(layers), 0)]
        sid, pod = k.run_pod("twofs")
        cid = k.start(sid, pod, "c", command=WRITE_3M)
        k.until(lambda: k.exec(cid, "ls", "/written").exit_code == 0, what="file written")
        assert _layer_fs_ids(k) == [str(layers)]
        # the walk of the writable layers is cached for 10 s (pycri/stats/collect.py FS_USAGE_TTL)
        info = k.until(lambda: (i := k.img.ImageFsInfo(cri.ImageFsInfoRequest())).container_filesystems[0]
                       .used_bytes.value >= 3 << 20 and i, timeout=30, what="the layer's 3 MiB counted")
        images, containers = info.image_filesystems[0], info.container_filesystems[0]
        assert images.fs_id.mountpoint == str(d.root) and containers.fs_id.mountpoint == str(layers)
        assert containers.used_bytes.value < 4 << 20  # the layer alone: busybox's blobs and snapshot are not in it
    finally:
        d.remove_all_pods()
        d.stop()
        subprocess.run(["umount", str(layers)], check=True)
