"""Host side of mount propagation: the source of a HOST_TO_CONTAINER (rslave) or BIDIRECTIONAL (rshared) volume
must sit on a shared mount of the host, or events cannot cross between the host and the container.

containerd and CRI-O only check this and fail; kubelet hosts pass because systemd makes every mount shared and the
kubelet makes its own root dir a shared bind mount of itself. pycri makes it so, touching as little as it can:

- the mount holding the source is already fit (shared, or for rslave a slave too) -> nothing to do; for rshared it
  must also not be the mount holding the containers' root filesystems (the launcher makes that one private in the
  container, as runc does, which would cut the volume's link too);
- the source is itself a mount point -> it is made shared (MS_SHARED, not recursive), and stays so;
- the source is / itself -> refused: only the host's admin makes / shared;
- otherwise -> the source is bind-mounted onto itself (rbind) and made shared, like the kubelet's root dir. That
  bind is ours: it is recorded with the ids of the containers using it (`<state>/shared-mounts.json`, so it survives
  daemon restarts) and unmounted (lazily, with whatever was mounted below it meanwhile) when the last of them is
  removed.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import structlog

from runtime import linux

from pycri.state.dirs import write_private

_log = structlog.get_logger("pycri.hostmounts")


@dataclass
class MountInfo:
    mount_point: str
    tags: list[str]  # optional fields: shared:N, master:N, propagate_from:N, unbindable

    @property
    def shared(self) -> bool:
        return any(t.startswith("shared:") for t in self.tags)

    @property
    def slave(self) -> bool:
        return any(t.startswith("master:") for t in self.tags)


def _unescape(field: str) -> str:
    return (field.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\"))


def mounts(mountinfo: str = "/proc/self/mountinfo") -> list[MountInfo]:
    out = []
    with open(mountinfo) as f:
        for line in f:
            pre = line.split(" - ", 1)[0].split()
            out.append(MountInfo(mount_point=_unescape(pre[4]), tags=pre[6:]))
    return out


def holding_mount(path: str, table: list[MountInfo] | None = None) -> MountInfo:
    """The mount that holds path: the longest mount point above it, the last (topmost) one of a stack."""
    path = os.path.realpath(path)
    best: MountInfo | None = None
    for m in table if table is not None else mounts():
        mp = m.mount_point
        if path == mp or path.startswith(mp.rstrip("/") + "/"):
            if best is None or len(mp) >= len(best.mount_point):
                best = m
    assert best is not None  # "/" holds everything
    return best


class SharedMounts:
    """Makes volume sources shared as described above; the binds it makes are counted by container id."""

    def __init__(self, state_file: Path) -> None:
        self.state_file = state_file

    def _load(self) -> dict[str, list[str]]:
        try:
            return json.loads(self.state_file.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            _log.warning("shared mounts state unreadable, starting empty", path=str(self.state_file), error=str(exc))
            return {}

    def _save(self, state: dict[str, list[str]]) -> None:
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        write_private(self.state_file, json.dumps(state, sort_keys=True))

    def ensure(self, container_id: str, source: str, propagation: str, rootfs_dir: str) -> None:
        """Make `source` fit for `propagation` ("rslave" or "rshared"); rootfs_dir: where the rootfs is mounted."""
        source = os.path.realpath(source)
        state = self._load()
        if source in state:  # our bind, already shared
            if container_id not in state[source]:
                state[source].append(container_id)
                self._save(state)
            return
        table = mounts()
        holder = holding_mount(source, table)
        if propagation == "rslave":
            fit = holder.shared or holder.slave
        else:
            fit = holder.shared and holder.mount_point != holding_mount(rootfs_dir, table).mount_point
        if fit:
            return
        if source == "/":  # neither changing / nor stacking a bind on it is pycri's call to make
            raise OSError(1, "/ is not a shared mount (make it so on the host: mount --make-rshared /)")
        if holder.mount_point == source and (propagation == "rslave"
                                             or source != holding_mount(rootfs_dir, table).mount_point):
            linux.mount(None, source, None, linux.MS_SHARED)
            _log.info("host mount made shared", path=source, container_id=container_id, propagation=propagation)
            return
        linux.mount(source, source, None, linux.MS_BIND | linux.MS_REC)
        try:
            linux.mount(None, source, None, linux.MS_SHARED)
        except OSError:
            linux.umount2(source, linux.MNT_DETACH)
            raise
        state[source] = [container_id]
        self._save(state)
        _log.info("volume source bind-mounted shared", path=source, container_id=container_id,
                  propagation=propagation)

    def release(self, container_id: str) -> None:
        """Forget a removed container; unmount the binds no container uses any more."""
        state = self._load()
        changed = False
        for source in list(state):
            if container_id not in state[source]:
                continue
            state[source].remove(container_id)
            changed = True
            if not state[source]:
                del state[source]
                try:
                    linux.umount2(source, linux.MNT_DETACH)
                except OSError as exc:
                    _log.warning("shared volume bind not unmounted", path=source, error=str(exc))
                else:
                    _log.info("volume source shared bind removed", path=source, container_id=container_id)
        if changed:
            self._save(state)
