"""Image volumes (CRI Mount.image and image_sub_path, KEP-4639), driven as the kubelet drives them: it pulls the
image itself and sends its id, with readonly set and no host_path."""

from __future__ import annotations

import concurrent.futures
import json
import os
import sqlite3
import subprocess

import grpc
import pytest

from pycri.api import api_pb2 as cri
from tests.lifecycle.conftest import pod_config
from tests.lifecycle.helpers import Kubelet
from tests.lifecycle.test_handlers import CGROUP_MANAGER, OCI_RUNTIMES

SLEEP = ["sleep", "3600"]


def image_id(kubelet, name: str) -> str:
    ref = kubelet.pull(name)
    return kubelet.img.ImageStatus(cri.ImageStatusRequest(image=cri.ImageSpec(image=ref))).image.id


def volume(image: str, path: str = "/vol", sub: str = "", **kw) -> cri.Mount:
    return cri.Mount(container_path=path, readonly=kw.pop("readonly", True), image=cri.ImageSpec(image=image),
                     image_sub_path=sub, **kw)


def pod_dir(kubelet, sid: str) -> str:
    info = kubelet.rt.PodSandboxStatus(cri.PodSandboxStatusRequest(pod_sandbox_id=sid, verbose=True)).info
    return json.loads(info["info"])["podDir"]


def host_volume_mounts(where: str) -> list[tuple[str, str, str]]:
    """(mount point, options, fstype) of the host's mounts under where/imagevols."""
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            pre, _, post = line.partition(" - ")
            p = pre.split()
            if p[4].startswith(os.path.join(where, "imagevols") + "/"):
                out.append((p[4], p[5], post.split()[0]))
    return out


def mount_options(kubelet, cid: str, path: str) -> set[str]:
    """The options of the container's mount at path (the last one there), as its mountinfo shows them."""
    info = kubelet.exec(cid, "cat", "/proc/self/mountinfo").stdout.decode()
    lines = [line.split() for line in info.splitlines() if line.split()[4] == path]
    assert lines, info
    return set(lines[-1][5].split(","))


def create_fails(kubelet, sid, pod, name, mounts, image="busybox", **kw) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        kubelet.create(sid, pod, name, image, command=SLEEP, mounts=mounts, **kw)
    return err.value


def listing(kubelet, cid: str, path: str) -> list[str]:
    return sorted(kubelet.exec(cid, "ls", "-a", path).stdout.decode().split())


def test_image_volume_mounted_ro_noexec(kubelet):
    sid, pod = kubelet.run_pod("iv")
    iid = image_id(kubelet, "multilayer")
    cid = kubelet.start(sid, pod, "c", command=SLEEP, mounts=[volume(iid)])
    assert kubelet.exec(cid, "cat", "/vol/data/keep").stdout == b"keep\n"
    assert kubelet.exec(cid, "cat", "/vol/data/dir/c").stdout == b"c\n"
    for gone in ("/vol/data/gone", "/vol/etc/motd", "/vol/data/dir/a"):  # whiteouts and the opaque dir
        assert kubelet.exec(cid, "test", "-e", gone).exit_code == 1, gone
    write = kubelet.exec(cid, "sh", "-c", "touch /vol/x")
    assert write.exit_code != 0 and b"Read-only file system" in write.stderr
    run = kubelet.exec(cid, "sh", "-c", "/vol/bin/busybox true; echo rc=$?")
    assert b"rc=126" in run.stdout and b"Permission denied" in run.stderr  # noexec: EACCES
    assert {"ro", "nosuid", "nodev", "noexec"} <= mount_options(kubelet, cid, "/vol")
    (status_mount,) = kubelet.status(cid).mounts
    assert status_mount.image.image == iid and status_mount.container_path == "/vol" and status_mount.readonly
    where = pod_dir(kubelet, sid)
    (host,) = host_volume_mounts(where)
    assert status_mount.host_path == host[0] == os.path.join(where, "imagevols", iid.split(":")[1])
    assert {"ro", "nosuid", "nodev", "noexec"} <= set(host[1].split(",")) and host[2] == "overlay"
    # ListContainers and the pod's removal: nothing left on the host
    kubelet.rt.StopPodSandbox(cri.StopPodSandboxRequest(pod_sandbox_id=sid))
    kubelet.rt.RemovePodSandbox(cri.RemovePodSandboxRequest(pod_sandbox_id=sid))
    assert host_volume_mounts(where) == [] and not os.path.exists(where)


def test_image_volume_by_name_and_recursive_read_only(kubelet):
    """The kubelet sends the id, but a name works too (as CRI-O and containerd resolve it); rro is honoured. A
    terminal container: the launcher's Python child binds it (the others go through pycri-init)."""
    sid, pod = kubelet.run_pod("iv")
    ref = kubelet.pull("multilayer")
    iid = image_id(kubelet, "multilayer")
    cid = kubelet.start(sid, pod, "c", command=SLEEP, mounts=[volume(ref, recursive_read_only=True)], tty=True)
    assert kubelet.exec(cid, "cat", "/vol/data/zstd").stdout == b"zstd\n"
    assert {"ro", "nosuid", "nodev", "noexec"} <= mount_options(kubelet, cid, "/vol")
    assert b"rc=126" in kubelet.exec(cid, "sh", "-c", "/vol/bin/busybox true; echo rc=$?").stdout
    assert kubelet.status(cid).mounts[0].image.image == iid  # the id it resolved to, not the name sent


def test_image_volume_sub_path(kubelet):
    sid, pod = kubelet.run_pod("iv")
    iid = image_id(kubelet, "multilayer")
    cid = kubelet.start(sid, pod, "c", command=SLEEP, mounts=[volume(iid, sub="data/dir"),
                                                              volume(iid, "/whole")])
    assert listing(kubelet, cid, "/vol") == [".", "..", "c"]  # the opaque dir's content only
    assert kubelet.exec(cid, "cat", "/vol/c").stdout == b"c\n"
    assert {"ro", "nosuid", "nodev", "noexec"} <= mount_options(kubelet, cid, "/vol")
    where = pod_dir(kubelet, sid)
    assert len(host_volume_mounts(where)) == 1  # one host mount for the image, however many binds of it
    sub_mount, whole = kubelet.status(cid).mounts
    assert sub_mount.host_path == os.path.join(where, "imagevols", iid.split(":")[1], "data", "dir")
    assert sub_mount.image_sub_path == "data/dir" and whole.host_path == host_volume_mounts(where)[0][0]


def test_image_volume_bad_sub_path_fails_and_leaves_nothing(kubelet):
    sid, pod = kubelet.run_pod("iv")
    iid = image_id(kubelet, "multilayer")
    where = pod_dir(kubelet, sid)
    for sub, what in (("nope", "does not exist"), ("data/keep", "is not a directory"),
                      ("data/nope/deeper", "does not exist")):
        err = create_fails(kubelet, sid, pod, "c", [volume(iid, sub=sub)])
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION, err.details()
        assert "ImageVolumeMountFailed" in err.details() and f"sub path {sub!r} {what}" in err.details()
        assert host_volume_mounts(where) == []
    assert kubelet.rt.ListContainers(cri.ListContainersRequest()).containers == []
    for bad in ("/data", "../data", "data/../../etc", "a\0b"):
        err = create_fails(kubelet, sid, pod, "c", [volume(iid, sub=bad)])
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, (bad, err.details())
    for mount, word in ((volume(iid, host_path="/tmp"), "host_path"), (volume(iid, readonly=False), "readonly"),
                        (volume(iid, propagation=cri.PROPAGATION_HOST_TO_CONTAINER), "propagation")):
        err = create_fails(kubelet, sid, pod, "c", [mount])
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and word in err.details(), err.details()
    assert host_volume_mounts(where) == []


def test_image_volume_sub_path_symlinks_stay_in_the_image(kubelet):
    """The image's content attacks: symlinks to the host's /etc and above the mount's root must resolve inside
    the image (RESOLVE_IN_ROOT), never to the host's files."""
    sid, pod = kubelet.run_pod("iv")
    iid = image_id(kubelet, "volattack")
    where = pod_dir(kubelet, sid)
    top = os.path.join(where, "imagevols", iid.split(":")[1])
    mounts = [volume(iid, "/abs", "to-etc"), volume(iid, "/rel", "data/escape"), volume(iid, "/up", "up"),
              volume(iid, "/upabs", "up/to-etc"), volume(iid, "/whole")]
    cid = kubelet.start(sid, pod, "c", command=SLEEP, mounts=mounts)
    for path in ("/abs", "/rel", "/upabs"):  # the image's /etc, not the host's (which has passwd, hostname...)
        assert listing(kubelet, cid, path) == [".", "..", "in-image"], path
        assert kubelet.exec(cid, "cat", f"{path}/in-image").stdout == b"image\n"
    assert listing(kubelet, cid, "/up") == listing(kubelet, cid, "/whole") == \
        [".", "..", "data", "etc", "loop", "to-etc", "up"]
    sources = {m.container_path: m.host_path for m in kubelet.status(cid).mounts}
    assert sources == {"/abs": f"{top}/etc", "/rel": f"{top}/etc", "/up": top, "/upabs": f"{top}/etc",
                       "/whole": top}
    err = create_fails(kubelet, sid, pod, "loop", [volume(iid, sub="loop")])
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION and "ImageVolumeMountFailed" in err.details()
    err = create_fails(kubelet, sid, pod, "file", [volume(iid, sub="up/data/file")])
    assert "is not a directory" in err.details()


def test_image_volume_image_missing(kubelet):
    sid, pod = kubelet.run_pod("iv")
    kubelet.pull("busybox")
    for ref in ("sha256:" + "0" * 64, kubelet.registry.ref("users")):  # never pulled: pycri does not pull it
        err = create_fails(kubelet, sid, pod, "c", [volume(ref)])
        assert err.code() == grpc.StatusCode.NOT_FOUND and "ImageVolumeMountFailed" in err.details(), err.details()
        assert "not found locally" in err.details()
    images = kubelet.img.ListImages(cri.ListImagesRequest()).images
    assert not any("users" in t for i in images for t in i.repo_tags)
    assert host_volume_mounts(pod_dir(kubelet, sid)) == []


def test_image_volume_blocks_removal_and_is_shared_across_a_restart(kubelet):
    sid, pod = kubelet.run_pod("iv")
    iid = image_id(kubelet, "multilayer")
    where = pod_dir(kubelet, sid)
    c1 = kubelet.start(sid, pod, "c1", command=SLEEP, mounts=[volume(iid)])
    c2 = kubelet.start(sid, pod, "c2", command=SLEEP, mounts=[volume(iid, sub="data")])
    (host,) = host_volume_mounts(where)  # one mount, both containers

    def remove_image():
        kubelet.img.RemoveImage(cri.RemoveImageRequest(image=cri.ImageSpec(image=iid)))

    def refused(cid):
        with pytest.raises(grpc.RpcError) as err:
            remove_image()
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION, err.value.details()
        assert "in use as a volume by container" in err.value.details() and cid in err.value.details()

    refused(c1)
    kubelet.d.restart()  # the count is the records': a restart keeps it
    kubelet.rt = kubelet.d.runtime
    kubelet.img = kubelet.d.image
    assert host_volume_mounts(where) == [host]
    assert kubelet.exec(c1, "cat", "/vol/data/keep").stdout == b"keep\n"
    assert kubelet.status(c2).mounts[0].image.image == iid
    refused(c1)
    kubelet.rt.StopContainer(cri.StopContainerRequest(container_id=c1, timeout=0))
    kubelet.rt.RemoveContainer(cri.RemoveContainerRequest(container_id=c1))
    assert host_volume_mounts(where) == [host]  # c2 still uses it
    assert kubelet.exec(c2, "cat", "/vol/keep").stdout == b"keep\n"
    refused(c2)
    kubelet.rt.RemoveContainer(cri.RemoveContainerRequest(container_id=c2))
    assert host_volume_mounts(where) == []
    remove_image()  # no container uses it any more
    assert kubelet.img.ImageStatus(cri.ImageStatusRequest(image=cri.ImageSpec(image=iid))).image.id == ""


def _mark_creating(daemon, cid: str) -> None:
    """Make a container's record what a crash inside its CreateContainer leaves: CREATING (the daemon is down)."""
    db = sqlite3.connect(str(daemon.root / "metadata.db"))
    try:
        (data,) = db.execute("SELECT data FROM containers WHERE id = ?", (cid,)).fetchone()
        record = json.loads(data)
        assert record["image_volumes"] and record["image_volumes"][0]["source"]
        record["state"] = "creating"
        db.execute("UPDATE containers SET data = ? WHERE id = ?", (json.dumps(record), cid))
        db.commit()
    finally:
        db.close()


def test_image_volume_of_a_create_cut_by_a_crash_is_undone_at_start(kubelet):
    """A CreateContainer cut by a crash after the mount: the start undoes the container and unmounts the volume
    unless another container of the pod still uses it."""
    sid, pod = kubelet.run_pod("iv")
    iid = image_id(kubelet, "multilayer")
    where = pod_dir(kubelet, sid)
    c1 = kubelet.start(sid, pod, "c1", command=SLEEP, mounts=[volume(iid)])
    c2 = kubelet.create(sid, pod, "c2", command=SLEEP, mounts=[volume(iid, sub="data")])
    kubelet.d.kill()
    _mark_creating(kubelet.d, c2)
    kubelet.d.start()
    kubelet.rt, kubelet.img = kubelet.d.runtime, kubelet.d.image
    assert [c.id for c in kubelet.rt.ListContainers(cri.ListContainersRequest()).containers] == [c1]
    assert len(host_volume_mounts(where)) == 1  # c1's
    assert kubelet.exec(c1, "cat", "/vol/data/keep").stdout == b"keep\n"
    kubelet.rt.StopContainer(cri.StopContainerRequest(container_id=c1, timeout=0))
    kubelet.rt.RemoveContainer(cri.RemoveContainerRequest(container_id=c1))
    assert host_volume_mounts(where) == []
    c3 = kubelet.create(sid, pod, "c3", command=SLEEP, mounts=[volume(iid)])  # the only user, this time
    assert len(host_volume_mounts(where)) == 1
    kubelet.d.kill()
    _mark_creating(kubelet.d, c3)
    kubelet.d.start()
    kubelet.rt, kubelet.img = kubelet.d.runtime, kubelet.d.image
    assert kubelet.rt.ListContainers(cri.ListContainersRequest()).containers == []
    assert host_volume_mounts(where) == []
    kubelet.img.RemoveImage(cri.RemoveImageRequest(image=cri.ImageSpec(image=iid)))


def test_image_volume_left_mounted_by_a_crash_is_unmounted_at_start(kubelet):
    """A mount no container record names (a crash between an unmount and the record's deletion, or between a
    mount and a failed create's undo) goes at the next start; the named ones stay."""
    sid, pod = kubelet.run_pod("iv")
    iid = image_id(kubelet, "multilayer")
    where = pod_dir(kubelet, sid)
    cid = kubelet.start(sid, pod, "c", command=SLEEP, mounts=[volume(iid)])
    kubelet.d.kill()
    stray = os.path.join(where, "imagevols", "f" * 64)
    os.makedirs(stray)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "stray", stray], check=True)
    try:
        kubelet.d.start()
        kubelet.rt = kubelet.d.runtime
        assert [m[0] for m in host_volume_mounts(where)] == [os.path.join(where, "imagevols", iid.split(":")[1])]
        assert not os.path.exists(stray)
        assert kubelet.exec(cid, "cat", "/vol/data/keep").stdout == b"keep\n"
    finally:
        if os.path.ismount(stray):
            subprocess.run(["umount", "-l", stray])


@pytest.mark.parametrize("handler", ["runc", "crun"])
def test_image_volume_under_an_oci_runtime(daemon_factory, registry, tmp_path, handler):
    """runc and crun bind the same host mount, with the same options, as the built-in launcher."""
    if not os.access(OCI_RUNTIMES[handler], os.X_OK):
        pytest.skip(f"{OCI_RUNTIMES[handler]} is not installed (make deps)")
    overrides = {"sandbox_image": registry.ref("pause"), f'registries."{registry.host}"': {"insecure": True},
                 f"runtimes.{handler}": {"type": "oci", "path": OCI_RUNTIMES[handler],
                                         **CGROUP_MANAGER.get(handler, {})}}
    kubelet = Kubelet(daemon_factory(overrides, network=True), registry, tmp_path)
    iid = image_id(kubelet, "multilayer")
    config = pod_config("iv", log_dir=str(tmp_path))
    sid = kubelet.rt.RunPodSandbox(cri.RunPodSandboxRequest(config=config, runtime_handler=handler),
                                   timeout=120).pod_sandbox_id
    cid = kubelet.start(sid, config, "c", command=SLEEP, mounts=[volume(iid, sub="data")])
    assert kubelet.exec(cid, "cat", "/vol/keep").stdout == b"keep\n"
    assert kubelet.exec(cid, "test", "-e", "/vol/gone").exit_code == 1
    assert {"ro", "nosuid", "nodev", "noexec"} <= mount_options(kubelet, cid, "/vol")
    assert kubelet.exec(cid, "sh", "-c", "touch /vol/x").exit_code != 0
    where = pod_dir(kubelet, sid)
    kubelet.rt.StopPodSandbox(cri.StopPodSandboxRequest(pod_sandbox_id=sid))
    kubelet.rt.RemovePodSandbox(cri.RemovePodSandboxRequest(pod_sandbox_id=sid))
    assert host_volume_mounts(where) == []


def test_image_volume_in_a_user_namespaced_pod_is_refused(kubelet, pod_daemon):
    """Not yet: the bind would need an idmapping into the pod's user namespace. A clear FAILED_PRECONDITION."""
    from runtime.launch.userns import supported
    if not supported():
        pytest.skip("no user namespaces with idmapped mounts on this kernel")
    ids = [cri.IDMapping(host_id=1_000_000, container_id=0, length=65536)]
    opts = cri.NamespaceOption(userns_options=cri.UserNamespace(mode=cri.NamespaceMode.POD, uids=ids, gids=ids))
    mode = pod_daemon.workdir.stat().st_mode & 0o777
    os.chmod(pod_daemon.workdir, 0o711)  # the mapped root reaches its rootfs (as tests/security/test_userns.py)
    try:
        sid, pod = kubelet.run_pod("iv", linux=cri.LinuxPodSandboxConfig(
            security_context=cri.LinuxSandboxSecurityContext(namespace_options=opts)))
        iid = image_id(kubelet, "multilayer")
        err = create_fails(kubelet, sid, pod, "c", [volume(iid)], linux=cri.LinuxContainerConfig(
            security_context=cri.LinuxContainerSecurityContext(namespace_options=opts)))  # (as the kubelet)
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION and "user-namespaced" in err.details()
        assert host_volume_mounts(pod_dir(kubelet, sid)) == []
    finally:
        os.chmod(pod_daemon.workdir, mode)


def test_image_volume_concurrent_creates_and_removals_share_one_mount(kubelet):
    """Containers of one pod created, and removed, at the same time: one host mount, made once, gone with the last."""
    sid, pod = kubelet.run_pod("iv")
    iid = image_id(kubelet, "multilayer")
    kubelet.pull("busybox")
    where = pod_dir(kubelet, sid)
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        cids = list(pool.map(lambda n: kubelet.create(sid, pod, f"c{n}", command=SLEEP,
                                                      mounts=[volume(iid, sub="data" if n % 2 else "")]),
                             range(6)))
        assert len(host_volume_mounts(where)) == 1
        list(pool.map(lambda cid: kubelet.rt.StartContainer(cri.StartContainerRequest(container_id=cid)), cids))
        assert kubelet.exec(cids[1], "cat", "/vol/keep").stdout == b"keep\n"
        list(pool.map(lambda cid: kubelet.rt.RemoveContainer(cri.RemoveContainerRequest(container_id=cid)), cids))
    assert host_volume_mounts(where) == []
    assert len(kubelet.d.log_events()) and sum(e.get("event") == "image volume mounted"
                                               for e in kubelet.d.log_events()) == 1
