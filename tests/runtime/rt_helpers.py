"""Test helpers: a busybox rootfs and a minimal OCI spec generator (tests only)."""
from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess

BUSYBOX = "/bin/busybox"
MARKER_ENV = "PYCRI_RUNTIME_TEST"
_APPLETS: list[str] | None = None


def applets() -> list[str]:
    global _APPLETS
    if _APPLETS is None:
        _APPLETS = subprocess.run([BUSYBOX, "--list"], capture_output=True, text=True, check=True).stdout.split()
    return _APPLETS


def make_rootfs(path: str) -> str:
    """A rootfs with a static busybox and one symlink per applet in /bin."""
    for d in ("bin", "proc", "sys", "dev", "etc", "tmp", "root"):
        os.makedirs(os.path.join(path, d), exist_ok=True)
    shutil.copy2(BUSYBOX, os.path.join(path, "bin", "busybox"))
    for a in applets():
        if a != "busybox":
            os.symlink("busybox", os.path.join(path, "bin", a))
    with open(os.path.join(path, "etc", "passwd"), "w") as f:
        f.write("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/sh\n")
    return path


BASE_SPEC = {
    "ociVersion": "1.0.2",
    "process": {
        "terminal": False,
        "user": {"uid": 0, "gid": 0},
        "args": ["sh"],
        "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
        "cwd": "/",
        "capabilities": {k: ["CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD",
                             "CAP_NET_RAW", "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP",
                             "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE"]
                         for k in ("bounding", "effective", "permitted")},
        "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
        "noNewPrivileges": True,
    },
    "root": {"path": "rootfs", "readonly": False},
    "hostname": "testbox",
    "mounts": [
        {"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
        {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
         "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
        {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
         "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
        {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
         "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
    ],
    "linux": {
        "namespaces": [{"type": t} for t in ("pid", "network", "ipc", "uts", "mount")],
        "maskedPaths": ["/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
                        "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware",
                        "/proc/scsi"],
        "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"],
    },
}


def make_spec(args: list[str], *, marker: str | None = None, **overrides) -> dict:
    """A runc-like default spec running args; overrides replace top-level keys."""
    spec = copy.deepcopy(BASE_SPEC)
    spec["process"]["args"] = list(args)
    if marker is None:
        marker = os.environ.get(MARKER_ENV)
    if marker:
        spec["process"]["env"].append(f"{MARKER_ENV}={marker}")
    spec.update(overrides)
    return spec


def write_bundle(bundle: str, spec: dict, rootfs: str | None = None) -> str:
    """Write config.json; link or create the rootfs dir at bundle/rootfs."""
    os.makedirs(bundle, exist_ok=True)
    if rootfs is not None and spec["root"]["path"] == "rootfs" and not os.path.exists(f"{bundle}/rootfs"):
        os.symlink(rootfs, os.path.join(bundle, "rootfs"))
    with open(os.path.join(bundle, "config.json"), "w") as f:
        json.dump(spec, f)
    return bundle


def read_log(path: str) -> list[tuple[str, str, str]]:
    """CRI log file -> [(stream, tag, text)]."""
    out = []
    with open(path, "rb") as f:
        for line in f.read().split(b"\n")[:-1]:
            ts, stream, tag, text = line.split(b" ", 3)
            assert ts.endswith(b"Z") and b"T" in ts
            out.append((stream.decode(), tag.decode(), text.decode(errors="replace")))
    return out


def log_text(path: str, stream: str = "stdout") -> str:
    """Reassemble one stream of a CRI log (P records join, F records end a line)."""
    text = ""
    for s, tag, t in read_log(path):
        if s == stream:
            text += t + ("\n" if tag == "F" else "")
    return text
