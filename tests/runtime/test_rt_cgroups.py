"""cgroups: v2 mapping against a fake tree, v1 against the real hierarchy."""
from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

from runtime import cgroups
from runtime.cgroups import CgroupError, CgroupV2


def _fake_v2(root, controllers=("cpuset", "cpu", "io", "memory", "hugetlb", "pids")):
    os.makedirs(root, exist_ok=True)
    (root / "cgroup.controllers").write_text(" ".join(controllers) + "\n")
    (root / "cgroup.subtree_control").write_text("")
    return root


def test_detect_version(tmp_path):
    assert cgroups.detect_version(str(_fake_v2(tmp_path / "v2"))) == 2
    assert cgroups.detect_version(str(tmp_path)) == 1


def test_v2_file_mapping():
    cg = CgroupV2("/pod/ctr", "/nonexistent")
    files, warnings = cg.files_for({
        "cpu": {"shares": 1024, "quota": 50000, "period": 100000, "cpus": "0-1", "mems": "0"},
        "memory": {"limit": 128 << 20, "swap": 256 << 20, "reservation": 64 << 20},
        "pids": {"limit": 100},
        "hugepageLimits": [{"pageSize": "2MB", "limit": 4 << 20}],
        "blockIO": {"weight": 500},
        "unified": {"memory.high": "100000000"},
    })
    assert files == {
        "cpu.weight": "39", "cpu.max": "50000 100000", "cpuset.cpus": "0-1", "cpuset.mems": "0",
        "memory.max": str(128 << 20), "memory.swap.max": str(128 << 20), "memory.low": str(64 << 20),
        "pids.max": "100", "hugetlb.2MB.max": str(4 << 20), "io.weight": "default 4950",
        "memory.high": "100000000",
    }
    assert warnings == []
    files, _ = cg.files_for({"cpu": {"quota": -1, "period": 100000}, "memory": {"limit": -1, "swap": -1},
                             "pids": {"limit": 0}})
    assert files == {"cpu.max": "max 100000", "memory.max": "max", "memory.swap.max": "max", "pids.max": "max"}
    assert cgroups.shares_to_weight(2) == 1 and cgroups.shares_to_weight(262144) == 10000
    with pytest.raises(CgroupError, match="swap"):
        cg.files_for({"memory": {"limit": 200, "swap": 100}})
    with pytest.raises(CgroupError, match="unified"):
        cg.files_for({"unified": {"../../escape": "1"}})
    files, warnings = cg.files_for({"devices": [{"allow": False, "access": "rwm"}]})
    assert files == {} and warnings == []  # device rules are an eBPF program on v2 (test_rt_devicefilter.py)


def test_v2_create_apply_on_fake_tree(tmp_path):
    root = _fake_v2(tmp_path / "cg")
    cg = CgroupV2("/pod/ctr", str(root))
    # the kernel creates these files in a new cgroup dir; the fake tree needs them up front
    (root / "pod").mkdir()
    (root / "pod" / "cgroup.controllers").write_text("cpu memory pids\n")
    (root / "pod" / "cgroup.subtree_control").write_text("")
    cg.create()
    assert (root / "cgroup.subtree_control").read_text() == "+cpuset +cpu +io +memory +hugetlb +pids"
    assert (root / "pod" / "cgroup.subtree_control").read_text() == "+cpu +memory +pids"
    d = root / "pod" / "ctr"
    for name in ("cpu.weight", "cpu.max", "memory.max", "pids.max", "cgroup.procs", "memory.events"):
        (d / name).write_text("")
    warnings = cg.apply({"cpu": {"shares": 2}, "memory": {"limit": 1 << 20, "swap": 2 << 20},
                         "pids": {"limit": 7}})
    assert (d / "cpu.weight").read_text() == "1"
    assert (d / "memory.max").read_text() == str(1 << 20)
    assert (d / "pids.max").read_text() == "7"
    assert warnings == ["memory.swap.max not available: ignored"]
    with pytest.raises(CgroupError, match="does not exist"):
        cg.apply({"cpu": {"cpus": "0"}})
    (d / "memory.events").write_text("low 0\nhigh 0\nmax 3\noom 2\noom_kill 1\n")
    assert cg.oom_kills() == 1
    (d / "cpu.stat").write_text("usage_usec 1500\nuser_usec 1000\n")
    (d / "memory.current").write_text("4096\n")
    (d / "memory.stat").write_text("anon 1024\nfile 2048\ninactive_file 1000\npgfault 5\npgmajfault 1\n")
    st = cg.stats()
    assert (st["cpu_usage_ns"], st["memory_usage"], st["memory_working_set"], st["memory_rss"],
            st["page_faults"], st["oom_kills"]) == (1_500_000, 4096, 3096, 1024, 5, 1)


def test_bad_paths_and_driver():
    for bad in ("", "/", "/a/../b"):
        with pytest.raises(CgroupError):
            cgroups.open_cgroup(bad)
    with pytest.raises(CgroupError, match="systemd slice path"):
        cgroups.open_cgroup("system.slice:pycri:x", driver="cgroupfs")
    with pytest.raises(CgroupError, match="slice:prefix:name"):
        cgroups.open_cgroup("/x", driver="systemd")
    with pytest.raises(CgroupError, match="driver"):
        cgroups.open_cgroup("/x", driver="lxc")
    # the path's form picks the driver when none is given (the monitor gets only the spec's cgroupsPath)
    assert type(cgroups.open_cgroup("system.slice:pycri:x")).__name__ == "SystemdCgroup"
    assert type(cgroups.open_cgroup("/pycri/x")).__name__ in ("CgroupV1", "CgroupV2")


@pytest.mark.skipif(cgroups.detect_version() != 1, reason="this host is not cgroup v1")
def test_v1_real_lifecycle(cgroup_path):
    cg = cgroups.open_cgroup(cgroup_path)
    cg.create()
    try:
        cg.apply({"cpu": {"shares": 256, "quota": 20000, "period": 100000},
                  "memory": {"limit": 32 << 20, "swap": 64 << 20}, "pids": {"limit": 10}})
        mem = cg.dir("memory")
        assert int(open(f"{mem}/memory.limit_in_bytes").read()) == 32 << 20
        assert int(open(f"{mem}/memory.memsw.limit_in_bytes").read()) == 64 << 20
        assert open(f"{cg.dir('cpu')}/cpu.cfs_quota_us").read().strip() == "20000"
        assert open(f"{cg.dir('cpuset')}/cpuset.cpus").read().strip()  # copied from the parent
        # raising the limit above the old memsw needs memsw first: update orders the writes
        cg.update({"memory": {"limit": 128 << 20, "swap": 256 << 20}})
        assert int(open(f"{mem}/memory.limit_in_bytes").read()) == 128 << 20
        p = subprocess.Popen(["sleep", "1000"])
        cg.attach(p.pid)
        assert cg.pids() == [p.pid]
        st = cg.stats()
        assert st["pids"] == 1 and st["memory_limit"] == 128 << 20 and st["oom_kills"] == 0
        cg.remove()  # kills what is left inside
        assert p.wait(timeout=5) == -signal.SIGKILL
        assert not cg.exists()
    finally:
        if cg.exists():
            cg.remove()


def test_oom_watch_signals_an_oom_kill(cgroup_path):
    """oom_watch(): its fd becomes readable when the OOM killer acts in the cgroup (v1: eventfd on
    memory.oom_control, v2: inotify on memory.events), so the count can be read before the cgroup goes."""
    import select
    import sys
    cg = cgroups.open_cgroup(cgroup_path)
    cg.create()
    watch = None
    try:
        cg.apply({"memory": {"limit": 24 << 20, "swap": 24 << 20}})
        watch = cg.oom_watch()
        assert watch is not None
        assert select.select([watch.fd], [], [], 0)[0] == []  # nothing yet
        # waits for a line (while it is moved into the cgroup), then allocates past the limit
        since = time.monotonic()
        p = subprocess.Popen([sys.executable, "-S", "-c", "import sys; sys.stdin.readline(); "
                              "x = [bytearray(1 << 20) for _ in range(200)]"],
                             stdin=subprocess.PIPE, stderr=subprocess.DEVNULL)
        cg.attach(p.pid)
        p.stdin.write(b"go\n")
        p.stdin.close()
        assert p.wait(timeout=30) == -signal.SIGKILL
        assert select.select([watch.fd], [], [], 10)[0] == [watch.fd]
        watch.drain()
        assert cg.oom_kills() == 1
        # the kernel's log tells it too, by the cgroup and by the pid (for a cgroup gone before it was read)
        assert cgroups.oom_kill_logged(cgroup_path, 0, since) and cgroups.oom_kill_logged("/other", p.pid, since)
        assert not cgroups.oom_kill_logged(cgroup_path + "x", p.pid + 1, since)
        assert not cgroups.oom_kill_logged(cgroup_path, p.pid, time.monotonic() + 5)
    finally:
        if watch is not None:
            watch.close()
        if cg.exists():
            cg.remove()


def test_v2_oom_watch_on_fake_tree(tmp_path):
    """The v2 watch is inotify on memory.events (the kernel marks it modified when a counter moves): here a
    fake tree's file, written by the test; a cgroup without the file has no watch."""
    import select
    root = _fake_v2(tmp_path / "cg")
    d = root / "pod"
    d.mkdir()
    cg = CgroupV2("/pod", str(root))
    assert cg.oom_watch() is None
    (d / "memory.events").write_text("low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\n")
    watch = cg.oom_watch()
    try:
        assert select.select([watch.fd], [], [], 0)[0] == []
        (d / "memory.events").write_text("low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n")
        assert select.select([watch.fd], [], [], 5)[0] == [watch.fd]
        watch.drain()
        assert select.select([watch.fd], [], [], 0)[0] == [] and cg.oom_kills() == 1
    finally:
        watch.close()
