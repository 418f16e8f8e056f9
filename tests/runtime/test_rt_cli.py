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
