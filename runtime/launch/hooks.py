"""OCI lifecycle hooks (runtime-spec config.md "POSIX-platform Hooks"): run each hook program with the
container's state JSON on its stdin, its own args and env, and a timeout.

Where each kind runs here:
    prestart, createRuntime  the monitor, runtime namespace, once the container process is set up (so after
                             its pivot_root: later than the spec's "before pivot_root"), before create answers
    createContainer          the launcher's child, in the container's namespaces, just before pivot_root
    startContainer           the launcher's child, after the start request, just before execve
    poststart                the monitor, after execve succeeded
    poststop                 the monitor, after the container was deleted
A failing prestart/createRuntime/createContainer/startContainer hook fails the container's start (HookError names
the hook, its exit status and the tail of its output); poststart and poststop failures are only logged.

Only os, signal, time and json are used: the launcher's child runs this after it can no longer import anything.
"""
from __future__ import annotations

import json
import os
import signal
import time

FATAL_KINDS = ("prestart", "createRuntime", "createContainer", "startContainer")
KINDS = FATAL_KINDS + ("poststart", "poststop")
# A hook without its own timeout may not hold the pod's monitor (single-threaded) for longer than this.
DEFAULT_TIMEOUT = 60.0
_OUTPUT_KEEP = 2048


class HookError(Exception):
    """A hook could not run, failed or timed out."""


def state(spec: dict, cid: str, bundle: str, status: str, pid: int) -> dict:
    """The OCI state document a hook reads on stdin."""
    return {"ociVersion": spec.get("ociVersion") or "1.0.2", "id": cid, "status": status, "pid": pid,
            "bundle": bundle, "annotations": spec.get("annotations") or {}}


def of(spec: dict, kind: str) -> list:
    hooks = spec.get("hooks")
    return list(hooks.get(kind) or []) if isinstance(hooks, dict) else []


def validate(spec: dict) -> None:
    """Reject malformed hooks before anything runs (HookError)."""
    hooks = spec.get("hooks")
    if hooks is None:
        return
    if not isinstance(hooks, dict):
        raise HookError("hooks must be an object")
    for kind, entries in hooks.items():
        if kind not in KINDS:
            raise HookError(f"unknown hook kind {kind!r} (known: {', '.join(KINDS)})")
        if not isinstance(entries, list):
            raise HookError(f"hooks.{kind} must be a list")
        for i, h in enumerate(entries):
            where = f"hooks.{kind}[{i}]"
            if not isinstance(h, dict) or not isinstance(h.get("path"), str) or not h["path"].startswith("/"):
                raise HookError(f"{where}: path must be an absolute path")
            for key in ("args", "env"):
                if h.get(key) is not None and (not isinstance(h[key], list)
                                               or not all(isinstance(a, str) for a in h[key])):
                    raise HookError(f"{where}.{key} must be a list of strings")
            t = h.get("timeout")
            if t is not None and (isinstance(t, bool) or not isinstance(t, int) or t <= 0):
                raise HookError(f"{where}.timeout must be a positive integer")


def run(kind: str, spec: dict, st: dict) -> None:
    """Run every `kind` hook of the spec in order; raises HookError at the first failure."""
    entries = of(spec, kind)
    if not entries:
        return
    data = json.dumps(st).encode()
    for i, h in enumerate(entries):
        run_one(h, data, f"{kind} hook #{i} {h.get('path')!r}")


def run_one(hook: dict, stdin: bytes, what: str) -> None:
    path = hook.get("path")
    if not isinstance(path, str) or not path.startswith("/"):
        raise HookError(f"{what}: path must be absolute")
    args = list(hook.get("args") or [path])
    env = dict(e.split("=", 1) for e in hook.get("env") or [] if isinstance(e, str) and "=" in e)
    timeout = float(hook.get("timeout") or DEFAULT_TIMEOUT)
    in_r, in_w = os.pipe2(os.O_CLOEXEC)
    out_r, out_w = os.pipe2(os.O_CLOEXEC)
    try:
        pid = os.fork()
    except OSError as exc:
        for fd in (in_r, in_w, out_r, out_w):
            os.close(fd)
        raise HookError(f"{what}: fork: {exc.strerror}") from None
    if pid == 0:  # the hook: stdin the state, stdout+stderr to our pipe, nothing else inherited
        try:
            os.dup2(in_r, 0)
            os.dup2(out_w, 1)
            os.dup2(out_w, 2)
            os.closerange(3, 65536)
            os.execve(path, args, env)
        except BaseException as exc:  # noqa: BLE001 - the output pipe carries why, the status that it failed
            try:
                os.write(1, f"exec {path}: {getattr(exc, 'strerror', None) or exc}".encode())
            finally:
                os._exit(127)
    os.close(in_r)
    os.close(out_w)
    os.set_blocking(in_w, False)
    os.set_blocking(out_r, False)
    pending = stdin
    output = b""
    deadline = time.monotonic() + timeout
    status = None
    # a hook may exit without reading its stdin: that must be EPIPE here, not SIGPIPE, which would kill a
    # container's set-up process (it runs createContainer hooks with default signal dispositions)
    try:
        old_pipe = signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    except ValueError:  # not the main thread: leave the disposition alone
        old_pipe = None
    try:
        while True:
            if pending and in_w >= 0:
                try:
                    pending = pending[os.write(in_w, pending):]
                except BlockingIOError:
                    pass
                except BrokenPipeError:
                    pending = b""
            if not pending and in_w >= 0:
                os.close(in_w)
                in_w = -1
            output = (output + _drain(out_r))[-_OUTPUT_KEEP:]
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                output = (output + _drain(out_r))[-_OUTPUT_KEEP:]
                break
            if time.monotonic() > deadline:
                os.kill(pid, 9)
                os.waitpid(pid, 0)
                raise HookError(f"{what} timed out after {timeout:g}s{_tail(output)}")
            time.sleep(0.005)
    finally:
        if old_pipe is not None:
            signal.signal(signal.SIGPIPE, old_pipe)
        if in_w >= 0:
            os.close(in_w)
        os.close(out_r)
    if os.WIFSIGNALED(status):
        raise HookError(f"{what} was killed by signal {os.WTERMSIG(status)}{_tail(output)}")
    code = os.WEXITSTATUS(status)
    if code == 127 and not os.path.exists(path):
        raise HookError(f"{what}: {path} does not exist")
    if code != 0:
        raise HookError(f"{what} exited with status {code}{_tail(output)}")


def _drain(fd: int) -> bytes:
    chunks = []
    while True:
        try:
            b = os.read(fd, 65536)
        except BlockingIOError:
            break
        if not b:
            break
        chunks.append(b)
    return b"".join(chunks)


def _tail(output: bytes) -> str:
    text = output.decode(errors="replace").strip().replace("\n", " | ")
    return f": {text[-500:]}" if text else ""
