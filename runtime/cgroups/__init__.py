"""A container's cgroup, whichever the driver: one interface (driver.Cgroup) over cgroupfs (v1 and v2) and systemd.

    cg = open_cgroup("/pycri/pod1/ctr1")      # cgroupfs; "slice:prefix:name" is the systemd driver's
    cg.create(); cg.apply(linux_resources); cg.attach(pid)
    cg.update(resources); cg.stats(); cg.oom_kills(); cg.oom_watch(); cg.remove()

Also what the daemon needs when no monitor is left to do it: a container's cgroup removed (remove_if_present),
and pycri's default pod parent removed with the last pod in it (remove_parent).
"""
from __future__ import annotations

import os

from runtime.cgroups.cgroupfs import CgroupV1, CgroupV2, oom_kill_logged, shares_to_weight, v1_mounts, validate_path
from runtime.cgroups.driver import ROOT, Cgroup, CgroupError, OomWatch, detect_version
from runtime.host import mountinfo

__all__ = ["ROOT", "Cgroup", "CgroupError", "CgroupV1", "CgroupV2", "OomWatch", "detect_version", "oom_kill_logged",
           "open_cgroup", "remove_if_present", "remove_parent", "shares_to_weight", "v1_mounts", "validate_path"]


def open_cgroup(path: str, driver: str = "", root: str = ROOT) -> Cgroup:
    """driver "cgroupfs" or "systemd"; "" takes it from the path's form ("slice:prefix:name" is systemd's)."""
    if not driver:
        driver = "systemd" if isinstance(path, str) and path.count(":") == 2 and "/" not in path else "cgroupfs"
    if driver == "systemd":
        from runtime.cgroups.systemd import SystemdCgroup  # only where used: it brings the D-Bus client
        return SystemdCgroup(path, root)
    if driver != "cgroupfs":
        raise CgroupError(f"unknown cgroup driver {driver!r} (cgroupfs or systemd)")
    path = validate_path(path)
    if detect_version(root) == 2:
        return CgroupV2(path, root)
    return CgroupV1(path, v1_mounts())


def remove_if_present(path: str, driver: str) -> None:
    """Remove a container's cgroup, killing what is left in it, where its monitor cannot (it died, or a reboot).
    Raises CgroupError or OSError."""
    cg = open_cgroup(path, driver)
    if cg.exists():
        cg.remove()


def remove_parent(path: str) -> None:
    """Remove a parent cgroup (cgroupfs driver) that holds no process any more, and the same path left empty in
    the hierarchies pycri does not manage but an OCI runtime joins (runc makes it in the named systemd hierarchy
    and, on a hybrid host, in the unified one). Best effort: one in use stays."""
    cg = open_cgroup(path)
    if cg.exists() and not cg.pids():
        cg.remove()
    for m in mountinfo.cgroup_mounts():
        try:
            os.rmdir(m.mount_point + path)
        except OSError:
            pass  # absent, or in use

