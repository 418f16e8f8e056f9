"""Root filesystem set-up inside a new mount namespace: rootfs, spec mounts, devices, pivot_root,
masked and read-only paths. Runs in the container child before exec; raises on any failure."""
from __future__ import annotations

import os
import stat

from runtime import linux, userns
from runtime.linux import (MNT_DETACH, MS_BIND, MS_NODEV, MS_NOEXEC, MS_NOSUID, MS_PRIVATE, MS_RDONLY, MS_REC,
                           MS_REMOUNT, MS_SHARED, MS_SLAVE, MS_UNBINDABLE)

# option -> (clear?, flag); "clear" options remove the flag
_FLAGS = {
    "defaults": (False, 0), "ro": (False, MS_RDONLY), "rw": (True, MS_RDONLY),
    "suid": (True, MS_NOSUID), "nosuid": (False, MS_NOSUID), "dev": (True, MS_NODEV), "nodev": (False, MS_NODEV),
    "exec": (True, MS_NOEXEC), "noexec": (False, MS_NOEXEC), "sync": (False, linux.MS_SYNCHRONOUS),
    "async": (True, linux.MS_SYNCHRONOUS), "dirsync": (False, linux.MS_DIRSYNC),
    "remount": (False, MS_REMOUNT), "mand": (False, linux.MS_MANDLOCK), "nomand": (True, linux.MS_MANDLOCK),
    "atime": (True, linux.MS_NOATIME), "noatime": (False, linux.MS_NOATIME),
    "diratime": (True, linux.MS_NODIRATIME), "nodiratime": (False, linux.MS_NODIRATIME),
    "relatime": (False, linux.MS_RELATIME), "norelatime": (True, linux.MS_RELATIME),
    "strictatime": (False, linux.MS_STRICTATIME), "nostrictatime": (True, linux.MS_STRICTATIME),
    "bind": (False, MS_BIND), "rbind": (False, MS_BIND | MS_REC), "nosymfollow": (False, linux.MS_NOSYMFOLLOW),
}
_PROPAGATION = {
    "private": MS_PRIVATE, "rprivate": MS_PRIVATE | MS_REC, "shared": MS_SHARED, "rshared": MS_SHARED | MS_REC,
    "slave": MS_SLAVE, "rslave": MS_SLAVE | MS_REC, "unbindable": MS_UNBINDABLE,
    "runbindable": MS_UNBINDABLE | MS_REC,
}
# Recursive mount attributes (runc's "rro", "rnosuid", ...): option -> (clear?, MOUNT_ATTR_*), applied with
# mount_setattr(2) and AT_RECURSIVE to the mount and every mount below it.
_RECURSIVE = {
    "rro": (False, linux.MOUNT_ATTR_RDONLY), "rrw": (True, linux.MOUNT_ATTR_RDONLY),
    "rnosuid": (False, linux.MOUNT_ATTR_NOSUID), "rsuid": (True, linux.MOUNT_ATTR_NOSUID),
    "rnodev": (False, linux.MOUNT_ATTR_NODEV), "rdev": (True, linux.MOUNT_ATTR_NODEV),
    "rnoexec": (False, linux.MOUNT_ATTR_NOEXEC), "rexec": (True, linux.MOUNT_ATTR_NOEXEC),
}
# statvfs f_flag bits that must be kept when remounting a bind mount read-only
_ST_KEEP = MS_NOSUID | MS_NODEV | MS_NOEXEC | linux.MS_NOATIME | linux.MS_NODIRATIME
_ST_RELATIME = 4096

DEFAULT_DEVICES = [  # (name, major, minor)
    ("null", 1, 3), ("zero", 1, 5), ("full", 1, 7), ("random", 1, 8), ("urandom", 1, 9), ("tty", 5, 0),
]
_DEV_LINKS = [("/proc/self/fd", "fd"), ("/proc/self/fd/0", "stdin"), ("/proc/self/fd/1", "stdout"),
              ("/proc/self/fd/2", "stderr"), ("pts/ptmx", "ptmx")]


def parse_options(options: list[str]) -> tuple[int, list[int], str]:
    """Mount options -> (flags, propagation flags, data string); recursive attributes are left to parse_recursive."""
    flags, props, data = 0, [], []
    for opt in options or []:
        if opt in _FLAGS:
            clear, flag = _FLAGS[opt]
            flags = flags & ~flag if clear else flags | flag
        elif opt in _PROPAGATION:
            props.append(_PROPAGATION[opt])
        elif opt not in _RECURSIVE:
            data.append(opt)
    return flags, props, ",".join(data)


def parse_recursive(options: list[str]) -> tuple[int, int]:
    """Mount options -> (MOUNT_ATTR_* to set, to clear) recursively ("rro" and friends)."""
    attr_set = attr_clr = 0
    for opt in options or []:
        if opt in _RECURSIVE:
            clear, attr = _RECURSIVE[opt]
            if clear:
                attr_clr, attr_set = attr_clr | attr, attr_set & ~attr
            else:
                attr_set, attr_clr = attr_set | attr, attr_clr & ~attr
    return attr_set, attr_clr


def secure_join(root: str, unsafe: str) -> str:
    """Resolve unsafe (a path inside the container) under root, following symlinks without escaping root."""
    parts = [p for p in unsafe.split("/") if p not in ("", ".")]
    resolved: list[str] = []
    links = 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        candidate = os.path.join(root, *resolved, part)
        try:
            st = os.lstat(candidate)
        except FileNotFoundError:
            resolved.append(part)
            continue
        if stat.S_ISLNK(st.st_mode):
            links += 1
            if links > 255:
                raise OSError(40, f"too many symlinks resolving {unsafe!r}")
            target = os.readlink(candidate)
            if target.startswith("/"):
                resolved = []
            parts = [p for p in target.split("/") if p not in ("", ".")] + parts
            continue
        resolved.append(part)
    return os.path.join(root, *resolved)


def _mkdirs(path: str) -> None:
    os.makedirs(path, mode=0o755, exist_ok=True)


def _touch(path: str) -> None:
    _mkdirs(os.path.dirname(path))
    if not os.path.exists(path):
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o644))


def remount_ro(path: str, extra: int = 0) -> None:
    """Remount a bind mount read-only, preserving flags the kernel would refuse to drop."""
    st = os.statvfs(path)
    keep = st.f_flag & _ST_KEEP
    if st.f_flag & _ST_RELATIME:
        keep |= linux.MS_RELATIME
    linux.mount(None, path, None, MS_BIND | MS_REMOUNT | MS_RDONLY | keep | extra)


def check_overlay(overlay) -> dict | None:
    """Validate an overlay rootfs request: absolute dirs, nothing that could inject mount options."""
    if overlay is None:
        return None
    if not isinstance(overlay, dict):
        raise ValueError("overlay must be an object {lower: [dirs], upper: dir, work: dir}")
    lower = overlay.get("lower")
    if isinstance(lower, str):
        lower = [lower]
    if not isinstance(lower, list) or not lower:
        raise ValueError("overlay.lower must be a non-empty list of directories")
    dirs = list(lower) + [overlay[k] for k in ("upper", "work") if overlay.get(k) is not None]
    if bool(overlay.get("upper")) != bool(overlay.get("work")):
        raise ValueError("overlay.upper and overlay.work go together")
    for d in dirs:
        if not isinstance(d, str) or not os.path.isabs(d) or any(c in d for c in ",:\n\\"):
            raise ValueError(f"overlay dir {d!r} must be an absolute path without ',' ':' or '\\'")
        if not os.path.isdir(d):
            raise ValueError(f"overlay dir {d!r} does not exist")
    if overlay.get("options") is not None and not all(isinstance(o, str) and "," not in o
                                                       for o in overlay["options"]):
        raise ValueError("overlay.options must be a list of single mount options")
    return {**overlay, "lower": lower}


def mount_rootfs(rootfs: str, overlay: dict | None, propagation: str | None, overlay_fd: int = -1) -> None:
    """Make / private (or the asked propagation) and turn rootfs into a mount point (bind or overlay).

    shared/rshared (a bidirectional volume): the copies of the host's shared mounts stay peers of them, so that the
    volume's bind joins the host's peer group; only the mount holding rootfs is made private (as runc does), so
    that the rootfs and everything mounted below it do not propagate back to the host.
    """
    if propagation in ("shared", "rshared"):
        linux.mount(None, mount_point_of(rootfs), None, MS_PRIVATE)
    else:
        linux.mount(None, "/", None, _PROPAGATION.get(propagation or "rprivate", MS_PRIVATE | MS_REC))
    if overlay_fd >= 0:  # an overlay with idmapped layers, made by the parent (runtime/userns.py)
        userns.move_mount(overlay_fd, rootfs)
        os.close(overlay_fd)
    elif overlay:
        lower = overlay.get("lower") or []
        if isinstance(lower, str):
            lower = [lower]
        if not lower:
            raise ValueError("overlay rootfs needs at least one lower dir")
        data = "lowerdir=" + ":".join(lower)
        if overlay.get("upper"):
            data += f",upperdir={overlay['upper']},workdir={overlay['work']}"
        elif len(lower) < 2:
            raise ValueError("overlay rootfs without upper dir needs two or more lower dirs")
        for extra in overlay.get("options") or []:
            data += "," + extra
        linux.mount("overlay", rootfs, "overlay", 0, data)
    else:
        linux.mount(rootfs, rootfs, None, MS_BIND | MS_REC)


def mount_point_of(path: str) -> str:
    """The mount point of the mount that holds path (in this mount namespace)."""
    path = os.path.realpath(path)
    best = "/"
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mp = line.split()[4].replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n")
            mp = mp.replace("\\134", "\\")
            if (path == mp or path.startswith(mp.rstrip("/") + "/")) and len(mp) > len(best):
                best = mp
    return best


def mount_one(rootfs: str, m: dict, cgroup_v2: bool, v1_hier: list[tuple[str, str]] | None = None,
              mount_fd: int = -1, in_userns: bool = False) -> None:
    """Mount one OCI mount entry under rootfs.

    mount_fd: a detached copy of the bind source made by the parent (runtime/userns.py; idmapped when the mount
    has uidMappings), attached here in place of the bind. in_userns: what cannot be mounted from a user namespace
    falls back as runc does (see _userns_fallback)."""
    dest_rel = m.get("destination")
    if not isinstance(dest_rel, str) or not dest_rel.startswith("/"):
        raise ValueError(f"mount destination must be an absolute path: {dest_rel!r}")
    dest = secure_join(rootfs, dest_rel)
    mtype = m.get("type") or ""
    source = m.get("source") or mtype or "none"
    flags, props, data = parse_options(m.get("options") or [])
    if mtype == "bind" or flags & MS_BIND:
        if mount_fd >= 0:  # opened by the parent: the source path may not be reachable from here
            is_dir = stat.S_ISDIR(os.fstat(mount_fd).st_mode)
        elif not os.path.exists(source):
            raise FileNotFoundError(2, f"bind mount source {source!r} does not exist")
        else:
            is_dir = os.path.isdir(source)
        if is_dir:
            _mkdirs(dest)
        else:
            _touch(dest)
        if mount_fd >= 0:
            userns.move_mount(mount_fd, dest)
            os.close(mount_fd)
        else:
            linux.mount(source, dest, None, flags & (MS_BIND | MS_REC))
        # as runc: "ro" (and nosuid...) applies to the bind mount itself only, so with "rbind" the submounts keep
        # their own flags; "rro" (below) makes the whole tree read-only
        rest = flags & ~(MS_BIND | MS_REC)
        if rest & MS_RDONLY:
            remount_ro(dest, rest & ~MS_RDONLY & ~MS_REMOUNT)
        elif rest & ~MS_REMOUNT:
            linux.mount(None, dest, None, MS_BIND | MS_REMOUNT | (rest & ~MS_REMOUNT))
    elif mtype == "cgroup":
        try:
            _mount_cgroup(dest, flags, cgroup_v2, v1_hier)
        except PermissionError:
            if not in_userns:
                raise
            _userns_fallback(dest, "/sys/fs/cgroup", flags)
    else:
        _mkdirs(dest)
        try:
            linux.mount(source, dest, mtype, flags, data or None)
        except PermissionError:
            if not (in_userns and mtype == "sysfs"):
                raise
            _userns_fallback(dest, "/sys", flags)
    for prop in props:
        linux.mount(None, dest, None, prop)
    attr_set, attr_clr = parse_recursive(m.get("options") or [])
    if attr_set or attr_clr:
        _set_recursive(dest, attr_set, attr_clr)


def _userns_fallback(dest: str, host_path: str, flags: int) -> None:
    """A filesystem a user namespace may not mount: a recursive bind of the host's instead, as runc does for sysfs
    (sysfs needs the network namespace to belong to the user namespace; with the host's network it does not) and
    for cgroup (v1 hierarchies, and v2 without a cgroup namespace of its own). The options' nosuid/nodev/noexec
    and read-only apply to the whole tree (mount_setattr AT_RECURSIVE)."""
    if os.path.ismount(dest):  # the cgroup v1 tmpfs made before a hierarchy failed
        linux.umount2(dest, MNT_DETACH)
    linux.mount(host_path, dest, None, MS_BIND | MS_REC)
    attrs = 0
    for flag, attr in ((MS_RDONLY, linux.MOUNT_ATTR_RDONLY), (MS_NOSUID, linux.MOUNT_ATTR_NOSUID),
                       (MS_NODEV, linux.MOUNT_ATTR_NODEV), (MS_NOEXEC, linux.MOUNT_ATTR_NOEXEC)):
        if flags & flag:
            attrs |= attr
    if attrs:
        linux.mount_setattr_recursive(dest, attrs)


def _set_recursive(dest: str, attr_set: int, attr_clr: int) -> None:
    """rro and friends: mount_setattr(2) with AT_RECURSIVE; there is no safe fallback on kernels without it."""
    try:
        linux.mount_setattr_recursive(dest, attr_set, attr_clr)
    except OSError as exc:
        if exc.errno == 38:  # ENOSYS
            raise OSError(exc.errno, f"recursive mount options (rro) on {dest!r} need mount_setattr(2), "
                                     "Linux 5.12 or later") from None
        raise


def _mount_cgroup(dest: str, flags: int, cgroup_v2: bool, v1_hier: list[tuple[str, str]] | None = None) -> None:
    _mkdirs(dest)
    if cgroup_v2:
        linux.mount("cgroup2", dest, "cgroup2", flags)
        return
    # v1: a tmpfs with one cgroup mount per host hierarchy (the cgroup namespace, if any, scopes them)
    linux.mount("tmpfs", dest, "tmpfs", flags & ~MS_RDONLY, "mode=755")
    for name, opts in v1_hier if v1_hier is not None else v1_hierarchies():
        sub = os.path.join(dest, name)
        _mkdirs(sub)
        linux.mount("cgroup", sub, "cgroup", flags, opts)
    if flags & MS_RDONLY:
        linux.mount(None, dest, None, MS_REMOUNT | MS_RDONLY | (flags & ~MS_RDONLY), "mode=755")


def v1_hierarchies() -> list[tuple[str, str]]:
    """(name, mount options) of each cgroup v1 hierarchy of this mount namespace, once each: a hierarchy mounted
    again over the first (a nested systemd does so) must not be mounted twice on one mount point (EBUSY)."""
    out: dict[str, str] = {}
    with open("/proc/self/mountinfo") as f:
        for line in f:
            pre, _, post = line.partition(" - ")
            fields = post.split()
            if fields and fields[0] == "cgroup":
                name = os.path.basename(pre.split()[4])
                opts = [o for o in fields[2].split(",") if o not in ("rw", "ro")]
                out[name] = ",".join(opts)
    return list(out.items())


def create_devices(rootfs: str, devices: list[dict], with_defaults: bool, bind: bool = False) -> None:
    """mknod the default devices (when /dev is ours) and linux.devices, plus the standard /dev symlinks.

    bind: bind-mount the host's nodes instead (inside a user namespace mknod is not allowed)."""
    dev = secure_join(rootfs, "/dev")
    wanted = []
    if with_defaults:
        wanted = [{"path": f"/dev/{n}", "type": "c", "major": ma, "minor": mi, "fileMode": 0o666}
                  for n, ma, mi in DEFAULT_DEVICES]
    wanted += devices or []
    old_umask = os.umask(0)
    try:
        for d in wanted:
            path = secure_join(rootfs, d["path"])
            kind = {"c": stat.S_IFCHR, "u": stat.S_IFCHR, "b": stat.S_IFBLK, "p": stat.S_IFIFO}.get(d.get("type"))
            if kind is None:
                raise ValueError(f"bad device type in {d!r}")
            mode = (d.get("fileMode") or 0o666) & 0o7777
            _mkdirs(os.path.dirname(path))
            if bind:
                _touch(path)
                linux.mount(d["path"], path, None, MS_BIND)
                continue
            if os.path.lexists(path):
                os.unlink(path)
            os.mknod(path, kind | mode, os.makedev(d.get("major", 0), d.get("minor", 0)))
            if d.get("uid") is not None or d.get("gid") is not None:
                os.chown(path, d.get("uid", 0) or 0, d.get("gid", 0) or 0)
    finally:
        os.umask(old_umask)
    if with_defaults:
        for target, name in _DEV_LINKS:
            link = os.path.join(dev, name)
            if not os.path.lexists(link):
                os.symlink(target, link)


def bind_console(rootfs: str, pty_path: str) -> None:
    console = secure_join(rootfs, "/dev/console")
    _touch(console)
    linux.mount(pty_path, console, None, MS_BIND)


def pivot(rootfs: str) -> None:
    """pivot_root into rootfs and detach the old root (the pivot_root(".", ".") trick)."""
    old = os.open("/", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    new = os.open(rootfs, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fchdir(new)
        linux.pivot_root(".", ".")
        os.fchdir(old)
        # rslave first (as runc): with a shared rootfs propagation the old root still holds peers of host mounts,
        # and detaching those must not propagate to the host
        linux.mount(None, ".", None, MS_SLAVE | MS_REC)
        linux.umount2(".", MNT_DETACH)
    finally:
        os.close(old)
        os.close(new)
    os.chdir("/")


def mask_paths(paths: list[str]) -> None:
    for p in paths or []:
        try:
            if os.path.isdir(p) and not os.path.islink(p):
                linux.mount("tmpfs", p, "tmpfs", MS_RDONLY)
            else:
                linux.mount("/dev/null", p, None, MS_BIND)
        except FileNotFoundError:
            continue
        except OSError as exc:
            if exc.errno == 2:
                continue
            raise


def readonly_paths(paths: list[str]) -> None:
    for p in paths or []:
        if not os.path.exists(p):
            continue
        linux.mount(p, p, None, MS_BIND | MS_REC)
        remount_ro(p)


_SWAP_SEPARATORS = str.maketrans("./", "/.")


def sysctl_path(key: str) -> str:
    """/proc/sys path of a sysctl name, by sysctl.d's rule (the kubelet's too): when the first separator is a
    slash the name is a path already (`net/ipv4/conf/eth0.100/forwarding`); otherwise dots separate and a slash
    stands for a dot in a component (`net.ipv4.conf.eth0/100.forwarding`, the same sysctl)."""
    first = min((i for i in (key.find("."), key.find("/")) if i >= 0), default=-1)
    parts = (key if first >= 0 and key[first] == "/" else key.translate(_SWAP_SEPARATORS)).split("/")
    if not key or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"bad sysctl name {key!r}")
    return "/proc/sys/" + "/".join(parts)


def write_sysctls(sysctl: dict[str, str]) -> None:
    for key, value in (sysctl or {}).items():
        path = sysctl_path(key)
        with open(path, "w") as f:
            f.write(str(value))
