"""What both runtimes share: the bench environment (temp dirs, CNI conflist, registry) and clean-up helpers.

Clean-up is deliberately narrow: it only ever touches mounts under the bench's own temp dir, cgroups under the
bench's own cgroup parent, the bench's own bridge, and processes whose pid we know or whose command line, cwd or
cgroup points into the bench's own dirs.
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

HACK = Path(__file__).resolve().parent.parent
REPO_ROOT = HACK.parent
BRIDGE = "pbench0"
SUBNET = "10.89.0.0/16"
NETWORK_NAME = "pycri-bench"
SANDBOX_IMAGE = "registry.k8s.io/pause:3.10"
CNI_BIN_DIR = "/usr/lib/cni"
MNT_DETACH = 2


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- signals

class Terminated(KeyboardInterrupt):
    """SIGTERM/SIGHUP, turned into an exception so every try/finally runs."""


def install_signal_handlers() -> None:
    def handler(signum, _frame):
        raise Terminated(f"signal {signal.Signals(signum).name}")
    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGHUP, handler)


@contextlib.contextmanager
def signals_deferred():
    """Run a clean-up block without being cut short by Ctrl-C / SIGTERM (they are re-raised after it)."""
    pending: list[int] = []
    sigs = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    old = {s: signal.getsignal(s) for s in sigs}
    for s in sigs:
        signal.signal(s, lambda signum, _f: pending.append(signum))
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        if pending:
            log(f"(signal {signal.Signals(pending[0]).name} received during clean-up; finishing)")
            raise Terminated(f"signal {signal.Signals(pending[0]).name}")


# ---------------------------------------------------------------- environment

@dataclass
class BenchEnv:
    base: Path                      # /tmp/pycri-bench-XXXX
    registry_host: str              # 127.0.0.1:PORT
    images: dict = field(default_factory=dict)   # name -> registry metadata
    bridge: str = BRIDGE
    subnet: str = SUBNET

    @property
    def cni_conf_dir(self) -> Path:
        return self.base / "cni" / "net.d"

    @property
    def ipam_dir(self) -> Path:
        return self.base / "cni" / "ipam"

    @property
    def cgroup_root(self) -> str:
        """The cgroup parent of every bench pod: /<this>/pod<uid>."""
        return f"pycri-bench-{os.getpid()}"

    def pod_log_dir(self, runtime: str, uid: str) -> Path:
        return self.base / "pod-logs" / runtime / uid

    def ref(self, name: str) -> str:
        return f"{self.registry_host}/pycri-test/{name}:latest"

    @property
    def registry_url(self) -> str:
        return f"http://{self.registry_host}"


def preflight(script: str) -> str | None:
    """Why the bench cannot run here (not root, the bench bridge exists), else None; then installs the signal
    handlers and removes empty cgroup trees of earlier runs."""
    if os.geteuid() != 0:
        return f"{script} needs root (containers, mounts, netns, cgroups)"
    if link_exists(BRIDGE):
        return f"a link named {BRIDGE} exists already (another bench run, or a leftover: `ip link del {BRIDGE}`)"
    install_signal_handlers()
    stale = remove_stale_cgroup_trees()
    if stale:
        log(f"removed {stale} empty cgroup dirs left by an earlier run")
    return None


@contextlib.contextmanager
def environment(keep: bool = False):
    """A BenchEnv in a new /tmp/pycri-bench-XXXX: the registry with the test images (and pause as
    registry.k8s.io/pause:3.10 via mirror config) and the CNI conflist. Removed at the end (kept with `keep`, or
    when something is still mounted under it)."""
    import registry as registry_mod  # hack/registry.py

    base = Path(tempfile.mkdtemp(prefix="pycri-bench-", dir="/tmp"))
    os.chmod(base, 0o755)
    log(f"work dir {base}")
    reg = None
    try:
        with signals_deferred():
            reg = registry_mod.RegistryServer(base / "registry")
            reg.start()
        log(f"registry on {reg.url}; pushing the test images")
        images = reg.push_test_images()
        reg.push_pause_mirror()
        env = BenchEnv(base=base, registry_host=reg.host, images=images)
        write_conflist(env)
        yield env
    finally:
        with signals_deferred():
            if reg is not None:
                reg.stop()
            left = mounts_under(base)
            if left:
                log(f"warning: mounts left under {base}: {left[:5]}")
            if keep or left:
                log(f"kept {base}")
            else:
                shutil.rmtree(base, ignore_errors=True)


def conflist(env: BenchEnv) -> dict:
    """bridge + host-local + portmap, as a typical node has; no ipMasq (no iptables NAT rules to leak)."""
    return {
        "cniVersion": "1.0.0",
        "name": NETWORK_NAME,
        "plugins": [
            {
                "type": "bridge",
                "bridge": env.bridge,
                "isGateway": True,
                "ipMasq": False,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": env.subnet}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": str(env.ipam_dir),
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }


def write_conflist(env: BenchEnv) -> Path:
    env.cni_conf_dir.mkdir(parents=True, exist_ok=True)
    path = env.cni_conf_dir / "10-pycri-bench.conflist"
    path.write_text(json.dumps(conflist(env), indent=2) + "\n")
    return path


# ---------------------------------------------------------------- processes

def pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def ppid(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return 0
    return int(stat.rsplit(")", 1)[1].split()[1])


def stat_fields(pid: int) -> tuple[int, int] | None:
    """(ppid, start time in clock ticks after boot) of pid, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            rest = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return int(rest[1]), int(rest[19])


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def cgroup_paths(pid: int) -> list[str]:
    """The cgroup path of pid in each hierarchy (v1 and v2 lines alike)."""
    try:
        with open(f"/proc/{pid}/cgroup") as f:
            return [line.rstrip("\n").split(":", 2)[2] for line in f if line.count(":") >= 2]
    except OSError:
        return []


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is gone for our purposes
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def kill_and_wait(pids_: list[int], sig: int = signal.SIGKILL, timeout: float = 5.0) -> None:
    for pid in pids_:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(alive(p) for p in pids_):
        time.sleep(0.02)


def stop_process(proc: subprocess.Popen, name: str, timeout: float = 10.0) -> None:
    """SIGTERM, wait, then SIGKILL."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        log(f"{name} did not stop in {timeout:.0f}s; killing it")
        proc.kill()
        proc.wait()


def processes_under(path: Path, exclude: set[int] = frozenset(), fds: bool = False) -> list[int]:
    """Processes whose command line, cwd or executable (with fds=True: or an open file) points into `path`."""
    prefix = str(path).rstrip("/") + "/"
    found = []
    me = os.getpid()
    for pid in pids():
        if pid == me or pid in exclude:
            continue
        hit = prefix in cmdline(pid) + " "
        links = [f"/proc/{pid}/cwd", f"/proc/{pid}/exe"]
        if not hit and fds:
            with contextlib.suppress(OSError):
                links += [f"/proc/{pid}/fd/{fd}" for fd in os.listdir(f"/proc/{pid}/fd")]
        for link in links if not hit else []:
            with contextlib.suppress(OSError):
                if (os.readlink(link) + "/").startswith(prefix):
                    hit = True
                    break
        if hit:
            found.append(pid)
    return found


# ---------------------------------------------------------------- mounts

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


def mounts_under(prefix: Path) -> list[str]:
    p = str(prefix).rstrip("/")
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mp = line.split()[4].replace("\\040", " ")
            if mp == p or mp.startswith(p + "/"):
                out.append(mp)
    return out


def unmount_under(prefix: Path) -> int:
    """Lazily unmount everything mounted at or below prefix, deepest first; returns how many."""
    count = 0
    for _ in range(5):  # stacked mounts: repeat until none is left
        mps = sorted(set(mounts_under(prefix)), key=lambda m: m.count("/"), reverse=True)
        if not mps:
            break
        for mp in mps:
            if _libc.umount2(mp.encode(), MNT_DETACH) == 0:
                count += 1
    left = mounts_under(prefix)
    if left:
        log(f"warning: {len(left)} mounts left under {prefix}: {left[:3]}")
    return count


# ---------------------------------------------------------------- cgroups, links

def cgroup_mounts() -> list[str]:
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, right = line.split(" - ", 1)
            if right.split()[0] in ("cgroup", "cgroup2"):
                out.append(left.split()[4])
    return out


def remove_cgroup_tree(name: str) -> int:
    """Kill what is left in /<name> in every hierarchy and remove its dirs, deepest first; returns dirs removed."""
    removed = 0
    for mnt in cgroup_mounts():
        top = Path(mnt) / name
        if not top.is_dir():
            continue
        dirs = sorted((p for p in [top, *top.rglob("*")] if p.is_dir()),
                      key=lambda p: len(p.parts), reverse=True)
        left = []
        for d in dirs:
            with contextlib.suppress(OSError):
                left += [int(x) for x in (d / "cgroup.procs").read_text().split()]
        if left:
            log(f"killing {len(set(left))} processes left in cgroup {mnt}/{name}")
            kill_and_wait(sorted(set(left)))
        for d in dirs:
            for _ in range(50):
                try:
                    d.rmdir()
                    removed += 1
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.02)
    return removed


def remove_stale_cgroup_trees(prefix: str = "pycri-bench-") -> int:
    """Empty /pycri-bench-<pid> cgroup trees of earlier runs whose bench process is gone (e.g. after kill -9)."""
    removed = 0
    for mnt in cgroup_mounts():
        with contextlib.suppress(OSError):
            for d in Path(mnt).glob(prefix + "*"):
                pid = d.name[len(prefix):]
                if not pid.isdigit() or alive(int(pid)) or int(pid) == os.getpid():
                    continue
                for sub in sorted((p for p in [d, *d.rglob("*")] if p.is_dir()),
                                  key=lambda p: len(p.parts), reverse=True):
                    with contextlib.suppress(OSError):
                        sub.rmdir()  # fails (and is kept) while a process is in it
                        removed += 1
    return removed


def link_exists(name: str) -> bool:
    return Path(f"/sys/class/net/{name}").exists()


def delete_link(name: str) -> None:
    if link_exists(name):
        subprocess.run(["ip", "link", "del", name], check=False,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def wait_for_socket(path: Path, proc: subprocess.Popen, name: str, log_path: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log_path.read_text(errors="replace")[-3000:] if log_path.exists() else ""
            raise RuntimeError(f"{name} exited with {proc.returncode} at start; log {log_path}:\n{tail}")
        if path.exists():
            return
        time.sleep(0.02)
    raise RuntimeError(f"{name} did not create {path} in {timeout:.0f}s; log {log_path}")


def link_names() -> set[str]:
    return set(os.listdir("/sys/class/net"))


def leftovers(env: BenchEnv, daemon_dir: Path, links_before: set[str]) -> list[str]:
    """What a stopped runtime left on the machine, for the report (empty when clean): mounts under its dir (rootfs,
    shm, pinned netns), processes pointing into it, cgroup dirs under the bench's cgroup parent, the bridge, and
    links that were not there before the runtime started (veths)."""
    out = [f"mount {m}" for m in mounts_under(daemon_dir)]
    out += [f"process {p} {cmdline(p)[:80]}" for p in processes_under(daemon_dir)]
    for mnt in cgroup_mounts():
        if (Path(mnt) / env.cgroup_root).exists():
            out.append(f"cgroup {mnt}/{env.cgroup_root}")
    out += [f"link {name}" for name in sorted(link_names() - links_before)]
    return out
