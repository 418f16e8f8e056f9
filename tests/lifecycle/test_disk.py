"""A full disk under the root dir, and a read-only state dir: requests fail with a clear status (no traceback),
nothing is corrupted, and the same requests succeed once space (or write access) returns."""

from __future__ import annotations

import contextlib
import errno
import os
import sqlite3
import subprocess
from pathlib import Path

import grpc
import pytest

from pycri.api import api_pb2 as cri
from tests.lifecycle.conftest import container_config, pod_config

CLEAR_CODES = {grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL}


def _mount_tmpfs(path: Path, size: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0711", "tmpfs", str(path)], check=True)


def _make_read_only(path: Path) -> None:
    """A read-only view of `path` over it: remounting the tmpfs itself read-only fails (EBUSY) while the daemon
    and monitors hold files open for writing, as on a real node whose disk turns read-only under them; a
    read-only recursive bind on top makes every new open through the path fail with EROFS."""
    subprocess.run(["mount", "--rbind", str(path), str(path)], check=True)
    # (where / is shared, as systemd makes it, the copies would be peers of the originals: an unmount in the
    # copy would take the original too)
    subprocess.run(["mount", "--make-rprivate", str(path)], check=True)
    subprocess.run(["mount", "-o", "remount,bind,ro", str(path)], check=True)


def _undo_read_only(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], check=True)  # the read-only bind on top, and its copies


def _umount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], capture_output=True)


def _fill(path: Path, leave: int = 0) -> Path:
    """Fill the filesystem of `path` with one file until ENOSPC (leaving about `leave` bytes)."""
    filler = path / "filler"
    chunk = b"\0" * (256 * 1024)
    with open(filler, "wb") as f:
        try:
            while True:
                st = os.statvfs(path)
                if st.f_bavail * st.f_frsize <= leave + len(chunk):
                    break
                f.write(chunk)
                f.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    # top up to the last page
    with open(filler, "ab") as f, contextlib.suppress(OSError):
        while os.statvfs(path).f_bavail * os.statvfs(path).f_frsize > leave:
            f.write(b"\0" * 4096)
            f.flush()
    return filler


def _integrity(db: Path) -> str:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return conn.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        conn.close()


def _clear(err: grpc.RpcError, *words: str) -> None:
    """A status a caller can act on: a clear code, a message naming the cause, no Python traceback."""
    assert err.code() in CLEAR_CODES, (err.code(), err.details())
    details = err.details() or ""
    print(f"{err.code().name}: {details}")  # shown with -s: the statuses a caller sees
    assert "Traceback" not in details and len(details) < 2000, details
    assert any(w in details.lower() for w in words), details


@pytest.fixture
def disk_daemon(daemon_factory, registry):
    """A daemon whose root dir is a 48 MiB tmpfs; its state dir is on that tmpfs too (one_disk) or is a tmpfs of
    its own. Unmounted after the test."""
    mounted: list[Path] = []
    made: list = []

    def make(one_disk: bool):
        overrides = {"sandbox_image": registry.ref("pause"), f'registries."{registry.host}"': {"insecure": True},
                     "images": {"min_free_bytes": 0}}  # (the default reserve is more than this whole disk)
        d = daemon_factory(overrides, start=False, network=True)
        if one_disk:  # the daemon's config is rewritten with the state dir inside the root's tmpfs
            from tests.fixtures.daemon import DaemonProcess

            state = d.root / "state"
            d2 = DaemonProcess.__new__(DaemonProcess)
            d2.__dict__.update(d.__dict__)
            overrides.update(state=str(state), listen=str(state / "pycri.sock"))
            DaemonProcess.__init__(d, d.workdir, overrides)
            d.bridge, d.ipam_dir = d2.bridge, d2.ipam_dir
            d.state, d.socket = state, state / "pycri.sock"
        _mount_tmpfs(d.root, "48m")
        mounted.append(d.root)
        if not one_disk:
            _mount_tmpfs(d.state, "16m")
            mounted.append(d.state)
        made.append(d)
        return d.start()

    yield make
    for d in made:
        with contextlib.suppress(Exception):
            for f in (d.root / "filler",):
                f.unlink(missing_ok=True)
            d.remove_all_pods()
        d.stop()
    for m in reversed(mounted):  # the pod's mounts (netns pins, shm) under the state dir went with the pods
        _umount(m)


def test_a_full_root_fails_pulls_and_creates_clearly_and_recovers(disk_daemon, registry, tmp_path):
    d = disk_daemon(one_disk=True)
    rt, img = d.runtime, d.image
    busybox = registry.ref("busybox")
    img.PullImage(cri.PullImageRequest(image=cri.ImageSpec(image=busybox)), timeout=120)
    pod = pod_config("full", log_dir=str(tmp_path / "logs"))
    sid = rt.RunPodSandbox(cri.RunPodSandboxRequest(config=pod), timeout=120).pod_sandbox_id
    first = rt.CreateContainer(cri.CreateContainerRequest(
        pod_sandbox_id=sid, config=container_config("before", busybox, ["sleep", "3600"]), sandbox_config=pod),
        timeout=60).container_id
    rt.StartContainer(cri.StartContainerRequest(container_id=first), timeout=60)

    filler = _fill(d.root)
    multilayer = registry.ref("multilayer")
    with pytest.raises(grpc.RpcError) as err:
        img.PullImage(cri.PullImageRequest(image=cri.ImageSpec(image=multilayer)), timeout=120)
    _clear(err.value, "no space left", "disk is full", "disk full")
    with pytest.raises(grpc.RpcError) as err:
        rt.CreateContainer(cri.CreateContainerRequest(
            pod_sandbox_id=sid, config=container_config("during", busybox, ["sleep", "3600"]), sandbox_config=pod),
            timeout=60)
    _clear(err.value, "no space left", "disk is full", "disk full")
    with pytest.raises(grpc.RpcError) as err:
        rt.RunPodSandbox(cri.RunPodSandboxRequest(config=pod_config("full2")), timeout=120)
    _clear(err.value, "no space left", "disk is full", "disk full")
    # what was there before still works and is listed; the failed requests left nothing visible
    assert rt.ExecSync(cri.ExecSyncRequest(container_id=first, cmd=["echo", "ok"], timeout=10),
                       timeout=40).stdout == b"ok\n"
    assert [c.id for c in rt.ListContainers(cri.ListContainersRequest()).containers] == [first]
    assert [s.id for s in rt.ListPodSandbox(cri.ListPodSandboxRequest()).items] == [sid]
    assert _integrity(d.root / "metadata.db") == "ok"

    filler.unlink()  # space returns: the same requests succeed, without a restart
    img.PullImage(cri.PullImageRequest(image=cri.ImageSpec(image=multilayer)), timeout=120)
    cid = rt.CreateContainer(cri.CreateContainerRequest(
        pod_sandbox_id=sid, config=container_config("during", busybox, ["sleep", "3600"]), sandbox_config=pod),
        timeout=60).container_id
    rt.StartContainer(cri.StartContainerRequest(container_id=cid), timeout=60)
    sid2 = rt.RunPodSandbox(cri.RunPodSandboxRequest(config=pod_config("full2")), timeout=120).pod_sandbox_id
    assert rt.PodSandboxStatus(cri.PodSandboxStatusRequest(pod_sandbox_id=sid2)).status.state == cri.SANDBOX_READY
    assert {i.id for i in img.ListImages(cri.ListImagesRequest()).images} >= {
        registry.config_digest("multilayer"), registry.config_digest("busybox")}
    d.restart()  # and a restart finds everything intact
    assert {c.id: c.state for c in d.runtime.ListContainers(cri.ListContainersRequest()).containers} == {
        first: cri.CONTAINER_RUNNING, cid: cri.CONTAINER_RUNNING}
    d.remove_all_pods()
    d.stop()
    assert _integrity(d.root / "metadata.db") == "ok"


def test_a_read_only_state_dir_fails_clearly_and_recovers(disk_daemon, registry, tmp_path):
    d = disk_daemon(one_disk=False)
    rt, img = d.runtime, d.image
    busybox = registry.ref("busybox")
    img.PullImage(cri.PullImageRequest(image=cri.ImageSpec(image=busybox)), timeout=120)
    pod = pod_config("ro", log_dir=str(tmp_path / "logs"))
    sid = rt.RunPodSandbox(cri.RunPodSandboxRequest(config=pod), timeout=120).pod_sandbox_id
    _make_read_only(d.state)
    try:
        ready = {c.type: c for c in rt.Status(cri.StatusRequest()).status.conditions}["RuntimeReady"]
        assert not ready.status and "not writable" in ready.message
        with pytest.raises(grpc.RpcError) as err:
            rt.RunPodSandbox(cri.RunPodSandboxRequest(config=pod_config("ro2")), timeout=120)
        _clear(err.value, "read-only")
        with pytest.raises(grpc.RpcError) as err:
            rt.CreateContainer(cri.CreateContainerRequest(
                pod_sandbox_id=sid, config=container_config("c", busybox, ["sleep", "3600"]), sandbox_config=pod),
                timeout=60)
        _clear(err.value, "read-only")
        assert [s.id for s in rt.ListPodSandbox(cri.ListPodSandboxRequest()).items] == [sid]
        assert not rt.ListContainers(cri.ListContainersRequest()).containers
    finally:
        _undo_read_only(d.state)
    assert {c.type: c for c in rt.Status(cri.StatusRequest()).status.conditions}["RuntimeReady"].status
    sid2 = rt.RunPodSandbox(cri.RunPodSandboxRequest(config=pod_config("ro2")), timeout=120).pod_sandbox_id
    cid = rt.CreateContainer(cri.CreateContainerRequest(
        pod_sandbox_id=sid, config=container_config("c", busybox, ["sleep", "3600"]), sandbox_config=pod),
        timeout=60).container_id
    rt.StartContainer(cri.StartContainerRequest(container_id=cid), timeout=60)
    assert rt.PodSandboxStatus(cri.PodSandboxStatusRequest(pod_sandbox_id=sid2)).status.state == cri.SANDBOX_READY
    d.remove_all_pods()
    d.stop()
    assert _integrity(d.root / "metadata.db") == "ok"
    assert not any((d.state / "p").iterdir())


def _mounts_under(*paths: Path) -> list[str]:
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    return [mp for mp in points for p in paths if mp == str(p) or mp.startswith(f"{p}/")]


def test_a_failed_teardown_step_does_not_skip_the_others(disk_daemon, registry, tmp_path):
    """StopPodSandbox with the state dir turned read-only: deleting the netns pin file fails (EROFS). The other
    steps still run (here: the /dev/shm unmount), the call fails clearly, the record stays, and the Stop and
    Remove retried once the disk is writable again finish the job and leave nothing behind."""
    d = disk_daemon(one_disk=False)
    rt = d.runtime
    sid = rt.RunPodSandbox(cri.RunPodSandboxRequest(config=pod_config("rostop", log_dir=str(tmp_path / "l"))),
                           timeout=120).pod_sandbox_id
    netns, shm = d.state / "ns" / sid[:16], d.state / "p" / sid[:16] / "shm"
    assert len(_mounts_under(shm)) == 1 and len(_mounts_under(netns)) == 1
    _make_read_only(d.state)  # a read-only copy of the state tree, its mounts included, on top
    try:
        assert len(_mounts_under(shm)) == 2
        with pytest.raises(grpc.RpcError) as err:
            rt.StopPodSandbox(cri.StopPodSandboxRequest(pod_sandbox_id=sid), timeout=120)
        assert len(_mounts_under(shm)) == 1, "the failed netns step stopped the teardown before /dev/shm"
        _clear(err.value, "read-only")
        assert "network namespace" in err.value.details()
        assert [s.id for s in rt.ListPodSandbox(cri.ListPodSandboxRequest()).items] == [sid]
    finally:
        _undo_read_only(d.state)
    rt.StopPodSandbox(cri.StopPodSandboxRequest(pod_sandbox_id=sid), timeout=120)
    rt.RemovePodSandbox(cri.RemovePodSandboxRequest(pod_sandbox_id=sid), timeout=120)
    assert not rt.ListPodSandbox(cri.ListPodSandboxRequest()).items
    assert not _mounts_under(d.state / "ns", d.state / "p") and not netns.exists() and not shm.parent.exists()
