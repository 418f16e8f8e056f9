"""Seccomp for CRI: which profile a container gets, the RuntimeDefault profile, and Docker-style profiles -> OCI.

The CRI names a profile in `LinuxContainerSecurityContext.seccomp` / `LinuxSandboxSecurityContext.seccomp` (a
SecurityProfile: RuntimeDefault, Unconfined, Localhost + localhost_ref, an absolute path to a JSON file) or in the
deprecated `seccomp_profile_path` ("runtime/default", "docker/default", "unconfined", "localhost/<path>", "").
As containerd: unset (and "") means Unconfined, privileged containers get no filter whatever they ask, and a
Localhost file that cannot be used is an INVALID_ARGUMENT naming the path.

A profile file may be an OCI `linux.seccomp` object (`architectures`, `syscalls[].names`, as containerd reads it)
or a Docker/moby one (`archMap`, `syscalls[].name`, `includes`/`excludes` by caps, arches and minKernel, as moby
and CRI-O read it); to_oci() resolves the latter against the container's capabilities (the bounding set, as moby)
and this machine's architecture and kernel. The result is what runtime/launch/seccomp.py compiles with libseccomp.

RuntimeDefault is moby's default profile (profiles/seccomp/default.json, which containerd's
contrib/seccomp/seccomp_default.go mirrors), written down compactly below and expanded through the same to_oci():
errno EPERM for everything not allowed; a base allow list; personality only for the harmless personas; socket but
not AF_VSOCK; clone without namespace flags and clone3 as ENOSYS (so libc falls back to clone) unless
CAP_SYS_ADMIN; the syscalls each capability needs (mount, unshare, setns, sethostname... with CAP_SYS_ADMIN;
ptrace and friends with CAP_SYS_PTRACE or kernel >= 4.8...); per-architecture extras.
"""

from __future__ import annotations

import errno
import json
import os
import platform
import re

from pycri.api import api_pb2 as cri
from pycri.errors import InvalidArgument
from pycri.oci import profiles
from pycri.oci.profiles import LOCALHOST_PREFIX, RUNTIME_DEFAULT, UNCONFINED

DOCKER_DEFAULT = "docker/default"

ACTIONS = {"SCMP_ACT_KILL", "SCMP_ACT_KILL_THREAD", "SCMP_ACT_KILL_PROCESS", "SCMP_ACT_TRAP", "SCMP_ACT_ERRNO",
           "SCMP_ACT_TRACE", "SCMP_ACT_ALLOW", "SCMP_ACT_LOG"}  # what runtime/launch/seccomp.py compiles (no NOTIFY)
OPS = {"SCMP_CMP_NE", "SCMP_CMP_LT", "SCMP_CMP_LE", "SCMP_CMP_EQ", "SCMP_CMP_GE", "SCMP_CMP_GT",
       "SCMP_CMP_MASKED_EQ"}
ARCHES = {"SCMP_ARCH_X86", "SCMP_ARCH_X86_64", "SCMP_ARCH_X32", "SCMP_ARCH_ARM", "SCMP_ARCH_AARCH64",
          "SCMP_ARCH_MIPS", "SCMP_ARCH_MIPS64", "SCMP_ARCH_MIPS64N32", "SCMP_ARCH_MIPSEL", "SCMP_ARCH_MIPSEL64",
          "SCMP_ARCH_MIPSEL64N32", "SCMP_ARCH_PPC", "SCMP_ARCH_PPC64", "SCMP_ARCH_PPC64LE", "SCMP_ARCH_S390",
          "SCMP_ARCH_S390X", "SCMP_ARCH_PARISC", "SCMP_ARCH_PARISC64", "SCMP_ARCH_RISCV64", "SCMP_ARCH_LOONGARCH64"}

# machine (uname -m) -> (Go's name, as profiles' includes/excludes "arches" use it; libseccomp's native arch)
_MACHINES = {
    "x86_64": ("amd64", "SCMP_ARCH_X86_64"), "amd64": ("amd64", "SCMP_ARCH_X86_64"),
    "aarch64": ("arm64", "SCMP_ARCH_AARCH64"), "arm64": ("arm64", "SCMP_ARCH_AARCH64"),
    "armv7l": ("arm", "SCMP_ARCH_ARM"), "arm": ("arm", "SCMP_ARCH_ARM"),
    "i686": ("386", "SCMP_ARCH_X86"), "i386": ("386", "SCMP_ARCH_X86"), "386": ("386", "SCMP_ARCH_X86"),
    "ppc64le": ("ppc64le", "SCMP_ARCH_PPC64LE"), "s390x": ("s390x", "SCMP_ARCH_S390X"),
    "riscv64": ("riscv64", "SCMP_ARCH_RISCV64"), "loongarch64": ("loong64", "SCMP_ARCH_LOONGARCH64"),
}

# ---- moby's default profile, compactly ----

_ARCH_MAP = {  # native -> the sub-architectures a filter also covers (32-bit compat)
    "SCMP_ARCH_X86_64": ["SCMP_ARCH_X86", "SCMP_ARCH_X32"],
    "SCMP_ARCH_AARCH64": ["SCMP_ARCH_ARM"],
    "SCMP_ARCH_MIPS64": ["SCMP_ARCH_MIPS", "SCMP_ARCH_MIPS64N32"],
    "SCMP_ARCH_MIPS64N32": ["SCMP_ARCH_MIPS", "SCMP_ARCH_MIPS64"],
    "SCMP_ARCH_MIPSEL64": ["SCMP_ARCH_MIPSEL", "SCMP_ARCH_MIPSEL64N32"],
    "SCMP_ARCH_MIPSEL64N32": ["SCMP_ARCH_MIPSEL", "SCMP_ARCH_MIPSEL64"],
    "SCMP_ARCH_S390X": ["SCMP_ARCH_S390"],
    "SCMP_ARCH_RISCV64": [],
}

_ALLOW = """
accept accept4 access adjtimex alarm bind brk capget capset chdir chmod chown chown32 clock_adjtime clock_adjtime64
clock_getres clock_getres_time64 clock_gettime clock_gettime64 clock_nanosleep clock_nanosleep_time64 close
close_range connect copy_file_range creat dup dup2 dup3 epoll_create epoll_create1 epoll_ctl epoll_ctl_old
epoll_pwait epoll_pwait2 epoll_wait epoll_wait_old eventfd eventfd2 execve execveat exit exit_group faccessat
faccessat2 fadvise64 fadvise64_64 fallocate fanotify_mark fchdir fchmod fchmodat fchown fchown32 fchownat fcntl
fcntl64 fdatasync fgetxattr flistxattr flock fork fremovexattr fsetxattr fstat fstat64 fstatat64 fstatfs fstatfs64
fsync ftruncate ftruncate64 futex futex_time64 futex_waitv futimesat getcpu getcwd getdents getdents64 getegid
getegid32 geteuid geteuid32 getgid getgid32 getgroups getgroups32 getitimer getpeername getpgid getpgrp getpid
getppid getpriority getrandom getresgid getresgid32 getresuid getresuid32 getrlimit get_robust_list getrusage getsid
getsockname getsockopt get_thread_area gettid gettimeofday getuid getuid32 getxattr inotify_add_watch inotify_init
inotify_init1 inotify_rm_watch io_cancel ioctl io_destroy io_getevents io_pgetevents io_pgetevents_time64 ioprio_get
ioprio_set io_setup io_submit io_uring_enter io_uring_register io_uring_setup ipc kill landlock_add_rule
landlock_create_ruleset landlock_restrict_self lchown lchown32 lgetxattr link linkat listen listxattr llistxattr
_llseek lremovexattr lseek lsetxattr lstat lstat64 madvise membarrier memfd_create memfd_secret mincore mkdir mkdirat
mknod mknodat mlock mlock2 mlockall mmap mmap2 mprotect mq_getsetattr mq_notify mq_open mq_timedreceive
mq_timedreceive_time64 mq_timedsend mq_timedsend_time64 mq_unlink mremap msgctl msgget msgrcv msgsnd msync munlock
munlockall munmap name_to_handle_at nanosleep newfstatat _newselect open openat openat2 pause pidfd_open
pidfd_send_signal pipe pipe2 pkey_alloc pkey_free pkey_mprotect poll ppoll ppoll_time64 prctl pread64 preadv preadv2
prlimit64 process_mrelease pselect6 pselect6_time64 pwrite64 pwritev pwritev2 read readahead readlink readlinkat
readv recv recvfrom recvmmsg recvmmsg_time64 recvmsg remap_file_pages removexattr rename renameat renameat2
restart_syscall rmdir rseq rt_sigaction rt_sigpending rt_sigprocmask rt_sigqueueinfo rt_sigreturn rt_sigsuspend
rt_sigtimedwait rt_sigtimedwait_time64 rt_tgsigqueueinfo sched_getaffinity sched_getattr sched_getparam
sched_get_priority_max sched_get_priority_min sched_getscheduler sched_rr_get_interval sched_rr_get_interval_time64
sched_setaffinity sched_setattr sched_setparam sched_setscheduler sched_yield seccomp select semctl semget semop
semtimedop semtimedop_time64 send sendfile sendfile64 sendmmsg sendmsg sendto setfsgid setfsgid32 setfsuid setfsuid32
setgid setgid32 setgroups setgroups32 setitimer setpgid setpriority setregid setregid32 setresgid setresgid32
setresuid setresuid32 setreuid setreuid32 setrlimit set_robust_list setsid setsockopt set_thread_area
set_tid_address setuid setuid32 setxattr shmat shmctl shmdt shmget shutdown sigaltstack signalfd signalfd4
sigprocmask sigreturn socketcall socketpair splice stat stat64 statfs statfs64 statx symlink symlinkat sync
sync_file_range syncfs sysinfo tee tgkill time timer_create timer_delete timer_getoverrun timer_gettime
timer_gettime64 timer_settime timer_settime64 timerfd_create timerfd_gettime timerfd_gettime64 timerfd_settime
timerfd_settime64 times tkill truncate truncate64 ugetrlimit umask uname unlink unlinkat utime utimensat
utimensat_time64 utimes vfork vmsplice wait4 waitid waitpid write writev
"""

# (syscalls, includes) allowed only for some architectures, capabilities or kernels; as moby's profile lists them
_ARCH_ALLOW = [
    ("sync_file_range2 swapcontext", ["ppc64le"]),
    ("arm_fadvise64_64 arm_sync_file_range sync_file_range2 breakpoint cacheflush set_tls", ["arm", "arm64"]),
    ("arch_prctl", ["amd64", "x32"]),
    ("modify_ldt", ["amd64", "x32", "x86"]),
    ("s390_pci_mmio_read s390_pci_mmio_write s390_runtime_instr", ["s390", "s390x"]),
    ("riscv_flush_icache", ["riscv64"]),
]
_CAP_ALLOW = [
    ("open_by_handle_at", "CAP_DAC_READ_SEARCH"),
    ("bpf clone clone3 fanotify_init fsconfig fsmount fsopen fspick lookup_dcookie mount mount_setattr move_mount "
     "open_tree perf_event_open quotactl quotactl_fd setdomainname sethostname setns syslog umount umount2 unshare",
     "CAP_SYS_ADMIN"),
    ("reboot", "CAP_SYS_BOOT"),
    ("chroot", "CAP_SYS_CHROOT"),
    ("delete_module init_module finit_module", "CAP_SYS_MODULE"),
    ("acct", "CAP_SYS_PACCT"),
    ("kcmp pidfd_getfd process_madvise process_vm_readv process_vm_writev ptrace", "CAP_SYS_PTRACE"),
    ("iopl ioperm", "CAP_SYS_RAWIO"),
    ("settimeofday stime clock_settime clock_settime64", "CAP_SYS_TIME"),
    ("vhangup", "CAP_SYS_TTY_CONFIG"),
    ("get_mempolicy mbind set_mempolicy set_mempolicy_home_node", "CAP_SYS_NICE"),
    ("syslog", "CAP_SYSLOG"),
    ("bpf", "CAP_BPF"),
    ("perf_event_open", "CAP_PERFMON"),
]
AF_VSOCK = 40
# personality(2) personas allowed: PER_LINUX, PER_LINUX32, UNAME26, UNAME26|PER_LINUX32, and the query 0xffffffff
_PERSONALITIES = (0x0, 0x8, 0x20000, 0x20008, 0xFFFFFFFF)
# CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNET
CLONE_NAMESPACE_FLAGS = 0x7E020000


def _allow(names: str, **extra) -> dict:
    return {"names": names.split(), "action": "SCMP_ACT_ALLOW", **extra}


def default_profile() -> dict:
    """moby's default seccomp profile, in its own (Docker) format; to_oci() resolves it for a container."""
    syscalls = [_allow(_ALLOW),
                _allow("process_vm_readv process_vm_writev ptrace", includes={"minKernel": "4.8"}),
                _allow("socket", args=[{"index": 0, "value": AF_VSOCK, "op": "SCMP_CMP_NE"}])]
    syscalls += [_allow("personality", args=[{"index": 0, "value": p, "op": "SCMP_CMP_EQ"}]) for p in _PERSONALITIES]
    syscalls += [_allow(names, includes={"arches": arches}) for names, arches in _ARCH_ALLOW]
    syscalls += [_allow(names, includes={"caps": [cap]}) for names, cap in _CAP_ALLOW]
    no_admin = {"caps": ["CAP_SYS_ADMIN"]}
    # without CAP_SYS_ADMIN: clone without namespace flags (arg 1 on s390, whose argument order differs), and
    # clone3 (whose flags sit in memory, out of a filter's reach) answered ENOSYS so that libc falls back to clone
    syscalls += [
        _allow("clone", args=[{"index": 0, "value": CLONE_NAMESPACE_FLAGS, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}],
               excludes={**no_admin, "arches": ["s390", "s390x"]}),
        _allow("clone", args=[{"index": 1, "value": CLONE_NAMESPACE_FLAGS, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}],
               includes={"arches": ["s390", "s390x"]}, excludes=no_admin),
        {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno.ENOSYS, "excludes": no_admin},
    ]
    return {"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": errno.EPERM,
            "archMap": [{"architecture": a, "subArchitectures": subs} for a, subs in _ARCH_MAP.items()],
            "syscalls": syscalls}


# ---- Docker/OCI profile -> OCI linux.seccomp ----

def host_arch(machine: str | None = None) -> tuple[str, str]:
    """(Go arch name, libseccomp native arch) of this machine (or of `machine`: amd64/x86_64, arm64/aarch64...)."""
    machine = (machine or platform.machine()).lower()
    try:
        return _MACHINES[machine]
    except KeyError:
        return machine, ""


def kernel_version(release: str | None = None) -> tuple[int, int]:
    """(major, minor) of a kernel release string such as "6.1.0-18-amd64" (default: this kernel)."""
    m = re.match(r"(\d+)(?:\.(\d+))?", (release or os.uname().release).strip())
    return (int(m.group(1)), int(m.group(2) or 0)) if m else (0, 0)


def _caps(names) -> set[str]:
    return {(n.upper() if n.upper().startswith("CAP_") else f"CAP_{n.upper()}") for n in names}


def _kernel_ge(min_kernel: str, kernel: tuple[int, int]) -> bool:
    want = kernel_version(str(min_kernel))
    return kernel >= want


def to_oci(profile: dict, caps=(), *, arch: str | None = None, kernel: tuple[int, int] | None = None,
           where: str = "seccomp profile") -> dict:
    """A Docker- or OCI-format profile -> OCI linux.seccomp for a container with these (bounding) capabilities.

    `arch` is the machine (default: this one; "amd64"/"x86_64", "arm64"/"aarch64"...). Raises ValueError (with
    `where` in the message) when the profile is not a valid one."""
    if not isinstance(profile, dict):
        raise ValueError(f"{where}: not a JSON object")
    goarch, native = host_arch(arch)
    aliases = {goarch, (arch or platform.machine()).lower()}
    if goarch == "386":
        aliases.add("x86")
    kernel = kernel or kernel_version()
    have = _caps(caps)
    default = profile.get("defaultAction")
    if default not in ACTIONS:
        raise ValueError(f"{where}: defaultAction {default!r} is not one of {sorted(ACTIONS)}")
    out: dict = {"defaultAction": default}
    if profile.get("defaultErrnoRet") is not None:
        out["defaultErrnoRet"] = _uint(profile["defaultErrnoRet"], f"{where}: defaultErrnoRet")
    if profile.get("architectures") and profile.get("archMap"):
        raise ValueError(f"{where}: both architectures and archMap are given")
    arches: list[str] = []
    if profile.get("architectures"):
        arches = _str_list(profile["architectures"], f"{where}: architectures")
    elif profile.get("archMap"):
        if not isinstance(profile["archMap"], list):
            raise ValueError(f"{where}: archMap must be a list")
        for entry in profile["archMap"]:
            if not isinstance(entry, dict) or not isinstance(entry.get("architecture"), str):
                raise ValueError(f"{where}: archMap entries need an architecture")
            if entry["architecture"].upper() == native:
                arches = [entry["architecture"]] + _str_list(entry.get("subArchitectures") or [],
                                                             f"{where}: subArchitectures")
    for a in arches:
        if a.upper() not in ARCHES:
            raise ValueError(f"{where}: unknown architecture {a!r}")
    if arches:
        out["architectures"] = [a.upper() for a in arches]
    if profile.get("flags"):
        out["flags"] = _str_list(profile["flags"], f"{where}: flags")
    rules = profile.get("syscalls")
    rules = [] if rules is None else rules
    if not isinstance(rules, list):
        raise ValueError(f"{where}: syscalls must be a list")
    out["syscalls"] = []
    for i, rule in enumerate(rules):
        rwhere = f"{where}: syscalls[{i}]"
        if not isinstance(rule, dict):
            raise ValueError(f"{rwhere}: not an object")
        if rule.get("name") and rule.get("names"):
            raise ValueError(f"{rwhere}: both name and names are given")
        names = [rule["name"]] if rule.get("name") else _str_list(rule.get("names") or [], f"{rwhere}: names")
        if not names or not all(names):
            raise ValueError(f"{rwhere}: no syscall names")
        if rule.get("action") not in ACTIONS:
            raise ValueError(f"{rwhere}: action {rule.get('action')!r} is not one of {sorted(ACTIONS)}")
        args = [_arg(a, f"{rwhere}: args") for a in (rule.get("args") or [])]
        if not _applies(rule, have, aliases, kernel, rwhere):
            continue
        call = {"names": list(names), "action": rule["action"]}
        if rule.get("errnoRet") is not None:
            call["errnoRet"] = _uint(rule["errnoRet"], f"{rwhere}: errnoRet")
        if args:
            call["args"] = args
        out["syscalls"].append(call)
    return out


def _applies(rule: dict, caps: set[str], arches: set[str], kernel: tuple[int, int], where: str) -> bool:
    """moby's filter: excludes skip a rule when any of their conditions holds, includes when any fails."""
    for key in ("includes", "excludes"):
        cond = rule.get(key)
        if cond is not None and not isinstance(cond, dict):
            raise ValueError(f"{where}: {key} must be an object")
    exc = rule.get("excludes") or {}
    inc = rule.get("includes") or {}
    if exc.get("arches") and arches & {a.lower() for a in _str_list(exc["arches"], f"{where}: excludes.arches")}:
        return False
    if exc.get("caps") and caps & _caps(_str_list(exc["caps"], f"{where}: excludes.caps")):
        return False
    if exc.get("minKernel") and _kernel_ge(exc["minKernel"], kernel):
        return False
    if inc.get("arches") and not arches & {a.lower() for a in _str_list(inc["arches"], f"{where}: includes.arches")}:
        return False
    if inc.get("caps") and not _caps(_str_list(inc["caps"], f"{where}: includes.caps")) <= caps:
        return False
    if inc.get("minKernel") and not _kernel_ge(inc["minKernel"], kernel):
        return False
    return True


def _arg(arg, where: str) -> dict:
    if not isinstance(arg, dict):
        raise ValueError(f"{where}: not an object")
    index = arg.get("index")
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index <= 5:
        raise ValueError(f"{where}: index must be 0..5, not {index!r}")
    if arg.get("op") not in OPS:
        raise ValueError(f"{where}: op {arg.get('op')!r} is not one of {sorted(OPS)}")
    out = {"index": index, "value": _uint(arg.get("value", 0), f"{where}: value"), "op": arg["op"]}
    if arg.get("valueTwo") is not None:
        out["valueTwo"] = _uint(arg["valueTwo"], f"{where}: valueTwo")
    return out


def _uint(value, where: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**64:
        raise ValueError(f"{where}: {value!r} is not an unsigned integer")
    return value


def _str_list(value, where: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{where}: must be a list of strings")
    return value


# ---- CRI fields -> the container's profile ----

def requested(sc) -> tuple[str, str]:
    """The profile a security context asks for: ("unconfined" | "runtime/default" | "localhost", path)."""
    if sc is None:
        return UNCONFINED, ""
    if sc.HasField("seccomp"):
        return profiles.requested(sc.seccomp, "seccomp", "path")
    path = sc.seccomp_profile_path
    if path in ("", UNCONFINED):
        return UNCONFINED, ""
    if path in (RUNTIME_DEFAULT, DOCKER_DEFAULT):
        return RUNTIME_DEFAULT, ""
    if path.startswith(LOCALHOST_PREFIX):
        return "localhost", path[len(LOCALHOST_PREFIX):]
    raise InvalidArgument(f"seccomp_profile_path {path!r} is not runtime/default, docker/default, unconfined "
                          "or localhost/<path>")


def load_localhost(path: str) -> dict:
    """A Localhost profile file's JSON; INVALID_ARGUMENT naming the path when it is missing, unreadable or not JSON."""
    if not os.path.isabs(path):
        raise InvalidArgument(f"seccomp profile {path!r}: the path must be absolute")
    try:
        with open(path, "rb") as f:
            data = f.read(16 << 20)
    except OSError as exc:
        raise InvalidArgument(f"seccomp profile {path!r} cannot be read: {exc.strerror}") from None
    try:
        return json.loads(data)
    except ValueError as exc:
        raise InvalidArgument(f"seccomp profile {path!r} is not JSON: {exc}") from None


def linux_seccomp(sc, caps, *, privileged: bool = False) -> dict | None:
    """The OCI linux.seccomp for a container (or sandbox) security context, or None for no filter."""
    kind, path = requested(sc)  # validated even when privileged ignores it
    if privileged or kind == UNCONFINED:
        return None
    if kind == RUNTIME_DEFAULT:
        return to_oci(default_profile(), caps)
    profile = load_localhost(path)
    try:
        return to_oci(profile, caps, where=f"seccomp profile {path!r}")
    except ValueError as exc:
        raise InvalidArgument(str(exc)) from None
