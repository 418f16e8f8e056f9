"""Capability names (as OCI writes them, e.g. CAP_NET_ADMIN) to bit numbers, and set helpers."""
from __future__ import annotations

from runtime.host import linux

_NAMES = [
    "CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID", "SETPCAP",
    "LINUX_IMMUTABLE", "NET_BIND_SERVICE", "NET_BROADCAST", "NET_ADMIN", "NET_RAW", "IPC_LOCK", "IPC_OWNER",
    "SYS_MODULE", "SYS_RAWIO", "SYS_CHROOT", "SYS_PTRACE", "SYS_PACCT", "SYS_ADMIN", "SYS_BOOT", "SYS_NICE",
    "SYS_RESOURCE", "SYS_TIME", "SYS_TTY_CONFIG", "MKNOD", "LEASE", "AUDIT_WRITE", "AUDIT_CONTROL", "SETFCAP",
    "MAC_OVERRIDE", "MAC_ADMIN", "SYSLOG", "WAKE_ALARM", "BLOCK_SUSPEND", "AUDIT_READ", "PERFMON", "BPF",
    "CHECKPOINT_RESTORE",
]
CAP_NUMBERS = {f"CAP_{n}": i for i, n in enumerate(_NAMES)}


def mask(names: list[str] | None) -> int:
    """Bit mask for a list of capability names; unknown names raise ValueError."""
    out = 0
    for name in names or []:
        key = name.upper()
        if not key.startswith("CAP_"):
            key = "CAP_" + key
        if key not in CAP_NUMBERS:
            raise ValueError(f"unknown capability {name!r}")
        out |= 1 << CAP_NUMBERS[key]
    return out


def current_permitted() -> int:
    """The calling process's permitted set, from /proc/self/status."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("CapPrm:"):
                return int(line.split()[1], 16)
    return 0


def all_caps() -> int:
    return (1 << (linux.cap_last_cap() + 1)) - 1
