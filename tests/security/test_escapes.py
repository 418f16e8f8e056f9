"""Security boundaries, asserted by their effects: the CRI socket refuses non-root users, streaming tokens are
unguessable, and a default (unprivileged) container cannot see or reach the host: its own pid/mount/net/uts/ipc
namespaces, no host processes, no host paths beyond what it was given (a symlink to / in a volume resolves inside
the container), masked /proc and /sys parts, no mount, no host block device, no writes to /proc/sysrq-trigger or
/proc/sys.

(Single use and expiry of streaming URLs: tests/streaming/test_server.py and test_container_streaming.py.)
"""

from __future__ import annotations

import base64
import os
import socket
import stat
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from pycri.api import api_pb2 as cri
from pycri.oci.spec import DEFAULT_MASKED_PATHS
from pycri.streaming.tokens import TokenCache
from tests.security.ctx_helpers import run_to_exit

NOBODY = 65534


def _connect_as(uid: int, path: str) -> str:
    """Connect to a unix socket as `uid`: "ok" or the errno name. A fresh interpreter does it: a Python child
    forked from this process (which has used gRPC from threads by now) runs gRPC's fork handlers and at times
    never got as far as writing its answer."""
    code = ("import errno, os, socket, sys\n"
            "uid = int(sys.argv[2]); os.setgroups([]); os.setgid(uid); os.setuid(uid)\n"
            "s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)\n"
            "try:\n    s.connect(sys.argv[1]); print('ok')\n"
            "except OSError as exc:\n    print(errno.errorcode.get(exc.errno, str(exc.errno)))\n")
    r = subprocess.run([sys.executable, "-S", "-c", code, path, str(uid)], capture_output=True, text=True,
                       timeout=30)
    return r.stdout.strip() or f"no answer: {r.stderr.strip()}"


def test_cri_socket_refuses_non_root(daemon, tmp_path):
    sock = str(daemon.socket)
    st_ = os.stat(sock)
    assert stat.S_IMODE(st_.st_mode) == 0o660 and st_.st_uid == 0 and st_.st_gid == 0
    # the dirs on the way must let nobody reach the socket, or the refusal below would prove nothing
    opened = []
    for d in (daemon.workdir, daemon.state):
        mode = stat.S_IMODE(os.stat(d).st_mode)
        opened.append((d, mode))
        os.chmod(d, mode | 0o111)
    try:
        control = daemon.state / "control.sock"  # same dir, mode 0666: nobody can connect to this one
        srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        srv.bind(str(control))
        os.chmod(control, 0o666)
        srv.listen(1)
        try:
            assert _connect_as(NOBODY, str(control)) == "ok"
        finally:
            srv.close()
            control.unlink()
        assert _connect_as(NOBODY, sock) == "EACCES"
        assert _connect_as(NOBODY, str(daemon.state / "pycri-status.sock")) == "EACCES"
        assert _connect_as(0, sock) == "ok"
    finally:
        for d, mode in opened:
            os.chmod(d, mode)
    # the state and root dirs: traversable, not listable or writable by others
    for d in (daemon.root, daemon.state):
        st_ = os.stat(d)
        assert st_.st_uid == 0 and not stat.S_IMODE(st_.st_mode) & 0o066, (d, oct(st_.st_mode))


def _token_bytes(url_or_token: str) -> bytes:
    token = url_or_token.rstrip("/").rsplit("/", 1)[-1]
    return base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))


def _bit_balance(tokens: list[bytes]) -> tuple[float, float]:
    """Over all tokens, the lowest and highest share of ones at any bit position."""
    nbits = min(len(t) for t in tokens) * 8
    ones = [0] * nbits
    for t in tokens:
        v = int.from_bytes(t, "big") >> (len(t) * 8 - nbits)
        for i in range(nbits):
            ones[i] += v >> i & 1
    return min(ones) / len(tokens), max(ones) / len(tokens)


def test_streaming_tokens_are_unguessable():
    cache = TokenCache(60)
    tokens = [_token_bytes(cache.insert("exec", i)) for i in range(900)]
    assert len(set(tokens)) == len(tokens)
    assert min(len(t) for t in tokens) * 8 >= 128  # at least 128 bits each
    lo, hi = _bit_balance(tokens)
    assert 0.40 < lo and hi < 0.60, (lo, hi)  # every bit position random-looking (900 samples: sd ~0.017)


def test_daemon_streaming_urls_are_unguessable(kubelet):
    sid, pod = kubelet.run_pod("urls")
    cid = kubelet.start(sid, pod, "c", command=["sleep", "3600"])
    urls = [kubelet.rt.Exec(cri.ExecRequest(container_id=cid, cmd=["true"], stdout=True), timeout=10).url
            for _ in range(300)]
    tokens = [_token_bytes(u) for u in urls]
    assert len(set(tokens)) == len(tokens) and min(len(t) for t in tokens) * 8 >= 128
    lo, hi = _bit_balance(tokens)
    assert 0.34 < lo and hi < 0.66, (lo, hi)  # 300 samples: sd ~0.029; 5.5 sd, so ~1e-5 false alarms
    assert all(u.startswith("http://127.0.0.1:") for u in urls)  # served on loopback by default


# -- inside a container ------------------------------------------------------------------------------------------

PROBE = r"""
echo "PID1=$(tr '\0' ' ' < /proc/1/cmdline)"
echo "NPROCS=$(ls -d /proc/[0-9]* | wc -l)"
for n in pid mnt net uts ipc; do echo "NS_$n=$(readlink /proc/self/ns/$n)"; done
echo "ROOT1=$(readlink /proc/1/root)"
ls /proc/1/root/tmp/{marker} >/dev/null 2>&1 && echo "MARKER_VIA_PROC1=yes" || echo "MARKER_VIA_PROC1=no"
ls /tmp/{marker} >/dev/null 2>&1 && echo "MARKER_DIRECT=yes" || echo "MARKER_DIRECT=no"
ls /data/rootlink/tmp/{marker} >/dev/null 2>&1 && echo "MARKER_VIA_VOLUME=yes" || echo "MARKER_VIA_VOLUME=no"
echo "VOLUME_ROOTLINK_SEES=$(ls /data/rootlink/ | tr '\n' ' ')"
echo "VOLUME_ETC_HOSTNAME=$(cat /data/etclink/hostname 2>&1)"
echo "HOSTNAME=$(hostname)"
{masked}
(echo h > /proc/sysrq-trigger) 2>/dev/null && echo "SYSRQ=written" || echo "SYSRQ=refused"
(echo pycri > /proc/sys/kernel/domainname) 2>/dev/null && echo "PROCSYS=written" || echo "PROCSYS=refused"
(mkdir /sys/fs/cgroup/escape || touch /sys/kernel/escape) 2>/dev/null && echo "SYSWRITE=yes" || echo "SYSWRITE=no"
mkdir -p /mnt/t
mount -t tmpfs none /mnt/t 2>/dev/null && echo "MOUNT_TMPFS=ok" || echo "MOUNT_TMPFS=refused"
mount -t proc proc /mnt/t 2>/dev/null && echo "MOUNT_PROC=ok" || echo "MOUNT_PROC=refused"
mknod /tmp/blk b {major} {minor} 2>/dev/null; echo "MKNOD_DONE=$?"
head -c 1 /tmp/blk >/dev/null 2>/tmp/blk.err && echo "BLOCK_READ=ok" || echo "BLOCK_READ=$(cat /tmp/blk.err)"
echo "DEV=$(ls /dev | tr '\n' ' ')"
echo "NETDEV=$(tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' ' | tr '\n' ' ')"
echo "CHROOT_PWD=$(cd /proc/1/root && cd ../../../.. && pwd)"
echo "PROC1_ROOT_LS=$(ls /proc/1/root/ | tr '\n' ' ')"
echo "MOUNTINFO_BEGIN"
cat /proc/self/mountinfo
echo "MOUNTINFO_END"
"""


def _host_block_device() -> tuple[int, int]:
    for name in sorted(os.listdir("/sys/block")):
        if not name.startswith(("loop", "ram", "zram")):
            major, minor = Path(f"/sys/block/{name}/dev").read_text().strip().split(":")
            return int(major), int(minor)
    return 8, 0


def _fields(out: str) -> dict[str, str]:
    return {k: v for k, _, v in (line.partition("=") for line in out.splitlines())
            if _ and k[:1].isupper() and k.replace("_", "").isalnum()}


@pytest.fixture
def host_marker():
    name = f"pycri-escape-marker-{uuid.uuid4().hex[:8]}"
    path = Path("/tmp") / name
    path.write_text("host only\n")
    yield name
    path.unlink()


def test_default_container_cannot_see_the_host(kubelet, pod_daemon, host_marker):
    vol = pod_daemon.workdir / "escape-vol"
    vol.mkdir()
    os.symlink("/", vol / "rootlink")
    os.symlink("/etc", vol / "etclink")
    (vol / "given").write_text("given\n")
    major, minor = _host_block_device()
    sid, pod = kubelet.run_pod("escape")
    # the default masked paths that exist here: each must read empty inside (a file: 0 bytes; a dir: no entries)
    masked = [p for p in DEFAULT_MASKED_PATHS if os.path.exists(p)]
    probe_masked = "\n".join(
        f'echo "MASKED {p}=$(ls -A {p} 2>&1 | wc -w)"' if os.path.isdir(p) else
        f'echo "MASKED {p}=$(head -c 64 {p} 2>/dev/null | wc -c)"' for p in masked)
    script = PROBE.format(marker=host_marker, major=major, minor=minor, masked=probe_masked)
    status, out = run_to_exit(kubelet, sid, pod, "probe", script,
                              mounts=[cri.Mount(container_path="/data", host_path=str(vol))])
    print(out)
    f = _fields(out)
    masked_out = {k.split(" ", 1)[1]: v for k, _, v in (line.partition("=") for line in out.splitlines())
                  if k.startswith("MASKED ")}
    host_ns = {n: os.readlink(f"/proc/self/ns/{n}") for n in ("pid", "mnt", "net", "uts", "ipc")}
    for n, link in host_ns.items():
        assert f[f"NS_{n}"] and f[f"NS_{n}"] != link, f"container shares the host's {n} namespace"
    # pid 1 is the container's own process (no host init), and it sees only its own few processes
    # (the pod's pause: a pod shares its pid namespace unless namespace_options.pid says CONTAINER)
    host_init = Path("/proc/1/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    assert f["PID1"].strip() != host_init and f["PID1"].strip() in ("/pause", "pause"), f["PID1"]
    assert int(f["NPROCS"]) < 10, f["NPROCS"]
    # /proc/1/root is the container's root; host files are reachable neither there, nor directly, nor through a
    # volume's symlink to / (which resolves in the container's mount namespace)
    assert f["ROOT1"] == "/"
    assert f["MARKER_VIA_PROC1"] == f["MARKER_DIRECT"] == f["MARKER_VIA_VOLUME"] == "no"
    assert "data" in f["VOLUME_ROOTLINK_SEES"].split()  # the container's root: it has /data
    assert f["VOLUME_ETC_HOSTNAME"].strip() == f["HOSTNAME"].strip() == "escape"
    assert f["CHROOT_PWD"] == "/"
    assert set(f["PROC1_ROOT_LS"].split()) != set(os.listdir("/")) and "pause" in f["PROC1_ROOT_LS"].split()
    # masked and read-only kernel interfaces
    assert masked and set(masked_out) == set(masked)
    assert all(v == "0" for v in masked_out.values()), masked_out
    assert f["SYSRQ"] == "refused" and f["PROCSYS"] == "refused" and f["SYSWRITE"] == "no"
    # no mounting, no host block device (mknod may succeed, opening it may not)
    assert f["MOUNT_TMPFS"] == "refused" and f["MOUNT_PROC"] == "refused"
    assert f["BLOCK_READ"] != "ok" and ("not permitted" in f["BLOCK_READ"] or "No such" in f["BLOCK_READ"]), f
    devs = set(f["DEV"].split())
    assert devs <= {"console", "core", "fd", "full", "mqueue", "null", "ptmx", "pts", "random", "shm", "stderr",
                    "stdin", "stdout", "termination-log", "tty", "urandom", "zero"}, devs
    # only the pod's own interfaces
    assert set(f["NETDEV"].split()) <= {"lo", "eth0"}, f["NETDEV"]
    # every bind mount's source is something the container was given: the pod's files in the daemon's state, the
    # volume, or the image's snapshot; nothing else from the host's filesystem
    lines = out.split("MOUNTINFO_BEGIN", 1)[1].split("MOUNTINFO_END", 1)[0].strip().splitlines()
    allowed = (str(pod_daemon.workdir),)
    kernel_fs = {"proc", "sysfs", "tmpfs", "devpts", "mqueue", "cgroup", "cgroup2", "overlay", "devtmpfs"}
    for line in lines:
        parts = line.split()
        root, mount_point = parts[3], parts[4]
        fstype = parts[parts.index("-") + 1]
        if fstype in kernel_fs:
            continue
        host_visible = root if root != "/" else mount_point
        assert any(a in root for a in allowed) or root.endswith(tuple(a.lstrip("/") for a in allowed)), \
            f"host path {host_visible} ({fstype}) mounted at {mount_point}"
    assert status.exit_code == 0
