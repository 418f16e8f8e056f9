"""What a non-root user of the node can reach of the daemon's trees (the CVE-2021-41103 class): walked as `nobody`
while pods run, one of them in a user namespace, and a container has put a setuid-root binary in its writable
layer. Only the entries right below the root and state dirs (and the pod dirs' own entries in `<state>/p`, which a
user-namespaced pod's root must traverse) may even be stat'ed; nothing may be listed, read or executed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from pycri.api import api_pb2 as cri
from runtime.launch.userns import supported as userns_supported
from tests.security.ctx_helpers import run_to_exit

NOBODY = 65534

WALKER = r"""
import json, os, sys
paths = json.load(open(sys.argv[1]))  # read as root, then walked as the user
uid = int(sys.argv[2])
os.setgroups([]); os.setgid(uid); os.setuid(uid)
found = {"stat": [], "list": [], "read": [], "exec": []}
for path in paths:
    try:
        st = os.lstat(path)
    except OSError:
        continue
    found["stat"].append(path)
    if os.path.isdir(path) and not os.path.islink(path):
        try:
            os.listdir(path)
            found["list"].append(path)
        except OSError:
            pass
    elif os.path.isfile(path) and not os.path.islink(path):
        try:
            os.close(os.open(path, os.O_RDONLY | os.O_NONBLOCK))
            found["read"].append(path)
        except OSError:
            pass
        if st.st_mode & 0o4000 and os.access(path, os.X_OK):
            found["exec"].append(path)
json.dump(found, sys.stdout)
"""


def walk_as(uid: int, paths: list[str], tmp_path: Path) -> dict[str, list[str]]:
    listing = tmp_path / "paths.json"
    listing.write_text(json.dumps(paths))
    r = subprocess.run([sys.executable, "-S", "-c", WALKER, str(listing), str(uid)], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def tree(*tops: Path) -> list[str]:
    """Every path below tops (not into mounts other than the tops' own file system: pods' /dev/shm included)."""
    out = []
    for top in tops:
        for dirpath, dirnames, filenames in os.walk(top):
            out += [os.path.join(dirpath, n) for n in dirnames + filenames]
    return out


def test_a_node_user_reaches_nothing_of_pods_images_and_layers(kubelet, pod_daemon, tmp_path):
    d = pod_daemon
    sid, pod = kubelet.run_pod("plain")
    status, out = run_to_exit(kubelet, sid, pod, "suid", "cp /bin/busybox /tmp/suid && chmod 4755 /tmp/suid && "
                                                       "echo secret > /tmp/secret && echo done")
    assert "done" in out, out
    kubelet.start(sid, pod, "env", command=["sleep", "3600"], envs=[cri.KeyValue(key="TOKEN", value="s3cret")])
    if userns_supported():
        from tests.security.test_userns import _ctr_kw, _pod_kw, _userns

        workdir_mode = d.workdir.stat().st_mode & 0o777
        os.chmod(d.workdir, 0o711)  # the mapped root reaches its rootfs (as in test_userns.py)
        try:
            usid, upod = kubelet.run_pod("userns", **_pod_kw(_userns()))
            kubelet.start(usid, upod, "c", command=["sleep", "3600"], **_ctr_kw(_userns()))
        finally:
            os.chmod(d.workdir, workdir_mode)
    paths = tree(d.root, d.state)
    assert any(p.endswith("/upper/tmp/suid") for p in paths) and any(p.endswith("config.json") for p in paths)
    workdir_mode = d.workdir.stat().st_mode & 0o777
    os.chmod(d.workdir, 0o711)  # this test's own temp dir must not be what stops the walker
    try:
        found = walk_as(NOBODY, paths, tmp_path)
    finally:
        os.chmod(d.workdir, workdir_mode)
    tops = {str(d.root), str(d.state), str(d.state / "p")}
    assert [p for p in found["stat"] if os.path.dirname(p) not in tops] == [], found["stat"]
    assert found["list"] == [] and found["read"] == [] and found["exec"] == [], found


def test_pods_made_by_an_older_pycri_are_closed_at_the_next_start(kubelet, pod_daemon, tmp_path):
    """Pods outlive an upgrade. A pod dir left as an older pycri made it (0755 dirs, a world-readable spec and
    monitor log) is given the modes above when the daemon starts, and the pod still works."""
    d = pod_daemon
    sid, pod = kubelet.run_pod("older")
    cid = kubelet.start(sid, pod, "env", command=["sleep", "3600"], envs=[cri.KeyValue(key="TOKEN", value="s3cret")])
    older = tree(d.state / "p")
    assert any(p.endswith("/config.json") for p in older) and any(p.endswith("/monitor.log") for p in older)
    for path in [d.state / "p" / sid[:16], *map(Path, older)]:
        if not path.is_symlink() and not path.is_socket():
            os.chmod(path, 0o755 if path.is_dir() else 0o644)
    d.restart()
    workdir_mode = d.workdir.stat().st_mode & 0o777
    os.chmod(d.workdir, 0o711)
    try:
        found = walk_as(NOBODY, tree(d.state / "p"), tmp_path)
    finally:
        os.chmod(d.workdir, workdir_mode)
    assert [p for p in found["stat"] if os.path.dirname(p) != str(d.state / "p")] == [], found["stat"]
    assert found["list"] == [] and found["read"] == [], found
    r = d.runtime.ExecSync(cri.ExecSyncRequest(container_id=cid, cmd=["sh", "-c", "echo $TOKEN"], timeout=20))
    assert r.stdout == b"s3cret\n"
