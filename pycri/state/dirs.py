"""The modes of what the daemon makes on the host: no non-root user of the node reaches a pod's spec, env, files
or writable layer (the CVE-2021-41103 class; docs/security.md, "Host users").

    <root>  0711       its entries 0700 / 0600: images, layers, snapshots, CNI state, the metadata store
    <state> 0711       <state>/p 0711 (pod dirs, not listable), <state>/ns 0700 (pinned namespaces)
    pod dir, its bundles dir, each bundle: 0700; 0710 and group = the pod's root's host gid in a user-namespaced
                       pod, whose root must reach its rootfs mount point (and nobody else)
    config.json, monitor logs, state files: 0600

Traversal (the x bit for others) is left only where a user-namespaced pod's root needs it, on the way to its pod
dir: <state> and <state>/p. Nothing below them is reachable by others, so the ids in their names (which the
cgroup paths show anyone) do not matter.
"""

from __future__ import annotations

import os
from pathlib import Path

from pycri import node

TOP_MODE = 0o711


def secure_roots(root: Path, state: Path) -> None:
    """Make root and state, and set the modes of their first level (entries of an older pycri included)."""
    for top in (root, state):
        top.mkdir(parents=True, exist_ok=True, mode=TOP_MODE)
        os.chmod(top, TOP_MODE)
    for entry in os.scandir(root):
        if not entry.is_symlink():
            os.chmod(entry.path, 0o700 if entry.is_dir() else 0o600)
    private_dir(state / "p", mode=TOP_MODE)
    private_dir(state / "ns")


def private_dir(path: Path, group: int | None = None, mode: int = 0o700) -> Path:
    """path as a directory of root's that others cannot enter: mode 0700, or 0710 with `group` as its group (a
    user-namespaced pod's root, which must traverse it); made if missing (its parent must exist)."""
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    if group is not None:
        os.chown(path, 0, group)
        mode = 0o710
    os.chmod(path, mode)
    return path


def secure_pod_dir(pod_dir: Path, group: int | None) -> None:
    """Set the modes above on a pod dir made by an older pycri (at every start: pods outlive an upgrade): the
    pod dir, its bundles dir and each bundle, and the files in them that hold a spec or a log. A pod dir that is
    gone is left gone."""
    if not pod_dir.is_dir() or pod_dir.is_symlink():
        return
    private_dir(pod_dir, group)
    bundles = pod_dir / "bundles"
    entries = [pod_dir]
    if bundles.is_dir():
        private_dir(bundles, group)
        for entry in os.scandir(bundles):
            if entry.is_dir(follow_symlinks=False):
                private_dir(Path(entry.path), group)
                entries.append(Path(entry.path))
    for d in entries:
        for name in ("config.json", "monitor.log"):
            if (d / name).is_file() and not (d / name).is_symlink():
                os.chmod(d / name, 0o600)


def write_private(path: Path, data: str) -> None:
    """Replace path with data, mode 0600 from the start (a spec holds the container's env: secrets)."""
    node.write_private(str(path), data.encode())
