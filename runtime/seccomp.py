"""OCI linux.seccomp -> a loaded seccomp filter, via libseccomp.so.2 (ctypes).

compile(spec) builds a filter context (raising ValueError on a bad profile); Filter.load() installs it.
"""
from __future__ import annotations

import ctypes
import errno as _errno

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


class Filter:
    """A built libseccomp context; load() installs it in the calling process."""

    def __init__(self, ctx: int):
        self._ctx = ctx

    def release(self) -> None:
        if self._ctx:
            _libseccomp().seccomp_release(self._ctx)
            self._ctx = None

    def load(self) -> None:
        rc = _libseccomp().seccomp_load(self._ctx)
        if rc < 0:
            raise OSError(-rc, f"seccomp_load: {_errno.errorcode.get(-rc, -rc)}")


def compile(spec: dict) -> Filter:  # noqa: A001 - mirrors the verb
    """Build a filter from an OCI LinuxSeccomp object. Unknown syscall names are skipped (as runc does)."""
    if not isinstance(spec, dict):
        raise ValueError("linux.seccomp must be an object")
    lib = _libseccomp()
    default = action(spec.get("defaultAction", "SCMP_ACT_ALLOW"), spec.get("defaultErrnoRet"))
    ctx = lib.seccomp_init(default)
    if not ctx:
        raise ValueError("seccomp_init failed (bad defaultAction?)")
    filt = Filter(ctx)
    try:
        _add_rules(lib, ctx, spec, default)
    except BaseException:
        filt.release()
        raise
    return filt


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
