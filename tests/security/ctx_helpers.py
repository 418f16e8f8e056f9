"""Helpers for the security-context tests: run a container to completion and read what it printed."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from pycri.api import api_pb2 as cri

# Linux capability numbers (include/uapi/linux/capability.h), independent of pycri's own tables.
CAP_NAMES = [
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL", "CAP_SETGID",
    "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE", "CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_IPC_LOCK", "CAP_IPC_OWNER", "CAP_SYS_MODULE", "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT", "CAP_SYS_PTRACE", "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE", "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE", "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE", "CAP_MAC_ADMIN", "CAP_SYSLOG", "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ", "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE",
]


def host_caps() -> set[str]:
    """What a container can hold at most here: the kernel's capabilities within the host's own bounding set
    (a host that is itself a container may lack some, e.g. CAP_SYS_RESOURCE)."""
    last = int(Path("/proc/sys/kernel/cap_last_cap").read_text())
    bounding = proc_status(Path("/proc/self/status").read_text())["CapBnd"]
    return set(CAP_NAMES[:last + 1]) & decode_caps(bounding)


def decode_caps(hex_mask: str) -> set[str]:
    value = int(hex_mask, 16)
    return {name for bit, name in enumerate(CAP_NAMES) if value >> bit & 1}


def proc_status(text: str) -> dict[str, str]:
    """`Key:\tvalue` lines of /proc/<pid>/status (as printed by the container) -> dict."""
    out = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key and " " not in key:
            out[key] = value.strip()
    return out


def log_stdout(path: Path) -> str:
    """The container's output from its CRI-format log (timestamp stream tag message)."""
    out = []
    for raw in path.read_text().splitlines():
        parts = raw.split(" ", 3)
        if len(parts) == 4:
            out.append(parts[3] + ("\n" if parts[2].startswith("F") else ""))
    return "".join(out)


def run_to_exit(kubelet, sid: str, pod: cri.PodSandboxConfig, name: str, script: str, image: str = "busybox",
                **kw) -> tuple[cri.ContainerStatus, str]:
    """Start a container running `sh -c script`, wait for it to exit; (status, its output)."""
    cid = kubelet.start(sid, pod, name, image, command=["sh", "-c", script], **kw)
    status = kubelet.wait_exited(cid)
    return status, log_stdout(Path(kubelet.log_dir) / name / "0.log")


def security(**kw) -> cri.LinuxContainerConfig:
    return cri.LinuxContainerConfig(security_context=cri.LinuxContainerSecurityContext(**kw))


def privileged_pod_kw() -> dict:
    return {"linux": cri.LinuxPodSandboxConfig(security_context=cri.LinuxSandboxSecurityContext(privileged=True))}


def is_mount_point(path: Path) -> bool:
    path = os.path.realpath(path)
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == path for line in f)


def host_mount_tmpfs(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(path)], check=True)


def host_umount_all(path: Path) -> None:
    """Unmount everything stacked at path (a test's own tmpfs), ignoring what is not mounted."""
    while is_mount_point(path):
        subprocess.run(["umount", "-l", str(path)], check=True)
