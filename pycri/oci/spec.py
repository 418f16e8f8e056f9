"""CRI configs + image config -> OCI runtime spec (config.json, runtime-spec 1.x), as containerd's CRI builds it.

Pure functions: no I/O beyond stat() of host paths named by the request (devices, mount sources), a Localhost
seccomp profile's file and the host's LSM state (pycri/oci/seccomp.py, pycri/oci/lsm.py). The runtime
layer receives only the resulting dict. Defaults (capabilities, masked/read-only paths, default mounts, device
allow-list) follow containerd's so that images behave the same on both.
"""

from __future__ import annotations

import functools
import os
import stat
from dataclasses import dataclass, field

from pycri.oci import seccomp as seccomp_profiles
from pycri.oci import lsm
from pycri.api import api_pb2 as cri
from pycri.errors import FailedPrecondition, InvalidArgument
from pycri.node import cgroup_version, resolve_path

OCI_VERSION = "1.1.0"
DEFAULT_PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# containerd's default capability set (oci.defaultUnixCaps).
DEFAULT_CAPABILITIES = [
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW", "CAP_SETGID",
    "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_KILL",
    "CAP_AUDIT_WRITE",
]
# Every capability of Linux 6.x, for privileged containers and "ALL".
ALL_CAPABILITIES = [
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL", "CAP_SETGID",
    "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE", "CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_IPC_LOCK", "CAP_IPC_OWNER", "CAP_SYS_MODULE", "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT", "CAP_SYS_PTRACE", "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE", "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE", "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE", "CAP_MAC_ADMIN", "CAP_SYSLOG", "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ", "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE",
]
DEFAULT_MASKED_PATHS = [
    "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats", "/proc/timer_list",
    "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi", "/sys/firmware", "/sys/devices/virtual/powercap",
]
DEFAULT_READONLY_PATHS = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]

# The device cgroup allow-list of containerd's default spec.
DEFAULT_DEVICE_RULES = [
    {"allow": False, "access": "rwm"},
    {"allow": True, "type": "c", "major": -1, "minor": -1, "access": "m"},
    {"allow": True, "type": "b", "major": -1, "minor": -1, "access": "m"},
    {"allow": True, "type": "c", "major": 1, "minor": 3, "access": "rwm"},
    {"allow": True, "type": "c", "major": 1, "minor": 8, "access": "rwm"},
    {"allow": True, "type": "c", "major": 1, "minor": 7, "access": "rwm"},
    {"allow": True, "type": "c", "major": 5, "minor": 0, "access": "rwm"},
    {"allow": True, "type": "c", "major": 1, "minor": 5, "access": "rwm"},
    {"allow": True, "type": "c", "major": 1, "minor": 9, "access": "rwm"},
    {"allow": True, "type": "c", "major": 5, "minor": 1, "access": "rwm"},
    {"allow": True, "type": "c", "major": 136, "minor": -1, "access": "rwm"},
    {"allow": True, "type": "c", "major": 5, "minor": 2, "access": "rwm"},
    {"allow": True, "type": "c", "major": 10, "minor": 200, "access": "rwm"},
]

_PROPAGATION = {
    cri.MountPropagation.PROPAGATION_PRIVATE: "rprivate",
    cri.MountPropagation.PROPAGATION_HOST_TO_CONTAINER: "rslave",
    cri.MountPropagation.PROPAGATION_BIDIRECTIONAL: "rshared",
}

# Annotations containerd puts on every spec; tools (and our recovery) read them.
ANN_CONTAINER_TYPE = "io.kubernetes.cri.container-type"
ANN_SANDBOX_ID = "io.kubernetes.cri.sandbox-id"
ANN_SANDBOX_NAME = "io.kubernetes.cri.sandbox-name"
ANN_SANDBOX_NAMESPACE = "io.kubernetes.cri.sandbox-namespace"
ANN_SANDBOX_UID = "io.kubernetes.cri.sandbox-uid"
ANN_CONTAINER_NAME = "io.kubernetes.cri.container-name"
ANN_IMAGE_NAME = "io.kubernetes.cri.image-name"
ANN_LOG_PATH = "io.pycri.log-path"

SANDBOX_OOM_SCORE_ADJ = -998
DEFAULT_CGROUP_PARENT = "/pycri"  # for pods the kubelet gave no cgroup parent (crictl runp, tests)  # the kubelet's value for infra containers


@dataclass
class PodPaths:
    """Where a pod's shared pieces live on the host, for the specs of its containers.

    `*_ns` are namespace paths to join (a pinned file or /proc/<infra pid>/ns/<type>); None means the container gets
    the host's namespace (NODE mode) - or for pid, a new one (CONTAINER mode) when `pid_ns` is "" .
    """

    hostname: str = ""
    hosts_file: str = ""
    resolv_file: str = ""
    hostname_file: str = ""
    shm_dir: str | None = None  # None: host IPC, the host's /dev/shm
    net_ns: str | None = None
    ipc_ns: str | None = None
    uts_ns: str | None = None
    pid_ns: str | None = ""
    user_ns: str | None = None  # the pod's pinned user namespace (POD userns mode), None: the host's
    extra_annotations: dict = field(default_factory=dict)


def cgroups_path(driver: str, parent: str, container_id: str) -> str:
    """The cgroup of a container as the kubelet expects it: `<parent>/<id>` (cgroupfs) or `<slice>:pycri:<id>`."""
    if driver == "systemd":
        slice_name = os.path.basename(parent.rstrip("/")) if parent else "system.slice"
        if parent and not slice_name.endswith(".slice"):
            raise InvalidArgument(f"cgroup_parent {parent!r} is not a systemd slice (the cgroup driver is systemd)")
        return f"{slice_name}:pycri:{container_id}"
    parent = parent or DEFAULT_CGROUP_PARENT
    if not parent.startswith("/"):
        parent = "/" + parent
    return f"{parent.rstrip('/')}/{container_id}"


def default_pids_limit(spec: dict, limit: int) -> None:
    """`[cgroup] pids_limit`: the container's pids.max, when set (the CRI has no field for one)."""
    if limit > 0:
        spec["linux"].setdefault("resources", {}).setdefault("pids", {"limit": limit})


def merge_command(config: cri.ContainerConfig, image_config: dict) -> list[str]:
    """The kubelet/Docker rule: command replaces the image Entrypoint (and drops its Cmd); args replace Cmd."""
    img = image_config.get("config") or {}
    if config.command:
        argv = list(config.command) + list(config.args)
    else:
        entrypoint = list(img.get("Entrypoint") or [])
        argv = entrypoint + (list(config.args) if config.args else list(img.get("Cmd") or []))
    if not argv:
        raise InvalidArgument("no command specified: the container config and the image give none")
    return argv


def merge_env(image_env: list[str], extra: list[tuple[str, str]]) -> list[str]:
    """Image env, then the given pairs; a later value replaces an earlier one with the same name, in place."""
    order: list[str] = []
    values: dict[str, str] = {}
    for entry in image_env:
        key = entry.split("=", 1)[0]
        if key not in values:
            order.append(key)
        values[key] = entry
    for key, value in extra:
        if not key:
            continue
        if key not in values:
            order.append(key)
        values[key] = f"{key}={value}"
    if "PATH" not in values:
        order.insert(0, "PATH")
        values["PATH"] = DEFAULT_PATH_ENV
    return [values[k] for k in order]


def resources(res: cri.LinuxContainerResources | None) -> dict:
    """CRI LinuxContainerResources -> OCI linux.resources (cpu, memory, hugepages, unified)."""
    out: dict = {}
    if res is None:
        return out
    cpu = {}
    if res.cpu_shares:
        cpu["shares"] = res.cpu_shares
    if res.cpu_quota:
        cpu["quota"] = res.cpu_quota
    if res.cpu_period:
        cpu["period"] = res.cpu_period
    if res.cpuset_cpus:
        cpu["cpus"] = res.cpuset_cpus
    if res.cpuset_mems:
        cpu["mems"] = res.cpuset_mems
    if cpu:
        out["cpu"] = cpu
    memory = {}
    if res.memory_limit_in_bytes:
        memory["limit"] = res.memory_limit_in_bytes
    if res.memory_swap_limit_in_bytes:
        memory["swap"] = res.memory_swap_limit_in_bytes
    if memory:
        out["memory"] = memory
    if res.hugepage_limits:
        out["hugepageLimits"] = [{"pageSize": h.page_size, "limit": h.limit} for h in res.hugepage_limits]
    if res.unified:
        out["unified"] = dict(res.unified)
    return out


def capabilities(sc: cri.LinuxContainerSecurityContext | None) -> list[str]:
    """The effective capability set: containerd's default, then drops and adds ("ALL" allowed in either)."""
    if sc is not None and sc.privileged:
        return list(ALL_CAPABILITIES)
    caps = list(DEFAULT_CAPABILITIES)
    if sc is None or not sc.HasField("capabilities"):
        return caps
    adds = [_cap_name(c) for c in sc.capabilities.add_capabilities]
    drops = [_cap_name(c) for c in sc.capabilities.drop_capabilities]
    if "CAP_ALL" in adds:
        caps = list(ALL_CAPABILITIES)
    else:
        caps += [c for c in adds if c not in caps]
    if "CAP_ALL" in drops:
        caps = [c for c in adds if c != "CAP_ALL"] if "CAP_ALL" not in adds else []
    else:
        caps = [c for c in caps if c not in drops]
    return caps


def _cap_name(name: str) -> str:
    name = name.strip().upper()
    full = name if name.startswith("CAP_") else f"CAP_{name}"
    if full != "CAP_ALL" and full not in ALL_CAPABILITIES:
        raise InvalidArgument(f"unknown capability {name!r}")
    return full


def default_mounts(paths: PodPaths, *, readonly_sys: bool = True, privileged: bool = False) -> list[dict]:
    sys_opts = ["nosuid", "noexec", "nodev"] + (["ro"] if readonly_sys and not privileged else ["rw"])
    mounts = [
        {"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
        {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
         "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
        {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": sys_opts},
        {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
         "options": ["nosuid", "noexec", "nodev", "relatime"] + (["rw"] if privileged else ["ro"])},
    ]
    if paths.shm_dir is None:
        mounts.append({"destination": "/dev/shm", "type": "bind", "source": "/dev/shm",
                       "options": ["rbind", "rprivate", "rw"]})
    else:
        mounts.append({"destination": "/dev/shm", "type": "bind", "source": paths.shm_dir,
                       "options": ["rbind", "rprivate", "rw"]})
    return mounts


def _pod_file_mounts(paths: PodPaths, readonly: bool) -> list[dict]:
    out = []
    for dest, src in (("/etc/hostname", paths.hostname_file), ("/etc/hosts", paths.hosts_file),
                      ("/etc/resolv.conf", paths.resolv_file)):
        if src:
            out.append({"destination": dest, "type": "bind", "source": src,
                        "options": ["rbind", "rprivate", "ro" if readonly else "rw"]})
    return out


IMAGE_VOLUME = "pycri.imageVolume"  # the key of an image volume's placeholder in spec["mounts"] (cri_mounts)


def cri_mounts(mounts, *, readonly_rootfs: bool = False) -> list[dict]:
    """CRI mounts -> OCI bind mounts; host path symlinks resolved, missing host dirs created (as containerd does).

    An image volume (Mount.image) becomes a placeholder bind, in its place among the mounts, whose source is
    filled in (and the IMAGE_VOLUME key dropped) once the image is mounted (pycri/containers/imagevols.py)."""
    out = []
    for index, m in enumerate(mounts):
        if not m.container_path.startswith("/"):
            raise InvalidArgument(f"mount container_path {m.container_path!r} must be absolute")
        if m.HasField("image") and m.image.image:
            out.append(_image_volume(index, m))
            continue
        if not m.host_path:
            raise InvalidArgument(f"mount for {m.container_path!r} has no host_path")
        if m.recursive_read_only:
            if not m.readonly:
                raise InvalidArgument(f"mount {m.container_path!r}: recursive_read_only needs readonly")
            if m.propagation != cri.MountPropagation.PROPAGATION_PRIVATE:
                raise InvalidArgument(f"mount {m.container_path!r}: recursive_read_only needs private propagation")
        source = m.host_path
        if not os.path.exists(source):
            os.makedirs(source, mode=0o755, exist_ok=True)
        try:
            source = resolve_path(source)[0]  # realpath, from the kernel: ~4x faster on the kubelet's deep paths
        except OSError:
            source = os.path.realpath(source)
        if m.propagation not in _PROPAGATION:
            raise InvalidArgument(f"mount {m.container_path!r}: unknown propagation {m.propagation}")
        options = ["rbind", _PROPAGATION[m.propagation], "ro" if m.readonly else "rw"]
        if m.recursive_read_only:
            options.append("rro")
        mount = {"destination": m.container_path, "type": "bind", "source": source, "options": options}
        if m.uidMappings or m.gidMappings:  # as containerd: an idmapped volume when the kubelet asks for one
            if not (m.uidMappings and m.gidMappings):
                raise InvalidArgument(f"mount {m.container_path!r}: idmapping needs both uid and gid mappings")
            mount["uidMappings"] = _oci_id_mappings(m.uidMappings)
            mount["gidMappings"] = _oci_id_mappings(m.gidMappings)
        out.append(mount)
    return out


def _image_volume(index: int, m: cri.Mount) -> dict:
    """The placeholder of an image volume, its request checked as containerd checks it (no host path, read-only)
    and its sub path a plain relative path (it is resolved inside the image later, whatever it holds)."""
    where = f"image volume {m.container_path!r}"
    if m.host_path:
        raise InvalidArgument(f"{where}: an image volume takes no host_path (got {m.host_path!r})")
    if not m.readonly:
        raise InvalidArgument(f"{where}: an image volume must be readonly")
    if m.propagation != cri.MountPropagation.PROPAGATION_PRIVATE:
        raise InvalidArgument(f"{where}: an image volume takes private propagation only")
    sub = m.image_sub_path
    if "\0" in sub or "\0" in m.image.image:
        raise InvalidArgument(f"{where}: the image and its sub path must not contain NUL characters")
    if sub.startswith("/") or ".." in sub.split("/"):
        raise InvalidArgument(f"{where}: image_sub_path {sub!r} must be relative, without '..'")
    if m.uidMappings or m.gidMappings:
        raise FailedPrecondition(f"{where}: idmapped image volumes (user-namespaced pods) are not supported yet")
    options = ["rbind", "rprivate", "ro", "nosuid", "nodev", "noexec"] + (["rro"] if m.recursive_read_only else [])
    return {"destination": m.container_path, "type": "bind", "source": "", "options": options,
            IMAGE_VOLUME: {"index": index, "image": m.image.image, "subPath": sub}}


def _oci_id_mappings(mappings) -> list[dict]:
    return [{"containerID": m.container_id, "hostID": m.host_id, "size": m.length} for m in mappings]


def userns_mappings(opts: cri.NamespaceOption) -> tuple[list[dict], list[dict]] | None:
    """The pod's user namespace from NamespaceOption.userns_options, validated as containerd and CRI-O do.

    Absent or NODE: no user namespace (None; NODE with mappings is an error). POD: exactly one uid and one gid
    mapping, each mapping container id 0 (root inside) to a host range; returned as OCI mappings. CONTAINER and
    TARGET: not supported (the kubelet never asks for them)."""
    if not opts.HasField("userns_options"):
        return None
    u = opts.userns_options
    mode = cri.NamespaceMode.Name(u.mode) if u.mode in cri.NamespaceMode.values() else str(u.mode)
    if u.mode == cri.NamespaceMode.NODE:
        if u.uids or u.gids:
            raise InvalidArgument("user namespace mode NODE takes no uid/gid mappings")
        return None
    if u.mode != cri.NamespaceMode.POD:
        raise InvalidArgument(f"user namespace mode {mode} is not supported (only POD and NODE)")
    for what, maps in (("uid", u.uids), ("gid", u.gids)):
        if len(maps) != 1:
            raise InvalidArgument(f"user namespace mode POD needs exactly one {what} mapping, got {len(maps)}")
        if maps[0].container_id != 0:
            raise InvalidArgument(f"the {what} mapping must start at container id 0 (root inside), "
                                  f"not {maps[0].container_id}")
        if maps[0].length == 0:
            raise InvalidArgument(f"the {what} mapping has length 0")
    return _oci_id_mappings(u.uids), _oci_id_mappings(u.gids)


def host_device(path: str) -> tuple[str, int, int, int]:
    """(type "c" | "b" | "p", or "" for anything else; major; minor; permission bits) of a host node, followed
    through symlinks as the kernel would; OSError when it cannot be stat'ed. For CRI devices and CDI nodes."""
    st = os.stat(path)
    kind = "c" if stat.S_ISCHR(st.st_mode) else "b" if stat.S_ISBLK(st.st_mode) else \
        "p" if stat.S_ISFIFO(st.st_mode) else ""
    return kind, os.major(st.st_rdev), os.minor(st.st_rdev), stat.S_IMODE(st.st_mode)


def devices(devs) -> tuple[list[dict], list[dict]]:
    """CRI devices -> (linux.devices, device cgroup allow rules); the host node must exist."""
    nodes, rules = [], []
    for d in devs:
        try:
            kind, major, minor, mode = host_device(d.host_path)
        except OSError as exc:
            raise InvalidArgument(f"device {d.host_path!r}: {exc.strerror}") from None
        if kind not in ("c", "b"):
            raise InvalidArgument(f"device {d.host_path!r} is not a device node")
        perms = d.permissions or "rwm"
        if set(perms) - set("rwm"):
            raise InvalidArgument(f"device {d.host_path!r}: permissions {perms!r} are not a subset of 'rwm'")
        nodes.append({"path": d.container_path or d.host_path, "type": kind, "major": major, "minor": minor,
                      "fileMode": mode, "uid": 0, "gid": 0})
        rules.append({"allow": True, "type": kind, "major": major, "minor": minor, "access": perms})
    return nodes, rules


_HOST_DEV_SKIP_DIRS = {"pts", "shm", "fd", "mqueue", ".lxc", ".lxd-mounts", ".udev"}


def host_devices(root: str = "/dev") -> list[dict]:
    """Every device node of the host's /dev, for privileged containers (containerd's oci.HostDevices)."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in _HOST_DEV_SKIP_DIRS]
        for name in filenames:
            path = os.path.join(dirpath, name)
            if path in (os.path.join(root, "console"), os.path.join(root, "ptmx")):  # ptmx: the container's devpts
                continue
            try:
                st = os.lstat(path)
            except OSError:
                continue
            if stat.S_ISCHR(st.st_mode):
                kind = "c"
            elif stat.S_ISBLK(st.st_mode):
                kind = "b"
            else:
                continue
            out.append({"path": path, "type": kind, "major": os.major(st.st_rdev), "minor": os.minor(st.st_rdev),
                        "fileMode": stat.S_IMODE(st.st_mode), "uid": st.st_uid, "gid": st.st_gid})
    return out


@functools.cache
def host_cgroup_v2() -> bool:
    """Whether this host's cgroups are v2 (unified): containers then get a cgroup namespace of their own."""
    return cgroup_version() == 2


def _namespaces(paths: PodPaths, *, new_pid: bool, privileged: bool) -> list[dict]:
    """The spec's namespaces. On cgroup v2 a non-privileged container gets a cgroup namespace of its own, rooted
    at its cgroup, as containerd gives it: /sys/fs/cgroup shows its own limits (memory.max), which runtimes
    such as the JVM's, Go's and Node's size themselves by."""
    ns = [{"type": "mount"}]
    if host_cgroup_v2() and not privileged:
        ns.append({"type": "cgroup"})
    if paths.user_ns is not None:
        ns.append({"type": "user", "path": paths.user_ns} if paths.user_ns else {"type": "user"})
    if paths.net_ns is not None:  # "": a new one (the infra of a pod with a user namespace makes it)
        ns.append({"type": "network", "path": paths.net_ns} if paths.net_ns else {"type": "network"})
    if paths.ipc_ns is not None:
        ns.append({"type": "ipc", "path": paths.ipc_ns} if paths.ipc_ns else {"type": "ipc"})
    if paths.uts_ns is not None:
        ns.append({"type": "uts", "path": paths.uts_ns} if paths.uts_ns else {"type": "uts"})
    if new_pid:
        ns.append({"type": "pid"})
    elif paths.pid_ns:
        ns.append({"type": "pid", "path": paths.pid_ns})
    return ns


def sandbox_spec(config: cri.PodSandboxConfig, image_config: dict, sandbox_id: str, paths: PodPaths,
                 cgroup_driver: str) -> dict:
    """The infra (pause) container: holds the pod's ipc/uts(/pid) namespaces and joins its pinned netns."""
    img = image_config.get("config") or {}
    argv = list(img.get("Entrypoint") or []) + list(img.get("Cmd") or [])
    if not argv:
        raise InvalidArgument("the sandbox image has no entrypoint or command")
    linux = config.linux
    sc = linux.security_context
    opts = sc.namespace_options
    spec_paths = PodPaths(**{**paths.__dict__})
    spec_paths.ipc_ns = None if opts.ipc == cri.NamespaceMode.NODE else ""
    spec_paths.uts_ns = None if opts.network == cri.NamespaceMode.NODE else ""
    userns = userns_mappings(opts)
    if userns is not None:
        # the infra makes the pod's user namespace and, inside it, the pod's network namespace (so that it belongs
        # to the user namespace: sysfs and net.* sysctls work there); the daemon pins both from the infra process
        spec_paths.user_ns = ""
        if spec_paths.net_ns is not None:
            spec_paths.net_ns = ""
    spec = {
        "ociVersion": OCI_VERSION,
        "process": {
            "terminal": False,
            "user": {"uid": sc.run_as_user.value if sc.HasField("run_as_user") else 0,
                     "gid": sc.run_as_group.value if sc.HasField("run_as_group") else 0},
            "args": argv,
            "env": merge_env(list(img.get("Env") or []), []),
            "cwd": img.get("WorkingDir") or "/",
            "capabilities": _caps_block([] if not sc.privileged else ALL_CAPABILITIES),
            "noNewPrivileges": True,
            "oomScoreAdj": SANDBOX_OOM_SCORE_ADJ,
        },
        "root": {"path": "rootfs", "readonly": True},
        "mounts": default_mounts(PodPaths(shm_dir=paths.shm_dir), privileged=sc.privileged),
        "annotations": {
            **dict(config.annotations),
            ANN_CONTAINER_TYPE: "sandbox",
            ANN_SANDBOX_ID: sandbox_id,
            ANN_SANDBOX_NAME: config.metadata.name,
            ANN_SANDBOX_NAMESPACE: config.metadata.namespace,
            ANN_SANDBOX_UID: config.metadata.uid,
        },
        "linux": {
            "cgroupsPath": cgroups_path(cgroup_driver, linux.cgroup_parent, sandbox_id),
            "namespaces": _namespaces(spec_paths, new_pid=opts.pid != cri.NamespaceMode.NODE,
                                      privileged=sc.privileged),
            "resources": {"devices": list(DEFAULT_DEVICE_RULES), **resources(
                linux.resources if linux.HasField("resources") else None)},
            "sysctl": validate_sysctls(dict(linux.sysctls), opts),
        },
    }
    if opts.network != cri.NamespaceMode.NODE and config.hostname:
        spec["hostname"] = config.hostname
    if userns is not None:
        spec["linux"]["uidMappings"], spec["linux"]["gidMappings"] = userns
    if not sc.privileged:
        spec["linux"]["maskedPaths"] = list(DEFAULT_MASKED_PATHS)
        spec["linux"]["readonlyPaths"] = list(DEFAULT_READONLY_PATHS)
    security_profiles(spec, sc, [], privileged=sc.privileged)
    return spec


def container_spec(config: cri.ContainerConfig, sandbox_config: cri.PodSandboxConfig, image_config: dict,
                   container_id: str, sandbox_id: str, paths: PodPaths, cgroup_driver: str,
                   log_path: str) -> dict:
    """An app container: joins the pod's namespaces (per NamespaceOption), with its own mount namespace."""
    img = image_config.get("config") or {}
    linux = config.linux
    sc = linux.security_context if linux.HasField("security_context") else None
    privileged = bool(sc and sc.privileged)
    if privileged and not sandbox_config.linux.security_context.privileged:
        raise InvalidArgument("a privileged container needs a privileged pod sandbox")
    opts = sc.namespace_options if sc else cri.NamespaceOption()
    if opts.pid == cri.NamespaceMode.TARGET and not opts.target_id:
        raise InvalidArgument("pid namespace TARGET needs target_id")
    pod_opts = sandbox_config.linux.security_context.namespace_options
    userns = userns_mappings(pod_opts)
    if opts.HasField("userns_options") and userns_mappings(opts) != userns:
        raise InvalidArgument("the container's user namespace options differ from its pod sandbox's")

    env_pairs = [(kv.key, kv.value) for kv in config.envs]
    if sandbox_config.hostname:
        env_pairs.insert(0, ("HOSTNAME", sandbox_config.hostname))
    user = {"uid": 0, "gid": 0}
    if sc and sc.HasField("run_as_user"):
        user["uid"] = sc.run_as_user.value
    if sc and sc.HasField("run_as_group"):
        if not (sc.HasField("run_as_user") or sc.run_as_username):
            raise InvalidArgument("run_as_group needs run_as_user or run_as_username")
        user["gid"] = sc.run_as_group.value
    if sc and sc.supplemental_groups:
        user["additionalGids"] = list(sc.supplemental_groups)

    caps = capabilities(sc)
    readonly_rootfs = bool(sc and sc.readonly_rootfs)
    mounts = default_mounts(paths, privileged=privileged) + _pod_file_mounts(paths, readonly_rootfs)
    user_mounts = cri_mounts(config.mounts)
    taken = {m["destination"] for m in user_mounts}
    mounts = [m for m in mounts if m["destination"] not in taken] + sorted(
        user_mounts, key=lambda m: m["destination"].rstrip("/").count("/"))
    dev_nodes, dev_rules = devices(config.devices)
    if privileged:  # all the host's devices, then the requested ones (which may rename or add)
        asked = {d["path"] for d in dev_nodes}
        dev_nodes = [d for d in host_devices() if d["path"] not in asked] + dev_nodes
    res = resources(linux.resources if linux.HasField("resources") else None)
    res["devices"] = ([{"allow": True, "access": "rwm"}] if privileged else list(DEFAULT_DEVICE_RULES) + dev_rules)

    pid_paths = PodPaths(**{**paths.__dict__})
    new_pid = opts.pid == cri.NamespaceMode.CONTAINER
    if opts.pid == cri.NamespaceMode.NODE:
        pid_paths.pid_ns = None
    elif opts.pid == cri.NamespaceMode.TARGET:
        pid_paths.pid_ns = paths.extra_annotations.get("target_pid_ns", "")
    spec = {
        "ociVersion": OCI_VERSION,
        "process": {
            "terminal": config.tty,
            "user": user,
            "args": merge_command(config, image_config),
            "env": merge_env(list(img.get("Env") or []), env_pairs),
            "cwd": config.working_dir or img.get("WorkingDir") or "/",
            "capabilities": _caps_block(caps),
            "noNewPrivileges": bool(sc and sc.no_new_privs),
        },
        "root": {"path": "rootfs", "readonly": readonly_rootfs},
        "mounts": mounts,
        "annotations": {
            **dict(config.annotations),
            ANN_CONTAINER_TYPE: "container",
            ANN_SANDBOX_ID: sandbox_id,
            ANN_SANDBOX_NAME: sandbox_config.metadata.name,
            ANN_SANDBOX_NAMESPACE: sandbox_config.metadata.namespace,
            ANN_SANDBOX_UID: sandbox_config.metadata.uid,
            ANN_CONTAINER_NAME: config.metadata.name,
            ANN_IMAGE_NAME: config.image.image,
            ANN_LOG_PATH: log_path,
        },
        "linux": {
            "cgroupsPath": cgroups_path(cgroup_driver, sandbox_config.linux.cgroup_parent, container_id),
            "namespaces": _namespaces(pid_paths, new_pid=new_pid, privileged=privileged),
            "resources": res,
            "devices": dev_nodes,
        },
    }
    if linux.HasField("resources") and linux.resources.oom_score_adj:
        spec["process"]["oomScoreAdj"] = linux.resources.oom_score_adj
    if userns is not None:  # join the pod's user namespace (pinned by the daemon)
        if not paths.user_ns:
            raise InvalidArgument("the pod sandbox has no user namespace to join")
        spec["linux"]["uidMappings"], spec["linux"]["gidMappings"] = userns
    # as containerd: a bidirectional volume needs the container's mounts to stay peers of the host's (rshared), a
    # host-to-container one needs them slaves (rslave); otherwise the launcher makes everything private
    props = {o for m in user_mounts for o in m["options"]}
    if "rshared" in props:
        spec["linux"]["rootfsPropagation"] = "rshared"
    elif "rslave" in props:
        spec["linux"]["rootfsPropagation"] = "rslave"
    if not privileged:
        spec["linux"]["maskedPaths"] = list(sc.masked_paths) if sc and sc.masked_paths else list(DEFAULT_MASKED_PATHS)
        spec["linux"]["readonlyPaths"] = (list(sc.readonly_paths) if sc and sc.readonly_paths
                                          else list(DEFAULT_READONLY_PATHS))
    security_profiles(spec, sc, caps, privileged=privileged, pod_sc=sandbox_config.linux.security_context)
    return spec


def security_profiles(spec: dict, sc, caps: list[str], *, privileged: bool, pod_sc=None) -> None:
    """linux.seccomp (pycri/oci/seccomp.py), process.apparmorProfile, process.selinuxLabel and
    linux.mountLabel (pycri/oci/lsm.py) as the security context asks; `caps` is the bounding set (the seccomp
    profile's per-capability rules follow it)."""
    profile = seccomp_profiles.linux_seccomp(sc, caps, privileged=privileged)
    if profile is not None:
        spec["linux"]["seccomp"] = profile
    lsm.apply(spec, sc, privileged=privileged, pod_sc=pod_sc)


def _caps_block(caps: list[str]) -> dict:
    return {"bounding": list(caps), "effective": list(caps), "permitted": list(caps)}


# Sysctls that are namespaced, and by which namespace (the kernel's list, as the kubelet validates it).
_IPC_SYSCTLS = ("kernel.shmall", "kernel.shmmax", "kernel.shmmni", "kernel.shm_rmid_forced", "kernel.msgmax",
                "kernel.msgmnb", "kernel.msgmni", "kernel.sem")
_UTS_SYSCTLS = ("kernel.hostname", "kernel.domainname")


def sysctl_dot_form(name: str) -> str:
    """A sysctl name in the kubelet's dot form: a slash-separated name has its dots and slashes swapped
    (`net/ipv4/conf/eth0.100/forwarding` -> `net.ipv4.conf.eth0/100.forwarding`); runtime/launch/rootfs.sysctl_path
    turns either form into the same /proc/sys path."""
    first = min((i for i in (name.find("."), name.find("/")) if i >= 0), default=-1)
    return name.translate(str.maketrans("./", "/.")) if first >= 0 and name[first] == "/" else name


def validate_sysctls(sysctls: dict[str, str], opts: cri.NamespaceOption) -> dict[str, str]:
    """Only namespaced sysctls, and only when the pod has its own namespace for them."""
    out = {}
    for name, value in sysctls.items():
        key = sysctl_dot_form(name)
        if key in _IPC_SYSCTLS or key.startswith("fs.mqueue."):
            if opts.ipc == cri.NamespaceMode.NODE:
                raise InvalidArgument(f"sysctl {name!r} is not allowed with host IPC")
        elif key.startswith("net."):
            if opts.network == cri.NamespaceMode.NODE:
                raise InvalidArgument(f"sysctl {name!r} is not allowed with host network")
        elif key in _UTS_SYSCTLS:
            if opts.network == cri.NamespaceMode.NODE:
                raise InvalidArgument(f"sysctl {name!r} is not allowed with host UTS")
        else:
            raise InvalidArgument(f"sysctl {name!r} is not namespaced; it cannot be set for a pod")
        out[key] = value
    return out


_SIGNAL_NAMES = {v: k for k, v in cri.Signal.items()}


def stop_signal(config: cri.ContainerConfig, image) -> str:
    """The signal that stops a container: its config's, else its image's StopSignal, else SIGTERM."""
    if config.stop_signal:
        name = _SIGNAL_NAMES.get(config.stop_signal, "SIGTERM")
        return name.replace("RTMINPLUS", "RTMIN+").replace("RTMAXMINUS", "RTMAX-")
    img = (image.config.get("config") or {}).get("StopSignal") or ""
    if img:
        return img if img.startswith("SIG") or (img.isascii() and img.isdigit()) else f"SIG{img}"
    return "SIGTERM"
