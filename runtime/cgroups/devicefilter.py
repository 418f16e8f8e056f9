"""Device rules on cgroup v2: v2 has no devices controller; the kernel asks a BPF_PROG_TYPE_CGROUP_DEVICE
program attached to the cgroup instead. The OCI rules (linux.resources.devices) become such a program, as runc
and crun make it: the last rule that matches decides, nothing matching is denied.

The program, for a request (type, access, major, minor) in struct bpf_cgroup_dev_ctx:

    r2 = type; r3 = access; r4 = major; r5 = minor
    for each rule, last first:  [type == T] [access within A] [major == M] [minor == m] -> return allow
    return 0

A rule matches a request whose access is all within the rule's (as a v1 devices.allow/deny line does); "a" is
every type and number. Attached with BPF_F_ALLOW_MULTI: what systemd attaches for a scope (its DeviceAllow=)
must allow too.
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct

from runtime.host import linux

# from linux/bpf.h
BPF_PROG_LOAD, BPF_PROG_ATTACH = 5, 8
BPF_PROG_TYPE_CGROUP_DEVICE = 15
BPF_CGROUP_DEVICE = 6
BPF_F_ALLOW_MULTI = 2
DEV_BLOCK, DEV_CHAR = 1, 2                              # BPF_DEVCG_DEV_*
ACC_MKNOD, ACC_READ, ACC_WRITE = 1, 2, 4                # BPF_DEVCG_ACC_*
_ACCESS = {"m": ACC_MKNOD, "r": ACC_READ, "w": ACC_WRITE}
_TYPES = {"b": DEV_BLOCK, "c": DEV_CHAR}

# instruction classes and operations (linux/bpf_common.h, linux/bpf.h)
_LDX_MEM_W = 0x61       # dst = *(u32 *)(src + off)
_AND32_K = 0x54         # dst &= imm (32 bit)
_RSH32_K = 0x74         # dst >>= imm (32 bit)
_MOV32_X = 0xbc         # dst = src (32 bit)
_MOV64_K = 0xb7         # dst = imm
_JNE_K = 0x55           # if dst != imm: pc += off
_JNE_X = 0x5d           # if dst != src: pc += off
_EXIT = 0x95
_NEXT = object()        # a jump to the next rule's block, resolved when the block is complete


class DeviceRuleError(ValueError):
    pass


def _insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    return struct.pack("<BBhi", code, dst | src << 4, off, imm)


def _rule_block(rule: dict) -> list[tuple]:
    kind = rule.get("type") or "a"
    if kind not in ("a", "b", "c"):
        raise DeviceRuleError(f"device rule type {kind!r}: a, b or c")
    access = rule.get("access") or "rwm"
    if not isinstance(access, str) or not set(access) <= set(_ACCESS):
        raise DeviceRuleError(f"device rule access {access!r}: letters of rwm")
    bits = 0
    for c in access:
        bits |= _ACCESS[c]
    out: list[tuple] = []
    if kind != "a":
        out.append((_JNE_K, 2, 0, _NEXT, _TYPES[kind]))
        for key in ("major", "minor"):
            value = rule.get(key)
            if value is None or value == -1:
                continue
            if type(value) is not int or not 0 <= value < 1 << 31:
                raise DeviceRuleError(f"device rule {key} {value!r}")
    if bits != ACC_MKNOD | ACC_READ | ACC_WRITE:
        out += [(_MOV32_X, 1, 3, 0, 0), (_AND32_K, 1, 0, 0, bits), (_JNE_X, 1, 3, _NEXT, 0)]
    if kind != "a":
        for reg, key in ((4, "major"), (5, "minor")):
            if rule.get(key) not in (None, -1):
                out.append((_JNE_K, reg, 0, _NEXT, rule[key]))
    out += [(_MOV64_K, 0, 0, 0, 1 if rule.get("allow") else 0), (_EXIT, 0, 0, 0, 0)]
    return out


def program(rules: list[dict]) -> bytes:
    """The instructions for rules (OCI linux.resources.devices entries). DeviceRuleError for a bad rule."""
    if not isinstance(rules, list) or not all(isinstance(r, dict) for r in rules):
        raise DeviceRuleError("device rules must be a list of objects")
    insns = [_insn(_LDX_MEM_W, 2, 1, 0), _insn(_AND32_K, 2, imm=0xFFFF),
             _insn(_LDX_MEM_W, 3, 1, 0), _insn(_RSH32_K, 3, imm=16),
             _insn(_LDX_MEM_W, 4, 1, 4), _insn(_LDX_MEM_W, 5, 1, 8)]
    for rule in reversed(rules):
        block = _rule_block(rule)
        for i, (code, dst, src, off, imm) in enumerate(block):
            insns.append(_insn(code, dst, src, len(block) - i - 1 if off is _NEXT else off, imm))
        if not any(off is _NEXT for _, _, _, off, _ in block):
            return b"".join(insns)  # it matches everything: what follows would never run (the verifier refuses it)
    insns += [_insn(_MOV64_K, 0, imm=0), _insn(_EXIT)]
    return b"".join(insns)


PROG_LOAD_ATTEMPTS = 5


def load(rules: list[dict]) -> int:
    """The program for rules, loaded: its fd (close-on-exec). OSError from the kernel (with the last line of
    its verifier's log when it refuses the program)."""
    code = program(rules)
    license_ = ctypes.create_string_buffer(b"Apache")
    insns = ctypes.create_string_buffer(code, len(code))
    log = ctypes.create_string_buffer(1 << 16)

    def attr(log_level: int) -> bytes:
        return struct.pack("<IIQQIIQII16sII", BPF_PROG_TYPE_CGROUP_DEVICE, len(code) // 8, ctypes.addressof(insns),
                           ctypes.addressof(license_), log_level, len(log) if log_level else 0,
                           ctypes.addressof(log) if log_level else 0, 0, 0, b"pycri_devices", 0, 0)
    for _ in range(PROG_LOAD_ATTEMPTS):
        try:
            return linux.bpf(BPF_PROG_LOAD, attr(0))  # (the kernel gives bpf fds O_CLOEXEC)
        except OSError as exc:
            err = exc.errno
        if err != errno.EAGAIN:  # (the verifier gives up with EAGAIN when a signal is pending: libbpf
            break                # loads again, so do we)
    detail = ""
    if err in (errno.EACCES, errno.EINVAL):  # the verifier's reason, once more with its log
        try:
            os.close(linux.bpf(BPF_PROG_LOAD, attr(1)))
        except OSError:
            lines = log.value.decode(errors="replace").strip().splitlines()
            detail = f" ({lines[-1]})" if lines else ""
    raise OSError(err, f"loading the device program: {os.strerror(err)}{detail}")


def attach(cgroup_dir: str, rules: list[dict]) -> None:
    """Load the program for rules and attach it to the cgroup v2 directory cgroup_dir (which keeps it)."""
    prog = load(rules)
    try:
        cg = os.open(cgroup_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            linux.bpf(BPF_PROG_ATTACH, struct.pack("<IIIII", cg, prog, BPF_CGROUP_DEVICE, BPF_F_ALLOW_MULTI, 0))
        finally:
            os.close(cg)
    finally:
        os.close(prog)
