"""runc-like command line: python -m runtime [--root DIR] <verb> ...

create/start/state/kill/delete/exec go through one monitor per --root (started on demand, stopped when its
last container is deleted); run launches in the foreground with the caller's stdio, like `runc run`.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys

from runtime import cgroups, launch, state
from runtime.client import MonitorClient, MonitorError
from runtime.launch import hooks

DEFAULT_ROOT = "/run/pycri-runtime"


def _client(root: str, start: bool = False) -> MonitorClient:
    sock = os.path.join(root, state.SOCKET_NAME)
    if start and not state.monitor_alive(root):
        from runtime.monitor import server as monitor
        monitor.run_detached(root, "cli")
    return MonitorClient(sock, timeout=None)


def _bundle(path: str) -> str:
    return os.path.abspath(path)


def cmd_create(a) -> int:
    r = _client(a.root, start=True).create(a.id, _bundle(a.bundle), log_path=a.log_path)
    for w in r.get("warnings", []):
        print(f"warning: {w}", file=sys.stderr)
    if a.pid_file:
        with open(a.pid_file, "w") as f:
            f.write(str(r["pid"]))
    return 0


def cmd_start(a) -> int:
    _client(a.root).start(a.id)
    return 0


def cmd_state(a) -> int:
    try:
        st = _client(a.root).state(a.id)
    except MonitorError:
        st = state.container_status(a.root, a.id)
        if st.get("status") == "unknown":
            raise
    print(json.dumps(st, indent=2))
    return 0


def cmd_kill(a) -> int:
    _client(a.root).kill(a.id, a.signal, all=a.all)
    return 0


def cmd_delete(a) -> int:
    c = _client(a.root)
    c.delete(a.id, force=a.force)
    if not c.list():
        c.shutdown()
    return 0


def cmd_exec(a) -> int:
    if not a.command:
        raise SystemExit("exec: a command is required after --")
    proc = {"args": a.command}
    if a.cwd:
        proc["cwd"] = a.cwd
    r = _client(a.root).exec(a.id, proc, timeout=a.timeout)
    sys.stdout.buffer.write(r.stdout)
    sys.stderr.buffer.write(r.stderr)
    return 124 if r.timed_out else r.exit_code


def cmd_run(a) -> int:
    """Foreground: create + start + wait in this process, exit with the container's code."""
    from runtime.host import linux
    bundle = _bundle(a.bundle)
    spec = launch.spec_json(os.path.join(bundle, "config.json"))
    linux.prctl(linux.PR_SET_CHILD_SUBREAPER, 1)
    cg = None
    cg_path = (spec.get("linux") or {}).get("cgroupsPath")
    if cg_path:
        cg = cgroups.open_cgroup(cg_path)
        cg.create()
    try:
        if cg:
            cg.apply((spec.get("linux") or {}).get("resources"))
        plan = launch.plan_from_spec(spec, bundle, stdio=(0, 1, 2))
        plan.hook_state = {"id": a.id, "bundle": bundle}  # createContainer/startContainer hooks (launch/hooks.py)
        plan.runtime_hooks = bool(hooks.of(spec, "prestart") or hooks.of(spec, "createRuntime"))
        proc = launch.Process(plan)
        if cg:
            cg.attach(proc.pid)
        proc.go()
        if plan.runtime_hooks:
            proc.wait_hooks_point()
            for kind in ("prestart", "createRuntime"):
                hooks.run(kind, spec, hooks.state(spec, a.id, bundle, "creating", proc.pid))
            proc.resume()
        proc.wait_ready()
        for w in proc.warnings:
            print(f"warning: {w}", file=sys.stderr)
        for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(s, lambda sig, _f, pid=proc.pid: os.kill(pid, sig))
        proc.start()
        try:
            hooks.run("poststart", spec, hooks.state(spec, a.id, bundle, "running", proc.pid))
        except hooks.HookError as exc:  # as runc: logged, the container keeps running
            print(f"warning: {exc}", file=sys.stderr)
        while True:
            pid, status = os.waitpid(-1, 0)
            if pid == proc.pid:
                code = os.waitstatus_to_exitcode(status)
                break
        try:
            hooks.run("poststop", spec, hooks.state(spec, a.id, bundle, "stopped", 0))
        except hooks.HookError as exc:
            print(f"warning: {exc}", file=sys.stderr)
        return 128 - code if code < 0 else code
    except hooks.HookError as exc:
        raise launch.LaunchError(str(exc)) from None
    finally:
        if cg:
            cg.remove()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m runtime", description=__doc__.splitlines()[0])
    p.add_argument("--root", default=DEFAULT_ROOT, help="state directory (default %(default)s)")
    sub = p.add_subparsers(dest="verb", required=True)
    s = sub.add_parser("create")
    s.add_argument("id")
    s.add_argument("--bundle", "-b", default=".")
    s.add_argument("--log-path")
    s.add_argument("--pid-file")
    s.set_defaults(fn=cmd_create)
    for verb, fn in (("start", cmd_start), ("state", cmd_state)):
        s = sub.add_parser(verb)
        s.add_argument("id")
        s.set_defaults(fn=fn)
    s = sub.add_parser("kill")
    s.add_argument("id")
    s.add_argument("signal", nargs="?", default="TERM")
    s.add_argument("--all", "-a", action="store_true")
    s.set_defaults(fn=cmd_kill)
    s = sub.add_parser("delete")
    s.add_argument("id")
    s.add_argument("--force", "-f", action="store_true")
    s.set_defaults(fn=cmd_delete)
    s = sub.add_parser("exec")
    s.add_argument("id")
    s.add_argument("--cwd")
    s.add_argument("--timeout", type=float)
    s.add_argument("command", nargs=argparse.REMAINDER)
    s.set_defaults(fn=cmd_exec)
    s = sub.add_parser("run")
    s.add_argument("id")
    s.add_argument("--bundle", "-b", default=".")
    s.set_defaults(fn=cmd_run)
    a = p.parse_args(argv)
    if getattr(a, "command", None) and a.command[0] == "--":
        a.command = a.command[1:]
    try:
        return a.fn(a)
    except (MonitorError, launch.LaunchError, cgroups.CgroupError, ValueError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
