"""OCI linux.seccomp -> a loaded seccomp filter, via libseccomp.so.2 (ctypes).

compile(spec) builds the filter with libseccomp and exports it as a BPF program (raising ValueError on a bad
profile); Filter.load() installs that program with prctl(PR_SET_SECCOMP), in the child. Building (~8 ms for the
RuntimeDefault profile) and libseccomp's own seccomp_load (~12 ms: it regenerates the BPF each time) are too slow
for every container start, so the program is built once per distinct profile and kept (a small LRU), and the
child's load is one prctl.
"""
from __future__ import annotations

import collections
import ctypes
import errno as _errno
import json
import os

_lib = None


def _libseccomp():
    global _lib
    if _lib is None:
        try:
            _lib = ctypes.CDLL("libseccomp.so.2", use_errno=True)
        except OSError as exc:
            raise ValueError(f"seccomp requested but libseccomp.so.2 cannot be loaded: {exc}") from None
        _lib.seccomp_init.restype = ctypes.c_void_p
        _lib.seccomp_init.argtypes = [ctypes.c_uint32]
        _lib.seccomp_release.argtypes = [ctypes.c_void_p]
        _lib.seccomp_load.argtypes = [ctypes.c_void_p]
        _lib.seccomp_arch_add.argtypes = [ctypes.c_void_p, ctypes.c_uint32]
        _lib.seccomp_arch_native.restype = ctypes.c_uint32
        _lib.seccomp_arch_resolve_name.restype = ctypes.c_uint32
        _lib.seccomp_arch_resolve_name.argtypes = [ctypes.c_char_p]
        _lib.seccomp_syscall_resolve_name.restype = ctypes.c_int
        _lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
        _lib.seccomp_attr_set.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32]
        _lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int,
                                                ctypes.c_uint, ctypes.c_void_p]
        _lib.seccomp_export_bpf.argtypes = [ctypes.c_void_p, ctypes.c_int]
    return _lib


class _ArgCmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int),
                ("datum_a", ctypes.c_uint64), ("datum_b", ctypes.c_uint64)]


_OPS = {"SCMP_CMP_NE": 1, "SCMP_CMP_LT": 2, "SCMP_CMP_LE": 3, "SCMP_CMP_EQ": 4, "SCMP_CMP_GE": 5,
        "SCMP_CMP_GT": 6, "SCMP_CMP_MASKED_EQ": 7}
_SCMP_FLTATR_CTL_NNP = 3
_SCMP_ARCH_NATIVE = 0


def action(name: str, errno_ret: int | None = None) -> int:
    """libseccomp action value for an OCI action name."""
    if name in ("SCMP_ACT_KILL", "SCMP_ACT_KILL_THREAD"):
        return 0x00000000
    if name == "SCMP_ACT_KILL_PROCESS":
        return 0x80000000
    if name == "SCMP_ACT_TRAP":
        return 0x00030000
    if name == "SCMP_ACT_ERRNO":
        return 0x00050000 | ((_errno.EPERM if errno_ret is None else errno_ret) & 0xFFFF)
    if name == "SCMP_ACT_TRACE":
        return 0x7FF00000 | ((_errno.EPERM if errno_ret is None else errno_ret) & 0xFFFF)
    if name == "SCMP_ACT_LOG":
        return 0x7FFC0000
    if name == "SCMP_ACT_ALLOW":
        return 0x7FFF0000
    raise ValueError(f"unsupported seccomp action {name!r}")


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


_PR_SET_SECCOMP = 22
_SECCOMP_MODE_FILTER = 2
_BPF_INSN = 8  # sizeof(struct sock_filter)


class Filter:
    """A compiled BPF program; load() installs it in the calling process (which must have no_new_privs set or
    CAP_SYS_ADMIN). Everything load() touches is made here, so the child only calls prctl."""

    def __init__(self, program: bytes):
        if not program or len(program) % _BPF_INSN or len(program) // _BPF_INSN > 0xFFFF:
            raise ValueError(f"libseccomp produced a BPF program of {len(program)} bytes")
        self.program = program
        self._buf = ctypes.create_string_buffer(program, len(program))
        self._fprog = _SockFprog(len(program) // _BPF_INSN, ctypes.addressof(self._buf))
        self._args = (ctypes.c_int(_PR_SET_SECCOMP), ctypes.c_ulong(_SECCOMP_MODE_FILTER),
                      ctypes.c_ulong(ctypes.addressof(self._fprog)), ctypes.c_ulong(0), ctypes.c_ulong(0))
        self._prctl = _libc().prctl  # looked up here, not in the child

    def release(self) -> None:
        """Nothing to free (kept for callers; the program may be shared through the cache)."""

    def load(self) -> None:
        if self._prctl(*self._args) < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"prctl(PR_SET_SECCOMP): {os.strerror(err)}")


_libc_handle = None


def _libc():
    global _libc_handle
    if _libc_handle is None:
        _libc_handle = ctypes.CDLL(None, use_errno=True)
    return _libc_handle


_CACHE: collections.OrderedDict[str, Filter] = collections.OrderedDict()
_CACHE_SIZE = 16


def compile(spec: dict) -> Filter:  # noqa: A001 - mirrors the verb
    """Build a filter from an OCI LinuxSeccomp object. Unknown syscall names are skipped (as runc does)."""
    if not isinstance(spec, dict):
        raise ValueError("linux.seccomp must be an object")
    try:
        key = json.dumps(spec, sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"linux.seccomp is not plain JSON: {exc}") from None
    filt = _CACHE.get(key)
    if filt is not None:
        _CACHE.move_to_end(key)
        return filt
    _libc()  # resolved here: the child cannot dlopen
    filt = Filter(_build(spec))
    _CACHE[key] = filt
    while len(_CACHE) > _CACHE_SIZE:
        _CACHE.popitem(last=False)
    return filt


def _build(spec: dict) -> bytes:
    """libseccomp: the filter for spec, exported as a BPF program."""
    lib = _libseccomp()
    default = action(spec.get("defaultAction", "SCMP_ACT_ALLOW"), spec.get("defaultErrnoRet"))
    ctx = lib.seccomp_init(default)
    if not ctx:
        raise ValueError("seccomp_init failed (bad defaultAction?)")
    try:
        _add_rules(lib, ctx, spec, default)
        fd = os.memfd_create("pycri-seccomp", os.MFD_CLOEXEC)
        try:
            rc = lib.seccomp_export_bpf(ctx, fd)
            if rc < 0:
                raise ValueError(f"seccomp_export_bpf: {_errno.errorcode.get(-rc, rc)}")
            os.lseek(fd, 0, os.SEEK_SET)
            chunks = []
            while chunk := os.read(fd, 1 << 16):
                chunks.append(chunk)
            return b"".join(chunks)
        finally:
            os.close(fd)
    finally:
        lib.seccomp_release(ctx)


def _add_rules(lib, ctx, spec: dict, default: int) -> None:
    lib.seccomp_attr_set(ctx, _SCMP_FLTATR_CTL_NNP, 0)  # no_new_privs is set by the launcher per spec
    for arch in spec.get("architectures") or []:
        name = str(arch).lower().removeprefix("scmp_arch_").encode()
        token = lib.seccomp_arch_resolve_name(name)
        if token == 0:
            raise ValueError(f"unknown seccomp architecture {arch!r}")
        rc = lib.seccomp_arch_add(ctx, token)
        if rc < 0 and rc != -_errno.EEXIST:
            raise ValueError(f"seccomp_arch_add({arch}): {_errno.errorcode.get(-rc, rc)}")
    for rule in spec.get("syscalls") or []:
        act = action(rule.get("action", ""), rule.get("errnoRet"))
        if act == default:
            continue
        conds = [_cond(a) for a in rule.get("args") or []]
        # Several conditions on the same argument cannot be ANDed by libseccomp: OR them as separate rules.
        indexes = [c.arg for c in conds]
        groups = [[c] for c in conds] if len(set(indexes)) != len(indexes) else [conds]
        for name in rule.get("names") or []:
            nr = lib.seccomp_syscall_resolve_name(str(name).encode())
            if nr == -1:  # __NR_SCMP_ERROR: this kernel/arch has no such syscall
                continue
            for group in groups:
                arr = (_ArgCmp * max(1, len(group)))(*group)
                rc = lib.seccomp_rule_add_array(ctx, act, nr, len(group), arr)
                if rc < 0:
                    raise ValueError(f"seccomp rule for {name}: {_errno.errorcode.get(-rc, rc)}")


def _cond(arg: dict) -> _ArgCmp:
    try:
        index = int(arg["index"])
        op = _OPS[arg["op"]]
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"bad seccomp arg condition {arg!r}") from None
    if not 0 <= index <= 5:
        raise ValueError(f"seccomp arg index out of range: {index}")
    return _ArgCmp(index, op, int(arg.get("value", 0)) & (2**64 - 1), int(arg.get("valueTwo", 0)) & (2**64 - 1))
