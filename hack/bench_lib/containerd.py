"""A private containerd 1.6 (+ runc) for the benchmark: own config (version 2), root, state and socket.

Everything it makes lives under <bench>/containerd/: root, state (shim bundles, rootfs mounts, /dev/shm mounts,
pinned netns thanks to netns_mounts_under_state_dir), runc's state dir, the socket. The only things outside are
the shim sockets in /run/containerd/s/ (hard-coded in 1.6; a shim removes its own when it exits cleanly), the bridge
made by CNI and the pods' cgroups under /<cgroup_root>/ - stop() removes all of those that are left.
"""
from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

from . import common
from .common import BenchEnv, log
from .memory import CgroupPodProbe

BINARY = "/usr/bin/containerd"
RUNC = "/usr/sbin/runc"
NAMESPACE = "k8s.io"
SHIM_SOCKET_DIR = Path("/run/containerd/s")

DISABLED_PLUGINS = [
    "io.containerd.snapshotter.v1.aufs",
    "io.containerd.snapshotter.v1.btrfs",
    "io.containerd.snapshotter.v1.devmapper",
    "io.containerd.snapshotter.v1.zfs",
    "io.containerd.snapshotter.v1.native",
    "io.containerd.internal.v1.opt",               # would write /opt/containerd
    "io.containerd.tracing.processor.v1.otlp",
    "io.containerd.internal.v1.tracing",
]


def config_toml(env: BenchEnv, root: Path, state: Path, sock: Path, certs_d: Path) -> str:
    disabled = ", ".join(f'"{p}"' for p in DISABLED_PLUGINS)
    cri = 'plugins."io.containerd.grpc.v1.cri"'
    return f"""\
# containerd config written by hack/bench.py (a private instance for the CRI benchmark)
version = 2
root = "{root}"
state = "{state}"
oom_score = 0
disabled_plugins = [{disabled}]

[grpc]
  address = "{sock}"

[ttrpc]
  address = ""

[debug]
  address = ""
  level = "warn"

[metrics]
  address = ""

[{cri}]
  sandbox_image = "{common.SANDBOX_IMAGE}"
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  disable_tcp_service = true
  enable_selinux = false
  disable_apparmor = true
  # no CAP_SYS_RESOURCE on this machine: never ask for a lower oom_score_adj than containerd's own
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  max_concurrent_downloads = 3

[{cri}.containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"
  discard_unpacked_layers = false

[{cri}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[{cri}.containerd.runtimes.runc.options]
  BinaryName = "{RUNC}"
  Root = "{state / 'runc'}"
  SystemdCgroup = false

[{cri}.cni]
  bin_dir = "{common.CNI_BIN_DIR}"
  conf_dir = "{env.cni_conf_dir}"
  max_conf_num = 1

[{cri}.registry]
  config_path = "{certs_d}"
"""


def hosts_toml(registry_url: str) -> str:
    """Resolve and pull everything of this host from the bench registry, over plain HTTP."""
    return f"""\
server = "{registry_url}"

[host."{registry_url}"]
  capabilities = ["pull", "resolve"]
"""


class Containerd:
    name = "containerd"

    def __init__(self, env: BenchEnv, keep: bool = False):
        self.env = env
        self.keep = keep
        self.dir = env.base / "containerd"
        self.root = self.dir / "root"
        self.state = self.dir / "state"
        self.socket = self.dir / "containerd.sock"
        self.config_path = self.dir / "config.toml"
        self.log_path = self.dir / "containerd.log"
        self.proc: subprocess.Popen | None = None
        self.probe = CgroupPodProbe(self)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def endpoint(self) -> str:
        return f"unix://{self.socket}"

    def version(self) -> str:
        out = subprocess.run([BINARY, "--version"], capture_output=True, text=True).stdout.strip()
        runc = subprocess.run([RUNC, "--version"], capture_output=True, text=True).stdout.splitlines()
        return f"{out.split(' ', 2)[-1] if out else '?'}; {runc[0] if runc else 'runc ?'}"

    def start(self) -> None:
        certs_d = self.dir / "certs.d"
        for host in ("docker.io", "registry.k8s.io", self.env.registry_host):
            d = certs_d / host
            d.mkdir(parents=True, exist_ok=True)
            (d / "hosts.toml").write_text(hosts_toml(self.env.registry_url))
        self.root.mkdir(parents=True, exist_ok=True)
        self.state.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(config_toml(self.env, self.root, self.state, self.socket, certs_d))
        log(f"starting containerd ({self.config_path})")
        with open(self.log_path, "ab") as logf:
            self.proc = subprocess.Popen([BINARY, "--config", str(self.config_path)], stdin=subprocess.DEVNULL,
                                         stdout=logf, stderr=logf, start_new_session=True)
        common.wait_for_socket(self.socket, self.proc, "containerd", self.log_path)
        log(f"containerd pid {self.pid} on {self.socket}")

    def own_processes(self) -> list[int]:
        """containerd's processes outside its own tree: the shims (reparented to pid 1, their command line names
        the socket in self.dir) and what runs under them. Used by stop() and by the CPU accounting (cpu.py)."""
        return common.processes_under(self.dir)

    def stop(self) -> None:
        """Stop containerd and remove everything it left: shims, containers, mounts, cgroups, bridge, IPAM, dirs."""
        if self.proc is not None:
            common.stop_process(self.proc, "containerd")
            self.proc = None
        leftovers = self.own_processes()
        if leftovers:
            shim_ids = [_shim_id(p) for p in leftovers]
            log(f"killing {len(leftovers)} leftover containerd processes (shims): {leftovers[:10]}")
            common.kill_and_wait(leftovers)
            for sid in filter(None, shim_ids):
                _shim_socket(self.socket, sid).unlink(missing_ok=True)
        removed = common.remove_cgroup_tree(self.env.cgroup_root)
        n = common.unmount_under(self.dir)
        if n:
            log(f"unmounted {n} mounts under {self.dir}")
        common.delete_link(self.env.bridge)
        shutil.rmtree(self.env.ipam_dir, ignore_errors=True)
        if removed:
            log(f"removed {removed} cgroup dirs under /{self.env.cgroup_root}")
        if not self.keep and not common.mounts_under(self.dir):
            shutil.rmtree(self.dir, ignore_errors=True)


def _shim_id(pid: int) -> str | None:
    args = common.cmdline(pid).split()
    if "-id" in args and args.index("-id") + 1 < len(args):
        return args[args.index("-id") + 1]
    return None


def _shim_socket(containerd_socket: Path, shim_id: str) -> Path:
    """containerd 1.6 shim.SocketAddress: /run/containerd/s/sha256(<address>/<namespace>/<id>)."""
    digest = hashlib.sha256(f"{containerd_socket}/{NAMESPACE}/{shim_id}".encode()).hexdigest()
    return SHIM_SOCKET_DIR / digest
