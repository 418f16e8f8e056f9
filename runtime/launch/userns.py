"""User namespaces and idmapped mounts, prepared by the parent (host root) before the container child is cloned.

Why in the parent: a process inside a user namespace other than the initial one cannot create an idmapped mount of
a host filesystem (mount_setattr(MOUNT_ATTR_IDMAP) needs CAP_SYS_ADMIN where the filesystem was mounted), and an
overlayfs mounted from inside the user namespace would read and write `user.overlay.*` instead of the
`trusted.overlay.*` xattrs our layer snapshots carry (opaque dirs would break). So the parent:

- makes the user namespace (create: a short-lived helper clone(CLONE_NEWUSER) whose maps the parent writes; the
  namespace is kept by an fd) or opens a pinned one (a path in the spec);
- makes detached idmapped mounts with open_tree(OPEN_TREE_CLONE) + mount_setattr(MOUNT_ATTR_IDMAP): one per bind
  mount with uidMappings/gidMappings, and one per overlay lower layer, from which it builds a detached overlay with
  fsopen/fsconfig(FSCONFIG_SET_FD "lowerdir+")/fsmount (Linux >= 6.13 takes layers as fds). The overlay mount
  itself cannot be idmapped (the kernel answers EINVAL), and the upper dir is not idmapped either: overlayfs works
  in it with the mounter's credentials (host root), which an idmapped upper could not represent (EOVERFLOW).
  Files written by the container land in the upper owned by their host ids (host_id + n), and its root dir is
  chowned to the mapped owner of the image's root so the container's root owns "/";
- the child inherits these fds at clone, joins the user namespace, unshares its other namespaces (so they are owned
  by it) and attaches the mounts with move_mount(2).

Nothing here is used in a multithreaded process except `supported()` (no fork there).
"""
from __future__ import annotations

import ctypes
import errno
import os

from runtime.host import linux

libc = linux.libc
_SYS = {"x86_64": {"open_tree": 428, "move_mount": 429, "fsopen": 430, "fsconfig": 431, "fsmount": 432},
        "aarch64": {"open_tree": 428, "move_mount": 429, "fsopen": 430, "fsconfig": 431, "fsmount": 432}}[linux._ARCH]
OPEN_TREE_CLONE = 1
OPEN_TREE_CLOEXEC = os.O_CLOEXEC
AT_EMPTY_PATH = 0x1000
AT_RECURSIVE = 0x8000
MOUNT_ATTR_IDMAP = 0x00100000
MOVE_MOUNT_F_EMPTY_PATH = 0x4
MOVE_MOUNT_T_EMPTY_PATH = 0x40
FSOPEN_CLOEXEC = 1
FSMOUNT_CLOEXEC = 1
FSCONFIG_SET_FLAG = 0
FSCONFIG_SET_STRING = 1
FSCONFIG_SET_FD = 5
FSCONFIG_CMD_CREATE = 6


def map_text(mappings, name: str = "mappings") -> str:
    """OCI [{containerID, hostID, size}] -> the text of /proc/<pid>/{uid,gid}_map; raises ValueError."""
    if not isinstance(mappings, list) or not mappings:
        raise ValueError(f"{name} must be a non-empty list")
    lines = []
    for m in mappings:
        try:
            c, h, n = int(m["containerID"]), int(m["hostID"]), int(m["size"])
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"bad {name} entry {m!r}") from None
        if c < 0 or h < 0 or n <= 0:
            raise ValueError(f"bad {name} entry {m!r}")
        lines.append(f"{c} {h} {n}")
    return "\n".join(lines) + "\n"


def map_id(mappings: list[dict], ident: int) -> int | None:
    """The host id of a container id under OCI mappings (None: unmapped)."""
    for m in mappings:
        c, h, n = int(m["containerID"]), int(m["hostID"]), int(m["size"])
        if c <= ident < c + n:
            return h + ident - c
    return None


def create(uid_map: str, gid_map: str) -> int:
    """A new user namespace with these maps, held by the returned fd (O_CLOEXEC). Single-threaded callers only.

    The helper is a raw clone (no atfork handlers, as launch.Process) that waits on a pipe while the parent writes
    its maps and opens its /proc/<pid>/ns/user; then it exits and is reaped here."""
    r, w = os.pipe2(os.O_CLOEXEC)
    try:
        pid = linux.clone(linux.CLONE_NEWUSER)
    except OSError:
        os.close(r)
        os.close(w)
        raise
    if pid == 0:  # the helper: wait for the parent to close its end, then go
        try:
            os.close(w)
            os.read(r, 1)
        finally:
            os._exit(0)
    os.close(r)
    try:
        for name, text in (("uid_map", uid_map), ("gid_map", gid_map)):
            with open(f"/proc/{pid}/{name}", "w") as f:
                f.write(text)
        return os.open(f"/proc/{pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    finally:
        os.close(w)
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass


def _call(name: str, *args) -> int:
    ret = libc.syscall(_SYS[name], *args)
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{name}: {os.strerror(err)}")
    return ret


def open_tree_clone(path: str, recursive: bool) -> int:
    """A detached copy of the mount at path (and the mounts below it when recursive), as an fd."""
    flags = OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | (AT_RECURSIVE if recursive else 0)
    try:
        return _call("open_tree", ctypes.c_int(-100), os.fsencode(path), ctypes.c_uint(flags))
    except OSError as exc:
        raise OSError(exc.errno, f"open_tree {path!r}: {exc.strerror}") from None


def set_idmap(mount_fd: int, userns_fd: int, recursive: bool = False, attr_set: int = 0) -> None:
    """Idmap a detached mount (and its submounts when recursive) with the mappings of userns_fd."""
    attr = linux._MountAttr(attr_set | MOUNT_ATTR_IDMAP, 0, 0, userns_fd)
    flags = AT_EMPTY_PATH | (AT_RECURSIVE if recursive else 0)
    ret = libc.syscall(linux.SYS["mount_setattr"], ctypes.c_int(mount_fd), b"", ctypes.c_uint(flags),
                       ctypes.byref(attr), ctypes.c_size_t(ctypes.sizeof(attr)))
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"idmapping a mount (mount_setattr MOUNT_ATTR_IDMAP): {os.strerror(err)}")


def idmapped_tree(path: str, userns_fd: int, *, recursive_tree: bool, recursive_idmap: bool) -> int:
    """open_tree + idmap: the fd of a detached idmapped copy of path, for move_mount in the child."""
    fd = open_tree_clone(path, recursive_tree)
    try:
        set_idmap(fd, userns_fd, recursive=recursive_idmap and recursive_tree)
    except OSError as exc:
        os.close(fd)
        raise OSError(exc.errno, f"{path!r}: {exc.strerror}") from None
    return fd


def idmapped_overlay(overlay: dict, userns_fd: int) -> int:
    """A detached overlay mount whose lower layers are idmapped through userns_fd; upper/work as they are."""
    fs = _call("fsopen", b"overlay", ctypes.c_uint(FSOPEN_CLOEXEC))
    layer_fds: list[int] = []
    try:
        def cfg(cmd: int, key: bytes | None, value: bytes | None = None, aux: int = 0) -> None:
            ret = libc.syscall(_SYS["fsconfig"], ctypes.c_int(fs), ctypes.c_uint(cmd), key, value, ctypes.c_int(aux))
            if ret < 0:
                err = ctypes.get_errno()
                raise OSError(err, f"overlay fsconfig {key.decode() if key else 'create'}: {os.strerror(err)}")

        for lower in overlay["lower"]:
            lfd = idmapped_tree(lower, userns_fd, recursive_tree=False, recursive_idmap=False)
            layer_fds.append(lfd)
            cfg(FSCONFIG_SET_FD, b"lowerdir+", None, lfd)
        if overlay.get("upper"):
            cfg(FSCONFIG_SET_STRING, b"upperdir", os.fsencode(overlay["upper"]))
            cfg(FSCONFIG_SET_STRING, b"workdir", os.fsencode(overlay["work"]))
        for opt in overlay.get("options") or []:
            key, eq, value = opt.partition("=")
            if eq:
                cfg(FSCONFIG_SET_STRING, key.encode(), value.encode())
            else:
                cfg(FSCONFIG_SET_FLAG, key.encode())
        cfg(FSCONFIG_CMD_CREATE, None)
        return _call("fsmount", ctypes.c_int(fs), ctypes.c_uint(FSMOUNT_CLOEXEC), ctypes.c_uint(0))
    finally:
        for lfd in layer_fds:
            os.close(lfd)
        os.close(fs)


def chown_upper(overlay: dict, uid_mappings: list[dict], gid_mappings: list[dict]) -> None:
    """The upper dir's root takes the mapped owner of the image's root (the top lower layer's), so that root in
    the container owns "/" of its rootfs (the merged root dir shows the upper's owner)."""
    if not overlay.get("upper"):
        return
    st = os.stat(overlay["lower"][0])
    uid, gid = map_id(uid_mappings, st.st_uid), map_id(gid_mappings, st.st_gid)
    if uid is None or gid is None:
        return
    os.chown(overlay["upper"], uid, gid)


def move_mount(fd: int, target: str | int, shown: str | None = None) -> None:
    """Attach a detached mount (an fd from open_tree/fsmount) at target: a path, or an fd of the mount point."""
    if isinstance(target, int):
        to_fd, to_path, flags = target, b"", MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH
    else:
        to_fd, to_path, flags = -100, os.fsencode(target), MOVE_MOUNT_F_EMPTY_PATH
    try:
        _call("move_mount", ctypes.c_int(fd), b"", ctypes.c_int(to_fd), to_path, ctypes.c_uint(flags))
    except OSError as exc:
        raise OSError(exc.errno, f"move_mount onto {shown or target!r}: {exc.strerror}") from None


_SUPPORTED: dict[str, bool] = {}


def supported() -> bool:
    """Whether pods can get user namespaces with idmapped rootfs here: user namespaces enabled, and the new mount
    API with idmapped mounts and overlay layers given as fds. Probed without forking (safe in the daemon): an
    overlay fsconfig with an fd layer, and mount_setattr(MOUNT_ATTR_IDMAP) with an invalid userns fd, which fails
    with EBADF where idmapped mounts exist (EINVAL/ENOSYS where they do not)."""
    if "ok" in _SUPPORTED:
        return _SUPPORTED["ok"]
    ok = False
    try:
        with open("/proc/sys/user/max_user_namespaces") as f:
            ok = int(f.read()) > 0
        if ok:
            tree = open_tree_clone("/", recursive=False)
            try:
                attr = linux._MountAttr(MOUNT_ATTR_IDMAP, 0, 0, 2**31 - 1)
                ret = libc.syscall(linux.SYS["mount_setattr"], ctypes.c_int(tree), b"", ctypes.c_uint(AT_EMPTY_PATH),
                                   ctypes.byref(attr), ctypes.c_size_t(ctypes.sizeof(attr)))
                ok = ret < 0 and ctypes.get_errno() == errno.EBADF
            finally:
                os.close(tree)
        if ok:
            fs = _call("fsopen", b"overlay", ctypes.c_uint(FSOPEN_CLOEXEC))
            d = os.open("/", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                ret = libc.syscall(_SYS["fsconfig"], ctypes.c_int(fs), ctypes.c_uint(FSCONFIG_SET_FD), b"lowerdir+",
                                   None, ctypes.c_int(d))
                ok = ret == 0
            finally:
                os.close(d)
                os.close(fs)
    except OSError:
        ok = False
    _SUPPORTED["ok"] = ok
    return ok
