"""The systemd cgroup driver against a real systemd (in a box of its own: tests/runtime/systemd_box.py)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid

import pytest

from runtime.cgroups import CgroupError, dbus, systemd as systemd_cgroup
from tests.fixtures.pace import scaled
from tests.runtime.systemd_box import MEMORY_LIMIT, V2, SystemdBox, available

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CLI = [sys.executable, "-m", "runtime"]
SLICE = "kubepods-besteffort-podsdtest.slice"
SLICE_PATH = "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-podsdtest.slice"


# ---- pure logic ----

def test_slice_expansion_and_unit_names():
    assert systemd_cgroup.expand_slice("kubepods-burstable-pod12.slice") == \
        "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod12.slice"
    assert systemd_cgroup.expand_slice("system.slice") == "/system.slice"
    assert systemd_cgroup.expand_slice("-.slice") == "/"
    assert systemd_cgroup.parse_path("system.slice:pycri:abc") == ("system.slice", "pycri-abc.scope")
    assert systemd_cgroup.parse_path(":pycri:abc") == ("system.slice", "pycri-abc.scope")
    for bad in ("a/b:pycri:x", "system.slice:pycri", "notaslice:pycri:x", "system.slice:pycri:"):
        with pytest.raises(CgroupError):
            systemd_cgroup.parse_path(bad)
    with pytest.raises(CgroupError):
        systemd_cgroup.expand_slice("a--b.slice")


def test_unit_properties_from_oci_resources():
    props = dict((k, (v.signature, v.value)) for k, v in systemd_cgroup.properties(
        {"memory": {"limit": 64 << 20}, "cpu": {"shares": 512, "quota": 25000, "period": 100000},
         "pids": {"limit": 50}}, 1))
    assert props == {"MemoryLimit": ("t", 64 << 20), "CPUShares": ("t", 512),
                     "CPUQuotaPerSecUSec": ("t", 250000), "CPUQuotaPeriodUSec": ("t", 100000),
                     "TasksMax": ("t", 50)}
    v2 = dict((k, v.value) for k, v in systemd_cgroup.properties({"memory": {"limit": 1 << 20},
                                                                  "cpu": {"shares": 1024, "quota": 33333}}, 2))
    assert v2["MemoryMax"] == 1 << 20 and v2["CPUWeight"] == 39
    assert v2["CPUQuotaPerSecUSec"] == 340000  # 333330 rounded up to systemd's 1% steps


def test_dbus_marshalling_round_trip():
    args = ["pycri-x.scope", "fail", [("PIDs", dbus.Variant("au", [1, 2])), ("Delegate", dbus.Variant("b", True)),
                                      ("MemoryLimit", dbus.Variant("t", 1 << 40))], []]
    data = dbus.marshal("ssa(sv)a(sa(sv))", args)
    assert dbus.unmarshal("ssa(sv)a(sa(sv))", data) == [
        "pycri-x.scope", "fail", [("PIDs", [1, 2]), ("Delegate", True), ("MemoryLimit", 1 << 40)], []]
    assert data[:4] == (13).to_bytes(4, "little")  # string length, little endian


# ---- against systemd ----

reason = available()


@pytest.fixture(scope="module")
def box():
    if reason:
        pytest.skip(reason)
    b = SystemdBox().start()
    yield b
    b.stop()


def _cli(box, root, *args, **kw):
    return box.run(CLI + ["--root", root, *args], check=False, cwd=REPO, **kw)


def _unit_state(box, unit: str) -> dict:
    out = box.run(["systemctl", "show", unit, "-p", "ActiveState", "-p", "LoadState", "-p", MEMORY_LIMIT,
                   "-p", "TasksMax", "-p", "Slice"], check=False).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def test_a_container_runs_in_a_transient_scope_with_its_limits(box, bundle, rootfs, tmp_root):
    name = uuid.uuid4().hex[:8]
    unit = f"pycri-{name}.scope"
    resources = {"memory": {"limit": 96 << 20}, "cpu": {"quota": 50000, "period": 100000}, "pids": {"limit": 40}}
    done = os.path.join(rootfs, f"done-{name}")  # the container runs until the test has looked at its scope
    b = bundle(["sh", "-c", f"cat /proc/self/cgroup; while [ ! -e /done-{name} ]; do sleep 0.05; done"],
               name=name,
               mutate=lambda s: s["linux"].update(cgroupsPath=f"{SLICE}:pycri:{name}", resources=resources))
    run = subprocess.Popen(box.command([*CLI, "--root", tmp_root + "/sd1", "run", name, "--bundle", b]),
                           cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           preexec_fn=box.enter_cgroups)
    try:
        deadline = time.monotonic() + 60  # (a guest under User-mode Linux takes seconds to start the CLI)
        while _unit_state(box, unit).get("ActiveState") != "active":
            assert time.monotonic() < deadline and run.poll() is None, \
                f"{unit} never became active: {_unit_state(box, unit)}; run: {run.poll()} " \
                f"{run.stderr.read() if run.poll() is not None else ''}"
            time.sleep(0.05)
        st = _unit_state(box, unit)
        assert st["Slice"] == SLICE and st[MEMORY_LIMIT] == str(96 << 20) and st["TasksMax"] == "40"
        scope = f"{SLICE_PATH}/{unit}"
        if V2:  # the files systemd and we wrote
            assert open(box.host_cgroup("memory", scope) + "/memory.max").read().strip() == str(96 << 20)
            assert open(box.host_cgroup("cpu", scope) + "/cpu.max").read().strip() == "50000 100000"
        else:
            assert open(box.host_cgroup("memory", scope) + "/memory.limit_in_bytes").read().strip() == \
                str(96 << 20)
            assert open(box.host_cgroup("cpu", scope) + "/cpu.cfs_quota_us").read().strip() == "50000"
        assert open(box.host_cgroup("pids", scope) + "/pids.max").read().strip() == "40"
        open(done, "w").close()
        out, err = run.communicate(timeout=30)
    finally:
        open(done, "w").close()  # (the container ends by itself: no process of it left behind)
        try:
            run.wait(timeout=30)
        finally:
            run.kill()
            os.unlink(done)
    assert run.returncode == 0, err
    assert any(line.endswith(f"{scope}") for line in out.splitlines()), out  # the process was in the scope
    assert _unit_state(box, unit).get("LoadState") == "not-found" or \
        _unit_state(box, unit).get("ActiveState") == "inactive"
    for controller in ("memory", "cpu", "pids", "cpuset"):
        assert not os.path.exists(box.host_cgroup(controller, scope)), controller


def test_monitor_exec_joins_the_scope_and_delete_stops_it(box, bundle, tmp_root):
    name = uuid.uuid4().hex[:8]
    root = tmp_root + "/sd2"
    unit = f"pycri-{name}.scope"
    b = bundle(["sleep", "1000"], name=name,
               mutate=lambda s: s["linux"].update(cgroupsPath=f"system.slice:pycri:{name}"))
    assert _cli(box, root, "create", name, "--bundle", b).returncode == 0
    assert _unit_state(box, unit)["ActiveState"] == "active"  # the scope exists from create on
    assert _cli(box, root, "start", name).returncode == 0
    r = _cli(box, root, "exec", name, "--", "cat", "/proc/self/cgroup")
    assert r.returncode == 0 and any(line.split(":")[1] == ("" if V2 else "memory")
                                     and line.endswith(f"/system.slice/{unit}")
                                     for line in r.stdout.splitlines()), r.stdout
    assert _cli(box, root, "kill", name, "KILL").returncode == 0
    deadline = time.monotonic() + scaled(10)
    while json.loads(_cli(box, root, "state", name).stdout)["status"] != "stopped":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert _cli(box, root, "delete", name).returncode == 0
    assert _unit_state(box, unit).get("ActiveState") in ("inactive", None) or \
        _unit_state(box, unit).get("LoadState") == "not-found"
    assert not os.path.exists(box.host_cgroup("memory", f"/system.slice/{unit}"))


def test_oom_kill_is_detected_in_a_scope(box, bundle, tmp_root):
    name = uuid.uuid4().hex[:8]
    root = tmp_root + "/sd3"
    b = bundle(["sh", "-c", "tail /dev/zero"], name=name,
               mutate=lambda s: s["linux"].update(cgroupsPath=f"system.slice:pycri:{name}",
                                                  resources={"memory": {"limit": 16 << 20}}))
    assert _cli(box, root, "create", name, "--bundle", b).returncode == 0
    assert _cli(box, root, "start", name).returncode == 0
    deadline = time.monotonic() + scaled(20)
    while (state := json.loads(_cli(box, root, "state", name).stdout))["status"] != "stopped":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert state["exit_code"] == 137 and state["oom_killed"], state
    assert _cli(box, root, "delete", name).returncode == 0


def test_a_bad_systemd_path_is_a_clear_error(box, bundle, tmp_root):
    b = bundle(["true"], name="badpath", mutate=lambda s: s["linux"].update(cgroupsPath="nota:pycri:x"))
    r = _cli(box, tmp_root + "/sd4", "run", "badpath", "--bundle", b)
    assert r.returncode != 0 and "not a slice" in r.stderr
