"""The daemon's one door to runtime/: all pycri asks of this node's runtime and kernel, named here.

Pod monitors (MonitorClient and AsyncMonitorClient, the spawner that forks them, ExitWatch on their ends, their
state dirs read without them), cgroups, the pod's namespaces and /dev/shm, host mounts (volume propagation, image
volumes) and trees. Nothing else in pycri/ imports runtime/, and pycri/ mounts, unmounts, removes cgroups or walks
/proc only through what is here (docs/design.md, "Layers"); runtime/ never imports pycri/.
"""
from __future__ import annotations

from runtime import cgroups, spawner, state as monitor_state
from runtime.state import write_private
from runtime.aclient import AsyncMonitorClient
from runtime.client import MonitorClient, MonitorError, Stream
from runtime.exitwatch import ExitWatch
from runtime.frames import (CH_CLOSE_STDIN, CH_EXIT, CH_RESIZE, CH_STDERR, CH_STDIN, CH_STDOUT, HEADER, MAX_PAYLOAD,
                            frame)
from runtime.host import imagevols, podns
from runtime.host.linux import mount_setattr_supported, resolve as resolve_path
from runtime.host.mounts import SharedMounts, detach_if_mounted
from runtime.host.netns_socket import NetnsError, socket_in_netns
from runtime.host.procs import process_count
from runtime.host.trees import Usage, remove_tree, tree_usage
from runtime.launch.userns import supported as userns_supported

__all__ = ["AsyncMonitorClient", "CH_CLOSE_STDIN", "CH_EXIT", "CH_RESIZE", "CH_STDERR", "CH_STDIN", "CH_STDOUT",
           "ExitWatch", "HEADER", "MAX_PAYLOAD", "MonitorClient", "MonitorError", "NetnsError", "SharedMounts",
           "Stream", "Usage",
           "cgroup_version", "cgroups", "detach_if_mounted", "frame", "imagevols", "monitor_state",
           "mount_setattr_supported",
           "podns", "process_count", "remove_tree", "resolve_path", "socket_in_netns", "spawner", "tree_usage",
           "userns_supported", "write_private"]


def cgroup_version() -> int:
    """2 on a unified (cgroup v2) host, 1 on a legacy or hybrid one."""
    return cgroups.detect_version()
