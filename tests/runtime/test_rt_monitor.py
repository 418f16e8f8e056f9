"""Monitor: logs, exec, tty, stdin, OOM, survival, on-disk state."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from tests.runtime.rt_helpers import log_text, read_log

from runtime import state
from runtime.host import linux

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from runtime.client import MonitorClient, MonitorError


def start(mon, cid, bundle_dir, **kw):
    mon.client.create(cid, bundle_dir, **kw)
    mon.client.start(cid)


def test_logs_are_byte_exact_with_partial_lines(mon, bundle, tmp_path):
    log = str(tmp_path / "c.log")
    script = ("head -c 40000 /dev/zero | tr '\\0' x; echo; echo short; echo oops >&2; "
              "printf 'tab\\there'; echo; printf 'no-newline'")
    start(mon, "c", bundle(["sh", "-c", script]), log_path=log)
    assert mon.client.wait("c", timeout=10)["exit_code"] == 0
    mon.client.delete("c")
    recs = read_log(log)
    out = [r for r in recs if r[0] == "stdout"]
    assert [r[1] for r in out] == ["P", "P", "F", "F", "F", "F"]  # 16 KiB + 16 KiB + rest
    assert len(out[0][2]) == 16384
    assert log_text(log) == "x" * 40000 + "\nshort\ntab\there\nno-newline\n"
    assert log_text(log, "stderr") == "oops\n"


def test_log_path_from_annotation_and_reopen(mon, bundle, tmp_path):
    log = str(tmp_path / "ann.log")
    b = bundle(["sh", "-c", "while read l; do echo got:$l; done"],
               mutate=lambda s: s.update(annotations={"io.pycri.log-path": log}))
    start(mon, "c", b, stdin=True)
    mon.client.write_stdin("c", b"one\n")
    _wait_for(lambda: "got:one" in log_text(log))
    os.rename(log, log + ".1")
    mon.client.reopen_log("c")
    mon.client.write_stdin("c", b"two\n")
    _wait_for(lambda: os.path.exists(log) and "got:two" in log_text(log))
    mon.client.close_stdin("c")
    assert mon.client.wait("c", timeout=10)["exit_code"] == 0
    assert log_text(log + ".1") == "got:one\n"
    assert log_text(log) == "got:two\n"
    mon.client.delete("c")


def _wait_for(cond, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def test_exec_exit_code_output_cap_and_timeout(mon, bundle):
    start(mon, "c", bundle(["sleep", "1000"],
                           mutate=lambda s: s["process"]["env"].append("FOO=from-spec")))
    r = mon.client.exec("c", {"args": ["sh", "-c", "echo $FOO; echo e >&2; cat /proc/self/cgroup >/dev/null; "
                                       "echo $$; exit 5"]})
    assert r.exit_code == 5
    out = r.stdout.decode().split()
    assert out[0] == "from-spec" and int(out[1]) > 1  # container env, inside the container's pid ns
    assert r.stderr == b"e\n"
    # the grandchild's "ready" can overtake the intermediate's pid report: exit codes must still match
    for n in range(12):
        assert mon.client.exec("c", {"args": ["sh", "-c", f"exit {n % 256}"]}).exit_code == n % 256
    r = mon.client.exec("c", {"args": ["sh", "-c", "head -c 100000 /dev/zero"]}, output_cap=1000)
    assert (len(r.stdout), r.truncated, r.exit_code) == (1000, True, 0)
    t = time.monotonic()
    r = mon.client.exec("c", {"args": ["sleep", "30"]}, timeout=0.3)
    assert r.timed_out and r.exit_code == 137 and time.monotonic() - t < 5
    with pytest.raises(MonitorError, match="executable file not found"):
        mon.client.exec("c", {"args": ["nope"]})
    mon.client.kill("c", "KILL")
    mon.client.wait("c", timeout=10)
    with pytest.raises(MonitorError, match="not running"):
        mon.client.exec("c", {"args": ["true"]})
    mon.client.delete("c")


def test_exec_shares_cgroup(mon, bundle, cgroup_path):
    start(mon, "c", bundle(["sleep", "1000"], mutate=lambda s: s["linux"].update(cgroupsPath=cgroup_path)))
    r = mon.client.exec("c", {"args": ["cat", "/proc/self/cgroup"]})
    with open(f"/proc/{mon.client.state('c')['pid']}/cgroup") as f:  # (v1: a line per hierarchy; v2: "0::")
        assert r.stdout.decode() == f.read() and f":{cgroup_path}\n" in r.stdout.decode()
    mon.client.delete("c", force=True)


def test_tty_output(mon, bundle, tmp_path):
    log = str(tmp_path / "tty.log")
    b = bundle(["sh", "-c", "tty; stty size; echo hi"],
               mutate=lambda s: s["process"].update(terminal=True, consoleSize={"height": 30, "width": 100}))
    start(mon, "c", b, log_path=log)
    assert mon.client.wait("c", timeout=10)["exit_code"] == 0
    mon.client.delete("c")
    text = log_text(log)
    assert "/dev/console" in text and "30 100" in text and "hi\r" in text


def test_oom_kill_is_detected(mon, bundle, cgroup_path):
    def mutate(spec):
        spec["linux"]["cgroupsPath"] = cgroup_path
        spec["linux"]["resources"] = {"memory": {"limit": 16 << 20, "swap": 16 << 20}}
    start(mon, "c", bundle(["dd", "if=/dev/zero", "of=/dev/shm/fill", "bs=1M", "count=60"], mutate=mutate))
    ex = mon.client.wait("c", timeout=60)
    assert ex["oom_killed"] is True and ex["signal"] == 9
    on_disk = state.container_status(mon.state_dir, "c")
    assert on_disk["status"] == "stopped" and on_disk["oom_killed"] is True
    mon.client.delete("c")


@pytest.mark.skipif(__import__("runtime.cgroups").cgroups.detect_version() != 1,
                    reason="moves a process by v1 files")
def test_oom_kill_is_known_when_the_cgroup_is_gone_at_exit(mon, bundle, cgroup_path):
    """As with the systemd driver, whose empty scope can be removed before the monitor reaps its process: the
    OOM kill is read when the kernel notifies it, not only at the exit. A child (awk) is OOM-killed while the
    container's init lives on; the test then moves the init out and removes the cgroup, as systemd would, and
    kills the init: the exit still says OOMKilled."""
    from runtime import cgroups

    def mutate(spec):
        spec["linux"]["cgroupsPath"] = cgroup_path
        spec["linux"]["resources"] = {"memory": {"limit": 24 << 20, "swap": 24 << 20}}
    hog = "awk 'BEGIN { s = \"x\"; while (1) s = s s }'; sleep 1000"
    start(mon, "c", bundle(["sh", "-c", hog], mutate=mutate))
    pid = mon.client.state("c")["pid"]
    cg = cgroups.open_cgroup(cgroup_path)
    _wait_for(lambda: cg.oom_kills() >= 1)
    time.sleep(0.2)  # (the monitor reads the count when notified)
    for mp in sorted(set(cgroups.v1_mounts().values())):
        with open(os.path.join(mp, "cgroup.procs"), "w") as f:
            f.write(str(pid))
    cg.remove()
    assert not cg.exists()
    os.kill(pid, signal.SIGKILL)
    ex = mon.client.wait("c", timeout=10)
    assert ex["signal"] == 9 and ex["oom_killed"] is True
    mon.client.delete("c")


def test_no_oom_when_within_limit(mon, bundle, cgroup_path):
    def mutate(spec):
        spec["linux"]["cgroupsPath"] = cgroup_path
        spec["linux"]["resources"] = {"memory": {"limit": 64 << 20}, "pids": {"limit": 20},
                                      "cpu": {"shares": 512, "quota": 50000, "period": 100000}}
    start(mon, "c", bundle(["sleep", "1000"], mutate=mutate))
    st = mon.client.stats("c")
    assert st["pids"] == 1 and st["memory_limit"] == 64 << 20 and st["cpu_usage_ns"] > 0
    mon.client.update_resources("c", {"memory": {"limit": 32 << 20}, "pids": {"limit": 5}})
    st = mon.client.stats("c")
    assert st["memory_limit"] == 32 << 20
    mon.client.kill("c", "KILL")  # pid 1 ignores TERM without a handler
    ex = mon.client.wait("c", timeout=10)
    assert ex["oom_killed"] is False and ex["signal"] == 9
    mon.client.delete("c")


def test_monitor_survives_client_kill(mon, bundle):
    start(mon, "c", bundle(["sleep", "1000"]))
    waiter = subprocess.Popen([sys.executable, "-c", (
        f"import sys; sys.path.insert(0, {REPO!r}); from runtime.client import MonitorClient; "
        f"MonitorClient({mon.client.socket_path!r}, timeout=None).wait('c')")])
    time.sleep(0.3)
    waiter.kill()
    waiter.wait()
    assert mon.client.ping()["containers"] == ["c"]
    assert mon.client.state("c")["status"] == "running"
    mon.client.kill("c", "KILL")
    assert mon.client.wait("c", timeout=10)["signal"] == 9
    mon.client.delete("c")


def test_state_on_disk_survives_monitor_death(mon, bundle, cgroup_path):
    start(mon, "c", bundle(["sleep", "1000"], mutate=lambda s: s["linux"].update(cgroupsPath=cgroup_path)))
    pid = mon.client.state("c")["pid"]
    os.kill(mon.pid, signal.SIGKILL)
    _wait_for(lambda: not state.monitor_alive(mon.state_dir))
    st = state.container_status(mon.state_dir, "c")
    assert st["status"] == "running" and st["pid"] == pid  # the container outlives its monitor
    with pytest.raises(MonitorError, match="not running|closed"):
        MonitorClient(mon.client.socket_path).ping()
    os.kill(pid, signal.SIGKILL)
    _wait_for(lambda: not linux.is_alive(pid, None))
    st = state.container_status(mon.state_dir, "c")
    assert st["status"] == "stopped" and st["reason"] == "monitor-lost"
    from runtime import cgroups
    cgroups.open_cgroup(cgroup_path).remove()


def test_spawner_monitor_outlives_spawner(tmp_root, bundle):
    import tempfile
    from runtime import spawner
    sp = spawner.start()
    state_dir = tempfile.mkdtemp(prefix="s", dir=tmp_root)
    sock = sp.spawn_monitor("pod-x", state_dir)
    mpid = state.read_json(os.path.join(state_dir, "monitor.json"))["pid"]
    os.kill(sp.pid, signal.SIGKILL)
    sp.close()
    c = MonitorClient(sock)
    c.create("c", bundle(["sh", "-c", "exit 3"]))
    c.start("c")
    assert c.wait("c", timeout=10)["exit_code"] == 3
    c.delete("c")
    c.shutdown()
    _wait_for(lambda: not linux.is_alive(mpid, None))


def test_a_spawner_that_cannot_run_from_a_sealed_copy_runs_from_the_file_and_says_so(monkeypatch, tmp_root):
    """Where the interpreter does not run from its sealed copy (here: the copy is of a program that exits at
    once), the spawner still starts, from the interpreter's file, with a warning that the daemon logs; where it
    does, no warning."""
    import tempfile
    from runtime import spawner
    sp = spawner.start()
    try:
        assert sp.warning is None and os.readlink(f"/proc/{sp.pid}/exe").startswith("/memfd:python")
    finally:
        sp.close()
    real = linux.sealed_copy
    monkeypatch.setattr(linux, "sealed_copy", lambda path, name, min_fd=0: real("/bin/false", name, min_fd))
    sp = spawner.start()
    try:
        assert "does not run from a sealed copy" in (sp.warning or "")
        assert os.readlink(f"/proc/{sp.pid}/exe") == os.path.realpath(sys.executable)
        state_dir = tempfile.mkdtemp(prefix="s", dir=tmp_root)
        c = MonitorClient(sp.spawn_monitor("pod-w", state_dir))
        mpid = state.read_json(os.path.join(state_dir, "monitor.json"))["pid"]
        c.shutdown()
        _wait_for(lambda: not linux.is_alive(mpid, None))
    finally:
        sp.close()


def test_spawner_process_imports_no_threading():
    """The spawner process (runtime.spawner.main's imports) loads neither threading nor subprocess: threading's
    at-fork handler would run in every monitor fork (0.23 MiB of private memory per pod, see spawner.main)."""
    import subprocess
    import sys
    from runtime import spawner
    code = ("import sys; sys.path.insert(0, %r); import runtime.spawner, signal; "
            "from runtime.host import linux; from runtime.launch import fastinit; "
            "from runtime.state import SOCKET_NAME; from runtime.monitor.server import prefork; "
            "print(sorted({'threading', 'subprocess'} & set(sys.modules)))" % spawner._ROOT)
    out = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_protocol_rejects_garbage(mon):
    import json
    import socket
    s = socket.socket(socket.AF_UNIX)
    s.connect(mon.client.socket_path)
    s.sendall(b"not json\n[1]\n" + json.dumps({"op": "__class__"}).encode() + b"\n" +
              json.dumps({"op": "state", "id": "missing"}).encode() + b"\n")
    f = s.makefile("rb")
    answers = [json.loads(f.readline()) for _ in range(4)]
    s.close()
    assert [a["ok"] for a in answers] == [False] * 4
    assert "not found" in answers[3]["error"]
    assert mon.client.ping()["containers"] == []


def test_delete_created_container_and_duplicate_ids(mon, bundle, cgroup_path):
    b = bundle(["sleep", "1000"], mutate=lambda s: s["linux"].update(cgroupsPath=cgroup_path))
    pid = mon.client.create("c", b)["pid"]
    assert mon.client.state("c")["status"] == "created" and linux.is_alive(pid, None)
    with pytest.raises(MonitorError, match="already exists"):
        mon.client.create("c", b)
    with pytest.raises(MonitorError, match="created"):
        mon.client.delete("c")
    mon.client.delete("c", force=True)
    assert not linux.is_alive(pid, None)
    assert not os.path.exists(os.path.join(mon.state_dir, "c"))
    with pytest.raises(MonitorError, match="not found"):
        mon.client.state("c")


def test_monitor_holds_no_inherited_fds(mon):
    fds = os.listdir(f"/proc/{mon.pid}/fd")
    targets = sorted(os.readlink(f"/proc/{mon.pid}/fd/{fd}") for fd in fds)
    # stdio on /dev/null, its log, its listening socket, the signal pipe, the selector and the spawner's sealed
    # copy of pycri-init: nothing of ours
    assert not [t for t in targets if t.startswith("/") and t not in ("/dev/null",)
                and not t.endswith("monitor.log") and not t.startswith("/memfd:pycri-init")], targets
    assert len(fds) <= 9, targets


def test_interactive_exec_stream_with_stdin(mon, bundle):
    start(mon, "c", bundle(["sleep", "1000"]))
    s = mon.client.exec_stream("c", {"args": ["sh", "-c", "read a; echo got:$a; echo err:$a >&2; cat; exit 9"]},
                               stdin=True)
    s.write_stdin(b"hello\n")
    s.write_stdin(b"rest of input")
    s.close_stdin()
    out, err, ex = s.collect()
    s.close()
    assert out == b"got:hello\nrest of input" and err == b"err:hello\n"
    assert ex["exit_code"] == 9
    mon.client.delete("c", force=True)


def test_interactive_exec_tty_resize(mon, bundle):
    start(mon, "c", bundle(["sleep", "1000"]))
    s = mon.client.exec_stream("c", {"args": ["sh", "-c", "read x; stty size; tty"], "terminal": True})
    assert s.info["tty"] is True
    s.resize(120, 40)
    s.write_stdin(b"go\n")
    out, _, ex = s.collect()
    assert b"40 120" in out and b"/dev/pts/" in out and ex["exit_code"] == 0
    mon.client.delete("c", force=True)


def test_attach_streams_output_and_stdin(mon, bundle, tmp_path):
    log = str(tmp_path / "a.log")
    mon.client.create("c", bundle(["sh", "-c", "while read l; do echo out:$l; [ $l = bye ] && exit 3; done"]),
                      stdin=True, log_path=log)
    a = mon.client.attach("c")
    mon.client.start("c")
    a.write_stdin(b"one\nbye\n")
    out, _, ex = a.collect()
    a.close()
    assert out == b"out:one\nout:bye\n" and ex["exit_code"] == 3
    assert log_text(log) == "out:one\nout:bye\n"  # the log gets the same bytes
    mon.client.delete("c")


def test_stream_stdin_larger_than_a_pipe_then_eof(mon, bundle):
    start(mon, "c", bundle(["sleep", "1000"]))
    s = mon.client.exec_stream("c", {"args": ["sh", "-c", "sleep 0.2; wc -c"]}, stdin=True)
    s.write_stdin(b"y" * 300_000)  # more than the 64 KiB pipe: the monitor buffers and keeps writing
    s.close_stdin()
    out, _, ex = s.collect()
    s.close()
    assert out.strip() == b"300000" and ex["exit_code"] == 0
    mon.client.delete("c", force=True)


def test_cgroup_in_use_is_refused_and_left_alone(mon, bundle, cgroup_path):
    b = bundle(["sleep", "1000"], mutate=lambda s: s["linux"].update(cgroupsPath=cgroup_path))
    start(mon, "a", b)
    with pytest.raises(MonitorError, match="in use"):
        mon.client.create("b", b)
    assert mon.client.state("a")["status"] == "running"
    assert mon.client.stats("a")["pids"] == 1
    mon.client.delete("a", force=True)


def test_force_delete_with_running_exec_does_not_hang(mon, bundle):
    start(mon, "c", bundle(["sleep", "1000"]))
    s = mon.client.exec_stream("c", {"args": ["sleep", "1000"]})
    t = time.monotonic()
    mon.client.delete("c", force=True)  # the exec is killed with the pid namespace and must be reaped too
    assert time.monotonic() - t < 5
    _, _, ex = s.collect()
    s.close()
    assert ex["exit_code"] == 137


def test_monitor_beside_busy_grpc_threads_runs_hooks(tmp_root, bundle, tmp_path):
    """The test process uses gRPC from several threads (as the daemon tests leave it); a monitor made for a test
    must still fork its hooks safely. Forked from this process (the old fixture), it inherited gRPC's fork
    handlers and state, and its own os.fork() then crashed it or its spare at random (CI, hook tests)."""
    import threading
    from concurrent import futures

    import grpc

    from tests.runtime.conftest import MonitorHandle

    server = grpc.server(futures.ThreadPoolExecutor(4))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    stop = threading.Event()

    def hammer():
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            call = ch.unary_unary("/t.T/T")
            while not stop.is_set():
                try:
                    call(b"", timeout=0.05)
                except grpc.RpcError:
                    pass

    threads = [threading.Thread(target=hammer, daemon=True) for _ in range(3)]
    for t in threads:
        t.start()
    hook = tmp_path / "hook"
    hook.write_text("#!/bin/sh\nread -r state\nexit 0\n")
    hook.chmod(0o755)
    b = bundle(["sleep", "30"], mutate=lambda s: s.update(
        hooks={k: [{"path": str(hook)}] for k in ("createRuntime", "createContainer", "poststop")}))
    try:
        time.sleep(0.3)
        for i in range(8):
            h = MonitorHandle(os.path.join(tmp_root, f"busy{i}-{tmp_path.name}"))
            try:
                h.client.create("c", b)
                h.client.kill("c", 9)
                h.client.wait("c", timeout=10)
                h.client.delete("c")
            finally:
                h.stop()
    finally:
        stop.set()
        for t in threads:
            t.join(5)
        server.stop(0)


def test_client_keeps_connections_and_notices_a_new_monitor(tmp_root):
    """Calls reuse a kept connection (one at a time per caller); when the monitor at that socket is replaced
    (killed, a new one started), the kept connections to the old one are dropped, not used."""
    import tempfile

    from runtime import client as client_mod
    from tests.runtime.conftest import MonitorHandle
    sd = tempfile.mkdtemp(prefix="m", dir=tmp_root)
    h = MonitorHandle(sd)
    path = h.client.socket_path
    try:
        h.client.ping()
        (kept,) = client_mod._idle[path]
        for _ in range(5):
            MonitorClient(path).ping()  # another client object, same pool
        assert client_mod._idle[path] == [kept]
        monitor_socks = [fd for fd in os.listdir(f"/proc/{h.pid}/fd")
                         if os.readlink(f"/proc/{h.pid}/fd/{fd}").startswith("socket:")]
        assert len(monitor_socks) == 2  # the listening socket and the one kept connection
        os.kill(h.pid, signal.SIGKILL)
        _wait_for(lambda: not linux.is_alive(h.pid, None))
        h.stop()
        h = MonitorHandle(sd)
        assert h.client.ping()["pid"] == h.pid
        assert kept.fileno() == -1  # closed when found dead
    finally:
        h.stop()
    assert path not in client_mod._idle  # shutdown forgets the monitor's connections


def _children(pid: int) -> set[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return {int(x) for x in f.read().split()}


def test_create_answered_before_the_set_up_ends(mon, bundle, tmp_path):
    """"ready": "later" (as the daemon creates): the start waits for the set-up; a failed set-up fails the start
    with the child's error, whether the child is still there or was reaped before the start came, and the
    container ends with exit code 128; one deleted before its start leaves no process."""
    log = str(tmp_path / "ok.log")
    mon.client.create("ok", bundle(["sh", "-c", "echo hello"]), log_path=log, ready_later=True)
    assert mon.client.state("ok")["status"] == "created"
    mon.client.start("ok")
    assert mon.client.wait("ok", timeout=10)["exit_code"] == 0
    assert log_text(log) == "hello\n"

    mon_pid = mon.client.ping()["pid"]
    for cid, reaped_first in (("bad1", False), ("bad2", True)):
        mon.client.create(cid, bundle(["nope"]), ready_later=True)  # its set-up fails: no such executable
        if reaped_first:
            _wait_for(lambda: mon.client.state(cid)["status"] == "stopped")
        with pytest.raises(MonitorError, match='"nope": executable file not found'):
            mon.client.start(cid)
        st = mon.client.state(cid)
        assert (st["status"], st["exit_code"]) == ("stopped", 128)
        assert mon.client.wait(cid, timeout=10)["exit_code"] == 128
        mon.client.delete(cid)

    before = _children(mon_pid)
    created = mon.client.create("gone", bundle(["sleep", "100"]), ready_later=True)
    assert created["pid"] in _children(mon_pid)
    mon.client.delete("gone", force=True)
    assert created["pid"] not in _children(mon_pid) and _children(mon_pid) <= before | {created["pid"]}
    mon.client.delete("ok")
