"""Device rules on cgroup v2 (cgroups/devicefilter.py): the program is loaded into this kernel and attached to a
cgroup of its v2 hierarchy (the unified one of a hybrid host counts: the kernel asks the programs of a process's
v2 cgroup whatever v1 controllers there are), and a process in that cgroup tries the devices."""
from __future__ import annotations

import os
import subprocess
import uuid

import pytest

from pycri.oci.spec import DEFAULT_DEVICE_RULES
from runtime import cgroups
from runtime.cgroups import devicefilter


def _v2_mount() -> str | None:
    with open("/proc/self/mountinfo") as f:
        for line in f:
            pre, _, post = line.partition(" - ")
            if post.split()[:1] == ["cgroup2"]:
                return pre.split()[4]
    return None


@pytest.fixture
def v2_cgroup():
    root = _v2_mount()
    if root is None:
        pytest.skip("no cgroup v2 hierarchy mounted on this host")
    path = f"/pycri-test-dev-{uuid.uuid4().hex[:8]}"
    cg = cgroups.CgroupV2(path, root)
    cg.create()
    yield cg
    cg.remove()
    assert not os.path.exists(cg.dir)


TRIES = {  # what a process tries -> a shell command that prints ok or no
    "read /dev/null": "head -c1 /dev/null",
    "write /dev/zero": "echo x > /dev/zero",
    "read /dev/urandom": "head -c1 /dev/urandom >/dev/null",
    "read /dev/mem": "head -c1 /dev/mem >/dev/null",
    "mknod b 7 0": "mknod $D/blk b 7 0",
    "read the b 7 0 it made": "head -c1 $D/blk >/dev/null",
    "mknod c 1 1": "mknod $D/mem c 1 1",
}


def _try_all(cg: cgroups.CgroupV2, tmp_path) -> dict[str, bool]:
    tmp_path.mkdir(exist_ok=True)
    script = f"echo $$ > {cg.dir}/cgroup.procs\n" + "".join(
        f"if {cmd} 2>/dev/null; then echo 'ok {what}'; else echo 'no {what}'; fi\n" for what, cmd in TRIES.items())
    r = subprocess.run(["sh", "-c", script], capture_output=True, text=True, env={**os.environ, "D": str(tmp_path)},
                       timeout=30)
    out = {}
    for line in r.stdout.splitlines():
        verdict, _, what = line.partition(" ")
        out[what] = verdict == "ok"
    assert set(out) == set(TRIES), r
    return out


def test_the_default_rules_allow_the_standard_devices_and_no_disk(v2_cgroup, tmp_path):
    """containerd's default allow-list: null, zero, urandom... read and written; any node may be made (mknod), but
    a block device made so, or /dev/mem, cannot be opened: a default container reads no disk of the node."""
    assert cgroups.CgroupV2.apply(v2_cgroup, {"devices": DEFAULT_DEVICE_RULES}) == []
    assert _try_all(v2_cgroup, tmp_path) == {
        "read /dev/null": True, "write /dev/zero": True, "read /dev/urandom": True, "read /dev/mem": False,
        "mknod b 7 0": True, "read the b 7 0 it made": False, "mknod c 1 1": True}


def test_the_last_matching_rule_decides(v2_cgroup, tmp_path):
    """Allow all, then deny writes to 1:5 and mknod of block devices: later rules win, as with v1's lists."""
    rules = [{"allow": True, "access": "rwm"},
             {"allow": False, "type": "c", "major": 1, "minor": 5, "access": "w"},
             {"allow": False, "type": "b", "access": "m"}]
    v2_cgroup.apply({"devices": rules})
    tried = _try_all(v2_cgroup, tmp_path)
    assert tried["write /dev/zero"] is False and tried["mknod b 7 0"] is False
    assert tried["read /dev/urandom"] and tried["read /dev/null"] and tried["mknod c 1 1"]


def test_privileged_rules_allow_what_no_program_allows(v2_cgroup, tmp_path):
    """A privileged container's rule (allow all) leaves the devices as a cgroup without a program has them."""
    without = _try_all(v2_cgroup, tmp_path / "without")
    v2_cgroup.apply({"devices": [{"allow": True, "access": "rwm"}]})
    assert _try_all(v2_cgroup, tmp_path / "with") == without
    assert without["read /dev/null"] and without["mknod b 7 0"]


@pytest.mark.parametrize("rule", [{"type": "x"}, {"type": "c", "access": "rwq"}, {"type": "c", "major": "1"},
                                  {"type": "b", "minor": 1 << 40}])
def test_a_bad_rule_is_refused_before_anything_is_attached(v2_cgroup, rule):
    with pytest.raises(cgroups.CgroupError, match="device rules"):
        v2_cgroup.apply({"devices": [{"allow": False, "access": "rwm"}, {"allow": True, **rule}]})
    with pytest.raises(devicefilter.DeviceRuleError):
        devicefilter.program([rule])
