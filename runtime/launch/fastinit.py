"""Fast init: the container's child as a small static C program (initc/pycri-init.c) instead of a clone of the
Python monitor running process._child, for the plans it carries out completely (docs/runtime.md, "Fast init").

    eligible(plan) -> bool      what the C side implements completely (else: the Python child)
    encode(plan) -> bytes       the operation list, in process._child's order and with its stage names
    prepare(plan) -> dict       the operation list made by the monitor's client (launch/prepare.py)
The pycri-init processes (spawned, spares, their factory) are launch/initproc.py's.
PYCRI_FASTINIT=0 (in the monitor's environment) always uses the Python child.
"""
from __future__ import annotations

import binascii
import os
import resource
import struct

from runtime.host import linux, mountinfo
from runtime.host.linux import MS_BIND, MS_RDONLY, MS_REC, MS_REMOUNT
from runtime.launch import hooks, rootfs as rootfs_mod
from runtime.launch.plan import DEFAULT_PATH, Plan

BINARY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "initc", "pycri-init")

(OP_STAGE, OP_WAIT_G, OP_CGJOIN, OP_JOINNS, OP_UNSHARE, OP_FAIL, OP_MOUNT, OP_RESOLVE, OP_MKDIRS, OP_TOUCH,
 OP_REMOUNT_RO, OP_SETATTR, OP_MKNOD, OP_UMASK, OP_UMASK_RESTORE, OP_SYMLINK, OP_PIVOT, OP_WRITEFILE, OP_MASK,
 OP_ROPATH, OP_HOSTNAME, OP_DOMAINNAME, OP_RLIMIT, OP_OOM, OP_STDIO, OP_FINDEXE, OP_CHDIR, OP_READY, OP_SECCOMP,
 OP_DROP, OP_NNP, OP_EXEC, OP_MKDIRS_PARENT, OP_WARN, OP_CONTINUE, OP_FORK) = range(1, 37)

ABS, REG1, REG2 = 0, 1, 2  # path registers (see pycri-init.c): 0 = an absolute path
_NS_ORDER = {"user": 0, "mount": 2}
_DEV_KINDS = {"c": 0o020000, "u": 0o020000, "b": 0o060000, "p": 0o010000}
_RLIM_INF = resource.RLIM_INFINITY


def enabled() -> bool:
    return os.environ.get("PYCRI_FASTINIT") != "0" and os.access(BINARY, os.X_OK)


def eligible(plan) -> bool:
    """True only for plans pycri-init carries out exactly as launch._child would."""
    try:
        return _eligible(plan)
    except (AttributeError, KeyError, TypeError, ValueError):
        return False


def _eligible(plan) -> bool:
    spec = plan.spec
    proc = spec.get("process") or {}
    lin = spec.get("linux") or {}
    if plan.clone_flags & linux.CLONE_NEWUSER or plan.uid_map is not None or plan.userns_path is not None \
            or plan.userns_fd != -1 or plan.pid_fork or plan.userns_maps is not None:
        return False
    if any(kind == "user" for kind, _ in plan.join):
        return False
    if plan.mount_fds or plan.overlay_fd != -1 or plan.idmap_mounts:
        return False
    if plan.runtime_hooks or plan.lsm_exec:
        return False
    if plan.hook_state is not None and (hooks.of(spec, "createContainer") or hooks.of(spec, "startContainer")):
        return False
    if proc.get("terminal") or plan.console_fd is not None or plan.console_path is not None:
        return False
    if (plan.clone_flags | plan.unshare_flags) & ~(linux.CLONE_NEWNS | linux.CLONE_NEWUTS | linux.CLONE_NEWIPC
                                                    | linux.CLONE_NEWPID | linux.CLONE_NEWNET | linux.CLONE_NEWCGROUP):
        return False  # (a time namespace: not done here)
    if any(kind not in ("mount", "network", "ipc", "uts", "cgroup") for kind, _ in plan.join):
        return False
    if plan.join_pid is not None and plan.clone_flags & linux.CLONE_NEWPID:
        return False
    if plan.capsets is not None and (plan.cap_drop is None or plan.cap_ambient is None):
        return False
    if plan.rootfs is None:
        # an exec: only when it joins a mount namespace (never sets up a rootfs)
        if not any(kind == "mount" for kind, _ in plan.join):
            return False
    else:
        if any(kind == "mount" for kind, _ in plan.join):
            return False
        for m in spec.get("mounts") or []:
            if not isinstance(m, dict) or not isinstance(m.get("destination"), str):
                return False
            if m.get("uidMappings") or m.get("gidMappings"):
                return False
            opts = m.get("options") or []
            if not isinstance(opts, list) or not all(isinstance(o, str) for o in opts):
                return False
            if not isinstance(m.get("type") or "", str) or not isinstance(m.get("source") or "", str):
                return False
            flags, _, _ = rootfs_mod.parse_options(opts)
            src = m.get("source") or ""
            if (m.get("type") == "bind" or flags & MS_BIND) and \
                    ((_source(plan, src) or (os.path.realpath(src),))[0] + "/").startswith(
                        plan.rootfs.rstrip("/") + "/"):
                return False  # a bind source inside the rootfs: the parent cannot see what the child would
        for d in lin.get("devices") or []:
            if not isinstance(d, dict) or not isinstance(d.get("path"), str) or d.get("type") not in _DEV_KINDS:
                return False
            if not all(d.get(k) is None or type(d.get(k)) is int for k in ("major", "minor", "fileMode", "uid", "gid")):
                return False
        for key in ("maskedPaths", "readonlyPaths"):
            if not all(isinstance(p, str) for p in lin.get(key) or []):
                return False
        for k, v in (lin.get("sysctl") or {}).items():
            if not isinstance(k, str):
                return False
        if not isinstance(spec.get("hostname") or "", str) or not isinstance(spec.get("domainname") or "", str):
            return False
    for rl in proc.get("rlimits") or []:
        if not isinstance(rl, dict):
            return False
    if not isinstance(proc.get("args"), list) or not all(isinstance(a, str) for a in proc["args"]):
        return False
    for e in proc.get("env") or []:
        if isinstance(e, str) and "\0" in e:
            return False
    if any("\0" in a for a in proc["args"]):
        return False
    return True


def _source(plan, path: str) -> tuple[str, bool] | None:
    """linux.resolve(path) of a bind mount source, once per plan (eligible() and the encoding both need it);
    None where it does not exist."""
    if path not in plan.sources:
        try:
            plan.sources[path] = linux.resolve(path)
        except OSError:
            plan.sources[path] = None
    return plan.sources[path]


_U8 = [bytes((i,)) for i in range(256)]
_PACK_Q = struct.Struct("<q").pack
_PACK_I = struct.Struct("<I").pack
_NONE = b"\xff\xff\xff\xff"
# Encoded strings, by string: most of a plan's strings (stage names, /proc and /dev paths, mount types and
# options, env) are the same from one container to the next; encoding each anew was ~40% of a plan's encoding.
_STR_CODE: dict[str, bytes] = {}
_STR_CODE_MAX = 4096


class _Enc:
    def __init__(self, header: bool = True):
        self.parts: list[bytes] = [b"P\x01"] if header else []

    def u8(self, v: int) -> None:
        self.parts.append(_U8[v])

    def i64(self, v: int) -> None:
        self.parts.append(_PACK_Q(v if v < 2**63 else v - 2**64))

    def i64s(self, vs: list[int]) -> None:
        """A count, then the values (each in range)."""
        self.parts.append(struct.pack(f"<q{len(vs)}q", len(vs), *vs))

    def s(self, v) -> None:
        if type(v) is str:
            code = _STR_CODE.get(v)
            if code is None:
                if "\0" in v:
                    raise ValueError("NUL in a string")
                raw = v.encode("utf-8", "surrogateescape")
                code = _PACK_I(len(raw)) + raw + b"\0"
                if len(_STR_CODE) >= _STR_CODE_MAX:
                    _STR_CODE.clear()
                _STR_CODE[v] = code
            self.parts.append(code)
            return
        if v is None:
            self.parts.append(_NONE)
            return
        raw = bytes(v)
        self.parts.append(_PACK_I(len(raw)) + raw + b"\0")

    def path(self, reg: int, s: str) -> None:
        self.u8(reg)
        self.s(s)

    def op(self, code: int, *args) -> None:
        self.u8(code)
        for a in args:
            if isinstance(a, int):
                self.i64(a)
            else:
                self.s(a)

    def stage(self, name: str) -> None:
        self.parts.append(_U8[OP_STAGE])
        self.s(name)

    def mount(self, src, reg: int, path: str, fstype, flags: int, data) -> None:
        self.u8(OP_MOUNT)
        self.s(src)
        self.path(reg, path)
        self.s(fstype)
        self.i64(flags)
        self.s(data)

    def bytes(self) -> bytes:
        return b"".join(self.parts)


HEADER = b"P\x01"
BASE = 10               # pycri-init.c's SPARE_BASE: the plan (or socket) fd + 0, p2c + 1, c2p + 2, stdio + 3..5
STDIO = (13, 14, 15)    # where pycri-init finds the stdio fds, spawned or spare


def encode(plan) -> bytes:
    """The operation list for pycri-init."""
    head, tail = encode_parts(plan)
    return HEADER + head + tail


def encode_parts(plan) -> tuple[bytes, bytes]:
    """The operation list in two parts (no header): up to the namespaces, and the rest (see Spare.use)."""
    head = _Enc(header=False)
    _encode_head(head, plan)
    tail = _Enc(header=False)
    _encode_tail(tail, plan, STDIO)
    return head.bytes(), tail.bytes()


# The Plan fields a monitor needs besides the operation list (launch.Process, Monitor._launch)
_PREPARED_FIELDS = ("rootfs", "clone_flags", "unshare_flags", "join_pid", "go_stage", "warnings", "auto_start")


def prepare(plan, tail: bool = True) -> dict | None:
    """An eligible plan as a JSON-able dict for the monitor (None if not eligible): its operation list and the
    fields prepared_plan() rebuilds. Raises ValueError for a plan that cannot be encoded.

    tail=False leaves the second part out ("tail": null): the client sends it next on the same connection
    (prepare_tail), while the monitor starts the first (the spare makes the namespaces meanwhile)."""
    if not eligible(plan):
        return None
    head = _Enc(header=False)
    _encode_head(head, plan)
    fields = {k: getattr(plan, k) for k in _PREPARED_FIELDS}
    fields["join"] = [list(j) for j in plan.join]
    fields["cgroup_tasks"] = None if plan.cgroup_tasks is None else [os.fsdecode(t) for t in plan.cgroup_tasks]
    fields["stdio"] = plan.stdio is not None
    second = prepare_tail(plan) if tail else {"tail": None}
    if "error" in second:
        raise ValueError(second["error"])
    return {"head": binascii.b2a_base64(head.bytes(), newline=False).decode(), "tail": second["tail"],
            "plan": fields, "fork": True}


def prepared_usable(prepared) -> bool:
    """Whether a prepared init can be run as it is: one of older code (a daemon rolled back) that joins a pid
    namespace lacks the fork into it (OP_FORK: see launch._child), and the monitor plans it itself. (A malformed
    one is left to prepared_plan to refuse.)"""
    plan = prepared.get("plan") if isinstance(prepared, dict) else None
    return not (isinstance(plan, dict) and plan.get("join_pid") and prepared.get("fork") is not True)


def prepare_tail(plan) -> dict:
    """The line that follows a create whose init had "tail": null: {"tail": ...}, or {"error": ...} if the
    plan cannot be encoded (the create then fails with it)."""
    try:
        tail = _Enc(header=False)
        _encode_tail(tail, plan, STDIO)
    except Exception as exc:  # noqa: BLE001 - the monitor waits for this line: it must get one
        return {"error": f"encoding the init: {exc}"}
    return {"tail": binascii.b2a_base64(tail.bytes(), newline=False).decode()}


def prepared_plan(prepared: dict, spec: dict, stdio: tuple[int, int, int] | None):
    """(launch.Plan, (head, tail)) from prepare()'s dict, for the spec it was made from, with the monitor's
    stdio fds; tail is None when it follows (prepare's tail=False). Raises ValueError on a malformed dict (or
    one made for stdio when there is none, or the reverse)."""
    try:
        f = prepared["plan"]
        parts = (binascii.a2b_base64(prepared["head"], strict_mode=True),
                 None if prepared["tail"] is None else binascii.a2b_base64(prepared["tail"], strict_mode=True))
        if bool(f["stdio"]) != (stdio is not None):
            raise ValueError("made for other stdio")
        tasks = f["cgroup_tasks"]
        plan = Plan(spec=spec, rootfs=f["rootfs"], stdio=stdio, clone_flags=int(f["clone_flags"]),
                           unshare_flags=int(f["unshare_flags"]), join=[(k, p) for k, p in f["join"]],
                           join_pid=f["join_pid"], go_stage=f["go_stage"], warnings=list(f["warnings"]),
                           auto_start=bool(f.get("auto_start")),
                           cgroup_tasks=None if tasks is None else [os.fsencode(t) for t in tasks])
    except (KeyError, TypeError, ValueError, binascii.Error) as exc:
        raise ValueError(f"malformed prepared init plan: {exc}") from None
    if plan.go_stage not in (None, "early", "late") or not all(isinstance(x, str) for x in (plan.rootfs or "",
                                                                                          plan.join_pid or "")):
        raise ValueError("malformed prepared init plan")
    return plan, parts


def _encode_head(e: _Enc, plan) -> None:
    """Up to the namespaces: what a spare starts on (OP_CONTINUE) while the rest is being encoded."""
    e.s(plan.rootfs or "")
    late = plan.go_stage == "late" and plan.rootfs is not None
    if plan.go_stage is not None and not late:
        e.op(OP_WAIT_G)
    if plan.cgroup_tasks and not late:
        _join_cgroup(e, plan.cgroup_tasks)

    e.stage("joining namespaces")
    joins = [(path, linux.NS_FLAGS[kind]) for kind, path in sorted(plan.join, key=lambda kf: _NS_ORDER.get(kf[0], 1))]
    if plan.join_pid is not None:  # opened with the others, forked into last (OP_FORK), as launch._child does
        joins.append((plan.join_pid, linux.CLONE_NEWPID))
    if joins:
        e.u8(OP_JOINNS)
        e.i64(len(joins))
        for path, flag in joins:
            e.s(path)
            e.i64(flag)
    unshare = (plan.clone_flags & ~linux.CLONE_NEWPID) | plan.unshare_flags
    if unshare:
        e.op(OP_UNSHARE, unshare)
    if plan.join_pid is not None:
        e.u8(OP_FORK)


def _encode_tail(e: _Enc, plan, stdio_fds: tuple[int, int, int] | None) -> None:
    spec = plan.spec
    proc = spec["process"]
    lin = spec.get("linux") or {}
    late = plan.go_stage == "late" and plan.rootfs is not None
    if plan.rootfs is not None:
        _encode_rootfs(e, plan, spec, lin, late)

    e.stage("setting hostname")
    new_uts = (plan.clone_flags | plan.unshare_flags) & linux.CLONE_NEWUTS
    if spec.get("hostname") and new_uts:
        e.op(OP_HOSTNAME, spec["hostname"])
    if spec.get("domainname") and new_uts:
        e.op(OP_DOMAINNAME, spec["domainname"])
    e.stage("")  # oom_score_adj before the rlimits, as launch._child (it opens a file)
    if proc.get("oomScoreAdj") is not None:
        try:
            value = str(int(proc["oomScoreAdj"]))
        except (TypeError, ValueError) as exc:
            e.op(OP_FAIL, str(exc))
        else:
            e.op(OP_OOM, value, f"oom_score_adj {proc['oomScoreAdj']} not applied: ")
    e.stage("setting rlimits")
    for rl in proc.get("rlimits") or []:
        res = getattr(resource, str(rl.get("type", "")), None)
        if not isinstance(res, int) or not str(rl["type"]).startswith("RLIMIT_"):
            e.op(OP_FAIL, f"unknown rlimit {rl.get('type')!r}")
            break
        try:
            soft, hard = _rlim(rl.get("soft")), _rlim(rl.get("hard"))
        except (TypeError, ValueError) as exc:
            e.op(OP_FAIL, str(exc) or type(exc).__name__)
            break
        e.op(OP_RLIMIT, res, soft, hard)

    e.stage("setting up stdio")
    if plan.stdio is not None and stdio_fds is not None:
        e.op(OP_STDIO, *stdio_fds)
    env = [x for x in proc.get("env") or [] if isinstance(x, str) and "=" in x]
    env_map = dict(x.split("=", 1) for x in env)
    e.stage("resolving the executable")
    e.op(OP_FINDEXE, proc["args"][0], env_map.get("PATH", DEFAULT_PATH))
    cwd = proc.get("cwd") or "/"
    e.stage(f"changing to cwd {cwd!r}")
    e.op(OP_CHDIR, cwd)
    user = proc.get("user") or {}
    e.stage("")
    try:
        e.op(OP_UMASK, int(user.get("umask", 0o022)))
    except (TypeError, ValueError) as exc:
        e.op(OP_FAIL, str(exc))

    if not plan.auto_start:
        e.op(OP_READY)

    nnp = bool(proc.get("noNewPrivileges"))
    filt = plan.seccomp
    if filt is not None and not nnp:
        e.stage("loading seccomp")
        e.op(OP_SECCOMP, filt.program)
    e.stage("dropping privileges")
    _encode_drop(e, user, plan)
    e.stage("")
    if nnp:
        e.op(OP_NNP)
    if filt is not None and nnp:
        e.stage("loading seccomp")
        e.op(OP_SECCOMP, filt.program)
    e.stage("exec")
    e.u8(OP_EXEC)
    e.i64(len(proc["args"]))
    for a in proc["args"]:
        e.s(a)
    e.i64(len(env_map))
    for k, v in env_map.items():
        e.s(f"{k}={v}")


def _rlim(v) -> int:
    if v is None or int(v) >= 2**63 - 1 or int(v) < 0:
        return _RLIM_INF
    return int(v)


def _join_cgroup(e: _Enc, tasks: list[bytes]) -> None:
    e.stage("joining the cgroup")
    for path in tasks:
        e.op(OP_CGJOIN, path)


def _encode_drop(e: _Enc, user: dict, plan) -> None:
    try:
        uid, gid = int(user.get("uid", 0)), int(user.get("gid", 0))
        gids = [int(g) for g in user.get("additionalGids") or []]
    except (TypeError, ValueError) as exc:
        e.op(OP_FAIL, str(exc))
        return
    capset = plan.capsets
    key = (uid, gid, tuple(gids), plan.last_cap, None if capset is None else
           tuple(capset[k] for k in ("bounding", "effective", "permitted", "inheritable", "ambient")))
    code = _DROP_CODE.get(key)
    if code is None:
        d = _Enc(header=False)
        d.u8(OP_DROP)
        d.u8(1 if capset is not None else 0)
        d.i64s([c for c in range(plan.last_cap + 1) if not capset["bounding"] & (1 << c)] if capset is not None
               else [])
        d.i64s(gids)
        d.i64(gid)
        d.i64(uid)
        for k in ("effective", "permitted", "inheritable"):
            d.i64(capset[k] if capset is not None else 0)
        d.i64s([c for c in range(plan.last_cap + 1) if capset["ambient"] & (1 << c)] if capset is not None else [])
        code = d.bytes()
        if len(_DROP_CODE) >= 256:
            _DROP_CODE.clear()
        _DROP_CODE[key] = code
    e.parts.append(code)


_DROP_CODE: dict[tuple, bytes] = {}  # the privilege drop's operation, by user and capability sets


def _encode_rootfs(e: _Enc, plan, spec: dict, lin: dict, late: bool) -> None:
    rootfs = plan.rootfs
    e.stage("mounting rootfs")
    prop = lin.get("rootfsPropagation")
    if prop in ("shared", "rshared"):
        e.mount(None, ABS, mountinfo.holding(rootfs).mount_point, None, linux.MS_PRIVATE, None)
    else:
        e.mount(None, ABS, "/", None, rootfs_mod._PROPAGATION.get(prop or "rprivate", linux.MS_PRIVATE | MS_REC),
                None)
    overlay = plan.overlay
    if overlay:
        lower = overlay.get("lower") or []
        if isinstance(lower, str):
            lower = [lower]
        data = "lowerdir=" + ":".join(lower)
        if not lower:
            e.op(OP_FAIL, "overlay rootfs needs at least one lower dir")
        elif overlay.get("upper"):
            data += f",upperdir={overlay['upper']},workdir={overlay['work']}"
        elif len(lower) < 2:
            e.op(OP_FAIL, "overlay rootfs without upper dir needs two or more lower dirs")
        for extra in overlay.get("options") or []:
            data += "," + extra
        e.mount("overlay", ABS, rootfs, "overlay", 0, data)
    else:
        e.mount(rootfs, ABS, rootfs, None, MS_BIND | MS_REC, None)
    dev_is_ours = False
    for m in spec.get("mounts") or []:
        key = _mount_key(m, plan)
        code = _MOUNT_CODE.get(key) if key is not None else None
        if code is None:
            sub = _Enc(header=False)
            sub.stage(f"mounting {m.get('destination')}")
            _encode_mount(sub, plan, m)
            code = sub.bytes()
            if key is not None:
                if len(_MOUNT_CODE) >= 256:
                    _MOUNT_CODE.clear()
                _MOUNT_CODE[key] = code
        e.parts.append(code)
        if m.get("destination") == "/dev" and m.get("type") != "bind":
            dev_is_ours = True
    e.stage("creating devices")
    _encode_devices(e, lin.get("devices") or [], dev_is_ours)
    if late:
        e.op(OP_WAIT_G)
        if plan.cgroup_tasks:
            _join_cgroup(e, plan.cgroup_tasks)
    e.stage("pivot_root")
    e.op(OP_PIVOT)
    e.stage("writing sysctls")
    for key, value in (lin.get("sysctl") or {}).items():
        try:
            path = rootfs_mod.sysctl_path(key)
        except ValueError as exc:
            e.op(OP_FAIL, str(exc))
            break
        e.u8(OP_WRITEFILE)
        e.path(ABS, path)
        e.s(str(value))
    e.stage("masking paths")
    for p in lin.get("maskedPaths") or []:
        e.u8(OP_MASK)
        e.path(ABS, p)
    e.stage("making paths read-only")
    for p in lin.get("readonlyPaths") or []:
        e.u8(OP_ROPATH)
        e.path(ABS, p)
    if (spec.get("root") or {}).get("readonly"):
        e.stage("remounting rootfs read-only")
        e.u8(OP_REMOUNT_RO)
        e.path(ABS, "/")
        e.i64(0)
    e.stage("")
    if prop in ("shared", "rshared", "slave", "rslave", "unbindable", "runbindable", "private"):
        e.mount(None, ABS, "/", None, rootfs_mod._PROPAGATION[prop], None)


# A mount's operations depend on the mount alone, but for a bind mount (its source's kind, on the disk now) and
# the cgroup mount (the host's hierarchies): a node's containers share most of their other mounts (/proc, /dev,
# /dev/pts, /dev/shm, /dev/mqueue, /sys), so their code is kept, by mount.
_MOUNT_CODE: dict[tuple, bytes] = {}


def _mount_key(m: dict, plan) -> tuple | None:
    """_MOUNT_CODE's key for m, or None where its code is made each time."""
    mtype, opts = m.get("type"), m.get("options") or []
    if mtype in ("bind", "cgroup") or not isinstance(mtype, str) or "bind" in opts or "rbind" in opts:
        return None
    try:
        key = (m.get("destination"), mtype, m.get("source"), tuple(opts))
        hash(key)
    except TypeError:
        return None
    return key


def _encode_mount(e: _Enc, plan, m: dict) -> None:
    """rootfs.mount_one, reduced to primitives (no user namespace, no parent-opened fds: see eligible)."""
    dest_rel = m.get("destination")
    if not isinstance(dest_rel, str) or not dest_rel.startswith("/"):
        e.op(OP_FAIL, f"mount destination must be an absolute path: {dest_rel!r}")
        return
    e.u8(OP_RESOLVE)
    e.u8(REG1)
    e.s(dest_rel)
    mtype = m.get("type") or ""
    source = m.get("source") or mtype or "none"
    opts = m.get("options") or []
    flags, props, data = rootfs_mod.parse_options(opts)
    if mtype == "bind" or flags & MS_BIND:
        resolved = _source(plan, source)
        if resolved is None:
            e.op(OP_FAIL, f"bind mount source {source!r} does not exist")
            return
        e.u8(OP_MKDIRS if resolved[1] else OP_TOUCH)
        e.path(REG1, "")
        e.mount(source, REG1, "", None, flags & (MS_BIND | MS_REC), None)
        rest = flags & ~(MS_BIND | MS_REC)
        if rest & MS_RDONLY:
            e.u8(OP_REMOUNT_RO)
            e.path(REG1, "")
            e.i64(rest & ~MS_RDONLY & ~MS_REMOUNT)
        elif rest & ~MS_REMOUNT:
            e.mount(None, REG1, "", None, MS_BIND | MS_REMOUNT | (rest & ~MS_REMOUNT), None)
    elif mtype == "cgroup":
        e.u8(OP_MKDIRS)
        e.path(REG1, "")
        if plan.cgroup_v2:
            e.mount("cgroup2", REG1, "", "cgroup2", flags, None)
        else:
            v1 = plan.cgroup_v1 if plan.cgroup_v1 is not None else rootfs_mod.v1_hierarchies()
            e.mount("tmpfs", REG1, "", "tmpfs", flags & ~MS_RDONLY, "mode=755")
            for name, hopts in v1:
                e.u8(OP_MKDIRS)
                e.path(REG1, "/" + name)
                e.mount("cgroup", REG1, "/" + name, "cgroup", flags, hopts)
            if flags & MS_RDONLY:
                e.mount(None, REG1, "", None, MS_REMOUNT | MS_RDONLY | (flags & ~MS_RDONLY), "mode=755")
    else:
        e.u8(OP_MKDIRS)
        e.path(REG1, "")
        e.mount(source, REG1, "", mtype, flags, data or None)
    for prop in props:
        e.mount(None, REG1, "", None, prop, None)
    attr_set, attr_clr = rootfs_mod.parse_recursive(opts)
    if attr_set or attr_clr:
        e.u8(OP_SETATTR)
        e.path(REG1, "")
        e.i64(attr_set)
        e.i64(attr_clr)


_DEFAULT_DEVICES: dict[bool, bytes] = {}


def _encode_devices(e: _Enc, devices: list[dict], with_defaults: bool) -> None:
    """rootfs.create_devices (mknod: no user namespace here)."""
    if not devices:  # the usual case: the same bytes every time
        chunk = _DEFAULT_DEVICES.get(with_defaults)
        if chunk is None:
            sub = _Enc()
            sub.parts = []
            _encode_devices_now(sub, [], with_defaults)
            chunk = _DEFAULT_DEVICES[with_defaults] = b"".join(sub.parts)
        e.parts.append(chunk)
        return
    _encode_devices_now(e, devices, with_defaults)


def _encode_devices_now(e: _Enc, devices: list[dict], with_defaults: bool) -> None:
    e.u8(OP_RESOLVE)
    e.u8(REG2)
    e.s("/dev")
    wanted = []
    if with_defaults:
        wanted = [{"path": f"/dev/{n}", "type": "c", "major": ma, "minor": mi, "fileMode": 0o666}
                  for n, ma, mi in rootfs_mod.DEFAULT_DEVICES]
    wanted += devices or []
    e.op(OP_UMASK, 0)
    for d in wanted:
        e.u8(OP_RESOLVE)
        e.u8(REG1)
        e.s(d["path"])
        kind = _DEV_KINDS.get(d.get("type"))
        if kind is None:
            e.op(OP_FAIL, f"bad device type in {d!r}")
            break
        mode = (d.get("fileMode") or 0o666) & 0o7777
        e.u8(OP_MKDIRS_PARENT)
        e.path(REG1, "")
        e.u8(OP_MKNOD)
        e.path(REG1, "")
        e.i64(kind | mode)
        e.i64(int(d.get("major", 0)))
        e.i64(int(d.get("minor", 0)))
        if d.get("uid") is not None or d.get("gid") is not None:
            e.i64(int(d.get("uid", 0) or 0))
            e.i64(int(d.get("gid", 0) or 0))
        else:
            e.i64(-1)
            e.i64(-1)
    e.op(OP_UMASK_RESTORE)
    if with_defaults:
        for target, name in rootfs_mod._DEV_LINKS:
            e.u8(OP_SYMLINK)
            e.s(target)
            e.path(REG2, "/" + name)
