"""Planning a container's process: an OCI spec (or an exec's process) checked and turned into a Plan, everything
decided in the parent, so that the child (launch/process.py's Python one, or launch/fastinit.py's pycri-init) has
little left that can fail and nothing left to read from the host.
"""
from __future__ import annotations

import ctypes
import json
import os
from dataclasses import dataclass, field

from runtime import cgroups
from runtime.host import linux
from runtime.launch import caps, hooks, rootfs as rootfs_mod, seccomp, userns as userns_mod

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class LaunchError(Exception):
    """The container process could not be created or started; the message says why."""


@dataclass
class Plan:
    """What the child does, validated in the parent so the child has few ways to fail."""
    spec: dict
    rootfs: str | None                     # None when joining an existing mount namespace (exec)
    overlay: dict | None = None
    clone_flags: int = 0
    unshare_flags: int = 0                 # namespaces made after the cgroup join (cgroup)
    join: list[tuple[str, str]] = field(default_factory=list)   # (type, path), pid excluded
    join_pid: str | None = None
    stdio: tuple[int, int, int] | None = None
    console_fd: int | None = None          # pty slave for process.terminal
    console_path: str | None = None
    cgroup_v2: bool = False
    capsets: dict[str, int] | None = None  # computed in the parent: /proc reads are slow in the child
    last_cap: int = 40
    seccomp: seccomp.Filter | None = None  # compiled in the parent: the child cannot load libraries
    warnings: list[str] = field(default_factory=list)
    uid_map: str | None = None             # for a new user namespace, made by the parent before the clone
    gid_map: str | None = None
    userns_path: str | None = None         # a user namespace to join (a pinned pod userns)
    # With a user namespace (new or joined) the child joins it first, then unshares every other new namespace
    # (so they belong to it; a new pid namespace then needs a fork); the parent prepares the idmapped mounts.
    userns_fd: int = -1                    # set by Process (parent) and inherited by the child
    pid_fork: bool = False                 # new pid namespace unshared in the child: the grandchild is the container
    userns_maps: tuple[str, str] | None = None  # (uid, gid) map text of that namespace, where known
    idmap_mounts: dict = field(default_factory=dict)   # spec mount index -> (uid map text, gid map text)
    mount_fds: dict = field(default_factory=dict)      # spec mount index -> detached idmapped mount fd (parent)
    overlay_fd: int = -1                   # detached overlay with idmapped lowers (parent)
    cgroup_tasks: list[bytes] | None = None  # files the child writes b"0" to, joining its cgroup (see cgroups)
    # When the child waits for the parent's "go": "early" (before anything: uid/gid maps, attach(pid)),
    # "late" (after its mounts, just before pivot_root: the parent makes the cgroup meanwhile, the child then
    # joins it itself), or None (no wait: nothing to do in the parent, e.g. an exec whose cgroup exists).
    go_stage: str | None = "early"
    auto_start: bool = False               # no "ready"/"start" handshake: exec as soon as set up (Process.run)
    cgroup_v1: list[tuple[str, str]] | None = None  # (name, options) of the host's v1 hierarchies
    cap_drop: list[tuple] | None = None    # prctl arguments (linux.prctl_args) dropping bounding-set bits
    cap_ambient: list[tuple] | None = None  # prctl arguments raising ambient bits
    # {"id", "bundle"} of a container's init process (set by the monitor): the child runs the spec's
    # createContainer/startContainer hooks only then (never for an exec, whose spec is the container's)
    hook_state: dict | None = None
    # the parent runs prestart/createRuntime hooks: the child stops for them after its mounts, before the
    # createContainer hooks and pivot_root (sends "H", waits for "C"), as runc's init does
    runtime_hooks: bool = False
    # LSM labels for the execve: ((paths to try, first that exists wins), bytes to write), see _plan_lsm
    lsm_exec: list[tuple[tuple[str, ...], bytes]] = field(default_factory=list)
    # bind mount sources seen by the fast-init planning: path -> linux.resolve(path), or None where missing
    sources: dict = field(default_factory=dict)


def plan_container(spec: dict, bundle: str, cid: str, *, overlay: dict | None = None,
                   stdio: tuple[int, int, int] | None = None, console_fd: int | None = None,
                   cgroup: bool = False, cgroup_tasks: list[bytes] | None = None) -> Plan:
    """plan_from_spec for a container's init (not an exec): its hooks, and when its child waits for the parent.
    cgroup: the spec has a cgroupsPath; cgroup_tasks: that cgroup's Cgroup.self_attach_paths()."""
    plan = plan_from_spec(spec, bundle, overlay=overlay, stdio=stdio, console_fd=console_fd)
    plan.hook_state = {"id": cid, "bundle": bundle}
    plan.runtime_hooks = bool(hooks.of(spec, "prestart") or hooks.of(spec, "createRuntime"))
    userns = bool(plan.clone_flags & linux.CLONE_NEWUSER)
    if cgroup and not userns:
        plan.cgroup_tasks = cgroup_tasks  # None: the parent attaches the pid
    if userns or (cgroup and (not plan.cgroup_tasks or plan.unshare_flags & linux.CLONE_NEWCGROUP)):
        # maps and attach(pid) before the child does anything; a new cgroup namespace must be made inside
        # the container's cgroup and before its /sys/fs/cgroup mount, so the child joins first there too
        plan.go_stage = "early"
    elif cgroup:
        plan.go_stage = "late"  # the parent makes the cgroup while the child mounts; it joins it by itself
    else:
        plan.go_stage = None
    return plan


def plan_from_spec(spec: dict, bundle: str | None, *, overlay: dict | None = None,
                   stdio: tuple[int, int, int] | None = None, console_fd: int | None = None) -> Plan:
    """Validate a spec and compute the namespace plan; raises LaunchError on bad input."""
    if not isinstance(spec, dict):
        raise LaunchError("config must be a JSON object")
    proc = spec.get("process")
    if not isinstance(proc, dict) or not isinstance(proc.get("args"), list) or not proc["args"] \
            or not all(isinstance(a, str) for a in proc["args"]):
        raise LaunchError("process.args must be a non-empty list of strings")
    if not isinstance(proc.get("cwd", "/"), str) or not proc.get("cwd", "/").startswith("/"):
        raise LaunchError("process.cwd must be an absolute path")
    root = spec.get("root") or {}
    root_path = root.get("path")
    if not isinstance(root_path, str) or not root_path:
        raise LaunchError("root.path is required")
    if not os.path.isabs(root_path):
        if bundle is None:
            raise LaunchError("root.path is relative but no bundle directory was given")
        root_path = os.path.join(bundle, root_path)
    try:
        real_root, is_dir = linux.resolve(root_path)
    except OSError:
        is_dir = False
    if not is_dir:
        raise LaunchError(f"rootfs {root_path!r} is not a directory")
    linux_cfg = spec.get("linux") or {}
    try:
        overlay = rootfs_mod.check_overlay(overlay)
    except ValueError as exc:
        raise LaunchError(str(exc)) from None
    plan = Plan(spec=spec, rootfs=real_root, overlay=overlay, stdio=stdio,
                console_fd=console_fd)
    seen = set()
    for ns in linux_cfg.get("namespaces") or []:
        kind, path = ns.get("type"), ns.get("path")
        if kind not in linux.NS_FLAGS:
            raise LaunchError(f"unknown namespace type {kind!r}")
        if kind in seen:
            raise LaunchError(f"namespace {kind!r} listed twice")
        seen.add(kind)
        if path:
            if not os.path.exists(path):
                raise LaunchError(f"namespace path {path!r} for {kind} does not exist")
            if kind == "pid":
                plan.join_pid = path
            else:
                plan.join.append((kind, path))
        elif kind == "cgroup":
            plan.unshare_flags |= linux.CLONE_NEWCGROUP
        else:
            plan.clone_flags |= linux.NS_FLAGS[kind]
    if "mount" not in seen:
        raise LaunchError("a mount namespace is required")
    _plan_userns(plan, spec, linux_cfg, overlay)
    if any(kind == "mount" for kind, _ in plan.join):
        plan.rootfs = None
    if console_fd is not None:
        plan.console_path = os.ttyname(console_fd)
    plan.cgroup_v2 = _host()["cgroup_v2"]
    if not plan.cgroup_v2 and any(isinstance(m, dict) and m.get("type") == "cgroup" for m in spec.get("mounts") or []):
        plan.cgroup_v1 = _host()["cgroup_v1"]  # read here: /proc/self/mountinfo is slow to parse in the child
    _plan_caps(plan, proc)
    try:
        hooks.validate(spec)
    except hooks.HookError as exc:
        raise LaunchError(str(exc)) from None
    _plan_mount_label(plan, linux_cfg.get("mountLabel"))
    for key, what in (("linux.intelRdt", linux_cfg.get("intelRdt")),):
        if what:
            plan.warnings.append(f"{key} is not supported by this runtime: ignored")
    return plan


_HOST_CACHE: dict = {}


def _plan_userns(plan: Plan, spec: dict, linux_cfg: dict, overlay: dict | None) -> None:
    """User namespace (new: maps from linux.uid/gidMappings; joined: a path) and idmapped mounts."""
    joined = [path for kind, path in plan.join if kind == "user"]
    if plan.clone_flags & linux.CLONE_NEWUSER:
        plan.uid_map = _id_map(linux_cfg.get("uidMappings"), "uidMappings")
        plan.gid_map = _id_map(linux_cfg.get("gidMappings"), "gidMappings")
        plan.userns_maps = (plan.uid_map, plan.gid_map)
    elif joined:
        plan.userns_path = joined[0]
        plan.join = [(kind, path) for kind, path in plan.join if kind != "user"]
        if linux_cfg.get("uidMappings") and linux_cfg.get("gidMappings"):  # what the spec says the joined one has
            plan.userns_maps = (_id_map(linux_cfg["uidMappings"], "uidMappings"),
                                _id_map(linux_cfg["gidMappings"], "gidMappings"))
    if plan.uid_map is not None or plan.userns_path is not None:
        # every new namespace is made after joining the user namespace, so that it belongs to it
        plan.unshare_flags |= plan.clone_flags & ~(linux.CLONE_NEWUSER | linux.CLONE_NEWPID)
        plan.pid_fork = bool(plan.clone_flags & linux.CLONE_NEWPID)
        if plan.pid_fork:
            plan.unshare_flags |= linux.CLONE_NEWPID
        plan.clone_flags = 0
    for i, m in enumerate(spec.get("mounts") or []):
        if isinstance(m, dict) and (m.get("uidMappings") or m.get("gidMappings")):
            opts = m.get("options") or []
            if m.get("type") != "bind" and not any(o in ("bind", "rbind") for o in opts):
                raise LaunchError(f"mount {m.get('destination')!r}: uidMappings/gidMappings need a bind mount")
            plan.idmap_mounts[i] = (_id_map(m.get("uidMappings"), f"mounts[{i}].uidMappings"),
                                    _id_map(m.get("gidMappings"), f"mounts[{i}].gidMappings"))
    if overlay and (overlay.get("uidMappings") or overlay.get("gidMappings")):
        plan.idmap_mounts["rootfs"] = (_id_map(overlay.get("uidMappings"), "overlay.uidMappings"),
                                       _id_map(overlay.get("gidMappings"), "overlay.gidMappings"))


def _id_map(mappings, name: str) -> str:
    """OCI uid/gid mappings -> the text written to /proc/<pid>/{uid,gid}_map."""
    if not isinstance(mappings, list) or not mappings:
        where = name if "." in name else f"linux.{name}"
        raise LaunchError(f"a new user namespace needs {where}")
    try:
        return userns_mod.map_text(mappings, name if "." in name else f"linux.{name}")
    except ValueError as exc:
        raise LaunchError(str(exc)) from None


def _host() -> dict:
    """Facts about this host and process that do not change while it runs (read once)."""
    if not _HOST_CACHE:
        _HOST_CACHE.update(cgroup_v2=cgroups.detect_version() == 2, last_cap=linux.cap_last_cap(),
                           permitted=caps.current_permitted(), cgroup_v1=rootfs_mod.v1_hierarchies())
    return _HOST_CACHE


# Where a process asks for the label of its next execve: AppArmor's own file (kernels with LSM stacking) or the
# shared one; SELinux's.
_APPARMOR_EXEC = ("/proc/thread-self/attr/apparmor/exec", "/proc/thread-self/attr/exec")


_SELINUX_EXEC = ("/proc/thread-self/attr/exec",)


# mounts that take a context= option for linux.mountLabel (as runc labels them); binds keep their files' labels,
# proc/sysfs/cgroup theirs (runc also relabels the mqueue mount point: not done)
_LABELED_MOUNTS = ("tmpfs", "devpts")


def _plan_lsm(plan: Plan, proc: dict) -> None:
    """process.apparmorProfile / process.selinuxLabel -> what the child writes before execve (only when asked)."""
    profile, label = proc.get("apparmorProfile"), proc.get("selinuxLabel")
    for key, value in (("process.apparmorProfile", profile), ("process.selinuxLabel", label)):
        if value is not None and (not isinstance(value, str) or "\n" in value or "\0" in value):
            raise LaunchError(f"{key} must be a one-line string")
    if profile:
        plan.lsm_exec.append((_APPARMOR_EXEC, f"exec {profile}".encode()))
    if label:
        plan.lsm_exec.append((_SELINUX_EXEC, label.encode()))


def _plan_mount_label(plan: Plan, label) -> None:
    """linux.mountLabel: a context= option on the spec's tmpfs and devpts mounts (in a copy of the spec)."""
    if not label:
        return
    if not isinstance(label, str) or any(c in label for c in '"\n\0'):
        raise LaunchError("linux.mountLabel must be a one-line string without quotes")
    mounts = []
    for m in plan.spec.get("mounts") or []:
        if isinstance(m, dict) and m.get("type") in _LABELED_MOUNTS and \
                not any(str(o).startswith("context=") for o in m.get("options") or []):
            m = dict(m, options=list(m.get("options") or []) + [f'context="{label}"'])
        mounts.append(m)
    plan.spec = dict(plan.spec, mounts=mounts)


def _plan_caps(plan: Plan, proc: dict) -> None:
    """Capability sets, last cap and seccomp filter: everything that needs /proc or libraries."""
    plan.last_cap = _host()["last_cap"]
    plan.capsets, plan.cap_drop, plan.cap_ambient = _cap_plan(proc.get("capabilities"), plan.last_cap)
    _plan_lsm(plan, proc)
    profile = (plan.spec.get("linux") or {}).get("seccomp")
    if profile:
        try:
            plan.seccomp = seccomp.compile(profile)
        except ValueError as exc:
            raise LaunchError(f"seccomp profile: {exc}") from None


def plan_for_exec(target_pid: int, process: dict, spec: dict, *, stdio=None, console_fd=None) -> Plan:
    """A plan that joins every namespace of target_pid that differs from ours and runs process."""
    if not isinstance(process, dict) or not process.get("args"):
        raise LaunchError("exec process.args must be a non-empty list of strings")
    plan = Plan(spec=dict(spec, process=process), rootfs=None, stdio=stdio, console_fd=console_fd)
    for kind in ("user", "ipc", "uts", "network", "cgroup", "pid", "mount"):
        name = linux.NS_PROC_NAMES[kind]
        target = f"/proc/{target_pid}/ns/{name}"
        try:
            if os.readlink(target) == os.readlink(f"/proc/self/ns/{name}"):
                continue
        except OSError as exc:
            raise LaunchError(f"container process {target_pid} is gone: {exc.strerror}") from None
        if kind == "pid":
            plan.join_pid = target
        else:
            plan.join.append((kind, target))
    _plan_caps(plan, process)
    return plan


_CAP_PLANS: dict = {}  # _cap_plan's, by the spec's capability lists: a node's containers share a few sets


def _cap_plan(spec_caps, last_cap: int) -> tuple:
    """(capsets, cap_drop, cap_ambient) for the spec's process.capabilities. The prctl argument lists (ctypes
    objects) are only passed to prctl, so plans may share them: one computation per distinct set (~0.1 ms)."""
    try:
        key = None if spec_caps is None else tuple((k, tuple(v)) for k, v in sorted(spec_caps.items()))
        hash(key)
    except (AttributeError, TypeError):
        key = ()  # not a dict of lists: _cap_sets says what is wrong
    if key != () and key in _CAP_PLANS:
        return _CAP_PLANS[key]
    try:
        capsets = _cap_sets(spec_caps)
    except ValueError as exc:
        raise LaunchError(str(exc)) from None
    cap_drop = cap_ambient = None
    if capsets is not None:
        cap_drop = [linux.prctl_args(linux.PR_CAPBSET_DROP, c) for c in range(last_cap + 1)
                    if not capsets["bounding"] & (1 << c)]
        raise_ = linux.PR_CAP_AMBIENT_RAISE
        cap_ambient = [(*linux.prctl_args(linux.PR_CAP_AMBIENT, raise_)[:2], ctypes.c_ulong(c),
                        ctypes.c_ulong(0), ctypes.c_ulong(0))
                       for c in range(last_cap + 1) if capsets["ambient"] & (1 << c)]
    if key != ():
        if len(_CAP_PLANS) >= 64:
            _CAP_PLANS.clear()
        _CAP_PLANS[key] = (capsets, cap_drop, cap_ambient)
    return capsets, cap_drop, cap_ambient


def spec_json(path: str) -> dict:
    """Read a bundle's config.json with a clear error."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            chunks = []
            while chunk := os.read(fd, 1 << 20):  # (no file object: a third of the time for a 2 KiB spec)
                chunks.append(chunk)
        finally:
            os.close(fd)
        return json.loads(b"".join(chunks))
    except FileNotFoundError:
        raise LaunchError(f"{path} not found") from None
    except (OSError, ValueError) as exc:
        raise LaunchError(f"cannot read {path}: {exc}") from None


def _cap_sets(spec_caps: dict | None) -> dict[str, int] | None:
    if spec_caps is None:
        return None
    have = _host()["permitted"]
    return {k: caps.mask(spec_caps.get(k)) & have
            for k in ("bounding", "effective", "permitted", "inheritable", "ambient")}
