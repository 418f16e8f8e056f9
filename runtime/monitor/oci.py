"""An external OCI runtime (runc, crun) driven through its command line, for one container of the monitor.

The monitor stays the shim: it makes the container's stdio pipes (passed to `create` as the runtime's own stdio, so
the container inherits them), receives the pty master over a console socket for terminals, and, as the child
subreaper, becomes the parent of the container process once the runtime exits, so it reaps it and records its
exit exactly as for the built-in launcher. The runtime keeps its state in a root of our own inside the container's
state dir (`<dir>/oci`) and logs JSON lines to `<dir>/oci.log`; its last error becomes the request's error.

The overlay rootfs, which the built-in launcher mounts inside the container's mount namespace, is mounted here on
the bundle's root.path in the monitor's (the host's) mount namespace before `create`, and unmounted at delete.
"""
from __future__ import annotations

import json
import os
import secrets
import selectors
import signal
import socket
import subprocess
import time

from runtime import state
from runtime.host import linux
from runtime.launch import DEFAULT_PATH, LaunchError, rootfs as rootfs_mod

CLI_TIMEOUT = 60.0     # seconds any one runtime command may take
_RESET_SIGNALS = (signal.SIGPIPE, signal.SIGHUP, signal.SIGINT, signal.SIGTERM, signal.SIGCHLD)


class OciError(LaunchError):
    """The OCI runtime refused or failed a command; the message carries its error."""


def check_request(runtime) -> dict:
    """Validate the create request's `runtime`: {"type": "oci", "path": "/usr/bin/runc", "cgroup_manager":
    "runtime" (the default: the runtime makes and removes the cgroup) or "pycri" (the monitor does, as for the
    built-in launcher, and runs the runtime inside it with `--cgroup-manager=disabled`: crun)}."""
    if not isinstance(runtime, dict) or runtime.get("type") != "oci":
        raise ValueError("runtime must be {\"type\": \"oci\", \"path\": ...}")
    path = runtime.get("path")
    if not isinstance(path, str) or not os.path.isabs(path):
        raise ValueError("runtime.path must be an absolute path")
    if not os.access(path, os.X_OK):
        raise ValueError(f"OCI runtime {path} is not an executable file")
    manager = runtime.get("cgroup_manager") or "runtime"
    if manager not in ("runtime", "pycri"):
        raise ValueError(f"runtime.cgroup_manager must be \"runtime\" or \"pycri\", not {manager!r}")
    return {"type": "oci", "path": path, "cgroup_manager": manager}


CAP_SYS_RESOURCE = 24


def _has_cap(cap: int) -> bool:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1], 16) >> cap & 1)
    return False


def _restore_signals() -> None:
    """In the runtime's child, before exec: the monitor ignores SIGTERM & co, which exec would pass on."""
    for s in _RESET_SIGNALS:
        signal.signal(s, signal.SIG_DFL)


UNIFIED_MOUNT = "/sys/fs/cgroup/unified"  # the cgroup2 mount of a cgroup v1 "hybrid" host


def _child_setup(cgroup_tasks: list[bytes] | None, hide_unified: bool):
    """preexec_fn for the runtime. With cgroup_manager "pycri": join the container's cgroup (cgroup_tasks, for the
    commands that make processes: create, exec; never kill, which may freeze the cgroup), and
    hide a hybrid host's cgroup2 mount in a mount namespace of the runtime's own (made a slave first, so nothing
    propagates back): crun refuses hybrid hosts whose cgroup2 holds controllers even when told to leave cgroups
    alone, and sees a plain cgroup v1 host this way. The container's mount namespace is cloned from that one
    and gets its own mounts from the spec anyway."""
    def setup() -> None:
        _restore_signals()
        for path in cgroup_tasks or ():  # the runtime, and so the container, starts in the container's cgroup
            fd = os.open(path, os.O_WRONLY)
            try:
                os.write(fd, b"0")
            finally:
                os.close(fd)
        if hide_unified and os.path.ismount(UNIFIED_MOUNT):
            linux.unshare(linux.CLONE_NEWNS)
            linux.mount(None, "/", None, linux.MS_REC | linux.MS_SLAVE)
            linux.umount2(UNIFIED_MOUNT, linux.MNT_DETACH)
    return setup


class OciRuntime:
    """One container's view of an OCI runtime binary: its CLI with our --root/--log flags."""

    def __init__(self, path: str, cid: str, sdir: str, bundle: str, spec: dict, own_cgroups: bool = False):
        self.path = path
        self.own_cgroups = own_cgroups   # the monitor manages the cgroup; the runtime is told to leave it
        self.cgroup_tasks: list[bytes] | None = None  # with own_cgroups: joined by the runtime before exec
        self.name = os.path.basename(path)
        self.id = cid
        self.dir = sdir
        self.root = os.path.join(sdir, "oci")
        self.log_file = os.path.join(sdir, "oci.log")
        self.bundle = bundle
        self.spec = spec
        root = (spec.get("root") or {}).get("path") or "rootfs"
        self.rootfs = root if os.path.isabs(root) else os.path.join(bundle, root)
        self.rootfs_mounted = False
        self.created = False        # the runtime has state for the container (delete needed)
        self.warnings: list[str] = []

    # ------------------------------------------------------------ plumbing
    def _argv(self, *args: str) -> list[str]:
        argv = [self.path, "--root", self.root, "--log", self.log_file, "--log-format", "json"]
        cg = (self.spec.get("linux") or {}).get("cgroupsPath") or ""
        if self.own_cgroups:
            argv.append("--cgroup-manager=disabled")
        elif cg.count(":") == 2 and "/" not in cg:  # slice:prefix:name, the systemd driver's form
            argv.append("--systemd-cgroup")
        return argv + list(args)

    def _popen(self, args: list[str], stdio=None) -> subprocess.Popen:
        join = self.cgroup_tasks if args[0] in ("create", "exec") else None
        try:
            self._log_mark = os.stat(self.log_file).st_size  # errors of this command are logged after here
        except OSError:
            self._log_mark = 0
        env = dict(os.environ)
        env.setdefault("PATH", DEFAULT_PATH)
        if stdio is None:
            stdin = stdout = subprocess.DEVNULL
            stderr = subprocess.PIPE
        else:
            stdin, stdout, stderr = stdio
        try:
            return subprocess.Popen(self._argv(*args), stdin=stdin, stdout=stdout, stderr=stderr, env=env,
                                    cwd=self.dir, close_fds=True, preexec_fn=_child_setup(join, self.own_cgroups))
        except OSError as exc:
            raise OciError(f"cannot run {self.path}: {exc.strerror}") from None

    def _finish(self, proc: subprocess.Popen, what: str, deadline: float) -> None:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise OciError(f"{self.name} {what} {self.id}: timed out") from None
        err = proc.stderr.read().decode(errors="replace").strip() if proc.stderr else ""
        if proc.stderr:
            proc.stderr.close()
        if proc.returncode != 0:
            raise OciError(f"{self.name} {what} {self.id}: {self.last_error() or err or f'exit {proc.returncode}'}")

    def run(self, *args: str, stdio=None, timeout: float = CLI_TIMEOUT) -> None:
        """Run one runtime command to its end; OciError with the runtime's message when it fails."""
        deadline = time.monotonic() + timeout
        self._finish(self._popen(list(args), stdio), args[0], deadline)

    def last_error(self) -> str:
        """The error-level lines the last command logged (runc and crun both log {"level","msg"} JSON lines;
        runc's init logs the cause before the generic failure), joined."""
        try:
            with open(self.log_file, "rb") as f:
                f.seek(max(getattr(self, "_log_mark", 0), os.fstat(f.fileno()).st_size - 65536))
                lines = f.read().decode(errors="replace").splitlines()
        except OSError:
            return ""
        errors = []
        for line in lines:
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if isinstance(entry, dict) and entry.get("level") in ("error", "fatal", "panic"):
                msg = str(entry.get("msg", "")).strip()
                if msg and msg not in errors:
                    errors.append(msg)
        return "; ".join(errors[-4:])

    def _with_console(self, args: list[str], stdio) -> int:
        """Run a command that hands back a pty master over --console-socket; returns the master fd."""
        path = os.path.join(self.dir, "console.sock")
        if len(path.encode()) > 100:  # AF_UNIX paths are short; the state dir may not be
            path = f"/tmp/.pycri-console-{secrets.token_hex(8)}.sock"
        lsock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        master = -1
        try:
            lsock.bind(path)
            lsock.listen(1)
            deadline = time.monotonic() + CLI_TIMEOUT
            proc = self._popen(args[:1] + ["--console-socket", path] + args[1:], stdio)
            try:
                master = self._receive_master(lsock, proc, deadline)
            finally:
                self._finish(proc, args[0], deadline)
            if master < 0:
                raise OciError(f"{self.name} {args[0]} {self.id}: no console received")
            return master
        except BaseException:
            if master >= 0:
                os.close(master)
            raise
        finally:
            lsock.close()
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass

    @staticmethod
    def _receive_master(lsock: socket.socket, proc: subprocess.Popen, deadline: float) -> int:
        sel = selectors.DefaultSelector()
        sel.register(lsock, selectors.EVENT_READ)
        try:
            while time.monotonic() < deadline:
                if sel.select(0.05):
                    conn, _ = lsock.accept()
                    with conn:
                        conn.settimeout(max(0.1, deadline - time.monotonic()))
                        _, fds, _, _ = socket.recv_fds(conn, 4096, 1)
                    if fds:
                        os.set_inheritable(fds[0], False)
                        return fds[0]
                    return -1
                if proc.poll() is not None:
                    return -1
            return -1
        finally:
            sel.close()

    def _read_pid(self, pid_file: str) -> int:
        try:
            with open(pid_file) as f:
                return int(f.read().strip())
        except (OSError, ValueError) as exc:
            raise OciError(f"{self.name} wrote no pid for {self.id}: {exc}") from None
        finally:
            try:
                os.unlink(pid_file)
            except FileNotFoundError:
                pass

    # ------------------------------------------------------------ the container
    def mount_rootfs(self, overlay: dict | None) -> None:
        """Overlay (lower dirs read-only, upper/work for the writable layer) on root.path, in our namespace."""
        overlay = rootfs_mod.check_overlay(overlay)
        if not overlay:
            return
        if os.path.ismount(self.rootfs):
            raise OciError(f"rootfs {self.rootfs} is already a mount point")
        data = "lowerdir=" + ":".join(overlay["lower"])
        if overlay.get("upper"):
            data += f",upperdir={overlay['upper']},workdir={overlay['work']}"
        elif len(overlay["lower"]) < 2:
            raise ValueError("overlay rootfs without upper dir needs two or more lower dirs")
        for extra in overlay.get("options") or []:
            data += "," + extra
        try:
            linux.mount("overlay", self.rootfs, "overlay", 0, data)
        except OSError as exc:
            raise OciError(f"mount overlay rootfs on {self.rootfs}: {exc.strerror}") from None
        self.rootfs_mounted = True

    def fit_spec(self) -> None:
        """What the built-in launcher only warns about, but runc and crun fail on, made a warning here: an
        oomScoreAdj below ours needs CAP_SYS_RESOURCE, which a nested host (a container) may not give us."""
        proc = self.spec.get("process") or {}
        adj = proc.get("oomScoreAdj")
        if isinstance(adj, int) and not _has_cap(CAP_SYS_RESOURCE):
            with open("/proc/self/oom_score_adj") as f:
                floor = int(f.read())
            if adj < floor:
                proc["oomScoreAdj"] = floor
                self.warnings.append(f"oom_score_adj {adj} not applied (no CAP_SYS_RESOURCE): {floor} instead")

    def write_config(self) -> None:
        """<bundle>/config.json as the runtime reads it (the daemon writes its own before asking us)."""
        state.write_private(os.path.join(self.bundle, "config.json"), json.dumps(self.spec).encode())

    def create(self, stdio, terminal: bool) -> tuple[int, int | None]:
        """`create`: the container's init waits for `start`; returns (pid, pty master or None)."""
        os.makedirs(self.root, mode=0o700, exist_ok=True)
        pid_file = os.path.join(self.dir, "init.pid")
        args = ["create", "--bundle", self.bundle, "--pid-file", pid_file, self.id]
        self.created = True  # from here a failed create may leave state: delete --force cleans it
        master = None
        if terminal:
            master = self._with_console(args, stdio)
        else:
            self.run(*args, stdio=stdio)
        try:
            return self._read_pid(pid_file), master
        except BaseException:
            if master is not None:
                os.close(master)
            raise

    def start(self) -> None:
        self.run("start", self.id)

    def kill(self, sig: int, all_processes: bool = False) -> None:
        self.run("kill", *(["--all"] if all_processes else []), self.id, str(sig))

    def update(self, resources: dict) -> None:
        path = os.path.join(self.dir, "resources.json")
        with open(path, "w") as f:
            json.dump(resources, f)
        try:
            self.run("update", "--resources", path, self.id)
        finally:
            os.unlink(path)

    def exec(self, process: dict, stdio, terminal: bool) -> tuple[int, int | None]:
        """`exec --detach`: the process becomes the monitor's child to reap; returns (pid, pty master or None)."""
        tag = secrets.token_hex(6)
        proc_file = os.path.join(self.dir, f"exec-{tag}.json")
        pid_file = os.path.join(self.dir, f"exec-{tag}.pid")
        with open(proc_file, "w") as f:
            json.dump(process, f)
        args = ["exec", "--detach", "--pid-file", pid_file, "--process", proc_file]
        try:
            master = None
            if terminal:
                master = self._with_console(args + [self.id], stdio)  # process.terminal asks for the pty
            else:
                self.run(*args, self.id, stdio=stdio)
            try:
                return self._read_pid(pid_file), master
            except BaseException:
                if master is not None:
                    os.close(master)
                raise
        finally:
            for p in (proc_file, pid_file):
                try:
                    os.unlink(p)
                except FileNotFoundError:
                    pass

    def delete(self) -> list[str]:
        """`delete --force` (the runtime's state and cgroup), then the rootfs mount; returns what failed."""
        problems = []
        if self.created and os.path.isdir(os.path.join(self.root, self.id)):
            try:
                self.run("delete", "--force", self.id)
            except OciError as exc:
                problems.append(str(exc))
        self.created = False
        if self.rootfs_mounted:
            try:
                linux.umount2(self.rootfs, linux.MNT_DETACH)
                self.rootfs_mounted = False
            except OSError as exc:
                problems.append(f"unmount {self.rootfs}: {exc.strerror}")
        return problems
