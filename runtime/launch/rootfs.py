"""Root filesystem set-up inside a new mount namespace: rootfs, spec mounts, devices, pivot_root,
masked and read-only paths. Runs in the container child before exec; raises on any failure."""
from __future__ import annotations

import contextlib
import errno
import os
import stat

from runtime.host import linux, mountinfo
from runtime.launch import userns
from runtime.host.linux import (MNT_DETACH, MS_BIND, MS_NODEV, MS_NOEXEC, MS_NOSUID, MS_PRIVATE, MS_RDONLY, MS_REC,
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


_MAX_LINKS = 255


def open_in_root(root_fd: int, unsafe: str, make: str | None = None) -> int:
    """An O_PATH fd of `unsafe`, a path inside the container, resolved under the rootfs root_fd by the kernel and
    through fds, never by a path string that a process racing on it could redirect between the check and the use
    (another container renaming a symlink into a shared volume: CVE-2021-30465). Symlinks and ".." stay under
    the root. make: "dir" makes what is missing as directories, "file" its parent directories and an empty file.

    openat2(RESOLVE_IN_ROOT) finds a path that exists in one call; otherwise (or before Linux 5.6) the walk goes
    component by component from root_fd: each opened with O_NOFOLLOW from its parent's fd, a symlink read
    through its own fd and followed within the root, what is missing made at its parent's fd."""
    parts = [p for p in unsafe.split("/") if p not in ("", ".")]
    try:
        if linux.openat2_supported():
            for tries in range(17):  # EAGAIN: a rename raced a ".." (the kernel's answer: try again)
                try:
                    return linux.openat2(root_fd, "/".join(parts) or ".", os.O_PATH | os.O_CLOEXEC,
                                         linux.RESOLVE_IN_ROOT | linux.RESOLVE_NO_MAGICLINKS)
                except FileNotFoundError:
                    if make is None:
                        raise
                    break
                except OSError as exc:  # (EPERM: a seccomp filter of ours refuses it)
                    if exc.errno not in (errno.EAGAIN, errno.EPERM, errno.ENOSYS):
                        raise
                    if exc.errno != errno.EAGAIN:
                        break
        return _walk_in_root(root_fd, parts, make, unsafe)
    except OSError as exc:  # named by the container's path (pycri-init.c's open_in_root says the same)
        if exc.errno is None:
            raise
        raise OSError(exc.errno, os.strerror(exc.errno), unsafe) from None


def _walk_in_root(root_fd: int, parts: list[str], make: str | None, unsafe: str) -> int:
    stack = [os.dup(root_fd)]  # the directories walked through, root first: ".." pops, never past the root
    links = retries = 0
    try:
        while parts:
            part = parts.pop(0)
            if part == "..":
                if len(stack) > 1:
                    os.close(stack.pop())
                continue
            try:
                fd = os.open(part, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=stack[-1])
            except FileNotFoundError:
                retries += 1
                if make is None or retries > 100:  # (100: a component removed as often as it is made)
                    raise
                if make == "file" and not parts:  # O_EXCL: never opens what appeared meanwhile (a fifo)
                    try:
                        os.close(os.open(part, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW | os.O_NONBLOCK
                                         | os.O_NOCTTY | os.O_CLOEXEC, 0o644, dir_fd=stack[-1]))
                    except FileExistsError:
                        pass
                else:
                    try:
                        os.mkdir(part, 0o755, dir_fd=stack[-1])
                    except FileExistsError:
                        pass  # made meanwhile: opened (without following) and looked at as any other
                parts.insert(0, part)
                continue
            st = os.fstat(fd)
            if stat.S_ISLNK(st.st_mode):
                links += 1
                target = os.readlink("", dir_fd=fd)  # the link's own, read through the fd opened above
                os.close(fd)
                if links > _MAX_LINKS:
                    raise OSError(errno.ELOOP, os.strerror(errno.ELOOP))
                if target.startswith("/"):
                    while len(stack) > 1:
                        os.close(stack.pop())
                parts[:0] = [p for p in target.split("/") if p not in ("", ".")]
            elif stat.S_ISDIR(st.st_mode):
                stack.append(fd)
            elif parts:
                os.close(fd)
                raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR))
            else:
                stack.append(fd)
        return stack.pop()
    finally:
        for fd in stack:
            os.close(fd)


def fd_path(fd: int) -> str:
    """The path by which a mount call acts on exactly what fd is (the kernel follows it, nothing else)."""
    return f"/proc/self/fd/{fd}"


def reopen_mounted(root_fd: int, unsafe: str, under: int) -> int:
    """An O_PATH fd of the mount just made on `under` (an fd from open_in_root): for what acts on the mount rather
    than on its mount point (a remount, propagation, recursive attributes). The path is resolved again, which
    crosses into mounts; it must lead to a mount on top of `under`, or the destination was swapped meanwhile."""
    over = open_in_root(root_fd, unsafe)
    link, over_id, under_id = os.readlink(fd_path(over)), _mnt_id(over), _mnt_id(under)
    if link != os.readlink(fd_path(under)) or link.endswith(" (deleted)") or over_id == under_id \
            or mountinfo.parent_of(over_id) != under_id:
        os.close(over)
        raise OSError(errno.EAGAIN, f"mount destination {unsafe!r} changed while it was set up")
    return over


def _mnt_id(fd: int) -> int:
    with open(f"/proc/self/fdinfo/{fd}") as f:
        for line in f:
            if line.startswith("mnt_id:"):
                return int(line.split()[1])
    return -1


def remount_ro(path: str, extra: int = 0, shown: str | None = None) -> None:
    """Remount a bind mount read-only, preserving flags the kernel would refuse to drop."""
    try:
        st = os.statvfs(path)
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, shown or path) from None
    keep = st.f_flag & _ST_KEEP
    if st.f_flag & _ST_RELATIME:
        keep |= linux.MS_RELATIME
    linux.mount(None, path, None, MS_BIND | MS_REMOUNT | MS_RDONLY | keep | extra, shown=shown)


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
        linux.mount(None, mountinfo.holding(rootfs).mount_point, None, MS_PRIVATE)
    else:
        linux.mount(None, "/", None, _PROPAGATION.get(propagation or "rprivate", MS_PRIVATE | MS_REC))
    if overlay_fd >= 0:  # an overlay with idmapped layers, made by the parent (runtime/launch/userns.py)
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


def mount_one(root_fd: int, m: dict, cgroup_v2: bool, v1_hier: list[tuple[str, str]] | None = None,
              mount_fd: int = -1, in_userns: bool = False) -> None:
    """Mount one OCI mount entry in the rootfs root_fd (an O_PATH fd of it): its destination is made and opened
    by open_in_root, mounted on through its fd, and what follows the mount acts on the fd of the mount made.

    mount_fd: a detached copy of the bind source made by the parent (runtime/launch/userns.py; idmapped when the mount
    has uidMappings), attached here in place of the bind. in_userns: what cannot be mounted from a user namespace
    falls back as runc does (see _userns_fallback)."""
    dest_rel = m.get("destination")
    if not isinstance(dest_rel, str) or not dest_rel.startswith("/"):
        raise ValueError(f"mount destination must be an absolute path: {dest_rel!r}")
    mtype = m.get("type") or ""
    source = m.get("source") or mtype or "none"
    flags, props, data = parse_options(m.get("options") or [])
    bind = mtype == "bind" or flags & MS_BIND
    if bind:
        if mount_fd >= 0:  # opened by the parent: the source path may not be reachable from here
            is_dir = stat.S_ISDIR(os.fstat(mount_fd).st_mode)
        elif not os.path.exists(source):
            raise FileNotFoundError(2, f"bind mount source {source!r} does not exist")
        else:
            is_dir = os.path.isdir(source)
    under = open_in_root(root_fd, dest_rel, "dir" if not bind or is_dir else "file")
    dest = fd_path(under)
    try:
        if bind:
            if mount_fd >= 0:
                userns.move_mount(mount_fd, under, shown=dest_rel)
                os.close(mount_fd)
            else:
                linux.mount(source, dest, None, flags & (MS_BIND | MS_REC), shown=dest_rel)
            # as runc: "ro" (and nosuid...) applies to the bind mount itself only, so with "rbind" the submounts
            # keep their own flags; "rro" (below) makes the whole tree read-only
            rest = flags & ~(MS_BIND | MS_REC)
            if rest & ~MS_REMOUNT:
                with _mounted(root_fd, dest_rel, under) as over:
                    if rest & MS_RDONLY:
                        remount_ro(fd_path(over), rest & ~MS_RDONLY & ~MS_REMOUNT, shown=dest_rel)
                    else:
                        linux.mount(None, fd_path(over), None, MS_BIND | MS_REMOUNT | (rest & ~MS_REMOUNT),
                                    shown=dest_rel)
        elif mtype == "cgroup":
            try:
                _mount_cgroup(root_fd, dest_rel, under, flags, cgroup_v2, v1_hier)
            except PermissionError:
                if not in_userns:
                    raise
                _userns_fallback(root_fd, dest_rel, under, "/sys/fs/cgroup", flags)
        else:
            try:
                linux.mount(source, dest, mtype, flags, data or None, shown=dest_rel)
            except PermissionError:
                if not (in_userns and mtype == "sysfs"):
                    raise
                _userns_fallback(root_fd, dest_rel, under, "/sys", flags)
        attr_set, attr_clr = parse_recursive(m.get("options") or [])
        if props or attr_set or attr_clr:
            with _mounted(root_fd, dest_rel, under) as over:
                for prop in props:
                    linux.mount(None, fd_path(over), None, prop, shown=dest_rel)
                if attr_set or attr_clr:
                    _set_recursive(fd_path(over), attr_set, attr_clr)
    finally:
        os.close(under)


@contextlib.contextmanager
def _mounted(root_fd: int, dest_rel: str, under: int):
    """with _mounted(root_fd, dest_rel, under) as fd: an fd of the mount made on under (reopen_mounted)."""
    fd = reopen_mounted(root_fd, dest_rel, under)
    try:
        yield fd
    finally:
        os.close(fd)


def _userns_fallback(root_fd: int, dest_rel: str, under: int, host_path: str, flags: int) -> None:
    """A filesystem a user namespace may not mount: a recursive bind of the host's instead, as runc does for sysfs
    (sysfs needs the network namespace to belong to the user namespace; with the host's network it does not) and
    for cgroup (v1 hierarchies, and v2 without a cgroup namespace of its own). The options' nosuid/nodev/noexec
    and read-only apply to the whole tree (mount_setattr AT_RECURSIVE)."""
    try:  # the cgroup v1 tmpfs made before a hierarchy failed
        with _mounted(root_fd, dest_rel, under) as over:
            linux.umount2(fd_path(over), MNT_DETACH)
    except OSError:
        pass  # nothing mounted there
    linux.mount(host_path, fd_path(under), None, MS_BIND | MS_REC, shown=dest_rel)
    attrs = 0
    for flag, attr in ((MS_RDONLY, linux.MOUNT_ATTR_RDONLY), (MS_NOSUID, linux.MOUNT_ATTR_NOSUID),
                       (MS_NODEV, linux.MOUNT_ATTR_NODEV), (MS_NOEXEC, linux.MOUNT_ATTR_NOEXEC)):
        if flags & flag:
            attrs |= attr
    if attrs:
        with _mounted(root_fd, dest_rel, under) as over:
            linux.mount_setattr_recursive(fd_path(over), attrs)


def _set_recursive(dest: str, attr_set: int, attr_clr: int) -> None:
    """rro and friends: mount_setattr(2) with AT_RECURSIVE; there is no safe fallback on kernels without it."""
    try:
        linux.mount_setattr_recursive(dest, attr_set, attr_clr)
    except OSError as exc:
        if exc.errno == 38:  # ENOSYS
            raise OSError(exc.errno, f"recursive mount options (rro) on {dest!r} need mount_setattr(2), "
                                     "Linux 5.12 or later") from None
        raise


def _mount_cgroup(root_fd: int, dest_rel: str, under: int, flags: int, cgroup_v2: bool,
                  v1_hier: list[tuple[str, str]] | None = None) -> None:
    if cgroup_v2:
        linux.mount("cgroup2", fd_path(under), "cgroup2", flags, shown=dest_rel)
        return
    # v1: a tmpfs with one cgroup mount per host hierarchy (the cgroup namespace, if any, scopes them)
    linux.mount("tmpfs", fd_path(under), "tmpfs", flags & ~MS_RDONLY, "mode=755", shown=dest_rel)
    with _mounted(root_fd, dest_rel, under) as tmpfs:
        for name, opts in v1_hier if v1_hier is not None else v1_hierarchies():
            sub = open_in_root(tmpfs, name, "dir")  # in the tmpfs just made
            try:
                linux.mount("cgroup", fd_path(sub), "cgroup", flags, opts, shown=f"{dest_rel}/{name}")
            finally:
                os.close(sub)
        if flags & MS_RDONLY:
            linux.mount(None, fd_path(tmpfs), None, MS_REMOUNT | MS_RDONLY | (flags & ~MS_RDONLY), "mode=755",
                        shown=dest_rel)


def v1_hierarchies() -> list[tuple[str, str]]:
    """(name, mount options) of each cgroup v1 hierarchy of this mount namespace, once each: a hierarchy mounted
    again over the first (a nested systemd does so) must not be mounted twice on one mount point (EBUSY)."""
    out: dict[str, str] = {}
    for m in mountinfo.entries():
        if m.fstype == "cgroup":
            opts = [o for o in m.super_options.split(",") if o not in ("rw", "ro")]
            out[os.path.basename(m.mount_point)] = ",".join(opts)
    return list(out.items())


def create_devices(root_fd: int, devices: list[dict], with_defaults: bool, bind: bool = False) -> None:
    """mknod the default devices (when /dev is ours) and linux.devices, plus the standard /dev symlinks, each at
    the fd of its directory (open_in_root).

    bind: bind-mount the host's nodes instead (inside a user namespace mknod is not allowed)."""
    wanted = []
    if with_defaults:
        wanted = [{"path": f"/dev/{n}", "type": "c", "major": ma, "minor": mi, "fileMode": 0o666}
                  for n, ma, mi in DEFAULT_DEVICES]
    wanted += devices or []
    old_umask = os.umask(0)
    try:
        for d in wanted:
            kind = {"c": stat.S_IFCHR, "u": stat.S_IFCHR, "b": stat.S_IFBLK, "p": stat.S_IFIFO}.get(d.get("type"))
            if kind is None:
                raise ValueError(f"bad device type in {d!r}")
            mode = (d.get("fileMode") or 0o666) & 0o7777
            if bind:
                node = open_in_root(root_fd, d["path"], "file")
                try:
                    linux.mount(d["path"], fd_path(node), None, MS_BIND, shown=d["path"])
                finally:
                    os.close(node)
                continue
            parent, name = _parent_in_root(root_fd, d["path"])
            try:
                try:
                    os.unlink(name, dir_fd=parent)
                except FileNotFoundError:
                    pass
                os.mknod(name, kind | mode, os.makedev(d.get("major", 0), d.get("minor", 0)), dir_fd=parent)
                if d.get("uid") is not None or d.get("gid") is not None:
                    os.chown(name, d.get("uid", 0) or 0, d.get("gid", 0) or 0, dir_fd=parent, follow_symlinks=False)
            except OSError as exc:
                raise OSError(exc.errno, exc.strerror, d["path"]) from None
            finally:
                os.close(parent)
    finally:
        os.umask(old_umask)
    if with_defaults:
        dev = open_in_root(root_fd, "/dev", "dir")
        try:
            for target, name in _DEV_LINKS:
                try:
                    os.symlink(target, name, dir_fd=dev)
                except FileExistsError:
                    pass
        finally:
            os.close(dev)


def _parent_in_root(root_fd: int, unsafe: str) -> tuple[int, str]:
    """(an fd of the directory of unsafe, made if missing; its last name): for what is made at a directory's fd."""
    head, _, name = unsafe.rstrip("/").rpartition("/")
    if name in ("", ".", ".."):
        raise ValueError(f"{unsafe!r} names no file")
    return open_in_root(root_fd, head or "/", "dir"), name


def bind_console(root_fd: int, pty_path: str) -> None:
    console = open_in_root(root_fd, "/dev/console", "file")
    try:
        linux.mount(pty_path, fd_path(console), None, MS_BIND, shown="/dev/console")
    finally:
        os.close(console)


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
