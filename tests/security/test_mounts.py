"""Volumes: read-only vs recursive read-only, the CRI's rejection rules, and mount propagation both ways (with the
host side of it: sources made shared, and nothing left mounted afterwards)."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import grpc
import pytest

from pycri.api import api_pb2 as cri
from runtime.host.linux import mount_setattr_supported
from tests.security.ctx_helpers import (host_mount_tmpfs, host_umount_all, is_mount_point, privileged_pod_kw,
                                        run_to_exit, security)

P = cri.MountPropagation


def _vol(host: Path, dest: str, readonly=False, rro=False, propagation=P.PROPAGATION_PRIVATE) -> cri.Mount:
    return cri.Mount(container_path=dest, host_path=str(host), readonly=readonly, recursive_read_only=rro,
                     propagation=propagation)


WRITE_BOTH = ("touch /data/top && echo TOP ok || echo TOP failed; "
              "touch /data/sub/inner && echo SUB ok || echo SUB failed")


@pytest.fixture
def host_tree(pod_daemon):
    """A host dir with a tmpfs mounted below it (a submount), under the daemon's work dir (leak-checked)."""
    top = pod_daemon.workdir / "vol-src"
    host_mount_tmpfs(top / "sub")
    yield top
    host_umount_all(top / "sub")


def test_readonly_vs_recursive_readonly(kubelet, host_tree):
    sid, pod = kubelet.run_pod("rro")
    status, out = run_to_exit(kubelet, sid, pod, "rw", WRITE_BOTH, mounts=[_vol(host_tree, "/data")])
    assert "TOP ok" in out and "SUB ok" in out
    # readonly: the bind itself only; the submount keeps its own flags (runc's "rbind,ro")
    status, out = run_to_exit(kubelet, sid, pod, "ro", WRITE_BOTH, mounts=[_vol(host_tree, "/data", readonly=True)])
    assert "TOP failed" in out and "SUB ok" in out
    if not mount_setattr_supported():
        pytest.skip("no mount_setattr(2) on this kernel")
    status, out = run_to_exit(kubelet, sid, pod, "rro", WRITE_BOTH + "; grep ' /data' /proc/self/mountinfo",
                              mounts=[_vol(host_tree, "/data", readonly=True, rro=True)])
    assert "TOP failed" in out and "SUB failed" in out, out
    rows = [line.split() for line in out.splitlines() if " - " in line]  # the mountinfo lines
    opts = {f[4]: f[5] for f in rows if f[4].startswith("/data")}
    assert opts["/data"].startswith("ro") and opts["/data/sub"].startswith("ro")


def test_recursive_readonly_rules(kubelet, host_tree):
    sid, pod = kubelet.run_pod("rrorules")
    cases = {
        "rro-needs-readonly": _vol(host_tree, "/data", readonly=False, rro=True),
        "rro-needs-private": _vol(host_tree, "/data", readonly=True, rro=True,
                                  propagation=P.PROPAGATION_HOST_TO_CONTAINER),
        "rro-bidirectional": _vol(host_tree, "/data", readonly=True, rro=True,
                                  propagation=P.PROPAGATION_BIDIRECTIONAL),
    }
    for name, mount in cases.items():
        with pytest.raises(grpc.RpcError) as err:
            kubelet.create(sid, pod, name, command=["true"], mounts=[mount])
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, name
        assert "recursive_read_only" in err.value.details()


def test_status_advertises_recursive_read_only(kubelet):
    resp = kubelet.rt.Status(cri.StatusRequest())
    assert resp.runtime_handlers and resp.runtime_handlers[0].name == ""
    for handler in resp.runtime_handlers:
        assert handler.features.recursive_read_only_mounts is mount_setattr_supported()


def _exec_ok(kubelet, cid, script):
    r = kubelet.exec(cid, "sh", "-c", script)
    assert r.exit_code == 0, (r.stdout, r.stderr)
    return r.stdout.decode()


def _shared_state(pod_daemon) -> dict:
    path = Path(pod_daemon.state) / "shared-mounts.json"
    return json.loads(path.read_text()) if path.exists() else {}


def test_bidirectional(kubelet, pod_daemon):
    """A mount made inside a privileged container shows on the host; the source (a plain dir) is made a shared
    bind of itself for as long as a container uses it."""
    src = pod_daemon.workdir / "bidi"
    (src / "inner").mkdir(parents=True)
    assert not is_mount_point(src)
    sid, pod = kubelet.run_pod("bidi", **privileged_pod_kw())
    try:
        cid = kubelet.start(sid, pod, "bidi", command=["sleep", "3600"], linux=security(privileged=True),
                            mounts=[_vol(src, "/vol", propagation=P.PROPAGATION_BIDIRECTIONAL)])
        assert is_mount_point(src) and str(src) in _shared_state(pod_daemon)
        _exec_ok(kubelet, cid, "mount -t tmpfs -o size=1m tmpfs /vol/inner && echo hi > /vol/inner/f")
        kubelet.until(lambda: is_mount_point(src / "inner"), what="container mount seen on the host")
        assert (src / "inner" / "f").read_text() == "hi\n"
        _exec_ok(kubelet, cid, "umount /vol/inner")
        kubelet.until(lambda: not is_mount_point(src / "inner"), what="container umount seen on the host")
        kubelet.rt.RemoveContainer(cri.RemoveContainerRequest(container_id=cid))
        assert not is_mount_point(src) and str(src) not in _shared_state(pod_daemon)
    finally:
        host_umount_all(src / "inner")


def test_host_to_container_and_private(kubelet, pod_daemon):
    """rslave: a host mount made after the start shows inside; private: it does not, and the container's own
    mounts stay inside."""
    src = pod_daemon.workdir / "h2c"
    (src / "late").mkdir(parents=True)
    sid, pod = kubelet.run_pod("h2c", **privileged_pod_kw())
    try:
        slave = kubelet.start(sid, pod, "slave", command=["sleep", "3600"],
                              mounts=[_vol(src, "/vol", propagation=P.PROPAGATION_HOST_TO_CONTAINER)])
        private = kubelet.start(sid, pod, "private", command=["sleep", "3600"], linux=security(privileged=True),
                                mounts=[_vol(src, "/vol", propagation=P.PROPAGATION_PRIVATE)])
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(src / "late")], check=True)
        (src / "late" / "f").write_text("from host\n")
        assert _exec_ok(kubelet, slave, "cat /vol/late/f") == "from host\n"
        assert _exec_ok(kubelet, slave, "grep -c ' /vol/late ' /proc/self/mountinfo || true").strip() == "1"
        r = kubelet.exec(private, "cat", "/vol/late/f")
        assert r.exit_code != 0  # the host mount did not propagate into the private volume
        # and a mount inside the private one does not reach the host
        _exec_ok(kubelet, private, "mkdir -p /vol/mine && mount -t tmpfs -o size=1m tmpfs /vol/mine")
        time.sleep(0.2)
        assert not is_mount_point(src / "mine")
        # a slave does not send: the non-privileged container cannot mount anyway, so check it is a slave
        info = _exec_ok(kubelet, slave, "grep ' /vol ' /proc/self/mountinfo")
        assert "master:" in info
        host_umount_all(src / "late")
        kubelet.until(lambda: kubelet.exec(slave, "test", "-e", "/vol/late/f").exit_code != 0,
                      what="host umount seen inside")
    finally:
        host_umount_all(src / "late")


def test_propagation_on_a_mount_point_source(kubelet, pod_daemon):
    """A source that is itself a (private) mount point is made shared in place: no extra mount to clean up."""
    src = pod_daemon.workdir / "mp"
    host_mount_tmpfs(src)
    # (under a shared /, as systemd makes it, a new mount is shared from the start)
    subprocess.run(["mount", "--make-private", str(src)], check=True)
    (src / "inner").mkdir()
    sid, pod = kubelet.run_pod("mp", **privileged_pod_kw())
    try:
        before = [line for line in Path("/proc/self/mountinfo").read_text().splitlines() if f" {src} " in line]
        assert len(before) == 1 and "shared:" not in before[0]
        cid = kubelet.start(sid, pod, "bidi", command=["sleep", "3600"], linux=security(privileged=True),
                            mounts=[_vol(src, "/vol", propagation=P.PROPAGATION_BIDIRECTIONAL)])
        after = [line for line in Path("/proc/self/mountinfo").read_text().splitlines() if f" {src} " in line]
        assert len(after) == 1 and "shared:" in after[0]
        assert _shared_state(pod_daemon) == {}
        _exec_ok(kubelet, cid, "mount -t tmpfs -o size=1m tmpfs /vol/inner")
        kubelet.until(lambda: is_mount_point(src / "inner"), what="container mount seen on the host")
        _exec_ok(kubelet, cid, "umount /vol/inner")
        kubelet.rt.RemoveContainer(cri.RemoveContainerRequest(container_id=cid))
    finally:
        host_umount_all(src / "inner")
        host_umount_all(src)


def test_shared_source_left_alone(kubelet, pod_daemon):
    """A source already on a shared mount (a systemd host's usual state) is used as it is."""
    src = pod_daemon.workdir / "shared"
    host_mount_tmpfs(src)
    subprocess.run(["mount", "--make-shared", str(src)], check=True)
    (src / "dir" / "late").mkdir(parents=True)
    sid, pod = kubelet.run_pod("shared")
    try:
        lines = lambda: [x for x in Path("/proc/self/mountinfo").read_text().splitlines() if str(src) in x]  # noqa
        before = lines()
        cid = kubelet.start(sid, pod, "slave", command=["sleep", "3600"],
                            mounts=[_vol(src / "dir", "/vol", propagation=P.PROPAGATION_HOST_TO_CONTAINER)])
        assert lines() == before and _shared_state(pod_daemon) == {}
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(src / "dir" / "late")], check=True)
        kubelet.until(lambda: kubelet.exec(cid, "grep", "-q", " /vol/late ", "/proc/self/mountinfo").exit_code == 0,
                      what="host mount seen inside")
    finally:
        host_umount_all(src / "dir" / "late")
        host_umount_all(src)
