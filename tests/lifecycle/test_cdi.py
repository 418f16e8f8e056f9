"""CDI devices: spec files in the configured dirs are resolved by name (cdi_devices and cdi.k8s.io/ annotations) and
their edits (device nodes, env, mounts, hooks, groups) are in effect inside the container; OCI hooks run."""

from __future__ import annotations

import json
import time

import grpc
import pytest

from pycri.api import api_pb2 as cri
from tests.lifecycle.helpers import Kubelet

yaml = pytest.importorskip("yaml")


@pytest.fixture
def cdi(daemon_factory, registry, tmp_path):
    early, late = tmp_path / "cdi-early", tmp_path / "cdi-late"
    early.mkdir()
    late.mkdir()
    hostdir = tmp_path / "hostdir"
    hostdir.mkdir()
    (hostdir / "hello").write_text("from the host\n")
    markers = tmp_path / "markers"
    markers.mkdir()
    hook = tmp_path / "hook.sh"
    hook.write_text('#!/bin/sh\ncat > "$1"\n')  # the OCI state JSON arrives on stdin
    hook.chmod(0o755)
    failing = tmp_path / "fail.sh"
    failing.write_text('#!/bin/sh\necho "no accelerator here" >&2\nexit 3\n')
    failing.chmod(0o755)

    # JSON in the earlier dir: dev0 here is overridden by the later dir's definition
    (early / "test.json").write_text(json.dumps({
        "cdiVersion": "0.6.0", "kind": "example.com/test",
        "devices": [
            {"name": "dev0", "containerEdits": {"env": ["CDI_SRC=early"]}},
            {"name": "other", "containerEdits": {"env": ["CDI_OTHER=yes"]}},
        ],
    }))
    (late / "test.yaml").write_text(yaml.safe_dump({
        "cdiVersion": "0.6.0", "kind": "example.com/test",
        "containerEdits": {"env": ["CDI_SPEC_LEVEL=1"]},
        "devices": [
            {"name": "dev0", "containerEdits": {
                "env": ["CDI_SRC=late", "CDI_DEV=dev0"],
                "deviceNodes": [
                    {"path": "/dev/cdi-test", "hostPath": "/dev/null"},
                    # not in the default device cgroup allow-list: only usable with the rule CDI adds
                    {"path": "/dev/cdi-loop", "hostPath": "/dev/loop-control", "permissions": "rw"},
                ],
                "mounts": [{"hostPath": str(hostdir), "containerPath": "/cdi-data", "options": ["ro", "rbind"]}],
                "hooks": [
                    {"hookName": "createContainer", "path": str(hook), "args": ["hook", str(markers / "create")]},
                    {"hookName": "poststart", "path": str(hook), "args": ["hook", str(markers / "poststart")]},
                    {"hookName": "poststop", "path": str(hook), "args": ["hook", str(markers / "poststop")]},
                ],
                "additionalGids": [4242],
            }},
            {"name": "broken", "containerEdits": {
                "hooks": [{"hookName": "createContainer", "path": str(failing), "timeout": 5}],
            }},
        ],
    }))
    d = daemon_factory({
        "sandbox_image": registry.ref("pause"),
        f'registries."{registry.host}"': {"insecure": True},
        "cdi": {"spec_dirs": [str(early), str(late)]},
    }, network=True)
    logs = tmp_path / "logs"
    logs.mkdir()
    return Kubelet(d, registry, logs), markers


def _wait_file(path, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.stat().st_size:
            return json.loads(path.read_text())
        time.sleep(0.05)
    raise AssertionError(f"{path} was not written within {timeout}s")


def _sh(k, cid, script):
    r = k.exec(cid, "sh", "-c", script)
    assert r.exit_code == 0, (script, r.stdout, r.stderr)
    return r.stdout.decode()


def test_cdi_device_edits_in_effect(cdi):
    k, markers = cdi
    sid, pod = k.run_pod("cdi")
    cid = k.start(sid, pod, "app", command=["sleep", "300"],
                  CDI_devices=[cri.CDIDevice(name="example.com/test=dev0")])

    created = _wait_file(markers / "create")  # createContainer ran before the start, with the state on stdin
    assert created["id"] == cid and created["status"] == "creating"
    started = _wait_file(markers / "poststart")
    assert started["id"] == cid and started["status"] == "running" and started["pid"] > 0

    ls = _sh(k, cid, "ls -l /dev/cdi-test").split()
    assert ls[0].startswith("c") and ls[4] == "1," and ls[5] == "3", ls
    assert _sh(k, cid, "echo x > /dev/cdi-test && echo ok").strip() == "ok"
    # the device cgroup rule CDI added lets the container open a device the default list does not allow
    assert _sh(k, cid, "exec 3</dev/cdi-loop && echo opened").strip() == "opened"
    env = _sh(k, cid, "env").splitlines()
    assert "CDI_DEV=dev0" in env and "CDI_SPEC_LEVEL=1" in env
    assert "CDI_SRC=late" in env, "the later spec dir overrides the earlier one"
    assert not any(e.startswith("CDI_OTHER=") for e in env)
    assert _sh(k, cid, "cat /cdi-data/hello") == "from the host\n"
    r = k.exec(cid, "sh", "-c", "touch /cdi-data/nope")
    assert r.exit_code != 0, "the CDI mount asked for ro"
    assert "4242" in _sh(k, cid, "id -G").split()

    k.rt.StopContainer(cri.StopContainerRequest(container_id=cid, timeout=2), timeout=30)
    k.rt.RemoveContainer(cri.RemoveContainerRequest(container_id=cid), timeout=30)
    stopped = _wait_file(markers / "poststop")
    assert stopped["id"] == cid


def test_cdi_annotation_and_unknown_device(cdi):
    k, _ = cdi
    sid, pod = k.run_pod("cdi-ann")
    cid = k.start(sid, pod, "ann", command=["sleep", "300"],
                  annotations={"cdi.k8s.io/test-plugin": "example.com/test=other"})
    env = _sh(k, cid, "env").splitlines()
    assert "CDI_OTHER=yes" in env and not any(e.startswith("CDI_DEV=") for e in env)
    # control for the device rule test above: without the CDI device, the same node cannot be opened
    r = k.exec(cid, "sh", "-c", "mknod /tmp/lc c 10 237 && exec 3</tmp/lc")
    assert r.exit_code != 0 and b"not permitted" in r.stderr, (r.stdout, r.stderr)

    for i, name in enumerate(("example.com/test=missing", "example.com/nope=dev0", "not-a-cdi-name")):
        with pytest.raises(grpc.RpcError) as err:
            k.create(sid, pod, f"bad{i}", command=["true"],
                     CDI_devices=[cri.CDIDevice(name=name)])
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert name in err.value.details()
    with pytest.raises(grpc.RpcError) as err:
        k.create(sid, pod, "badann", command=["true"], annotations={"cdi.k8s.io/x": "example.com/test=gone"})
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "example.com/test=gone" in err.value.details()


def test_failing_create_hook_fails_start(cdi):
    k, _ = cdi
    sid, pod = k.run_pod("cdi-hook")
    cid = k.create(sid, pod, "hooked", command=["sleep", "300"],
                   CDI_devices=[cri.CDIDevice(name="example.com/test=broken")])
    with pytest.raises(grpc.RpcError) as err:
        k.rt.StartContainer(cri.StartContainerRequest(container_id=cid), timeout=60)
    assert "createContainer hook" in err.value.details() and "status 3" in err.value.details()
    assert "no accelerator here" in err.value.details()
    st = k.status(cid)
    assert st.state == cri.CONTAINER_EXITED
