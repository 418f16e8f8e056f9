"""launch/hooks.py: a hook gets the state JSON on stdin, its args and env only; failures and timeouts are named."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from runtime.client import MonitorError
from runtime.launch import hooks


def _script(tmp_path, name, body):
    p = tmp_path / name
    p.write_text("#!/bin/sh\n" + body)
    p.chmod(0o755)
    return str(p)


def test_hook_reads_state_args_env(tmp_path):
    out = tmp_path / "out"
    path = _script(tmp_path, "h", f'cat > {out}.json; echo "$1 $FOO ${{PYTEST_CURRENT_TEST:-clean}}" > {out}\n')
    spec = {"ociVersion": "1.1.0", "annotations": {"a": "b"},
            "hooks": {"poststart": [{"path": path, "args": ["h", "arg1"], "env": ["FOO=bar"]}]}}
    hooks.validate(spec)
    hooks.run("poststart", spec, hooks.state(spec, "cid", "/b", "running", 42))
    assert out.read_text() == "arg1 bar clean\n"
    assert json.loads((tmp_path / "out.json").read_text()) == {
        "ociVersion": "1.1.0", "id": "cid", "status": "running", "pid": 42, "bundle": "/b", "annotations": {"a": "b"}}


def test_hook_failure_names_hook_and_output(tmp_path):
    path = _script(tmp_path, "bad", 'echo "went wrong" >&2\nexit 4\n')
    with pytest.raises(hooks.HookError, match=r"createRuntime hook #0 .*status 4: went wrong"):
        hooks.run("createRuntime", {"hooks": {"createRuntime": [{"path": path}]}}, {})


def test_hook_timeout(tmp_path):
    path = _script(tmp_path, "slow", "sleep 30\n")
    t0 = time.monotonic()
    with pytest.raises(hooks.HookError, match="timed out after 1s"):
        hooks.run("prestart", {"hooks": {"prestart": [{"path": path, "timeout": 1}]}}, {})
    assert time.monotonic() - t0 < 5


def test_missing_hook_binary(tmp_path):
    with pytest.raises(hooks.HookError, match="does not exist"):
        hooks.run("poststop", {"hooks": {"poststop": [{"path": str(tmp_path / "nope")}]}}, {})


def test_hook_not_reading_stdin_does_not_kill_the_caller(tmp_path):
    """A container's set-up process runs createContainer hooks with SIGPIPE at its default: a hook that exits
    without reading a state bigger than the pipe must end in EPIPE for the writer, not SIGPIPE."""
    # in a fresh interpreter, not a fork of this one: hooks.run forks, and a fork of a fork of the test
    # process (gRPC threads by now) can hang in gRPC's fork handlers (see conftest.MonitorHandle)
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    code = f"""
import signal, sys
sys.path.insert(0, {repo!r})
from runtime.launch import hooks
signal.signal(signal.SIGPIPE, signal.SIG_DFL)
spec = {{"annotations": {{"big": "x" * 300_000}}, "hooks": {{"createContainer": [{{"path": "/bin/true"}}]}}}}
hooks.run("createContainer", spec, hooks.state(spec, "cid", "/b", "creating", 1))
sys.exit(0 if signal.getsignal(signal.SIGPIPE) == signal.SIG_DFL else 3)
"""
    r = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr.decode(errors="replace")


def test_hook_exec_failure_is_named(tmp_path):
    path = tmp_path / "notexec"
    path.write_text("#!/bin/sh\n")
    path.chmod(0o644)
    with pytest.raises(hooks.HookError, match=r"status 127: exec .*notexec: Permission denied"):
        hooks.run("prestart", {"hooks": {"prestart": [{"path": str(path)}]}}, {})


@pytest.mark.parametrize("bad", [{"hooks": {"preStart": []}}, {"hooks": {"poststop": [{"path": "rel"}]}},
                                 {"hooks": {"poststop": [{"path": "/x", "timeout": 0}]}},
                                 {"hooks": {"poststop": [{"path": "/x", "args": "a"}]}}])
def test_validate_rejects(bad):
    with pytest.raises(hooks.HookError):
        hooks.validate(bad)


def test_monitor_runs_every_hook_kind(mon, bundle, tmp_path, rootfs):
    """Each kind runs once, at its point, with the state JSON: the runtime-namespace kinds and createContainer see
    host paths; startContainer runs after pivot_root, so its path and output are inside the container."""
    log = tmp_path / "hooks.log"
    rec = _script(tmp_path, "rec", f'read -r state; echo "$1 $state" >> {log}\n')
    inside = f"startstate-{tmp_path.name}"
    spec_hooks = {kind: [{"path": rec, "args": ["rec", kind]}]
                  for kind in ("prestart", "createRuntime", "createContainer", "poststart", "poststop")}
    spec_hooks["startContainer"] = [{"path": "/bin/sh", "args": ["sh", "-c", f"cat > /tmp/{inside}"]}]
    b = bundle(["sleep", "30"], name="hk", mutate=lambda s: s.update(hooks=spec_hooks))

    def seen():
        out = {}
        for line in log.read_text().splitlines() if log.exists() else []:
            kind, state = line.split(" ", 1)
            out.setdefault(kind, []).append(json.loads(state))
        return out

    created = mon.client.create("hk", b)
    assert created["warnings"] == []
    got = seen()
    # runc's order: the runtime's hooks while the child waits after its mounts, then createContainer in it
    assert list(got) == ["prestart", "createRuntime", "createContainer"]
    assert got["createContainer"][0]["status"] == "creating" and got["createContainer"][0]["id"] == "hk"
    assert got["createRuntime"][0]["pid"] == created["pid"] and got["createRuntime"][0]["bundle"] == b
    mon.client.start("hk")
    deadline = time.monotonic() + 10
    while "poststart" not in seen() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert seen()["poststart"][0]["status"] == "running"
    start_state = os.path.join(rootfs, "tmp", inside)
    try:
        assert json.loads(open(start_state).read())["id"] == "hk"
    finally:
        os.unlink(start_state)
    # an exec is not a start: no hook runs for it
    assert mon.client.exec("hk", {"args": ["true"]}, timeout=10).exit_code == 0
    assert not os.path.exists(start_state) and sorted(seen()) == sorted(spec_hooks.keys() - {"startContainer",
                                                                                              "poststop"})
    mon.client.kill("hk", 9)
    mon.client.wait("hk", timeout=10)
    mon.client.delete("hk")
    deadline = time.monotonic() + 10
    while "poststop" not in seen() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [len(v) for v in seen().values()] == [1] * 5


@pytest.mark.parametrize("kind", ["createRuntime", "createContainer", "startContainer"])
def test_failing_hook_fails_the_container(mon, bundle, tmp_path, kind):
    path = "/bin/false" if kind == "startContainer" else _script(tmp_path, "bad", "echo nope >&2; exit 2\n")
    b = bundle(["sleep", "30"], name="hf", mutate=lambda s: s.update(hooks={kind: [{"path": path}]}))
    if kind == "startContainer":
        mon.client.create("hf", b)
        with pytest.raises(MonitorError, match=f"{kind} hook #0 .* exited with status 1"):
            mon.client.start("hf")
        mon.client.delete("hf", force=True)
    else:
        with pytest.raises(MonitorError, match=f"{kind} hook #0 .* exited with status 2: nope"):
            mon.client.create("hf", b)
