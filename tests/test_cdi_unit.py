"""pycri/oci/cdi.py without a daemon: name parsing, spec loading and precedence, and the edits on an OCI spec."""

from __future__ import annotations

import json
import os

import pytest

from pycri.oci import cdi
from pycri.api import api_pb2 as cri
from pycri.errors import InvalidArgument


def _spec_file(d, name, kind, devices, edits=None, yaml=False):
    data = {"cdiVersion": "0.6.0", "kind": kind, "devices": devices}
    if edits:
        data["containerEdits"] = edits
    d.mkdir(exist_ok=True)
    if yaml:
        import yaml as y

        (d / name).write_text(y.safe_dump(data))
    else:
        (d / name).write_text(json.dumps(data))


@pytest.mark.parametrize("name", ["vendor.com/class=dev", "a.b-c/gpu_1=0", "x/y=all"])
def test_parse_qualified_ok(name):
    assert cdi.parse_qualified(name)


@pytest.mark.parametrize("name", ["dev", "vendor.com/class", "vendor.com=dev", "vendor.com/=dev", "/c=d",
                                  "vendor.com/class=", "vendor.com/class=-x", "v/c/d=e"])
def test_parse_qualified_bad(name):
    with pytest.raises(cdi.CDIError):
        cdi.parse_qualified(name)


def test_requested_from_field_and_annotations():
    cfg = cri.ContainerConfig(CDI_devices=[cri.CDIDevice(name="v.com/c=a")],
                              annotations={"cdi.k8s.io/p2": "v.com/c=b, v.com/c=a", "cdi.k8s.io/p1": "v.com/c=c",
                                           "other": "v.com/c=z"})
    assert cdi.requested(cfg) == ["v.com/c=a", "v.com/c=c", "v.com/c=b"]


def test_precedence_conflicts_and_bad_files(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    _spec_file(a, "1.json", "v.com/c", [{"name": "x", "containerEdits": {"env": ["FROM=a"]}},
                                        {"name": "dup", "containerEdits": {}}])
    _spec_file(a, "2.yaml", "v.com/c", [{"name": "dup", "containerEdits": {}}], yaml=True)
    _spec_file(b, "1.yml", "v.com/c", [{"name": "x", "containerEdits": {"env": ["FROM=b"]}}], yaml=True)
    (b / "broken.json").write_text("{not json")
    (b / "ignored.txt").write_text("x")
    devices, conflicts = cdi.scan([str(a), str(b), str(tmp_path / "missing")])
    assert devices["v.com/c=x"].edits["env"] == ["FROM=b"]
    assert conflicts == {"v.com/c=dup"}
    with pytest.raises(InvalidArgument, match="defined more than once"):
        cdi.resolve(["v.com/c=dup"], [str(a), str(b)])
    with pytest.raises(InvalidArgument, match="v.com/c=nope"):
        cdi.resolve(["v.com/c=nope"], [str(a), str(b)])
    # a later directory defining the device once resolves an earlier conflict
    _spec_file(b, "3.json", "v.com/c", [{"name": "dup", "containerEdits": {"env": ["OK=1"]}}])
    assert cdi.resolve(["v.com/c=dup"], [str(a), str(b)])[0].edits["env"] == ["OK=1"]


@pytest.mark.parametrize("bad", [
    {"cdiVersion": "0.6.0", "kind": "nokind", "devices": [{"name": "x"}]},
    {"cdiVersion": "0.6.0", "kind": "v.com/c", "devices": []},
    {"kind": "v.com/c", "devices": [{"name": "x"}]},
    {"cdiVersion": "0.6.0", "kind": "v.com/c", "devices": [{"name": "x", "containerEdits": {
        "hooks": [{"hookName": "preStart", "path": "/bin/true"}]}}]},
    {"cdiVersion": "0.6.0", "kind": "v.com/c", "devices": [{"name": "x", "containerEdits": {
        "deviceNodes": [{"path": "dev/x"}]}}]},
    {"cdiVersion": "0.6.0", "kind": "v.com/c", "devices": [{"name": "x", "containerEdits": {
        "deviceNodes": [{"path": "/dev/x", "permissions": "rwx"}]}}]},
    {"cdiVersion": "0.6.0", "kind": "v.com/c", "devices": [{"name": "x", "containerEdits": {
        "mounts": [{"hostPath": "/a", "containerPath": "rel"}]}}]},
])
def test_validate_rejects(bad):
    with pytest.raises(cdi.CDIError):
        cdi.validate_spec(bad)


def test_apply_edits():
    spec = {"process": {"env": ["PATH=/bin", "A=1"], "user": {"uid": 0, "gid": 0, "additionalGids": [5]}},
            "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"},
                       {"destination": "/data/sub", "type": "bind", "source": "/x", "options": ["rbind"]}],
            "linux": {"devices": [], "resources": {"devices": [{"allow": False, "access": "rwm"}]}}}
    cdi.apply_edits(spec, {
        "env": ["A=2", "B=3"],
        "deviceNodes": [{"path": "/dev/cdi-null", "hostPath": "/dev/null", "permissions": "rw", "gid": 7},
                        {"path": "/dev/fake", "type": "b", "major": 250, "minor": 1, "fileMode": 0o600}],
        "mounts": [{"hostPath": "/tmp", "containerPath": "/data"},
                   {"hostPath": "tmpfs", "containerPath": "/scratch", "type": "tmpfs", "options": ["size=1m"]}],
        "hooks": [{"hookName": "createContainer", "path": "/bin/true", "args": ["true", "x"], "timeout": 3}],
        "additionalGids": [0, 5, 44],
    })
    cdi._sort_mounts(spec)
    assert spec["process"]["env"] == ["PATH=/bin", "A=2", "B=3"]
    null = os.stat("/dev/null")
    assert spec["linux"]["devices"][0] == {"path": "/dev/cdi-null", "type": "c", "major": os.major(null.st_rdev),
                                           "minor": os.minor(null.st_rdev), "fileMode": 0o666, "gid": 7}
    assert spec["linux"]["devices"][1] == {"path": "/dev/fake", "type": "b", "major": 250, "minor": 1,
                                           "fileMode": 0o600}
    rules = spec["linux"]["resources"]["devices"]
    assert {"allow": True, "type": "c", "major": 1, "minor": 3, "access": "rw"} in rules
    assert {"allow": True, "type": "b", "major": 250, "minor": 1, "access": "rwm"} in rules
    dests = [m["destination"] for m in spec["mounts"]]
    assert dests.index("/data") < dests.index("/data/sub"), "parents before children"
    data = next(m for m in spec["mounts"] if m["destination"] == "/data")
    assert data["type"] == "bind" and "rbind" in data["options"]
    scratch = next(m for m in spec["mounts"] if m["destination"] == "/scratch")
    assert scratch["type"] == "tmpfs" and scratch["options"] == ["size=1m"]
    assert spec["hooks"] == {"createContainer": [{"path": "/bin/true", "args": ["true", "x"], "timeout": 3}]}
    assert spec["process"]["user"]["additionalGids"] == [5, 44]


def test_device_node_errors(tmp_path):
    with pytest.raises(cdi.CDIError, match="No such file"):
        cdi.device_node({"path": "/dev/x", "hostPath": str(tmp_path / "none")})
    (tmp_path / "f").write_text("")
    with pytest.raises(cdi.CDIError, match="not a device node"):
        cdi.device_node({"path": "/dev/x", "hostPath": str(tmp_path / "f")})
    with pytest.raises(cdi.CDIError, match="type"):
        cdi.device_node({"path": "/dev/x", "hostPath": "/dev/null", "type": "b"})


def test_inject_names_bad_host_node(tmp_path):
    _spec_file(tmp_path, "s.json", "v.com/c", [{"name": "x", "containerEdits": {
        "deviceNodes": [{"path": "/dev/x", "hostPath": str(tmp_path / "gone")}]}}])
    cfg = cri.ContainerConfig(CDI_devices=[cri.CDIDevice(name="v.com/c=x")])
    with pytest.raises(InvalidArgument, match="v.com/c=x.*gone"):
        cdi.inject({"process": {}, "linux": {}}, cfg, [str(tmp_path)])
