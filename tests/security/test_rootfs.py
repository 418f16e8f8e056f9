"""readonly_rootfs, and masked_paths / readonly_paths from the CRI applied as given (or containerd's defaults)."""

from __future__ import annotations

from pycri.api import api_pb2 as cri
from tests.security.ctx_helpers import run_to_exit, security


def _try(path: str) -> str:
    return f"(echo x >> {path}) 2>/dev/null && echo '{path} writable' || echo '{path} read-only'"


def test_readonly_rootfs(kubelet, pod_daemon):
    vol = pod_daemon.workdir / "rootfs-vol"
    vol.mkdir()
    sid, pod = kubelet.run_pod("rorootfs")
    script = "; ".join([_try("/newfile"), _try("/etc/motd"), _try("/data/f"), _try("/dev/shm/f"),
                        _try("/etc/hosts"), _try("/etc/resolv.conf"), _try("/etc/hostname"),
                        "echo hostname=$(cat /etc/hostname)", "grep -c . /etc/hosts"])
    mounts = [cri.Mount(container_path="/data", host_path=str(vol))]
    status, out = run_to_exit(kubelet, sid, pod, "ro", script, linux=security(readonly_rootfs=True), mounts=mounts)
    assert status.exit_code == 0, out
    for path in ("/newfile", "/etc/motd", "/etc/hosts", "/etc/resolv.conf", "/etc/hostname"):
        assert f"{path} read-only" in out, out
    assert "/data/f writable" in out and "/dev/shm/f writable" in out
    assert "hostname=rorootfs" in out  # the pod's files are still there, readable
    assert (vol / "f").read_text() == "x\n"
    # the same container without readonly_rootfs can write its root and the pod files
    status, out = run_to_exit(kubelet, sid, pod, "rw", script, mounts=mounts)
    assert "/newfile writable" in out and "/etc/hosts writable" in out


MOUNTS = "grep -E ' /proc/(keys|sys|sys/kernel|timer_list) | /etc( |/passwd )' /proc/self/mountinfo"


def test_masked_and_readonly_paths_as_given(kubelet):
    sid, pod = kubelet.run_pod("paths")
    script = "; ".join(["echo passwd=$(wc -c < /etc/passwd)", "echo kernel=$(ls /proc/sys/kernel | wc -l)",
                        _try("/etc/newfile"), _try("/tmp/f"), MOUNTS + " | awk '{print \"MNT\", $5, $6}'"])
    status, out = run_to_exit(kubelet, sid, pod, "custom", script, linux=security(
        masked_paths=["/etc/passwd", "/proc/sys/kernel", "/does/not/exist"], readonly_paths=["/etc"]))
    assert status.exit_code == 0, out
    assert "passwd=0" in out and "kernel=0" in out  # masked: an empty file, an empty dir
    assert "/etc/newfile read-only" in out and "/tmp/f writable" in out
    mnts = {line.split()[1]: line.split()[2] for line in out.splitlines() if line.startswith("MNT")}
    assert "/proc/keys" not in mnts and "/proc/sys" not in mnts  # the defaults are replaced, not added to
    # no lists: containerd's defaults
    status, out = run_to_exit(kubelet, sid, pod, "defaults", script)
    mnts = {line.split()[1]: line.split()[2] for line in out.splitlines() if line.startswith("MNT")}
    assert "/proc/keys" in mnts and mnts["/proc/sys"].startswith("ro")
    assert "passwd=0" not in out and "/etc/newfile writable" in out
