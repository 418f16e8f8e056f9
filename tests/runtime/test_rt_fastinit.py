"""Fast init (runtime/launch/fastinit.py, runtime/launch/initc/pycri-init): which plans go to the C child, and that
a container sees the same thing whichever child set it up (PYCRI_FASTINIT=0: the Python child)."""
from __future__ import annotations

import os
import re

import pytest
from tests.runtime.conftest import MonitorHandle
from tests.runtime.rt_helpers import log_text, make_rootfs, make_spec, write_bundle

from runtime import launch
from runtime.client import MonitorError
from runtime.launch import fastinit, initproc, prepare

pytestmark = pytest.mark.skipif(not os.access(fastinit.BINARY, os.X_OK),
                                reason="runtime/launch/initc/pycri-init not built (make initc)")

# what the container reports about itself: status lines, ids, mounts (point, per-mount options, fs type and
# super options: ids differ between runs), masked and read-only paths, cwd, env, rlimits, umask, /dev
PROBE = r"""
grep -E '^(Cap|NoNewPrivs|Seccomp)' /proc/self/status
id; hostname; cat /proc/sys/kernel/domainname; pwd; umask; ulimit -n; ulimit -Hn; cat /proc/self/oom_score_adj
env | sort
awk '{ for (i = 7; $i != "-"; i++); print $5, $6, $(i+1), $(i+3) }' /proc/self/mountinfo
ls -ln /dev | awk '{print $1, $3, $4, $5, $6, $NF}'
wc -c /proc/kcore | cut -d' ' -f1; ls /sys/firmware | wc -l
(echo probe > /proc/sys/kernel/domainname) 2>&1 | sed 's/.*: //'
(touch /proc/sysrq-trigger) 2>&1 | sed 's/.*: //'
(touch /probe-rootfs && echo rootfs-rw) 2>&1 | sed 's/.*: //'; rm -f /probe-rootfs
cat /proc/sys/net/ipv4/ip_forward
ls -la /mnt 2>&1 | wc -l
(mkdir /tmp/x && echo mkdir-ok && rmdir /tmp/x) 2>&1 | sed 's/.*: //'
exit 3
"""


def _variants(tmp_path) -> dict:
    src = tmp_path / "src"
    src.mkdir(exist_ok=True)
    (src / "f").write_text("file\n")
    (src / "sub").mkdir(exist_ok=True)

    def plain(spec):
        pass

    def user(spec):
        p = spec["process"]
        p["user"] = {"uid": 65534, "gid": 65534, "additionalGids": [5, 7], "umask": 0o027}
        p["cwd"] = "/tmp"
        p["noNewPrivileges"] = False
        p["env"] += ["A=1", "A=2", "B=x=y", "NOEQUALS"]
        p["rlimits"] = [{"type": "RLIMIT_NOFILE", "soft": 1000, "hard": 2000},
                        {"type": "RLIMIT_CORE", "soft": 2**64 - 1, "hard": 2**64 - 1}]
        p["oomScoreAdj"] = 300
        c = p["capabilities"]
        c["bounding"] = ["CAP_KILL", "CAP_NET_RAW", "CAP_CHOWN"]
        c["effective"] = c["permitted"] = ["CAP_KILL", "CAP_NET_RAW"]
        c["inheritable"] = c["ambient"] = ["CAP_NET_RAW"]
        spec["root"]["readonly"] = True
        spec["domainname"] = "example.org"

    def mounts(spec):
        spec["mounts"] += [
            {"destination": "/mnt", "type": "bind", "source": str(src), "options": ["rbind", "ro", "nosuid"]},
            {"destination": "/mnt2/f", "type": "bind", "source": str(src / "f"), "options": ["bind"]},
            {"destination": "/mnt3", "type": "bind", "source": str(src), "options": ["rbind", "rro", "rprivate"]},
            {"destination": "/scratch", "type": "tmpfs", "source": "tmpfs",
             "options": ["nodev", "noexec", "size=1m", "mode=1777"]},
            {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
             "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]},
        ]
        spec["linux"]["devices"] = [{"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229,
                                     "fileMode": 0o640, "uid": 0, "gid": 5}]
        spec["linux"]["sysctl"] = {"net.ipv4.ip_forward": "1"}
        spec["linux"]["rootfsPropagation"] = "rslave"

    def seccomp(spec):
        spec["linux"]["seccomp"] = {
            "defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"],
            "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13}]}

    def seccomp_no_nnp(spec):
        seccomp(spec)
        spec["process"]["noNewPrivileges"] = False

    def low_nofile(spec):  # below the monitor's own fd count (the Python child is a clone that holds them)
        spec["process"]["rlimits"] = [{"type": "RLIMIT_NOFILE", "soft": 8, "hard": 40}]

    return {"plain": plain, "user": user, "mounts": mounts, "seccomp": seccomp, "seccomp_no_nnp": seccomp_no_nnp,
            "low_nofile": low_nofile}


def _spec(mutate) -> dict:
    spec = make_spec(["sh", "-c", PROBE])
    mutate(spec)
    return spec


def _plan(spec, bundle_dir):
    return launch.plan_from_spec(spec, bundle_dir, stdio=(0, 1, 2))


def test_resolve_is_realpath_for_existing_paths(tmp_path):
    """linux.resolve, the planning's faster realpath: the same answer, whether a directory, and OSError where
    realpath would still answer for a path that is not there."""
    from runtime.host import linux
    (tmp_path / "d" / "e").mkdir(parents=True)
    (tmp_path / "f").write_text("")
    os.symlink(tmp_path / "d", tmp_path / "link")
    os.symlink(tmp_path / "gone", tmp_path / "dangling")
    for path, is_dir in ((tmp_path / "link" / "e", True), (tmp_path / "f", False), (tmp_path / "link/../f", False)):
        assert linux.resolve(str(path)) == (os.path.realpath(path), is_dir), path
    for path in (tmp_path / "dangling", tmp_path / "missing"):
        with pytest.raises(OSError):
            linux.resolve(str(path))


def test_eligibility(tmp_path, rootfs):
    b = write_bundle(str(tmp_path / "b"), make_spec(["true"]), rootfs)
    for name, mutate in _variants(tmp_path).items():
        assert fastinit.eligible(_plan(_spec(mutate), b)), name
    not_eligible = {
        "userns": lambda s: (s["linux"]["namespaces"].append({"type": "user"}),
                             s["linux"].update(uidMappings=[{"containerID": 0, "hostID": 100000, "size": 65536}],
                                               gidMappings=[{"containerID": 0, "hostID": 100000, "size": 65536}])),
        "terminal": lambda s: s["process"].update(terminal=True),
        "apparmor": lambda s: s["process"].update(apparmorProfile="unconfined"),
        "idmap": lambda s: s["mounts"].append({"destination": "/m", "type": "bind", "source": "/tmp",
                                               "options": ["bind"],
                                               "uidMappings": [{"containerID": 0, "hostID": 1, "size": 1}],
                                               "gidMappings": [{"containerID": 0, "hostID": 1, "size": 1}]}),
    }
    os.symlink(os.path.join(rootfs, "etc"), tmp_path / "into-rootfs")
    not_eligible["bind source in the rootfs, through a symlink"] = lambda s: s["mounts"].append(
        {"destination": "/m", "type": "bind", "source": str(tmp_path / "into-rootfs"), "options": ["bind"]})
    for name, mutate in not_eligible.items():
        assert not fastinit.eligible(_plan(_spec(mutate), b)), name
    plan = _plan(make_spec(["true"], hooks={"createContainer": [{"path": "/bin/true"}]}), b)
    assert fastinit.eligible(plan)  # hooks of a container's init only (hook_state set by the monitor)
    plan.hook_state = {"id": "x", "bundle": b}
    assert not fastinit.eligible(plan)
    plan = _plan(make_spec(["true"]), b)
    plan.runtime_hooks = True
    assert not fastinit.eligible(plan)
    plan = launch.plan_for_exec(os.getpid(), {"args": ["true"]}, make_spec(["true"]))
    assert not fastinit.eligible(plan)  # nothing to join (our own namespaces): not an exec into a container


def _run_all(monkeypatch, tmp_root, tmp_path, rootfs, mode: str, bundles: dict) -> dict:
    import tempfile
    monkeypatch.setenv("PYCRI_FASTINIT", mode)
    h = MonitorHandle(tempfile.mkdtemp(prefix="m", dir=tmp_root))
    out = {}
    try:
        for name, b in bundles.items():
            if name == "plain_sleep":
                continue
            log = os.path.join(str(tmp_path), f"{name}-{mode}.log")
            cid = f"{name}-{mode}"
            try:
                r = h.client.create(cid, b, log_path=log)
            except MonitorError as exc:
                out[name] = ("error", str(exc))
                continue
            h.client.start(cid)
            ex = h.client.wait(cid, timeout=30)
            h.client.delete(cid)
            out[name] = (ex["exit_code"], ex["signal"], log_text(log), log_text(log, "stderr"), r["warnings"])
        # an exec into a running container (joined namespaces, no rootfs set-up)
        cid = f"long-{mode}"
        h.client.create(cid, bundles["plain_sleep"])
        h.client.start(cid)
        for args in (["sh", "-c", PROBE], ["nope"], ["/bin/nope"], ["/bin"]):
            try:
                r = h.client.exec(cid, {"args": args, "cwd": "/tmp"})
                out[f"exec {args[0][:8]}"] = (r.exit_code, r.stdout.decode(), r.stderr.decode())
            except MonitorError as exc:
                out[f"exec {args[0][:8]}"] = ("error", str(exc))
        try:
            h.client.exec(cid, {"args": ["true"], "cwd": "/no/where"})
        except MonitorError as exc:
            out["exec badcwd"] = ("error", str(exc))
        h.client.kill(cid, "KILL")
        h.client.wait(cid, timeout=10)
        h.client.delete(cid)
    finally:
        h.stop()
    return out


def _bundles(base: str, variants: dict, errors: dict) -> dict:
    """Every bundle, on a rootfs of their own (containers change it: mount points, files)."""
    rootfs = make_rootfs(os.path.join(base, "rootfs"))
    bundles = {name: write_bundle(os.path.join(base, name), _spec(mutate), rootfs)
               for name, mutate in {**variants, **errors}.items()}
    bundles["plain_sleep"] = write_bundle(os.path.join(base, "plain_sleep"), make_spec(["sleep", "1000"]), rootfs)
    for b in bundles.values():  # the C path is the one tested with "1"
        spec = launch.spec_json(os.path.join(b, "config.json"))
        assert fastinit.eligible(_plan(spec, b)), b
    return bundles


def test_both_children_give_the_same_container(monkeypatch, tmp_root, tmp_path, rootfs):
    errors = {
        "nobinary": lambda s: s["process"].update(args=["nope"]),
        "nobinary_abs": lambda s: s["process"].update(args=["/bin/nope"]),
        "dir_binary": lambda s: s["process"].update(args=["/bin"]),
        "badcwd": lambda s: s["process"].update(cwd="/no/where"),
        "nobindsrc": lambda s: s["mounts"].append({"destination": "/mnt", "type": "bind",
                                                   "source": "/does/not/exist", "options": ["rbind"]}),
        "badrlimit": lambda s: s["process"].update(rlimits=[{"type": "RLIMIT_BOGUS", "soft": 1, "hard": 1}]),
        "badsysctl": lambda s: s["linux"].update(sysctl={"kernel.no_such_sysctl_xyz": "1"}),
        "baddest": lambda s: s["mounts"].append({"destination": "/proc/x", "type": "tmpfs", "source": "tmpfs"}),
    }
    variants = _variants(tmp_path)
    slow = _run_all(monkeypatch, tmp_root, tmp_path, rootfs, "0",
                    _bundles(str(tmp_path / "slow"), variants, errors))
    fast = _run_all(monkeypatch, tmp_root, tmp_path, rootfs, "1",
                    _bundles(str(tmp_path / "fast"), variants, errors))
    assert fast.keys() == slow.keys()
    # the bundles' own paths (error messages name them) are the only expected difference
    slow = {k: eval(repr(v).replace(str(tmp_path / "slow"), "BUNDLES")) for k, v in slow.items()}  # noqa: S307
    fast = {k: eval(repr(v).replace(str(tmp_path / "fast"), "BUNDLES")) for k, v in fast.items()}  # noqa: S307
    for name in slow:
        if fast[name] != slow[name]:
            import difflib
            diff = "\n".join(difflib.unified_diff(repr(slow[name]).replace("\\n", "\n").splitlines(),
                                                   repr(fast[name]).replace("\\n", "\n").splitlines(),
                                                   "python child", "C child", lineterm=""))
            pytest.fail(f"{name}: the two children differ:\n{diff}")
    # and what they are (so that both being wrong the same way fails too)
    with open(tmp_path / "results.txt", "w") as f:  # for a failing assertion below
        f.write(repr(fast))
    code, sig, out, err, warnings = fast["plain"]
    assert (code, sig) == (3, 0), err
    assert "NoNewPrivs:\t1" in out and "uid=0(root) gid=0" in out and "testbox" in out
    assert "\n0\nRead-only file system\n" in out  # /sys/firmware an empty tmpfs, /proc/sys read-only
    assert "Read-only file system" in out and "mkdir-ok" in out and "rootfs-rw" in out
    code, sig, out, err, warnings = fast["user"]
    assert "uid=65534(nobody) gid=65534 groups=5,7" in out and "\n/tmp\n0027\n1000\n2000\n300\n" in out, out
    assert "A=2" in out and "B=x=y" in out and "NOEQUALS" not in out
    assert "CapAmb:\t0000000000002000" in out and "CapBnd:\t0000000000002021" in out
    assert "example.org" in out
    code, sig, out, err, warnings = fast["low_nofile"]
    assert (code, sig) == (3, 0) and "\n8\n40\n" in out, (out, err)
    code, sig, out, err, warnings = fast["mounts"]
    assert re.search(r"^/mnt ro,nosuid", out, re.M) and re.search(r"^/scratch rw,nodev,noexec", out, re.M), out
    assert "crw-r----- 0 5 10, 229 fuse" in out and "\n1\n" in out
    assert "Permission denied" in fast["seccomp"][2] + fast["seccomp"][3] and "Seccomp:\t2" in fast["seccomp"][2]
    assert "NoNewPrivs:\t0" in fast["seccomp_no_nnp"][2] and "Seccomp:\t2" in fast["seccomp_no_nnp"][2]
    assert fast["nobinary"] == ("error", 'resolving the executable: exec: "nope": executable file not found '
                                         'in $PATH')
    assert fast["badcwd"] == ("error", "changing to cwd '/no/where': /no/where: No such file or directory")
    assert fast["nobindsrc"][0] == "error" and "mounting /mnt: bind mount source" in fast["nobindsrc"][1]
    assert fast["exec nope"][0] == "error" and "executable file not found" in fast["exec nope"][1]
    assert fast["exec badcwd"][0] == "error" and "No such file" in fast["exec badcwd"][1]
    assert fast["exec sh"][0] == 3 and "\n/tmp\n" in fast["exec sh"][1]


def test_exec_is_eligible_and_pid_namespace_is_joined(tmp_root, tmp_path, rootfs, monkeypatch):
    import tempfile
    monkeypatch.setenv("PYCRI_FASTINIT", "1")
    b = write_bundle(str(tmp_path / "b"), make_spec(["sleep", "1000"]), rootfs)
    h = MonitorHandle(tempfile.mkdtemp(prefix="m", dir=tmp_root))
    try:
        h.client.create("c", b)
        h.client.start("c")
        pid = h.client.state("c")["pid"]
        plan = launch.plan_for_exec(pid, {"args": ["true"]}, make_spec(["sleep", "1000"]))
        assert fastinit.eligible(plan) and plan.join_pid
        r = h.client.exec("c", {"args": ["sh", "-c", "echo $$; cat /proc/1/cmdline"]})
        assert r.exit_code == 0
        child_pid, cmd = r.stdout.decode().split("\n")[:2]
        assert int(child_pid) > 1 and cmd.startswith("sleep")
        h.client.kill("c", "KILL")
        h.client.wait("c", timeout=10)
        h.client.delete("c")
    finally:
        h.stop()


def _children_in_mode(monitor_pid: int, mode: bytes) -> list[int]:
    """The monitor's children that are pycri-init in mode (argv[1]: b"spare", b"factory")."""
    with open(f"/proc/{monitor_pid}/task/{monitor_pid}/children") as f:
        kids = [int(p) for p in f.read().split()]
    out = []
    for pid in kids:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if f.read().split(b"\0")[1:2] == [mode]:
                    out.append(pid)
        except OSError:
            pass
    return out


def _spares(monitor_pid: int) -> list[int]:
    """The monitor's children started as spares (a container created in one keeps that command line until it
    execs)."""
    return _children_in_mode(monitor_pid, b"spare")


def _one_spare(monitor_pid: int) -> int:
    """The monitor's spare, once its factory has made it (it asks for it after a start's answer)."""
    import time
    deadline = time.monotonic() + 5
    while len(spares := _spares(monitor_pid)) != 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    (spare,) = spares
    return spare


def _nspid(pid: int) -> list[int]:
    with open(f"/proc/{pid}/status") as f:
        return [int(x) for line in f if line.startswith("NSpid:") for x in line.split()[1:]]


def test_spare_runs_the_pods_next_container_then_goes_away(monkeypatch, tmp_root, tmp_path, rootfs):
    """After a fast-init start the monitor keeps a spare pycri-init (in a new pid namespace when the container had
    one); the next create that fits runs in it, one that does not fit releases it; it goes after
    monitor_spares.SPARE_KEEP_S without a create, and at shutdown."""
    import tempfile
    import time

    from runtime.monitor import spares as monitor_spares
    monkeypatch.setenv("PYCRI_FASTINIT", "1")
    h = MonitorHandle(tempfile.mkdtemp(prefix="m", dir=tmp_root))
    try:
        assert _spares(h.pid) == []
        first = write_bundle(str(tmp_path / "first"), make_spec(["true"]), rootfs)
        h.client.create("first", first)
        h.client.start("first")
        assert h.client.wait("first", timeout=10)["exit_code"] == 0
        spares = [_one_spare(h.pid)]
        assert len(_nspid(spares[0])) == 2  # pid 1 of a pid namespace of its own
        # the next container runs in it, with its output and exit as from a fresh spawn
        b = write_bundle(str(tmp_path / "b"), make_spec(["sh", "-c", "echo pid $$; echo err >&2; exit 7"]), rootfs)
        log = str(tmp_path / "b.log")
        assert h.client.create("b", b, log_path=log)["pid"] == spares[0]
        assert _spares(h.pid) == spares  # b, until it execs
        h.client.start("b")
        assert h.client.wait("b", timeout=10)["exit_code"] == 7
        assert log_text(log) == "pid 1\n" and log_text(log, "stderr") == "err\n"
        # one without a pid namespace of its own does not fit: the spare is released, a fresh one runs it
        spare = _one_spare(h.pid)
        host_pid = write_bundle(str(tmp_path / "hostpid"), _without_pidns(make_spec(["sleep", "100"])), rootfs)
        pid = h.client.create("hp", host_pid)["pid"]
        assert pid != spare and _nspid(pid) == [pid]
        h.client.start("hp")
        deadline = time.monotonic() + 5
        while linux_alive(spare) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not linux_alive(spare)
        while not _spares(h.pid) and time.monotonic() < deadline:  # made once start's answer is out
            time.sleep(0.01)
        (spare,) = _spares(h.pid)  # the new one matches the last container: no pid namespace
        assert len(_nspid(spare)) == 1
        h.client.kill("hp", "KILL")
        h.client.wait("hp", timeout=10)
        time.sleep(monitor_spares.SPARE_KEEP_S + 0.5)  # not used for a while: released (and reaped)
        assert _spares(h.pid) == [] and not linux_alive(spare)
        h.client.create("last", first)
        h.client.start("last")
        h.client.wait("last", timeout=10)
        deadline = time.monotonic() + 5
        while not _spares(h.pid) and time.monotonic() < deadline:
            time.sleep(0.01)
        (spare,) = _spares(h.pid)
        h.client.shutdown(force=True)
        assert not linux_alive(spare)  # the monitor waits for it before it answers shutdown
    finally:
        h.stop()


def _ppid(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("PPid:"))


def test_a_spare_factory_makes_spares_that_are_its_callers_children():
    """initproc.SpareFactory: each spare it makes is the caller's child (clone with CLONE_PARENT), so the
    caller reaps it and waits for its container's exit as for a spawned one; in a new pid namespace when
    asked. The factory exits when closed."""
    import time

    def _mode(pid: int) -> bytes:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().split(b"\0")[1]
    factory = initproc.SpareFactory()
    spares = []
    try:
        assert _ppid(factory.pid) == os.getpid()
        spares = [initproc.Spare(True, factory), initproc.Spare(False, factory)]
        pids = [s.pid for s in spares]  # the answers, read in order
        assert len(set(pids)) == 2 and factory.pid not in pids
        deadline = time.monotonic() + 5
        for s, pid in zip(spares, pids):
            assert _ppid(pid) == os.getpid()
            while _mode(pid) != b"spare" and time.monotonic() < deadline:  # (it says so once it first runs)
                time.sleep(0.001)
            assert _mode(pid) == b"spare"
        assert len(_nspid(pids[0])) == 2 and _nspid(pids[1]) == [pids[1]]
        for s, pid in zip(spares, pids):
            s.close()  # it reads EOF and exits: ours to reap
            _, status = os.waitpid(pid, 0)
            assert os.waitstatus_to_exitcode(status) == 0
    finally:
        for s in spares:
            s.close()
        factory.close()
    _, status = os.waitpid(factory.pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    # a factory gone: asking fails at once, or the spare's pid does
    with pytest.raises(OSError):
        initproc.Spare(True, factory)


def test_the_monitor_makes_another_spare_factory_when_one_is_gone(monkeypatch, tmp_root, tmp_path, rootfs):
    """The monitor's spares come from a spare factory (its child, kept while it keeps spares). Killed, it is
    replaced at a later start; the create in between runs from a fresh spawn."""
    import signal
    import tempfile
    import time

    monkeypatch.setenv("PYCRI_FASTINIT", "1")
    h = MonitorHandle(tempfile.mkdtemp(prefix="m", dir=tmp_root))

    def factories() -> list[int]:
        return _children_in_mode(h.pid, b"factory")

    def settled(want_spare: bool) -> tuple[list[int], list[int]]:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            if bool(_spares(h.pid)) == want_spare:
                break
            time.sleep(0.01)
        return factories(), _spares(h.pid)

    def run(cid: str) -> int:
        pid = h.client.create(cid, b)["pid"]
        h.client.start(cid)
        assert h.client.wait(cid, timeout=10)["exit_code"] == 0
        h.client.delete(cid)
        return pid

    try:
        b = write_bundle(str(tmp_path / "b"), make_spec(["true"]), rootfs)
        assert factories() == []
        run("a")
        (factory,), (spare,) = settled(True)
        os.kill(factory, signal.SIGKILL)
        assert run("b") == spare  # the spare it made already still runs the next container
        assert settled(False) == ([], [])  # the start after it found the factory gone: no spare
        run("c")  # a fresh spawn
        (new_factory,), (spare,) = settled(True)  # and a new factory made the next spare
        assert new_factory != factory and _ppid(spare) == h.pid
        h.client.shutdown(force=True)
        assert not linux_alive(new_factory) and not linux_alive(spare)
    finally:
        h.stop()


def _without_pidns(spec: dict) -> dict:
    spec["linux"]["namespaces"] = [ns for ns in spec["linux"]["namespaces"] if ns["type"] != "pid"]
    return spec


def linux_alive(pid: int) -> bool:
    from runtime.host import linux
    return linux.is_alive(pid, None)


def test_warm_plans_and_encodes_and_leaves_nothing_running():
    """initproc.warm() (the spawner's, before it forks monitors) runs the planning and encoding code once and
    leaves no process behind (the spare factory and the spare it starts to warm their code are reaped)."""
    def children() -> set[str]:
        out = set()
        for t in os.listdir("/proc/self/task"):
            with open(f"/proc/self/task/{t}/children") as f:
                out |= set(f.read().split())
        return out
    before = children()
    initproc.warm()
    assert children() == before
    assert fastinit._DEFAULT_DEVICES  # the encoding ran (its cache is filled)


def test_the_monitor_runs_the_init_its_client_prepared(monkeypatch, tmp_root, tmp_path, rootfs):
    """MonitorClient.create plans and encodes the container's init itself and sends it with the request
    (launch/prepare.py); the monitor runs that, without planning the spec again. A malformed one is refused
    with a clear error, and the monitor goes on serving."""
    import tempfile

    monkeypatch.setenv("PYCRI_FASTINIT", "1")
    said_a = make_spec(["sh", "-c", "echo prepared; exit 4"])
    said_b = make_spec(["sh", "-c", "echo planned; exit 5"])
    b = write_bundle(str(tmp_path / "b"), said_b, rootfs)
    init = prepare.prepare_init("x", b, None, None)
    assert init is not None and set(init) == {"head", "tail", "plan", "fork"}
    init_a = prepare.prepare_init("a", b, said_a, None)
    monkeypatch.setenv("PYCRI_FASTINIT", "0")
    assert prepare.prepare_init("x", b, said_b, None) is None
    monkeypatch.setenv("PYCRI_FASTINIT", "1")
    h = MonitorHandle(tempfile.mkdtemp(prefix="m", dir=tmp_root))
    try:
        log = str(tmp_path / "a.log")
        h.client.call("create", id="a", bundle=b, spec=said_b, init=init_a, log_path=log, overlay=None, stdin=False)
        h.client.start("a")
        assert h.client.wait("a", timeout=10)["exit_code"] == 4
        assert log_text(log) == "prepared\n"
        for bad in ({"head": "!", "tail": "", "plan": init_a["plan"]}, {**init_a, "plan": {}},
                    {**init_a, "plan": {**init_a["plan"], "go_stage": "sometime"}}, "nope"):
            with pytest.raises(MonitorError, match="malformed prepared init plan"):
                h.client.call("create", id="bad", bundle=b, spec=said_b, init=bad)
        assert [c["id"] for c in h.client.list()] == ["a"] and h.client.ping()
        # and the client's own create sends one (the bundle's spec)
        log = str(tmp_path / "c.log")
        h.client.create("c", b, log_path=log)
        h.client.start("c")
        assert h.client.wait("c", timeout=10)["exit_code"] == 5 and log_text(log) == "planned\n"
    finally:
        h.stop()


def test_spawn_places_fds_that_sit_where_they_go(tmp_path, rootfs):
    """initproc.spawn moves the plan, pipe and stdio fds to BASE.. in the child even when the parent's own
    numbers are already in that range, in another order (a plain dup2 to each place would overwrite one
    still to be moved). Run in a fresh interpreter, whose fds in that range are the test's to choose."""
    import subprocess
    import sys
    code = f"""
import os, select, sys
from runtime import launch
from runtime.launch import fastinit, initproc
B = fastinit.BASE
def at(fd, where):
    os.dup2(fd, where)
    os.close(fd)
    return where
out_r, out_w = os.pipe2(os.O_CLOEXEC)
err_r, err_w = os.pipe2(os.O_CLOEXEC)
null = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
# stdio where the plan and the pipes go, in reverse: a dup2 to B + i in turn would overwrite them
stdio = (at(null, B + 2), at(out_w, B + 1), at(err_w, B))
spec = {{"ociVersion": "1.0.2", "root": {{"path": {rootfs!r}}},
        "process": {{"args": ["sh", "-c", "echo out; echo err >&2; read x || echo eof"], "cwd": "/",
                    "env": ["PATH=/bin:/usr/bin"], "user": {{"uid": 0, "gid": 0}}}},
        "linux": {{"namespaces": [{{"type": "mount"}}]}}}}
plan = launch.plan_from_spec(spec, {str(tmp_path)!r}, stdio=stdio)
assert fastinit.eligible(plan)
proc = launch.Process(plan)
assert proc.fast
proc.setup()
proc.start()
for fd in stdio:
    os.close(fd)
_, status = os.waitpid(proc.pid, 0)
sys.stdout.write(f"{{os.waitstatus_to_exitcode(status)}} {{os.read(out_r, 100)!r}} {{os.read(err_r, 100)!r}}")
"""
    root = os.path.dirname(os.path.dirname(os.path.abspath(fastinit.__file__)))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30,
                       env={**os.environ, "PYTHONPATH": root, "PYCRI_FASTINIT": "1"})
    assert r.returncode == 0, r.stderr
    assert r.stdout == "0 b'out\\neof\\n' b'err\\n'", r.stdout


def test_the_init_second_part_follows_the_create_on_its_connection(monkeypatch, tmp_root, tmp_path, rootfs):
    """MonitorClient.create sends the init's second part as the next line (fastinit.prepare with tail=False),
    made while the monitor starts on the first. The monitor reads that line whatever becomes of the create,
    so the connection stays in step: here a malformed second part, and a create refused before its init is
    looked at, each followed by a request on the same connection that gets its own answer."""
    import json
    import socket
    import tempfile

    monkeypatch.setenv("PYCRI_FASTINIT", "1")
    b = write_bundle(str(tmp_path / "b"), make_spec(["sh", "-c", "echo two-part; exit 6"]), rootfs)
    plan = prepare.plan_init("c", b, None, None)
    head_only = fastinit.prepare(plan, tail=False)
    assert head_only["tail"] is None and set(fastinit.prepare_tail(plan)) == {"tail"}
    h = MonitorHandle(tempfile.mkdtemp(prefix="m", dir=tmp_root))
    try:
        log = str(tmp_path / "c.log")
        h.client.create("c", b, log_path=log)  # the client's own two-line create
        h.client.start("c")
        assert h.client.wait("c", timeout=10)["exit_code"] == 6 and log_text(log) == "two-part\n"

        s = socket.socket(socket.AF_UNIX)
        s.connect(h.client.socket_path)
        f = s.makefile("rb")

        def send(*objs):
            s.sendall(b"".join(json.dumps(o).encode() + b"\n" for o in objs))

        create = {"op": "create", "id": "d", "bundle": b, "init": head_only}
        send(create, {"tail": "!"}, {"op": "state", "id": "c"})
        bad = json.loads(f.readline())
        assert not bad["ok"] and "malformed second part of the init" in bad["error"], bad
        assert json.loads(f.readline())["status"] == "stopped"
        send({**create, "id": "c"}, fastinit.prepare_tail(plan), {"op": "ping"})  # "c" exists: refused first
        refused = json.loads(f.readline())
        assert not refused["ok"] and "already exists" in refused["error"]
        assert json.loads(f.readline())["ok"] is True
        send(create, {"error": "encoding the init: NUL in a string"}, {"op": "ping"})
        assert "NUL in a string" in json.loads(f.readline())["error"]
        assert json.loads(f.readline())["ok"] is True
        s.close()
        assert [c["id"] for c in h.client.list()] == ["c"]
    finally:
        h.stop()


def test_the_init_follows_the_create_and_is_read_when_needed(monkeypatch, tmp_root, tmp_path, rootfs):
    """MonitorClient.create sends the request with "init": "follows" and plans the init after it: the line with
    the first part comes next, then the second part (launch/prepare.py: init_lines), while the monitor makes the
    pipes and state. {"init": null} has the monitor plan it. Each line is read whatever becomes of the create, so the
    connection stays in step: a create refused before its init is looked at, a malformed init line and a
    malformed second part, each followed by a request that gets its own answer."""
    import json
    import socket
    import tempfile

    monkeypatch.setenv("PYCRI_FASTINIT", "1")
    b = write_bundle(str(tmp_path / "b"), make_spec(["sh", "-c", "echo planned-by-me; exit 3"]), rootfs)
    lines = list(prepare.init_lines("c", b, None, None))
    assert [set(x) for x in lines] == [{"init"}, {"tail"}] and lines[0]["init"]["tail"] is None
    h = MonitorHandle(tempfile.mkdtemp(prefix="m", dir=tmp_root))
    s = socket.socket(socket.AF_UNIX)
    try:
        s.connect(h.client.socket_path)
        f = s.makefile("rb")

        def send(*objs):
            s.sendall(b"".join(json.dumps(o).encode() + b"\n" for o in objs))

        def answer():
            return json.loads(f.readline())

        log = str(tmp_path / "c.log")
        create = {"op": "create", "id": "c", "bundle": b, "init": "follows", "log_path": log}
        send(create, {"init": None}, {"op": "ping"})
        assert answer()["ok"] and answer()["ok"]
        h.client.start("c")
        assert h.client.wait("c", timeout=10)["exit_code"] == 3 and log_text(log) == "planned-by-me\n"
        send(create, *lines, {"op": "ping"})  # "c" exists: refused before its init is read
        refused = answer()
        assert not refused["ok"] and "already exists" in refused["error"]
        assert answer()["ok"]
        send({**create, "id": "d"}, {"init": "nope"}, {"op": "ping"})
        bad = answer()
        assert not bad["ok"] and "malformed init line" in bad["error"], bad
        assert answer()["ok"]
        send({**create, "id": "d"}, lines[0], {"tail": "!"}, {"op": "state", "id": "c"})
        bad = answer()
        assert not bad["ok"] and "malformed second part of the init" in bad["error"], bad
        assert answer()["status"] == "stopped"
        assert [c["id"] for c in h.client.list()] == ["c"]
    finally:
        s.close()
        h.stop()


def test_a_monitor_of_older_code_gets_creates_it_understands(monkeypatch, tmp_root, tmp_path, rootfs):
    """Monitors outlive a daemon upgrade. A monitor states what it understands in its monitor.json
    ("protocol"); MonitorClient.create sends "init": "follows" only to one that says 4 or more (its pycri-init
    knows OP_FORK), "ready": "later" only to one that says 3 or more, and to one whose monitor.json has no
    protocol (older code, which took no such line) the create alone, which every monitor plans itself; an exec
    planned by the client goes only to a monitor that says 4 or more."""
    import json
    import tempfile

    from runtime import client as client_mod
    from runtime.monitor import server as monitor
    monkeypatch.setenv("PYCRI_FASTINIT", "1")
    b = write_bundle(str(tmp_path / "b"), make_spec(["sh", "-c", "exit 5"]), rootfs)
    h = MonitorHandle(tempfile.mkdtemp(prefix="m", dir=tmp_root))
    sent = []
    real_call = client_mod.MonitorClient.call

    def call(self, op, **kw):
        if op == "create":
            sent.append((kw.get("init"), kw.get("ready")))
        return real_call(self, op, **kw)
    monkeypatch.setattr(client_mod.MonitorClient, "call", call)
    try:
        path = os.path.join(h.state_dir, "monitor.json")
        with open(path) as f:
            info = json.load(f)
        assert info["protocol"] == monitor.PROTOCOL >= 4 and h.client.ping()["protocol"] == monitor.PROTOCOL
        h.client.create("new", b, ready_later=True)
        assert sent == [("follows", "later")]
        for n, (older, expect) in enumerate((({**info, "protocol": 3}, (None, "later")), ({**info, "protocol": 2}, (None, None)), (
                {k: v for k, v in info.items() if k != "protocol"}, (None, None)))):
            with open(path, "w") as f:  # as older code wrote it
                json.dump(older, f)
            client_mod.forget(h.client.socket_path)
            sent.clear()
            h.client.create(f"old{n}", b, ready_later=True)
            assert sent == [expect]
        for cid in ("new", "old0", "old1", "old2"):  # all run as planned
            h.client.start(cid)
            assert h.client.wait(cid, timeout=10)["exit_code"] == 5
    finally:
        h.stop()


def test_an_exec_planned_by_the_client_runs_when_made_for_the_container(monkeypatch, tmp_root, tmp_path, rootfs):
    """MonitorClient.exec(..., target=(pid, bundle)) plans and encodes the exec itself (launch/prepare.py)
    and the monitor runs that plan; one made for another process, or by older code that did not fork into the pid
    namespace, is not used (the monitor plans the exec)."""
    import base64
    import tempfile

    monkeypatch.setenv("PYCRI_FASTINIT", "1")
    b = write_bundle(str(tmp_path / "b"), make_spec(["sleep", "1000"]), rootfs)
    h = MonitorHandle(tempfile.mkdtemp(prefix="m", dir=tmp_root))
    try:
        for cid in ("c", "other"):
            h.client.create(cid, b)
            h.client.start(cid)
        pid, other = h.client.state("c")["pid"], h.client.state("other")["pid"]
        r = h.client.exec("c", {"args": ["sh", "-c", "echo $$; echo err >&2; exit 3"]}, timeout=10, target=(pid, b))
        assert (r.exit_code, r.stderr) == (3, b"err\n") and int(r.stdout) > 1

        def run(init):
            ans = h.client.call("exec", id="c", process={"args": ["echo", "planned here"]}, timeout=10,
                                output_cap=1 << 20, init=init)
            return base64.b64decode(ans["stdout"])
        assert run(prepare.prepare_exec(pid, b, {"args": ["echo", "prepared"]})) == b"prepared\n"
        assert run(prepare.prepare_exec(other, b, {"args": ["echo", "prepared"]})) == b"planned here\n"
        older = prepare.prepare_exec(pid, b, {"args": ["echo", "prepared"]})
        del older["fork"]  # as a daemon of older code made it (rolled back): no fork into the pid namespace
        assert run(older) == b"planned here\n"
        for cid in ("c", "other"):
            h.client.kill(cid, "KILL")
            h.client.wait(cid, timeout=10)
    finally:
        h.stop()
