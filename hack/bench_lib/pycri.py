"""A private pycri daemon for the benchmark: `python -m pycri --config <temp toml>` with its own root, state and
socket, the bench's CNI conflist, and the bench registry as mirror of docker.io and registry.k8s.io.

pycri's per-pod monitors outlive the daemon by design, so stop() also kills whatever process still points into the
bench's pycri dirs or sits in the bench's pod cgroups, then unmounts everything under those dirs.
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from . import common
from .common import BenchEnv, log
from .memory import PycriPodProbe

PYTHON = str(common.REPO_ROOT / ".venv" / "bin" / "python")


def config_toml(env: BenchEnv, root: Path, state: Path, sock: Path, log_level: str = "warning") -> str:
    mirror = f'mirrors = ["{env.registry_url}"]\nfallback_to_host = false'
    return f"""\
# pycri config written by hack/bench.py (a private instance for the CRI benchmark)
root = "{root}"
state = "{state}"
listen = "{sock}"
sandbox_image = "{common.SANDBOX_IMAGE}"
log_level = "{log_level}"

[cni]
conf_dir = "{env.cni_conf_dir}"
bin_dirs = ["{common.CNI_BIN_DIR}"]
write_default_conflist = false

[streaming]
address = "127.0.0.1"
port = 0

[registries."docker.io"]
{mirror}

[registries."registry.k8s.io"]
{mirror}

[registries."{env.registry_host}"]
insecure = true
"""


class Pycri:
    name = "pycri"

    def __init__(self, env: BenchEnv, keep: bool = False, log_level: str = "warning"):
        self.env = env
        self.keep = keep
        self.log_level = log_level
        self.dir = env.base / "pycri"
        self.root = self.dir / "root"
        self.state = self.dir / "state"
        self.socket = self.state / "pycri.sock"
        self.config_path = self.dir / "config.toml"
        self.log_path = self.dir / "pycri.log"
        self.proc: subprocess.Popen | None = None
        self.probe = PycriPodProbe(self)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def endpoint(self) -> str:
        return f"unix://{self.socket}"

    def version(self) -> str:
        out = subprocess.run([PYTHON, "-m", "pycri", "--version"], capture_output=True, text=True,
                             cwd=common.REPO_ROOT).stdout.split()
        return out[1] if len(out) > 1 else "?"

    def start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(config_toml(self.env, self.root, self.state, self.socket, self.log_level))
        log(f"starting pycri ({self.config_path})")
        with open(self.log_path, "ab") as logf:
            self.proc = subprocess.Popen([PYTHON, "-m", "pycri", "--config", str(self.config_path)],
                                         stdin=subprocess.DEVNULL, stdout=logf, stderr=logf,
                                         cwd=common.REPO_ROOT, start_new_session=True)
        common.wait_for_socket(self.socket, self.proc, "pycri", self.log_path)
        log(f"pycri pid {self.pid} on {self.socket}")

    def own_processes(self) -> list[int]:
        """pycri's processes outside its own tree: the per-pod monitors (detached, reparented), found by a command
        line or cwd into self.dir or an open file under the state dir, and the spare monitor the spawner forks
        ahead (no pod's files yet: found as a fork of the spawner). Used by stop() and by cpu.py."""
        found = set(common.processes_under(self.dir)) | set(common.processes_under(self.state, fds=True))
        return sorted(found | self.spawner_forks())

    def spawner_forks(self) -> set[int]:
        """Processes with the command line of the daemon's child that runs this checkout's Python code (the
        spawner), started after it: the monitors it forked, the spare among them. The command line names this
        checkout's path, so another checkout's pycri does not match."""
        if self.pid is None:
            return set()
        everyone = {pid: common.stat_fields(pid) for pid in common.pids()}
        spawners = {}
        for pid, st in everyone.items():
            if st and st[0] == self.pid and str(common.REPO_ROOT) in (cmd := common.cmdline(pid)):
                spawners[cmd] = st[1]
        out = set()
        for pid, st in everyone.items():
            if not st or st[0] == self.pid or pid == self.pid:
                continue
            cmd = common.cmdline(pid)
            if cmd in spawners and st[1] >= spawners[cmd]:
                out.add(pid)
        return out

    def stop(self) -> None:
        """Stop the daemon and remove what it left: monitors, containers, mounts, cgroups, bridge, IPAM, dirs."""
        if self.proc is not None:
            common.stop_process(self.proc, "pycri")
            self.proc = None
        leftovers = self.own_processes()
        if leftovers:
            log(f"killing {len(leftovers)} leftover pycri processes (monitors): {leftovers[:10]}")
            common.kill_and_wait(leftovers)
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
