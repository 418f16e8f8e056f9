"""Launcher behaviour through a real monitor: namespaces, mounts, security, errors."""
from __future__ import annotations

import os

import pytest
from tests.runtime.rt_helpers import log_text

from runtime.client import MonitorError


def run(mon, bundle_dir, cid="c", log=None, **kw):
    """create + start + wait; returns (exit info, stdout text)."""
    log = log or os.path.join(bundle_dir, "out.log")
    mon.client.create(cid, bundle_dir, log_path=log, **kw)
    mon.client.start(cid)
    ex = mon.client.wait(cid, timeout=30)
    mon.client.delete(cid)
    return ex, log_text(log), log_text(log, "stderr")


def test_pid1_hostname_and_empty_netns(mon, bundle):
    b = bundle(["sh", "-c", "echo pid=$$; hostname; ip -o link | cut -d: -f2"])
    ex, out, _ = run(mon, b)
    assert ex["exit_code"] == 0
    assert out.splitlines() == ["pid=1", "testbox", " lo"]


def test_exit_code_and_signal(mon, bundle):
    ex, _, _ = run(mon, bundle(["sh", "-c", "exit 7"]))
    assert (ex["exit_code"], ex["signal"]) == (7, 0)
    # pid 1 of a pid namespace cannot SIGKILL itself: the signal comes from the monitor
    mon.client.create("k", bundle(["sleep", "100"], name="b2"))
    mon.client.start("k")
    mon.client.kill("k", "KILL")
    ex = mon.client.wait("k", timeout=10)
    assert (ex["exit_code"], ex["signal"]) == (137, 9)
    mon.client.delete("k")


def test_joined_namespaces_are_shared(mon, bundle):
    def infra_caps(spec):
        for k in ("bounding", "effective", "permitted"):
            spec["process"]["capabilities"][k].append("CAP_NET_ADMIN")
    infra = bundle(["sleep", "1000"], name="infra", mutate=infra_caps)
    mon.client.create("infra", infra)
    mon.client.start("infra")
    pid = mon.client.state("infra")["pid"]
    r = mon.client.exec("infra", {"args": ["ip", "link", "set", "lo", "up"]})
    assert r.exit_code == 0, r.stderr

    def join(spec):
        spec["linux"]["namespaces"] = [{"type": "mount"}, {"type": "uts"},
                                       {"type": "network", "path": f"/proc/{pid}/ns/net"},
                                       {"type": "ipc", "path": f"/proc/{pid}/ns/ipc"},
                                       {"type": "pid", "path": f"/proc/{pid}/ns/pid"}]
    app = bundle(["sh", "-c", "ip -o link; readlink /proc/self/ns/net; readlink /proc/self/ns/ipc; ps -o pid,args"],
                 name="app", mutate=join)
    ex, out, err = run(mon, app, cid="app")
    assert ex["exit_code"] == 0, err
    assert "lo:" in out and "UP" in out.splitlines()[0]
    assert os.readlink(f"/proc/{pid}/ns/net") in out
    assert os.readlink(f"/proc/{pid}/ns/ipc") in out
    assert "sleep 1000" in out  # same pid namespace: the infra process is visible
    assert os.readlink(f"/proc/{pid}/ns/net") != os.readlink("/proc/self/ns/net")
    mon.client.kill("infra", 9)
    mon.client.wait("infra", timeout=10)
    mon.client.delete("infra")


def test_mounts_masked_and_readonly_paths(mon, bundle):
    script = ("cat /proc/keys | wc -c; ls /sys/firmware | wc -l; "
              "[ -e /proc/kcore ] && head -c 16 /proc/kcore | wc -c >&2; "
              "echo 1 > /proc/sys/vm/drop_caches && echo WROTE; "
              "echo x > /sys/x && echo WROTE; grep -c ' /dev/pts ' /proc/self/mountinfo; "
              "ls -l /dev/ptmx /dev/null; head -c 4 /dev/zero | wc -c; grep /dev/mqueue /proc/mounts | wc -l")
    ex, out, err = run(mon, bundle(["sh", "-c", script]))
    lines = out.splitlines()
    assert lines[0] == "0"  # /proc/keys masked with /dev/null
    if os.path.exists("/proc/kcore"):  # this host's kernel has none; where it exists it must read empty
        assert err.splitlines()[0] == "0"
    assert lines[1] == "0"  # /sys/firmware masked with an empty tmpfs
    assert "WROTE" not in out
    assert "Read-only file system" in err
    assert lines[2] == "1"
    assert "/dev/ptmx -> pts/ptmx" in out and "crw-rw-rw-" in out
    assert lines[-2:] == ["4", "1"]


def test_readonly_rootfs_and_rlimits_and_user(mon, bundle):
    def mutate(spec):
        spec["root"]["readonly"] = True
        spec["process"]["user"] = {"uid": 65534, "gid": 65534, "additionalGids": [1234]}
        spec["process"]["rlimits"] = [{"type": "RLIMIT_NOFILE", "hard": 512, "soft": 256}]
    ex, out, err = run(mon, bundle(["sh", "-c", "touch /x || echo RO; id; ulimit -n; ulimit -Hn; "
                                    "grep CapEff /proc/self/status"], mutate=mutate))
    assert "RO" in out
    assert "uid=65534(nobody) gid=65534 groups=1234" in out
    assert "\n256\n512\n" in out
    assert "CapEff:\t0000000000000000" in out


def test_capabilities_sets(mon, bundle):
    def mutate(spec):
        c = spec["process"]["capabilities"]
        c["bounding"] = ["CAP_KILL", "CAP_NET_RAW", "CAP_CHOWN"]
        c["effective"] = c["permitted"] = ["CAP_KILL", "CAP_NET_RAW"]
        c["inheritable"] = c["ambient"] = ["CAP_NET_RAW"]
    ex, out, _ = run(mon, bundle(["grep", "^Cap", "/proc/self/status"], mutate=mutate))
    caps = dict(line.split(":\t") for line in out.splitlines())
    assert int(caps["CapBnd"], 16) == (1 << 5) | (1 << 13) | (1 << 0)
    assert int(caps["CapEff"], 16) == (1 << 5) | (1 << 13)
    assert int(caps["CapAmb"], 16) == 1 << 13
    assert int(caps["CapInh"], 16) == 1 << 13


def test_seccomp_errno_and_arg_rule(mon, bundle):
    def mutate(spec):
        spec["linux"]["seccomp"] = {
            "defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"],
            "syscalls": [
                {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13},
                {"names": ["kill"], "action": "SCMP_ACT_ERRNO",
                 "args": [{"index": 1, "value": 0, "op": "SCMP_CMP_EQ"}]},
                {"names": ["no_such_syscall_xyz"], "action": "SCMP_ACT_ERRNO"},
            ]}
    ex, out, err = run(mon, bundle(["sh", "-c", "mkdir /tmp/d || echo NOMKDIR; kill -0 $$ || echo NOKILL0; "
                                    "kill -CONT $$ && echo CONT"], mutate=mutate))
    assert "NOMKDIR" in out and "Permission denied" in err
    assert "NOKILL0" in out and "CONT" in out


def test_missing_binary_and_bad_cwd_are_reported(mon, bundle):
    with pytest.raises(MonitorError, match='"nope": executable file not found in \\$PATH'):
        mon.client.create("c", bundle(["nope"]))
    with pytest.raises(MonitorError, match="cwd.*No such file"):
        mon.client.create("c", bundle(["true"], name="b2",
                                      mutate=lambda s: s["process"].update(cwd="/no/where")))
    with pytest.raises(MonitorError, match="mounting /mnt.*does not exist"):
        mon.client.create("c", bundle(["true"], name="b3", mutate=lambda s: s["mounts"].append(
            {"destination": "/mnt", "type": "bind", "source": "/does/not/exist", "options": ["rbind"]})))
    assert mon.client.list() == []


def test_hostile_spec_gets_clear_errors(mon, bundle, tmp_path):
    for i, (mutate, msg) in enumerate([
        (lambda s: s["process"].update(args=[]), "process.args"),
        (lambda s: s["linux"]["namespaces"].append({"type": "bogus"}), "unknown namespace"),
        (lambda s: s["linux"].update(cgroupsPath="/../../etc"), "bad cgroupsPath"),
        (lambda s: s["process"]["capabilities"].update(effective=["CAP_WHATEVER"]), "unknown capability"),
        (lambda s: s["process"].update(rlimits=[{"type": "RLIMIT_BOGUS", "soft": 1, "hard": 1}]), "rlimit"),
    ]):
        with pytest.raises(MonitorError, match=msg):
            mon.client.create("c", bundle(["true"], name=f"h{i}", mutate=mutate))
    bad = tmp_path / "badjson"
    bad.mkdir()
    (bad / "config.json").write_text("{not json")
    with pytest.raises(MonitorError, match="cannot read"):
        mon.client.create("c", str(bad))
    with pytest.raises(MonitorError, match="invalid container id"):
        mon.client.create("../x", str(bad))
    assert mon.client.list() == []


def test_bind_mount_ro_and_tmpfs(mon, bundle, tmp_path):
    src = tmp_path / "data"
    src.mkdir()
    (src / "f").write_text("hello")

    def mutate(spec):
        spec["mounts"] += [{"destination": "/data", "type": "bind", "source": str(src), "options": ["rbind", "ro"]},
                           {"destination": "/scratch", "type": "tmpfs", "source": "tmpfs", "options": ["size=1m"]}]
    ex, out, err = run(mon, bundle(["sh", "-c", "cat /data/f; echo; touch /data/g || echo RO; "
                                    "touch /scratch/ok && echo TMPFS"], mutate=mutate))
    assert out.splitlines() == ["hello", "RO", "TMPFS"]
    assert not (src / "g").exists()


def test_overlay_rootfs_writes_land_in_upper(mon, bundle, tmp_path, rootfs):
    upper, work, mnt = tmp_path / "upper", tmp_path / "work", tmp_path / "merged"
    for d in (upper, work, mnt):
        d.mkdir()
    b = bundle(["sh", "-c", "echo data > /newfile; rm /bin/yes; ls /bin/busybox"],
               mutate=lambda s: s["root"].update(path=str(mnt)))
    ex, out, err = run(mon, b, overlay={"lower": [rootfs], "upper": str(upper), "work": str(work)})
    assert ex["exit_code"] == 0, err
    assert (upper / "newfile").read_text() == "data\n"
    assert not os.path.exists(os.path.join(rootfs, "newfile"))
    assert os.path.lexists(os.path.join(rootfs, "bin", "yes"))  # whiteout only in upper
    assert os.listdir(mnt) == []  # mounted only inside the container's mount namespace
    for bad, msg in [({"lower": [rootfs + ",upperdir=/etc"]}, "without"), ({"lower": []}, "non-empty"),
                     ({"lower": [rootfs], "upper": str(upper)}, "go together"), ("x", "must be an object"),
                     ({"lower": ["/no/such/dir"]}, "does not exist")]:
        with pytest.raises(MonitorError, match=msg):
            mon.client.create("bad", b, overlay=bad)


def test_sysctl_and_oom_score_adj(mon, bundle):
    def mutate(spec):
        spec["linux"]["sysctl"] = {"net.ipv4.ip_forward": "1"}
        spec["process"]["oomScoreAdj"] = 500
    ex, out, err = run(mon, bundle(["sh", "-c", "cat /proc/sys/net/ipv4/ip_forward /proc/self/oom_score_adj"],
                                   mutate=mutate))
    assert out.split() == ["1", "500"], err
    # lowering needs CAP_SYS_RESOURCE: applied when possible, otherwise a warning, never a failure
    b = bundle(["cat", "/proc/self/oom_score_adj"], name="b2",
               mutate=lambda s: s["process"].update(oomScoreAdj=-999))
    r = mon.client.create("c2", b, log_path=b + "/o.log")
    mon.client.start("c2")
    mon.client.wait("c2", timeout=10)
    mon.client.delete("c2")
    if log_text(b + "/o.log").strip() != "-999":
        assert any("oom_score_adj -999 not applied" in w for w in r["warnings"])
    b4 = bundle(["true"], name="b4", mutate=lambda s: s.update(hooks={"prestart": [{"path": "/bin/true"}]}))
    assert mon.client.create("c4", b4)["warnings"] == []  # hooks run now (tests/runtime/test_rt_hooks.py)
    mon.client.delete("c4", force=True)
    with pytest.raises(MonitorError, match="bad sysctl"):
        mon.client.create("c3", bundle(["true"], name="b3",
                                       mutate=lambda s: s["linux"].update(sysctl={"../../x": "1"})))


def test_mount_destination_symlink_cannot_escape_rootfs(mon, bundle, tmp_path, rootfs):
    import shutil
    own = tmp_path / "ownroot"
    shutil.copytree(rootfs, own, symlinks=True)
    os.symlink("/etc/../../../../etc", own / "evil")  # absolute and climbing: both must stay inside
    b = bundle(["sh", "-c", "ls /etc/escape && echo INSIDE"], mutate=lambda s: s["root"].update(path=str(own)))
    spec_path = os.path.join(b, "config.json")
    import json
    spec = json.load(open(spec_path))
    spec["mounts"].append({"destination": "/evil/escape", "type": "tmpfs", "source": "tmpfs", "options": []})
    json.dump(spec, open(spec_path, "w"))
    ex, out, err = run(mon, b)
    assert "INSIDE" in out, err
    assert not os.path.exists("/etc/escape")
    assert (own / "etc" / "escape").is_dir()  # the mount point was made inside the rootfs


def test_new_user_namespace_with_mappings(mon, bundle, tmp_root):
    def mutate(spec):
        spec["linux"]["namespaces"].append({"type": "user"})
        spec["linux"]["uidMappings"] = [{"containerID": 0, "hostID": 200000, "size": 65536}]
        spec["linux"]["gidMappings"] = [{"containerID": 0, "hostID": 200000, "size": 65536}]
    # as with runc, the mapped root must be able to reach the rootfs: open up the session dir meanwhile
    os.chmod(tmp_root, 0o755)
    try:
        ex, out, err = run(mon, bundle(["sh", "-c", "id -u; cat /proc/self/uid_map; echo x > /dev/null && echo DEV; "
                                        "stat -c %u /bin/busybox; ls /dev/pts/ptmx"], mutate=mutate))
        assert ex["exit_code"] == 0, err
        lines = out.split()
        assert lines[0] == "0"  # root inside ...
        assert lines[1:4] == ["0", "200000", "65536"]  # ... mapped to an unprivileged host range
        assert "DEV" in out
        assert "65534" in lines  # host root's files show up as the overflow uid
        mon.client.create("s", bundle(["sleep", "1000"], name="b3", mutate=mutate))
        mon.client.start("s")
        pid = mon.client.state("s")["pid"]
        assert open(f"/proc/{pid}/uid_map").read().split() == ["0", "200000", "65536"]
        assert os.stat(f"/proc/{pid}").st_uid == 200000
        r = mon.client.exec("s", {"args": ["sh", "-c", "id -u; cat /proc/self/uid_map"]})
        assert r.stdout.split() == [b"0", b"0", b"200000", b"65536"], r.stderr
        mon.client.delete("s", force=True)
    finally:
        os.chmod(tmp_root, 0o700)
    with pytest.raises(MonitorError, match="uidMappings"):
        mon.client.create("u", bundle(["true"], name="b2", mutate=lambda s: s["linux"]["namespaces"].append(
            {"type": "user"})))


def test_pid_report_may_arrive_after_ready(mon, bundle, monkeypatch):
    """Joining a pid namespace forks: the grandchild's "ready" may overtake the intermediate's pid report.
    Delay the intermediate (it is a clone of this process, so patching os.fork here reaches it)."""
    import json
    import time
    from runtime import launch
    from runtime.host import linux
    b = bundle(["sleep", "1000"])
    mon.client.create("c", b)
    mon.client.start("c")
    target = mon.client.state("c")["pid"]
    spec = json.load(open(os.path.join(b, "config.json")))
    real_fork = os.fork

    def slow_fork():
        pid = real_fork()
        if pid:
            time.sleep(0.05)
        return pid
    monkeypatch.setattr(os, "fork", slow_fork)
    null = os.open("/dev/null", os.O_RDWR)
    linux.prctl(linux.PR_SET_CHILD_SUBREAPER, 1)  # the grandchild is reparented to us, as to a monitor
    try:
        plan = launch.plan_for_exec(target, dict(spec["process"], args=["sh", "-c", "exit 7"]), spec,
                                    stdio=(null, null, null))
        proc = launch.Process(plan)
        proc.setup()
        proc.start()
        _, status = os.waitpid(proc.pid, 0)
        assert os.waitstatus_to_exitcode(status) == 7
    finally:
        linux.prctl(linux.PR_SET_CHILD_SUBREAPER, 0)
        os.close(null)
        mon.client.delete("c", force=True)


def test_rbind_ro_is_not_recursive_rro_is(mon, bundle, tmp_path):
    """As runc: "ro" makes the bind itself read-only, its submounts keep their flags; "rro" (mount_setattr with
    AT_RECURSIVE) makes the whole tree read-only."""
    from runtime.host import linux
    src = tmp_path / "tree"
    (src / "sub").mkdir(parents=True)
    linux.mount("tmpfs", str(src / "sub"), "tmpfs", 0, "size=1m")  # a submount on the host, removed below
    try:
        script = ["sh", "-c", "touch /data/x || echo TOP-RO; touch /data/sub/y || echo SUB-RO"]

        def mutate(options):
            return lambda spec: spec["mounts"].append({"destination": "/data", "type": "bind", "source": str(src),
                                                       "options": options})
        ex, out, err = run(mon, bundle(script, mutate=mutate(["rbind", "ro", "nosuid"])))
        assert out.split() == ["TOP-RO"], err
        assert (src / "sub" / "y").exists()
        (src / "sub" / "y").unlink()
        ex, out, err = run(mon, bundle(script, name="rro", mutate=mutate(["rbind", "ro", "rro", "nosuid"])))
        assert out.split() == ["TOP-RO", "SUB-RO"], err
        assert not (src / "sub" / "y").exists()
    finally:
        linux.umount2(str(src / "sub"), linux.MNT_DETACH)
