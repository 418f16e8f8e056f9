"""The launcher's process: a Plan (launch/plan.py) made into a process in its namespaces, ready to exec.

Parent side (the monitor or the CLI; it must be single-threaded):
    plan = plan_from_spec(spec, bundle, stdio=(0, 1, 2))   # or plan_for_exec(pid, process, spec)
    proc = Process(plan)          # clone(2) with the new namespaces; the child waits for "go"
    cgroup.attach(proc.pid)       # optional, while the child waits
    proc.setup()                  # "go": namespaces, mounts, pivot_root...; raises LaunchError
    proc.start()                  # "start": drop privileges, execve; raises LaunchError
    proc.pid                      # the container process, to be reaped by the caller
Child -> parent messages go over a close-on-exec pipe, one line each:
    "P <pid>" grandchild pid (after joining a pid namespace), "W <text>" warning, "R" ready,
    "E <text>" fatal error. EOF after "start" means execve succeeded.
Everything the child needs from /proc or shared libraries is prepared here first: after pivot_root it can
no longer import modules or dlopen.
"""
from __future__ import annotations

import errno
import fcntl
import gc
import os
import resource
import signal
import termios

from runtime.host import linux
from runtime.launch import fastinit, hooks, initproc, rootfs as rootfs_mod, userns as userns_mod
from runtime.launch.plan import DEFAULT_PATH, LaunchError, Plan


def _prepare_userns(plan: Plan) -> None:
    """Parent side, before the clone: the user namespace fd and the idmapped mounts (see runtime/launch/userns.py).
    On failure everything opened so far is closed and LaunchError raised."""
    try:
        if plan.uid_map is not None:
            with _Stage("creating the user namespace"):
                plan.userns_fd = userns_mod.create(plan.uid_map, plan.gid_map)
        elif plan.userns_path is not None:
            with _Stage("opening the user namespace"):
                plan.userns_fd = os.open(plan.userns_path, os.O_RDONLY | os.O_CLOEXEC)
        own = {plan.userns_maps: plan.userns_fd} if plan.userns_maps is not None else {}
        made: list[int] = []

        def ns_for(maps) -> int:
            ns_fd = own.get(maps)
            if ns_fd is None:  # mappings of their own (or of a joined namespace whose maps we do not know)
                ns_fd = own[maps] = userns_mod.create(*maps)
                made.append(ns_fd)
            return ns_fd

        try:
            if "rootfs" in plan.idmap_mounts:
                with _Stage("idmapping the rootfs layers"):
                    ns_fd = ns_for(plan.idmap_mounts["rootfs"])
                    userns_mod.chown_upper(plan.overlay, plan.overlay.get("uidMappings") or [],
                                           plan.overlay.get("gidMappings") or [])
                    plan.overlay_fd = userns_mod.idmapped_overlay(plan.overlay, ns_fd)
            # bind sources: idmapped ones, and in a user namespace all of them (as runc: opened here, as host root,
            # the source need not be reachable by the container's root, e.g. below a 0700 state dir)
            in_userns = plan.userns_fd >= 0
            for i, m in enumerate(plan.spec.get("mounts") or []):
                opts = (m.get("options") or []) if isinstance(m, dict) else []
                is_bind = isinstance(m, dict) and (m.get("type") == "bind" or "bind" in opts or "rbind" in opts)
                if not is_bind or not (in_userns or i in plan.idmap_mounts):
                    continue
                with _Stage(f"opening the source of {m.get('destination')}"):
                    if i in plan.idmap_mounts:
                        plan.mount_fds[i] = userns_mod.idmapped_tree(
                            m.get("source") or "", ns_for(plan.idmap_mounts[i]), recursive_tree="rbind" in opts,
                            recursive_idmap="ridmap" in opts)
                    else:
                        plan.mount_fds[i] = userns_mod.open_tree_clone(m.get("source") or "", "rbind" in opts)
        finally:
            for fd in made:
                os.close(fd)
    except BaseException as exc:
        _close_prepared(plan)
        if isinstance(exc, LaunchError):
            raise
        raise LaunchError(_describe(exc)) from None


def _close_prepared(plan: Plan) -> None:
    """Parent side, after the clone (the child has its copies) or on failure."""
    for fd in [plan.userns_fd, plan.overlay_fd, *plan.mount_fds.values()]:
        if fd >= 0:
            try:
                os.close(fd)
            except OSError:
                pass
    plan.userns_fd = plan.overlay_fd = -1
    plan.mount_fds = {}


def _write_lsm_exec(entries: list[tuple[tuple[str, ...], bytes]]) -> None:
    """Child side: ask for the LSM label of the coming execve (as runc's apparmor.ApplyProfile/SetExecLabel)."""
    for paths, data in entries:
        for i, path in enumerate(paths):
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                if i + 1 < len(paths):
                    continue
                raise
            try:
                os.write(fd, data)
            except OSError as exc:  # e.g. EINVAL/ENOENT: no such profile loaded
                raise OSError(exc.errno, f"{exc.strerror} (writing {data.decode(errors='replace')!r})", path) from None
            finally:
                os.close(fd)
            break


class _Channel:
    """Line messages from the child."""

    def __init__(self, fd: int):
        self.fd = fd
        self.buf = b""

    def read(self) -> tuple[str, str] | None:
        while b"\n" not in self.buf:
            try:
                chunk = os.read(self.fd, 65536)
            except InterruptedError:
                continue
            if not chunk:
                return None
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        kind, _, payload = line.decode(errors="replace").partition(" ")
        return kind, payload


class Process:
    """Parent-side handle on a launched container process."""

    def __init__(self, plan: Plan, spare: initproc.Spare | None = None,
                 parts: tuple[bytes, bytes] | None = None):
        """spare: a pycri-init started ahead (initproc.Spare), used when it fits the plan (self.used_spare);
        the caller releases it otherwise. parts: the plan's pycri-init operation list, made by the client
        (fastinit.prepared_plan): fast init, with no eligibility check or encoding here."""
        self.plan = plan
        self.warnings: list[str] = list(plan.warnings)
        self.used_spare = False
        c2p_r, c2p_w = os.pipe2(os.O_CLOEXEC)
        p2c_r, p2c_w = os.pipe2(os.O_CLOEXEC)
        try:
            _prepare_userns(plan)
        except LaunchError:
            for fd in (c2p_r, c2p_w, p2c_r, p2c_w):
                os.close(fd)
            raise
        # fast init (runtime/launch/fastinit.py): a small C program executes the plan, spawned without copying us
        self.fast = parts is not None or (fastinit.enabled() and fastinit.eligible(plan))
        try:
            if self.fast and spare is not None and spare.fits(plan):
                try:
                    pid = spare.use(plan, c2p_w, p2c_r, parts)
                    self.used_spare = True
                except OSError:  # it died meanwhile: spawn one
                    pid = initproc.spawn(plan, c2p_w, p2c_r, parts)
            elif self.fast:
                pid = initproc.spawn(plan, c2p_w, p2c_r, parts)
            else:
                pid = linux.clone(plan.clone_flags)
        except (OSError, ValueError) as exc:
            pid = -1
            for fd in (c2p_r, c2p_w, p2c_r, p2c_w):
                os.close(fd)
            what = "spawning pycri-init" if self.fast else "clone"
            raise LaunchError(f"{what}: {getattr(exc, 'strerror', None) or exc}") from None
        finally:
            if pid != 0:  # the child has its copies of the user namespace and mount fds
                _close_prepared(plan)
        if pid == 0:  # the child: never returns
            code = 1
            try:
                os.close(c2p_r)
                os.close(p2c_w)
                _child(plan, p2c_r, c2p_w)
            except BaseException as exc:  # noqa: BLE001 - everything must become a message
                _send(c2p_w, "E", _describe(exc))
            finally:
                os._exit(code)
        os.close(c2p_w)
        os.close(p2c_r)
        self.pid = pid
        self._clone_pid = pid
        self._chan = _Channel(c2p_r)
        self._go = p2c_w
        self._closed = False

    def setup(self) -> None:
        """Let the child set up namespaces and mounts; returns when it is ready to exec."""
        self.go()
        self.wait_ready()

    def go(self) -> None:
        """Let the child go on with its set-up (the caller may work in parallel, then call wait_ready).
        A no-op for a plan whose child does not wait (go_stage None)."""
        if self.plan.go_stage is None:
            return
        self._send("G")

    def wait_ready(self) -> None:
        """Wait for the child's "ready" (raises LaunchError when its set-up failed)."""
        self._wait_for("R")

    def setup_outcome(self) -> str | None:
        """For a child that ended (reaped) before its "ready" was read: the error its set-up reported, or a
        generic one; None if it had got ready. Reads what it wrote, to the end (its end of the pipe is closed)."""
        while True:
            msg = self._chan.read()
            if msg is None:
                return "container process exited during set-up"
            kind, payload = msg
            if kind == "W":
                self.warnings.append(payload)
            elif kind == "R":
                return None
            elif kind == "E":
                return payload

    def wait_hooks_point(self) -> None:
        """With plan.runtime_hooks: wait until the child stops for the prestart/createRuntime hooks (self.pid is
        then the container's); run them, then resume()."""
        self._wait_for("H")

    def resume(self) -> None:
        """Let the child go on after the runtime hooks."""
        self._send("C")

    def _wait_for(self, want: str) -> None:
        # after joining a pid namespace the grandchild's message may overtake the intermediate's "P"
        need_pid = (self.plan.join_pid is not None or self.plan.pid_fork) and self.pid == self._clone_pid
        seen = False
        while need_pid or not seen:
            msg = self._chan.read()
            if msg is None:
                self._fail("container process exited during set-up")
            kind, payload = msg
            if kind == "P":
                self.pid = int(payload)
                need_pid = False
                _reap(self._clone_pid)
            elif kind == "W":
                self.warnings.append(payload)
            elif kind == want:
                seen = True
            elif kind == "E":
                self._fail(payload)

    def start(self) -> None:
        """Let the child exec; returns once execve succeeded."""
        self.begin_start()
        self.wait_started()

    def begin_start(self) -> None:
        """Let the child drop privileges and exec (the caller may work in parallel, then call wait_started)."""
        self._send("S")

    def wait_started(self) -> None:
        """Returns once execve succeeded (EOF on the close-on-exec pipe); raises LaunchError otherwise."""
        while True:
            msg = self._chan.read()
            if msg is None:
                self.close()
                return
            kind, payload = msg
            if kind == "W":
                self.warnings.append(payload)
            elif kind == "P":  # auto_start with a pid-namespace join
                self.pid = int(payload)
                _reap(self._clone_pid)
            elif kind == "E":
                self._fail(payload)

    def run(self) -> None:
        """For an auto_start plan (an exec): go, and return once execve succeeded (one wait, no handshake)."""
        self.go()
        self.wait_started()

    def abort(self) -> None:
        """Kill a not-yet-started child and reap it."""
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.close()
        _reap(self.pid)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            os.close(self._chan.fd)
            os.close(self._go)
            if self.plan.seccomp is not None:
                self.plan.seccomp.release()
                self.plan.seccomp = None

    def _send(self, what: str) -> None:
        try:
            os.write(self._go, what.encode())
        except BrokenPipeError:
            pass

    def _fail(self, message: str):
        self.abort()
        raise LaunchError(message)


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass


def _send(fd: int, kind: str, payload: str = "") -> None:
    os.write(fd, f"{kind} {payload.replace(chr(10), ' ')}\n".encode())


def _describe(exc: BaseException) -> str:
    stage = getattr(exc, "stage", None)
    if isinstance(exc, OSError) and exc.strerror:
        text = f"{exc.filename}: {exc.strerror}" if exc.filename else exc.strerror
    else:
        text = str(exc) or type(exc).__name__
    return f"{stage}: {text}" if stage else text


class _Stage:
    """Context manager that tags an exception with the set-up stage it happened in."""

    def __init__(self, name: str):
        self.name = name

    def __enter__(self):
        return self

    def __exit__(self, et, exc, tb):
        if exc is not None and not hasattr(exc, "stage"):
            try:
                exc.stage = self.name
            except AttributeError:
                pass
        return False


def _wait_byte(fd: int, want: bytes) -> None:
    while True:
        try:
            b = os.read(fd, 1)
        except InterruptedError:
            continue
        if b == want:
            return
        os._exit(1)  # the parent went away or aborted: never exec


def _child(plan: Plan, p2c: int, c2p: int) -> None:
    gc.disable()  # a collection would touch (and copy-on-write) every page of the parent's heap
    # Before anything of the container can see this process: non-dumpable, so that no process in there opens its
    # /proc/<pid>/exe (the interpreter: CVE-2019-5736) or fds (the execve makes the container's program dumpable
    # again), and holding only the fds it was given (the monitor's logs, sockets and pipes stay out: CVE-2024-21626)
    linux.prctl(linux.PR_SET_DUMPABLE, 0)
    linux.close_all_but({p2c, c2p, *(plan.stdio or ()), plan.console_fd, plan.userns_fd, plan.overlay_fd,
                         *plan.mount_fds.values()})
    signal.set_wakeup_fd(-1)
    for sig in (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT, signal.SIGTERM, signal.SIGCHLD, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, [])
    # "late" (cgroup joined just before pivot_root) is not for a user namespace: the child could no longer
    # write the host's cgroup files once in it
    late = plan.go_stage == "late" and plan.rootfs is not None and plan.userns_fd < 0
    if plan.go_stage is not None and not late:
        _wait_byte(p2c, b"G")
    if plan.cgroup_tasks and not late:
        _join_cgroup(plan.cgroup_tasks)
    spec = plan.spec
    proc = spec["process"]
    lin = spec.get("linux") or {}

    with _Stage("joining namespaces"):
        # open every path first: joining the mount namespace changes what the paths mean
        fds = [(kind, os.open(path, os.O_RDONLY | os.O_CLOEXEC)) for kind, path in plan.join]
        # the pid namespace last, then a fork: the process is in it only once it is in all the others (a
        # container's root with CAP_SYS_PTRACE would otherwise find it there in the host's mount namespace)
        pid_fd = os.open(plan.join_pid, os.O_RDONLY | os.O_CLOEXEC) if plan.join_pid else -1
        order = {"user": 0, "mount": 2}  # the user namespace first (it owns the others), mount last
        for kind, fd in sorted(fds, key=lambda kf: order.get(kf[0], 1)):
            linux.setns(fd, linux.NS_FLAGS[kind])
            os.close(fd)
        if plan.userns_fd >= 0:  # after the others (joined as host root), before the new ones (then its own)
            linux.setns(plan.userns_fd, linux.CLONE_NEWUSER)
            os.close(plan.userns_fd)
            plan.userns_fd = -2  # joined (still "in a user namespace" for what follows)
        if plan.userns_fd != -1:
            # become root of the user namespace: host root is unmapped there, so file creation
            # (mkdir, mknod) would fail with EOVERFLOW
            try:
                os.setresgid(0, 0, 0)
                os.setresuid(0, 0, 0)
                os.setgroups([])
            except OSError as exc:
                if exc.errno != errno.EINVAL:  # 0 not mapped: stay as we are
                    raise
        if plan.unshare_flags:
            linux.unshare(plan.unshare_flags)
        if pid_fd >= 0 or plan.pid_fork:  # pid_fork: a new pid namespace unshared above
            if pid_fd >= 0:
                linux.setns(pid_fd, linux.CLONE_NEWPID)
                os.close(pid_fd)
            pid = os.fork()
            if pid:
                _send(c2p, "P", str(pid))
                os._exit(0)

    if plan.rootfs is not None:
        _setup_rootfs(plan, spec, lin, p2c if late else -1, c2p, p2c)
    elif plan.runtime_hooks:
        _runtime_hooks_pause(c2p, p2c)

    with _Stage("setting hostname"):
        new_uts = (plan.clone_flags | plan.unshare_flags) & linux.CLONE_NEWUTS
        if spec.get("hostname") and new_uts:
            linux.sethostname(spec["hostname"])
        if spec.get("domainname") and new_uts:
            linux.setdomainname(spec["domainname"])
    # what needs a new fd comes before the rlimits: this clone still holds the monitor's fds, so a low
    # RLIMIT_NOFILE would refuse it (EMFILE, or EINVAL for the stdio's dup above 100)
    if proc.get("oomScoreAdj") is not None:
        try:
            with open("/proc/self/oom_score_adj", "w") as f:
                f.write(str(int(proc["oomScoreAdj"])))
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.EACCES):
                raise
            _send(c2p, "W", f"oom_score_adj {proc['oomScoreAdj']} not applied: {exc.strerror}")
    with _Stage("setting up stdio"):
        stdio = _stdio_sources(plan, proc)
    with _Stage("setting rlimits"):
        for rl in proc.get("rlimits") or []:
            res = getattr(resource, str(rl.get("type", "")), None)
            if not isinstance(res, int) or not str(rl["type"]).startswith("RLIMIT_"):
                raise ValueError(f"unknown rlimit {rl.get('type')!r}")
            resource.setrlimit(res, (_rlim(rl.get("soft")), _rlim(rl.get("hard"))))

    with _Stage("setting up stdio"):
        _setup_stdio(plan, proc, stdio)
    env = [e for e in proc.get("env") or [] if isinstance(e, str) and "=" in e]
    env_map = dict(e.split("=", 1) for e in env)
    with _Stage("resolving the executable"):
        path = _find_executable(proc["args"][0], env_map.get("PATH", DEFAULT_PATH))
    cwd = proc.get("cwd") or "/"
    with _Stage(f"changing to cwd {cwd!r}"):
        os.chdir(cwd)
        _check_cwd_inside(cwd)
    filt = plan.seccomp
    user = proc.get("user") or {}
    os.umask(int(user.get("umask", 0o022)))

    if not plan.auto_start:
        _send(c2p, "R")
        _wait_byte(p2c, b"S")

    if plan.hook_state is not None and hooks.of(spec, "startContainer"):  # a container's init, not an exec
        with _Stage("startContainer hooks"):
            hooks.run("startContainer", spec, _hook_state(plan, "created"))
    if plan.lsm_exec:  # before seccomp, which may not allow the write
        with _Stage("setting the LSM exec label"):
            _write_lsm_exec(plan.lsm_exec)
    nnp = bool(proc.get("noNewPrivileges"))
    if filt is not None and not nnp:
        with _Stage("loading seccomp"):
            filt.load()
    with _Stage("dropping privileges"):
        _drop_privileges(user, plan)
    if nnp:
        linux.prctl(linux.PR_SET_NO_NEW_PRIVS, 1)
    if filt is not None and nnp:
        with _Stage("loading seccomp"):
            filt.load()
    with _Stage("exec"):
        os.closerange(3, c2p)
        os.closerange(c2p + 1, 65536)
        os.execve(path, proc["args"], env_map)


def _check_cwd_inside(cwd: str) -> None:
    """The working directory must be inside the container's root: one reached through an fd of the host
    ("/proc/self/fd/<n>") is not, and then the kernel's getcwd answers "(unreachable)..." (ENOENT here)."""
    try:
        os.getcwd()
    except FileNotFoundError:
        raise LaunchError(f"the working directory {cwd!r} is outside the container") from None


def _hook_state(plan: Plan, status: str) -> dict:
    hs = plan.hook_state or {}
    return hooks.state(plan.spec, hs.get("id", ""), hs.get("bundle", ""), status, os.getpid())


def _join_cgroup(tasks: list[bytes]) -> None:
    with _Stage("joining the cgroup"):
        for path in tasks:
            fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
            try:
                os.write(fd, b"0")
            finally:
                os.close(fd)


def _runtime_hooks_pause(c2p: int, p2c: int) -> None:
    """Let the parent run the prestart/createRuntime hooks now: namespaces made, mounts done, not yet pivoted."""
    _send(c2p, "H")
    _wait_byte(p2c, b"C")


def _setup_rootfs(plan: Plan, spec: dict, lin: dict, go_fd: int, c2p: int, p2c: int) -> None:
    rootfs = plan.rootfs
    with _Stage("mounting rootfs"):
        rootfs_mod.mount_rootfs(rootfs, plan.overlay, lin.get("rootfsPropagation"), overlay_fd=plan.overlay_fd)
        # what is made and mounted in the rootfs is resolved from this fd (rootfs.open_in_root), never as a string
        root_fd = os.open(rootfs, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    dev_is_ours = False
    in_userns = plan.userns_fd != -1
    for i, m in enumerate(spec.get("mounts") or []):
        with _Stage(f"mounting {m.get('destination')}"):
            rootfs_mod.mount_one(root_fd, m, plan.cgroup_v2, plan.cgroup_v1, mount_fd=plan.mount_fds.get(i, -1),
                                 in_userns=in_userns)
            if m.get("destination") == "/dev" and m.get("type") != "bind":
                dev_is_ours = True
    with _Stage("creating devices"):
        rootfs_mod.create_devices(root_fd, lin.get("devices") or [], dev_is_ours, bind=in_userns)
        if plan.console_path:
            rootfs_mod.bind_console(root_fd, plan.console_path)
    os.close(root_fd)
    if go_fd >= 0:  # go_stage "late": the parent has made the cgroup meanwhile; join it (host paths: before pivot)
        _wait_byte(go_fd, b"G")
        if plan.cgroup_tasks:
            _join_cgroup(plan.cgroup_tasks)
    if plan.runtime_hooks:
        _runtime_hooks_pause(c2p, p2c)
    if plan.hook_state is not None and hooks.of(spec, "createContainer"):  # container namespaces, host paths
        with _Stage("createContainer hooks"):
            hooks.run("createContainer", spec, _hook_state(plan, "creating"))
    with _Stage("pivot_root"):
        rootfs_mod.pivot(rootfs)
    with _Stage("writing sysctls"):  # before /proc/sys becomes read-only
        rootfs_mod.write_sysctls(lin.get("sysctl") or {})
    with _Stage("masking paths"):
        rootfs_mod.mask_paths(lin.get("maskedPaths") or [])
    with _Stage("making paths read-only"):
        rootfs_mod.readonly_paths(lin.get("readonlyPaths") or [])
    if (spec.get("root") or {}).get("readonly"):
        with _Stage("remounting rootfs read-only"):
            rootfs_mod.remount_ro("/")
    prop = lin.get("rootfsPropagation")
    if prop in ("shared", "rshared", "slave", "rslave", "unbindable", "runbindable", "private"):
        linux.mount(None, "/", None, rootfs_mod._PROPAGATION[prop])


def _stdio_sources(plan: Plan, proc: dict) -> list[int]:
    """The stdio fds dup'd to 100 and above, so that putting them on 0/1/2 cannot clobber one (before rlimits)."""
    if plan.stdio is None or (proc.get("terminal") and plan.console_fd is not None):
        return []
    return [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 100) for fd in plan.stdio]


def _setup_stdio(plan: Plan, proc: dict, sources: list[int]) -> None:
    """Put the stdio on 0-2 and close where it came from: from here on only 0-2 and the pipes to the monitor
    are open."""
    if proc.get("terminal") and plan.console_fd is not None:
        os.setsid()
        fcntl.ioctl(plan.console_fd, termios.TIOCSCTTY, 0)
        for i in range(3):
            os.dup2(plan.console_fd, i)
    else:
        for i, fd in enumerate(sources):
            os.dup2(fd, i)
    for fd in {*sources, *(plan.stdio or ()), plan.console_fd}:
        if fd is not None and fd > 2:
            os.close(fd)


def _find_executable(arg0: str, path_var: str) -> str:
    if "/" in arg0:
        if not os.path.exists(arg0):
            raise FileNotFoundError(errno.ENOENT, f'exec: "{arg0}": no such file or directory')
        if not os.access(arg0, os.X_OK) or os.path.isdir(arg0):
            raise PermissionError(errno.EACCES, f'exec: "{arg0}": permission denied')
        return arg0
    for d in path_var.split(":"):
        cand = os.path.join(d or ".", arg0)
        if os.path.isfile(cand) and os.access(cand, os.X_OK):
            return cand
    raise FileNotFoundError(errno.ENOENT, f'exec: "{arg0}": executable file not found in $PATH')


def _rlim(v) -> int:
    if v is None or int(v) >= 2**63 - 1 or int(v) < 0:
        return resource.RLIM_INFINITY
    return int(v)


def _drop_privileges(user: dict, plan: Plan) -> None:
    uid, gid = int(user.get("uid", 0)), int(user.get("gid", 0))
    capset = plan.capsets
    if capset is not None:
        for args in plan.cap_drop:
            linux.prctl_call(args)
    linux.prctl(linux.PR_SET_KEEPCAPS, 1)
    os.setgroups([int(g) for g in user.get("additionalGids") or []])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    linux.prctl(linux.PR_SET_KEEPCAPS, 0)
    if capset is not None:
        linux.capset(capset["effective"], capset["permitted"], capset["inheritable"])
        linux.prctl(linux.PR_CAP_AMBIENT, linux.PR_CAP_AMBIENT_CLEAR_ALL)
        for args in plan.cap_ambient:
            linux.prctl_call(args)


