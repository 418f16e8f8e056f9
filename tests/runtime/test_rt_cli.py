"""The runc-like CLI, as a subprocess."""
from __future__ import annotations

import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

CLI = [sys.executable, "-m", "runtime"]


def cli(*args, root):
    return subprocess.run(CLI + ["--root", root, *args], capture_output=True, text=True, timeout=30,
                          cwd=REPO)


def test_run_exit_code_and_stdio(bundle, tmp_root, cgroup_path):
    b = bundle(["sh", "-c", "echo out; echo err >&2; exit 42"],
               mutate=lambda s: s["linux"].update(cgroupsPath=cgroup_path))
    r = cli("run", "x", "--bundle", b, root=tmp_root + "/cli")
    assert (r.returncode, r.stdout, r.stderr) == (42, "out\n", "err\n")


def test_create_start_exec_state_kill_delete(bundle, tmp_root):
    root = tmp_root + "/cli2"
    b = bundle(["sleep", "1000"])
    assert cli("create", "y", "--bundle", b, root=root).returncode == 0
    assert json.loads(cli("state", "y", root=root).stdout)["status"] == "created"
    assert cli("start", "y", root=root).returncode == 0
    r = cli("exec", "y", "--", "sh", "-c", "echo hi; exit 4", root=root)
    assert (r.returncode, r.stdout) == (4, "hi\n")
    assert json.loads(cli("state", "y", root=root).stdout)["status"] == "running"
    r = cli("delete", "y", root=root)
    assert r.returncode == 1 and "running" in r.stderr
    assert cli("kill", "y", "KILL", root=root).returncode == 0
    assert cli("delete", "y", root=root).returncode == 0  # last container: the monitor exits too


def test_missing_binary_message(bundle, tmp_root):
    r = cli("run", "z", "--bundle", bundle(["/bin/nope"]), root=tmp_root + "/cli3")
    assert r.returncode == 1
    assert 'exec: "/bin/nope": no such file or directory' in r.stderr


def test_run_runs_the_hooks_in_order(bundle, tmp_root, tmp_path):
    """`run` as runc: prestart and createRuntime while the child waits after its mounts, createContainer in it,
    poststart after the start, poststop after the exit; a failing prestart hook fails the run."""
    log = tmp_path / "hooks.log"
    rec = tmp_path / "rec"
    rec.write_text(f'#!/bin/sh\nread -r state; echo "$1" >> {log}\n')
    rec.chmod(0o755)
    kinds = ["prestart", "createRuntime", "createContainer", "poststart", "poststop"]
    b = bundle(["true"], mutate=lambda s: s.update(hooks={k: [{"path": str(rec), "args": ["rec", k]}] for k in kinds}))
    r = cli("run", "h", "--bundle", b, root=tmp_root + "/cli3")
    assert r.returncode == 0, r.stderr
    assert log.read_text().split() == kinds
    bad = bundle(["true"], name="bad", mutate=lambda s: s.update(hooks={"prestart": [{"path": "/bin/false"}]}))
    r = cli("run", "h2", "--bundle", bad, root=tmp_root + "/cli3")
    assert r.returncode == 1 and "prestart hook #0" in r.stderr
