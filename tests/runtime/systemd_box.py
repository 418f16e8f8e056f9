"""A real systemd (PID 1 of its own pid namespace) to test the systemd cgroup driver on a host without one.

The box has its own mount, pid, cgroup, uts and ipc namespaces, shares the host's network and filesystem
(with a private /run, where systemd's private D-Bus socket lives), and is rooted in a cgroup of its own in
every hierarchy. systemd boots a target with no dependencies, so it starts nothing but itself (and the
handful of mount units it always has). Commands run in the box through nsenter. On cgroup v2 the box's root
cgroup holds no process but systemd (a cgroup with processes cannot enable controllers for its children):
commands, and the `unshare` that made the box, wait in a leaf `commands` of it, beside systemd's units.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid

from runtime import cgroups
from tests.fixtures.pace import scaled

SYSTEMD = "/lib/systemd/systemd"
V2 = cgroups.detect_version() == 2
MEMORY_LIMIT = "MemoryMax" if V2 else "MemoryLimit"  # the unit property that holds a memory limit

_BOOT = r"""
set -e
read -r go  # (start() moves the unshare process out of the box's root cgroup first)
mount --make-rprivate /
mount -t tmpfs -o mode=0755 tmpfs /run
mkdir -p /run/systemd/system
printf '[Unit]\nDescription=pycri test box\nDefaultDependencies=no\n' > /run/systemd/system/pycri-box.target
if [ -e /sys/fs/cgroup/cgroup.controllers ]; then   # cgroup v2: remount so the box sees its own root
  umount /sys/fs/cgroup && mount -t cgroup2 cgroup2 /sys/fs/cgroup
else
  # A tmpfs of the box's own (systemd adds links to it and remounts it read-only: not the host's), with each
  # v1 hierarchy and the unified one mounted again, so they are rooted at the box's cgroup namespace.
  hierarchies=$(awk '($3 == "cgroup" || $3 == "cgroup2") && $2 ~ "^/sys/fs/cgroup/" \
                {sub("^/sys/fs/cgroup/", "", $2); print $1, $2, $3, $4}' /proc/self/mounts)
  mount -t tmpfs -o mode=0755 tmpfs /sys/fs/cgroup
  echo "$hierarchies" | while read -r dev name type opts; do
    mkdir -p "/sys/fs/cgroup/$name"
    if [ "$type" = cgroup2 ]; then mount -t cgroup2 cgroup2 "/sys/fs/cgroup/$name"
    else mount -t cgroup -o "$(echo "$opts" | tr , '\n' | grep -v -e '^rw$' -e '^ro$' -e relatime -e nosuid \
         -e nodev -e noexec | paste -sd,)" cgroup "/sys/fs/cgroup/$name"; fi
  done
fi
exec env -u PYCRI_RUNTIME_TEST """ + SYSTEMD + r""" --system --unit=pycri-box.target --log-target=console --log-level=warning
"""


def _cgroup_roots() -> list[str]:
    if V2:
        return ["/sys/fs/cgroup"]
    return sorted({os.path.join("/sys/fs/cgroup", d) for d in os.listdir("/sys/fs/cgroup")
                   if os.path.ismount(os.path.join("/sys/fs/cgroup", d))})


class SystemdBox:
    def __init__(self) -> None:
        self.name = f"pycri-sdbox-{uuid.uuid4().hex[:8]}"
        self.dirs = [os.path.join(root, self.name) for root in _cgroup_roots()]
        self.leaf = os.path.join(self.dirs[0], "commands") if V2 else None
        self.proc: subprocess.Popen | None = None
        self.log = tempfile.TemporaryFile()  # systemd's own messages, shown when it fails to boot

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return int(open(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read().split()[0])

    def _child(self) -> int:
        """The pid of the process unshare forked (the box's shell, then systemd); 0 before the fork."""
        words = open(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read().split()
        return int(words[0]) if words else 0

    def start(self, timeout: float = scaled(20)) -> "SystemdBox":
        if V2:  # the box's root gets every controller (as a runtime gives a container's cgroup): the host's
            root = os.path.dirname(self.dirs[0])  # systemd enables cpu at its root only once a unit asks
            missing = set(open(f"{root}/cgroup.controllers").read().split()) - \
                set(open(f"{root}/cgroup.subtree_control").read().split())
            if missing:
                with open(f"{root}/cgroup.subtree_control", "w") as f:
                    f.write(" ".join("+" + c for c in sorted(missing)))
        for d in self.dirs:
            os.makedirs(d, exist_ok=True)
            if os.path.basename(os.path.dirname(d)) == "cpuset" or os.path.exists(os.path.join(d, "cpuset.cpus")):
                for f in ("cpuset.cpus", "cpuset.mems"):
                    p = os.path.join(d, f)
                    if os.path.exists(p) and not open(p).read().strip():
                        with open(p, "w") as out:
                            out.write(open(os.path.join(os.path.dirname(d), f)).read().strip())
        env = {k: v for k, v in os.environ.items() if k != "PYCRI_RUNTIME_TEST"}
        self.proc = subprocess.Popen(
            ["unshare", "--pid", "--fork", "--mount", "--cgroup", "--uts", "--ipc", "--mount-proc",
             "sh", "-c", _BOOT], preexec_fn=self._enter_root, env=env,
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=self.log)
        deadline = time.monotonic() + timeout
        if self.leaf:
            os.makedirs(self.leaf, exist_ok=True)
            own = os.stat("/proc/self/ns/cgroup").st_ino
            while os.stat(f"/proc/{self.proc.pid}/ns/cgroup").st_ino == own:  # until unshare has made the ns
                if self.proc.poll() is not None or time.monotonic() > deadline:  # (in the leaf, the box's
                    self.stop()  # namespace would be rooted there, and its units' paths start /commands)
                    raise RuntimeError("unshare made no cgroup namespace for the box in time")
                time.sleep(0.005)
            with open(os.path.join(self.leaf, "cgroup.procs"), "w") as f:
                f.write(str(self.proc.pid))
            # unshare forks the box's shell after making the namespaces: when the fork came after the move, the
            # shell (systemd to be) is in the leaf too, and systemd, seeing itself in /commands, puts its units
            # below it (found in the guest). The shell waits for "go": put it back in the box's root.
            while not (child := self._child()):
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError("unshare started no shell for the box in time")
                time.sleep(0.005)
            with open(os.path.join(self.dirs[0], "cgroup.procs"), "w") as f:
                f.write(str(child))
        self.proc.stdin.write(b"go\n")
        self.proc.stdin.close()
        while True:
            if self.proc.poll() is not None:
                self.log.seek(0)
                raise RuntimeError(f"systemd box did not start: {self.log.read().decode(errors='replace')}")
            try:
                out = self.run(["systemctl", "is-system-running"], check=False, timeout=5).stdout.strip()
                if out in ("running", "degraded"):
                    return self
            except (IndexError, FileNotFoundError, ValueError, subprocess.TimeoutExpired):
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("systemd box did not reach running")
            time.sleep(0.1)

    def run(self, argv: list[str], check: bool = True, timeout: float = 60, **kw) -> subprocess.CompletedProcess:
        """Run a command in the box's namespaces (its pid namespace too: nsenter forks)."""
        return subprocess.run(self.command(argv), capture_output=True, text=True, check=check, timeout=timeout,
                              preexec_fn=self.enter_cgroups, **kw)

    def command(self, argv: list[str]) -> list[str]:
        return ["nsenter", "-t", str(self.pid), "-m", "-p", "-C", "-u", "-i", "--"] + argv

    def _enter_root(self) -> None:
        for d in self.dirs:
            with open(os.path.join(d, "cgroup.procs"), "w") as f:
                f.write("0")

    def enter_cgroups(self) -> None:
        """(preexec) Move the calling process into the box's cgroups: nsenter does not, and a process outside the
        box's cgroup namespace root is where systemd does not expect one."""
        if self.leaf:
            with open(os.path.join(self.leaf, "cgroup.procs"), "w") as f:
                f.write("0")
        else:
            self._enter_root()

    def host_cgroup(self, controller: str, path: str) -> str:
        """The host's path of a cgroup the box calls `path` (v1: in `controller`'s hierarchy)."""
        root = "/sys/fs/cgroup" if V2 else f"/sys/fs/cgroup/{controller}"
        return f"{root}/{self.name}{path}"

    def stop(self) -> None:
        if self.proc is None:
            return
        try:
            os.kill(self.pid, signal.SIGKILL)  # PID 1 of the namespace: takes every process in it along
        except (IndexError, ValueError, OSError):
            pass
        self.proc.kill()
        self.proc.wait(timeout=10)
        deadline = time.monotonic() + 30  # the killed processes leave their cgroups as they finish exiting
        while True:
            left = [d for d in self.dirs if os.path.isdir(d)]
            for d in left:
                for dirpath, _, _ in sorted(os.walk(d), key=lambda t: -t[0].count("/")):
                    try:
                        os.rmdir(dirpath)
                    except OSError:
                        pass
            if not any(os.path.isdir(d) for d in self.dirs):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"systemd box cgroups not removable: {[d for d in self.dirs if os.path.isdir(d)]}")
            time.sleep(0.05)
        self.proc = None


def available() -> str | None:
    """None when a box can run here, else why not."""
    if os.geteuid() != 0:
        return "needs root"
    if not os.path.exists(SYSTEMD):
        return f"{SYSTEMD} is not installed"
    if shutil.which("nsenter") is None or shutil.which("unshare") is None:
        return "needs util-linux nsenter and unshare"
    return None
