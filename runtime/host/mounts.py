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

Also detach_if_mounted, for what the daemon finds mounted where a dead monitor left it. The daemon passes its own
logger (structlog's calls; runtime/jsonlog.py's otherwise).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from runtime import jsonlog, state as state_files
from runtime.host import linux
from runtime.host.mountinfo import entries, holding


def detach_if_mounted(path: str) -> None:
    """Lazily unmount what is mounted on path, if anything (an OCI runtime's rootfs left by a dead monitor)."""
    if os.path.ismount(path):
        linux.umount2(path, linux.MNT_DETACH)


class SharedMounts:
    """Makes volume sources shared as described above; the binds it makes are counted by container id."""

    def __init__(self, state_file: Path, log=None) -> None:
        self.state_file = state_file
        self._log = log or jsonlog.get_logger("runtime.host.mounts")  # structlog-like: .info(event, **kv)

    def _load(self) -> dict[str, list[str]]:
        try:
            return json.loads(self.state_file.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            self._log.warning("shared mounts state unreadable, starting empty", path=str(self.state_file),
                              error=str(exc))
            return {}

    def _save(self, state: dict[str, list[str]]) -> None:
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        state_files.write_json(str(self.state_file), state)

    def ensure(self, container_id: str, source: str, propagation: str, rootfs_dir: str) -> None:
        """Make `source` fit for `propagation` ("rslave" or "rshared"); rootfs_dir: where the rootfs is mounted."""
        source = os.path.realpath(source)
        state = self._load()
        if source in state:  # our bind, already shared
            if container_id not in state[source]:
                state[source].append(container_id)
                self._save(state)
            return
        table = list(entries())
        holder = holding(source, table)
        if propagation == "rslave":
            fit = holder.shared or holder.slave
        else:
            fit = holder.shared and holder.mount_point != holding(rootfs_dir, table).mount_point
        if fit:
            return
        if source == "/":  # neither changing / nor stacking a bind on it is pycri's call to make
            raise OSError(1, "/ is not a shared mount (make it so on the host: mount --make-rshared /)")
        if holder.mount_point == source and (propagation == "rslave"
                                             or source != holding(rootfs_dir, table).mount_point):
            linux.mount(None, source, None, linux.MS_SHARED)
            self._log.info("host mount made shared", path=source, container_id=container_id, propagation=propagation)
            return
        linux.mount(source, source, None, linux.MS_BIND | linux.MS_REC)
        try:
            linux.mount(None, source, None, linux.MS_SHARED)
        except OSError:
            linux.umount2(source, linux.MNT_DETACH)
            raise
        state[source] = [container_id]
        self._save(state)
        self._log.info("volume source bind-mounted shared", path=source, container_id=container_id,
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
                    self._log.warning("shared volume bind not unmounted", path=source, error=str(exc))
                else:
                    self._log.info("volume source shared bind removed", path=source, container_id=container_id)
        if changed:
            self._save(state)
