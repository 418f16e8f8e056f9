"""The daemon as kubelet and crictl see it: socket, Version, Status, RuntimeConfig, UpdateRuntimeConfig, errors."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys

import grpc
import pytest

from pycri.api import api_pb2 as cri
from pycri.api import api_pb2_grpc
from tests.fixtures.daemon import PYCRI, DaemonProcess


def test_version(daemon):
    v = daemon.runtime.Version(cri.VersionRequest(version="v1"))
    assert v.runtime_name == "pycri"
    assert v.runtime_api_version == "v1"
    assert v.version and v.runtime_version  # all four fields non-empty, as crictl prints them


def test_socket_is_root_only(daemon):
    st = os.stat(daemon.socket)
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o660
    assert st.st_uid == 0


def test_layer_directories_are_marked_as_tops_of_unrelated_trees(daemon):
    """Image layers and containers' writable layers: ext4 spreads each over a group of its own (pycri/state/topdir.py)
    instead of piling them, and the inodes that removals free, into one group."""
    fs_type = subprocess.run(["stat", "-f", "-c", "%T", str(daemon.root)], capture_output=True, text=True).stdout
    if not fs_type.startswith("ext2/ext3"):  # stat's name for every ext* file system
        pytest.skip(f"the T attribute is ext2/3/4's; {daemon.root} is on {fs_type.strip()}")
    for name in ("snapshots", "containers"):
        attrs = subprocess.run(["lsattr", "-d", str(daemon.root / name)], capture_output=True, text=True,
                               check=True).stdout
        assert "T" in attrs.split()[0], (name, attrs)


def _conditions(daemon) -> dict:
    status = daemon.runtime.Status(cri.StatusRequest()).status
    return {c.type: c for c in status.conditions}


def test_status_network_not_ready_without_cni_config(daemon):
    conds = _conditions(daemon)
    assert conds["RuntimeReady"].status is True
    assert conds["NetworkReady"].status is False
    assert conds["NetworkReady"].reason == "NetworkPluginNotReady"
    assert str(daemon.cni_conf_dir) in conds["NetworkReady"].message


def _write_conflist(daemon, plugin_types):
    daemon.cni_conf_dir.mkdir(parents=True, exist_ok=True)
    conf = {"cniVersion": "1.0.0", "name": "testnet", "plugins": [{"type": t} for t in plugin_types]}
    (daemon.cni_conf_dir / "10-test.conflist").write_text(json.dumps(conf))


def test_status_network_ready_follows_the_cni_config(daemon):
    _write_conflist(daemon, ["bridge", "portmap"])  # both are in /usr/lib/cni (containernetworking-plugins)
    assert _conditions(daemon)["NetworkReady"].status is True
    _write_conflist(daemon, ["bridge", "no-such-plugin"])
    cond = _conditions(daemon)["NetworkReady"]
    assert cond.status is False and "no-such-plugin" in cond.message
    (daemon.cni_conf_dir / "10-test.conflist").write_text("{not json")
    assert _conditions(daemon)["NetworkReady"].status is False


def test_default_network_config_is_written_when_none_exists(daemon_factory):
    d = daemon_factory({"cni": {"write_default_conflist": True, "default_subnet": "10.99.0.0/16"}})
    conf = json.loads((d.cni_conf_dir / "99-pycri-default.conflist").read_text())
    assert conf["plugins"][0]["ipam"]["ranges"] == [[{"subnet": "10.99.0.0/16"}]]
    assert conf["plugins"][0]["ipam"]["dataDir"] == str(d.root / "cni" / "networks")
    assert _conditions(d)["NetworkReady"].status is True


def test_status_handlers_and_verbose_info(daemon_factory):
    d = daemon_factory({"runtimes.runc": {"type": "oci", "path": "/usr/sbin/runc"}})
    resp = d.runtime.Status(cri.StatusRequest(verbose=True))
    names = [h.name for h in resp.runtime_handlers]
    assert names == ["", "pycri", "runc"]
    config = json.loads(resp.info["config"])
    assert config["root"] == str(d.root)
    assert config["runtimes"]["runc"] == {"type": "oci", "path": "/usr/sbin/runc", "cgroup_manager": "runtime"}
    assert json.loads(resp.info["cgroupVersion"]) in ("v1", "v2")
    assert not d.runtime.Status(cri.StatusRequest()).info  # not verbose: no info


@pytest.mark.parametrize("driver,expected", [("cgroupfs", cri.CgroupDriver.CGROUPFS),
                                             ("systemd", cri.CgroupDriver.SYSTEMD)])
def test_runtime_config_reports_the_cgroup_driver(daemon_factory, driver, expected):
    d = daemon_factory({"cgroup": {"driver": driver}})
    assert d.runtime.RuntimeConfig(cri.RuntimeConfigRequest()).linux.cgroup_driver == expected


def _update_cidr(daemon, cidr):
    req = cri.UpdateRuntimeConfigRequest(
        runtime_config=cri.RuntimeConfig(network_config=cri.NetworkConfig(pod_cidr=cidr)))
    return daemon.runtime.UpdateRuntimeConfig(req)


def _pod_cidr(daemon):
    return json.loads(daemon.runtime.Status(cri.StatusRequest(verbose=True)).info["podCIDR"])


def test_update_runtime_config_records_the_pod_cidr_across_restarts(daemon):
    assert _pod_cidr(daemon) == ""
    _update_cidr(daemon, "10.244.1.0/24,fd00:10:244:1::/64")
    assert _pod_cidr(daemon) == "10.244.1.0/24,fd00:10:244:1::/64"
    _update_cidr(daemon, "")  # an empty update leaves the recorded CIDR alone
    daemon.restart()
    assert _pod_cidr(daemon) == "10.244.1.0/24,fd00:10:244:1::/64"


def test_update_runtime_config_rejects_a_bad_cidr(daemon):
    with pytest.raises(grpc.RpcError) as err:
        _update_cidr(daemon, "10.244.1.0/33")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "10.244.1.0/33" in err.value.details()


def test_unbuilt_rpc_answers_unimplemented(daemon):
    with pytest.raises(grpc.RpcError) as err:
        daemon.runtime.CheckpointContainer(cri.CheckpointContainerRequest(container_id="x"))
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_every_rpc_answers_a_status_never_a_crash(daemon):
    """Each method with an empty request: any clear status is fine, UNKNOWN/INTERNAL (a crash) is not."""
    for service in cri.DESCRIPTOR.services_by_name.values():
        stub = getattr(api_pb2_grpc, f"{service.name}Stub")(daemon.channel)
        for method in service.methods:
            request = getattr(cri, method.input_type.name)()
            call = getattr(stub, method.name)
            try:
                result = call(request, timeout=10)
                if method.server_streaming:
                    for _ in result:
                        break
                    result.cancel()
            except grpc.RpcError as exc:
                assert exc.code() not in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL), \
                    f"{method.name}: {exc.code()} {exc.details()}"
    assert daemon.proc.poll() is None
    assert daemon.runtime.Version(cri.VersionRequest()).runtime_name == "pycri"


def test_each_rpc_is_logged_as_one_json_line(daemon):
    daemon.runtime.Version(cri.VersionRequest())
    with pytest.raises(grpc.RpcError):
        daemon.runtime.CheckpointContainer(cri.CheckpointContainerRequest(container_id="abc"))
    events = [e for e in daemon.log_events() if e.get("event") == "rpc"]
    version = [e for e in events if e["method"] == "Version"]
    assert version and version[0]["code"] == "OK" and "duration_ms" in version[0]
    ckpt = [e for e in events if e["method"] == "CheckpointContainer"][0]
    assert ckpt["code"] == "UNIMPLEMENTED" and ckpt["container_id"] == "abc"
    assert all("timestamp" in e and "level" in e for e in events)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_graceful_shutdown_removes_the_socket(daemon, sig):
    assert daemon.stop(sig) == 0
    assert not daemon.socket.exists()
    assert any(e.get("event") == "stopped" for e in daemon.log_events())


def test_stale_socket_is_replaced(daemon_factory):
    d = daemon_factory(start=False)
    d.socket.parent.mkdir(parents=True)
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(d.socket))  # bound, never listening: what a killed daemon leaves
    stale.close()
    d.start()
    assert d.runtime.Version(cri.VersionRequest()).runtime_name == "pycri"


def test_second_daemon_on_a_live_socket_is_refused(daemon):
    second = DaemonProcess(daemon.workdir)  # same config: same socket, same root
    second.log_path = daemon.workdir / "second.log"
    with pytest.raises(RuntimeError, match="another process is serving"):
        second.start()
    assert daemon.runtime.Version(cri.VersionRequest()).runtime_name == "pycri"


def test_socket_path_holding_a_regular_file_is_refused(daemon_factory):
    d = daemon_factory(start=False)
    d.socket.parent.mkdir(parents=True)
    d.socket.write_text("precious")
    with pytest.raises(RuntimeError, match="not a socket"):
        d.start()
    assert d.socket.read_text() == "precious"


def test_socket_parent_dirs_are_created(daemon_factory):
    d = daemon_factory(start=False)
    d.socket = d.workdir / "deep" / "er" / "pycri.sock"
    d.config_path.write_text(d.config_path.read_text().replace(
        f'listen = "{d.state}/pycri.sock"', f'listen = "{d.socket}"'))
    d.start()
    assert d.runtime.Version(cri.VersionRequest()).runtime_name == "pycri"


def test_config_from_environment_variable(daemon_factory):
    d = daemon_factory(start=False)
    env = dict(os.environ, PYCRI_CONFIG=str(d.config_path))
    proc = subprocess.Popen(PYCRI, env=env, stderr=subprocess.PIPE)
    try:
        for _ in range(300):
            if d.socket.exists():
                break
            assert proc.poll() is None, proc.stderr.read().decode()
            import time
            time.sleep(0.02)
        d.channel = grpc.insecure_channel(f"unix:{d.socket}")
        assert d.runtime.Version(cri.VersionRequest(), wait_for_ready=True, timeout=10).runtime_name == "pycri"
    finally:
        d._close_channel()
        proc.terminate()
        assert proc.wait(15) == 0


def test_bad_config_is_rejected_at_start(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('root = "/tmp/x"\n[cgroup]\ndriver = "cgroupfz"\n')
    out = subprocess.run(PYCRI + ["--config", str(bad)], capture_output=True, text=True, timeout=30)
    assert out.returncode == 2
    assert "cgroup.driver" in out.stderr and "cgroupfz" in out.stderr
    assert "Traceback" not in out.stderr


def test_cli_version_and_config_commands(tmp_path):
    out = subprocess.run(PYCRI + ["--version"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and out.stdout.startswith("pycri ")
    default = subprocess.run(PYCRI + ["config", "default"], capture_output=True, text=True, timeout=30)
    assert default.returncode == 0 and 'sandbox_image = "registry.k8s.io/pause:3.10"' in default.stdout
    path = tmp_path / "default.toml"
    path.write_text(default.stdout)
    check = subprocess.run(PYCRI + ["config", "check", str(path)], capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stderr
    path.write_text(default.stdout + "\nbogus = 1\n")
    check = subprocess.run(PYCRI + ["config", "check", str(path)], capture_output=True, text=True, timeout=30)
    assert check.returncode == 2 and "bogus: unknown key" in check.stderr
