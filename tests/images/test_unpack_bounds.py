"""Bounds on what an image unpacks to, through the real daemon: a decompression bomb, too many entries and a disk
running out of room fail the pull with RESOURCE_EXHAUSTED and leave no snapshot; sparse files stay sparse."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import os
import subprocess
from pathlib import Path

import grpc
import pytest

from pycri.api import api_pb2 as cri
from pycri.config import ImagesConfig
from pycri.images import ImageTooLarge
from tests.fixtures.daemon import DaemonProcess
from tests.fuzz.tarbuild import build, gnu_sparse

from .conftest import open_manager
from .test_pull import push_image
from .test_unpack import entry, make_tar, zeros_layer

MiB, GiB = 1 << 20, 1 << 30


def pull(d: DaemonProcess, ref: str) -> str:
    return d.image.PullImage(cri.PullImageRequest(image=cri.ImageSpec(image=ref)), timeout=180).image_ref


def refused(d: DaemonProcess, ref: str, *words: str) -> str:
    """Pull `ref`, which must fail with RESOURCE_EXHAUSTED naming one of `words`; the status's details."""
    with pytest.raises(grpc.RpcError) as err:
        pull(d, ref)
    details = err.value.details() or ""
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, (err.value.code(), details)
    assert any(w in details for w in words) and "Traceback" not in details, details
    return details


def assert_nothing_left(d: DaemonProcess, ref: str) -> None:
    """No image, no snapshot dir (finished, partial or temp), and a log line naming the image."""
    assert not d.image.ListImages(cri.ListImagesRequest(), timeout=30).images
    assert os.listdir(d.root / "snapshots") == []
    failed = [e for e in d.log_events() if e.get("event") == "pull failed"]
    assert failed and failed[-1]["image"] == ref and failed[-1]["level"] == "warning", failed


def test_an_image_unpacking_past_its_bounds_is_refused_and_leaves_nothing(daemon_factory, registry):
    d = daemon_factory({"images": {"max_unpacked_bytes": 64 * MiB, "max_entries": 1000},
                        f'registries."{registry.host}"': {"insecure": True}})
    good = gzip.compress(make_tar(entry("ok", data=b"fine")))
    bomb, bomb_diff = zeros_layer("bomb", 256 * MiB)  # ~250 KiB of gzip
    good_diff = "sha256:" + hashlib.sha256(gzip.decompress(good)).hexdigest()
    push_image(registry, "pycri-test/bomb", [good, bomb], diff_ids=[good_diff, bomb_diff])
    ref = f"{registry.host}/pycri-test/bomb:latest"
    refused(d, ref, "max_unpacked_bytes")
    assert_nothing_left(d, ref)  # the small layer finished beside the bomb: it went too

    many = gzip.compress(build([("file", f"f{n}", b"", {}) for n in range(1200)]))
    push_image(registry, "pycri-test/many", [good, many])
    ref = f"{registry.host}/pycri-test/many:latest"
    refused(d, ref, "max_entries")
    assert_nothing_left(d, ref)

    # the bounds hold for the image, not per layer: 700 entries twice is over 1000
    half = gzip.compress(build([("file", f"g{n}", b"", {}) for n in range(700)]))
    half2 = gzip.compress(build([("file", f"h{n}", b"", {}) for n in range(700)]))
    push_image(registry, "pycri-test/halves", [half, half2])
    refused(d, f"{registry.host}/pycri-test/halves:latest", "max_entries")
    assert os.listdir(d.root / "snapshots") == []

    # an image within them pulls; so does one sharing a layer with a refused one
    pull(d, registry.ref("busybox"))
    push_image(registry, "pycri-test/half", [half])
    pull(d, f"{registry.host}/pycri-test/half:latest")
    assert len(d.image.ListImages(cri.ListImagesRequest(), timeout=30).images) == 2
    d.restart()
    assert len(d.image.ListImages(cri.ListImagesRequest(), timeout=30).images) == 2


def _mount_tmpfs(path: Path, size: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0711", "tmpfs", str(path)], check=True)


@pytest.fixture
def small_root(daemon_factory, registry):
    """A daemon whose root dir is a 128 MiB tmpfs, with a 48 MiB reserve of free space (unmounted after)."""
    d = daemon_factory({"images": {"min_free_bytes": 48 * MiB},
                        f'registries."{registry.host}"': {"insecure": True}}, start=False)
    _mount_tmpfs(d.root, "128m")
    try:
        yield d.start()
    finally:
        d.stop()
        subprocess.run(["umount", "-l", str(d.root)], capture_output=True)


def test_a_disk_running_out_of_room_stops_the_unpack_and_sparse_files_take_none(small_root, registry):
    d = small_root
    # 4 GiB of apparent size in 12 KiB of data: on a 128 MiB disk it unpacks, sparse
    blocks = [(4096, b"a" * 4096), (GiB, b"b" * 512), (4 * GiB - 4096, b"c" * 4096)]
    push_image(registry, "pycri-test/sparse", [gzip.compress(gnu_sparse("big", 4 * GiB, blocks))])
    pull(d, f"{registry.host}/pycri-test/sparse:latest")
    [snapshot] = os.listdir(d.root / "snapshots")
    big = d.root / "snapshots" / snapshot / "fs" / "big"
    st = os.stat(big)
    assert st.st_size == 4 * GiB and st.st_blocks * 512 <= 64 * 1024, (st.st_size, st.st_blocks)
    with open(big, "rb") as f:
        for offset, chunk in blocks:
            f.seek(offset)
            assert f.read(len(chunk)) == chunk

    # 112 MiB of zeros: it would fit, but not with 48 MiB left over
    bomb, bomb_diff = zeros_layer("zeros", 112 * MiB)
    push_image(registry, "pycri-test/zeros", [bomb], diff_ids=[bomb_diff])
    ref = f"{registry.host}/pycri-test/zeros:latest"
    details = refused(d, ref, "bytes free")
    assert "images.min_free_bytes" in details
    failed = [e for e in d.log_events() if e.get("event") == "pull failed"]
    assert failed and failed[-1]["image"] == ref
    assert os.listdir(d.root / "snapshots") == [snapshot]
    stv = os.statvfs(d.root)
    assert stv.f_bavail * stv.f_frsize > 100 * MiB  # what the refused layer had written is gone


def test_a_full_disk_during_an_unpack_is_resource_exhausted(tmp_path, registry):
    """With no reserve configured, ENOSPC in the middle of a layer is still a bound, not an internal error."""
    root = tmp_path / "root"
    _mount_tmpfs(root, "32m")
    try:
        bomb, bomb_diff = zeros_layer("zeros", 64 * MiB)
        push_image(registry, "pycri-test/zeros64", [bomb], diff_ids=[bomb_diff])

        async def main():
            async with open_manager(root, images=ImagesConfig(min_free_bytes=0),
                                    registries={registry.host: {"insecure": True}}) as m:
                with pytest.raises(ImageTooLarge, match="No space left on device"):
                    await m.pull(f"{registry.host}/pycri-test/zeros64:latest")
                assert os.listdir(root / "snapshots") == []

        asyncio.run(main())
    finally:
        subprocess.run(["umount", "-l", str(root)], capture_output=True)
