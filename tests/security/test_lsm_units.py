"""Unit tests (no daemon) for AppArmor/SELinux: the policy with the host checks stubbed (this host has neither
LSM, so "the host has it" is only testable here), the spec fields, and the launcher's side."""

from __future__ import annotations

import os
import stat

import pytest

from pycri.oci import lsm
from pycri.api import api_pb2 as cri
from pycri.errors import InvalidArgument
from pycri.oci.spec import PodPaths, container_spec, sandbox_spec
from runtime import launch

SP = cri.SecurityProfile


def _sc(**kw) -> cri.LinuxContainerSecurityContext:
    return cri.LinuxContainerSecurityContext(**kw)


@pytest.fixture
def no_lsm(monkeypatch):
    monkeypatch.setattr(lsm, "apparmor_enabled", lambda: False)
    monkeypatch.setattr(lsm, "selinux_enabled", lambda: False)


@pytest.fixture
def apparmor(monkeypatch):
    monkeypatch.setattr(lsm, "apparmor_enabled", lambda: True)
    monkeypatch.setattr(lsm, "apparmor_loaded", lambda: {"pycri-default", "my-profile"})
    monkeypatch.setattr(lsm, "selinux_enabled", lambda: False)
    monkeypatch.setattr(lsm, "_default_loaded", False)


@pytest.fixture
def selinux(monkeypatch):
    monkeypatch.setattr(lsm, "apparmor_enabled", lambda: False)
    monkeypatch.setattr(lsm, "selinux_enabled", lambda: True)
    monkeypatch.setattr(lsm, "selinux_lxc_contexts", lambda: {})


def test_host_without_apparmor(no_lsm):
    for sc in (None, _sc(), _sc(apparmor=SP()), _sc(apparmor=SP(profile_type=SP.Unconfined)),
               _sc(apparmor_profile="runtime/default"), _sc(apparmor_profile="unconfined")):
        assert lsm.apparmor_profile(sc) is None
    for sc in (_sc(apparmor=SP(profile_type=SP.Localhost, localhost_ref="my-profile")),
               _sc(apparmor_profile="localhost/my-profile")):
        with pytest.raises(InvalidArgument, match="'my-profile' requested, but apparmor is not enabled"):
            lsm.apparmor_profile(sc)
    with pytest.raises(InvalidArgument, match="apparmor_profile 'bogus'"):
        lsm.apparmor_profile(_sc(apparmor_profile="bogus"))


def test_host_with_apparmor(apparmor):
    assert lsm.apparmor_profile(None) == "pycri-default"  # unset: the default (containerd, kubernetes#51746)
    assert lsm.apparmor_profile(_sc(apparmor=SP())) == "pycri-default"
    assert lsm.apparmor_profile(_sc(apparmor_profile="runtime/default")) == "pycri-default"
    assert lsm.apparmor_profile(_sc(), privileged=True) is None
    assert lsm.apparmor_profile(_sc(apparmor=SP()), privileged=True) is None
    assert lsm.apparmor_profile(_sc(apparmor=SP(profile_type=SP.Unconfined))) is None
    assert lsm.apparmor_profile(_sc(apparmor_profile="unconfined")) is None
    local = _sc(apparmor=SP(profile_type=SP.Localhost, localhost_ref="localhost/my-profile"))
    assert lsm.apparmor_profile(local) == "my-profile"
    assert lsm.apparmor_profile(local, privileged=True) == "my-profile"  # a named profile applies even so
    assert lsm.apparmor_profile(_sc(apparmor_profile="localhost/my-profile")) == "my-profile"
    with pytest.raises(InvalidArgument, match="'other' is not loaded"):
        lsm.apparmor_profile(_sc(apparmor=SP(profile_type=SP.Localhost, localhost_ref="other")))
    with pytest.raises(InvalidArgument, match="localhost_ref must only be set"):
        lsm.apparmor_profile(_sc(apparmor=SP(profile_type=SP.Unconfined, localhost_ref="x")))
    with pytest.raises(InvalidArgument, match="needs localhost_ref"):
        lsm.apparmor_profile(_sc(apparmor=SP(profile_type=SP.Localhost)))


def test_default_apparmor_profile_is_loaded_once(apparmor, monkeypatch, tmp_path):
    monkeypatch.setattr(lsm, "apparmor_loaded", lambda: {"my-profile"})
    parser = tmp_path / "apparmor_parser"
    parser.write_text(f"#!/bin/sh\necho \"$@\" >> {tmp_path}/calls\ncat \"$2\" > {tmp_path}/profile\n")
    parser.chmod(parser.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    assert lsm.apparmor_profile(None) == "pycri-default"
    assert lsm.apparmor_profile(None) == "pycri-default"
    calls = (tmp_path / "calls").read_text().splitlines()
    assert len(calls) == 1 and calls[0].startswith("-Kr ")
    text = (tmp_path / "profile").read_text()
    assert "profile pycri-default flags=(attach_disconnected,mediate_deleted) {" in text
    assert "deny mount," in text and "ptrace (trace,tracedby,read,readby) peer=pycri-default," in text
    monkeypatch.setattr(lsm, "_default_loaded", False)
    monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))
    with pytest.raises(Exception, match="apparmor_parser is not installed"):
        lsm.apparmor_profile(None)


def test_selinux_options(no_lsm, selinux, monkeypatch):
    opts = cri.SELinuxOption(level="s0:c1,c2")
    assert lsm.selinux_labels(_sc(selinux_options=opts)) == (
        "system_u:system_r:container_t:s0:c1,c2", "system_u:object_r:container_file_t:s0:c1,c2")
    assert lsm.selinux_labels(_sc(selinux_options=cri.SELinuxOption(type="spc_t", user="u", role="r"))) == (
        "u:r:spc_t:s0", "u:object_r:container_file_t:s0")
    # a container without a level takes its pod's
    pod = cri.LinuxSandboxSecurityContext(selinux_options=opts)
    assert lsm.selinux_labels(_sc(), pod_sc=pod)[0] == "system_u:system_r:container_t:s0:c1,c2"
    assert lsm.selinux_labels(_sc(selinux_options=cri.SELinuxOption(type="x_t")), pod_sc=pod)[0] == \
        "system_u:system_r:x_t:s0:c1,c2"
    assert lsm.selinux_labels(_sc()) is None  # nothing asked
    assert lsm.selinux_labels(_sc(selinux_options=opts), privileged=True) is None
    monkeypatch.setattr(lsm, "selinux_lxc_contexts", lambda: {
        "process": "system_u:system_r:svirt_lxc_net_t:s0", "file": "system_u:object_r:svirt_sandbox_file_t:s0"})
    assert lsm.selinux_labels(_sc(selinux_options=opts)) == (
        "system_u:system_r:svirt_lxc_net_t:s0:c1,c2", "system_u:object_r:svirt_sandbox_file_t:s0:c1,c2")
    with pytest.raises(InvalidArgument, match="selinux_options.type"):
        lsm.selinux_labels(_sc(selinux_options=cri.SELinuxOption(type="a:b")))


def test_selinux_ignored_without_selinux(no_lsm):
    # as containerd and CRI-O: options are ignored where the host has no SELinux (malformed ones still refused)
    assert lsm.selinux_labels(_sc(selinux_options=cri.SELinuxOption(type="container_t", level="s0:c1"))) is None
    with pytest.raises(InvalidArgument, match="selinux_options.level"):
        lsm.selinux_labels(_sc(selinux_options=cri.SELinuxOption(level="s0 c1")))


def _container(**sc) -> cri.ContainerConfig:
    return cri.ContainerConfig(metadata=cri.ContainerMetadata(name="c"), image=cri.ImageSpec(image="i"),
                               command=["/bin/sh"], linux=cri.LinuxContainerConfig(
                                   security_context=cri.LinuxContainerSecurityContext(**sc)))


def _pod(**sc) -> cri.PodSandboxConfig:
    return cri.PodSandboxConfig(metadata=cri.PodSandboxMetadata(name="p", namespace="n", uid="u"),
                                linux=cri.LinuxPodSandboxConfig(security_context=cri.LinuxSandboxSecurityContext(**sc)))


def test_spec_fields(apparmor, monkeypatch):
    spec = container_spec(_container(), _pod(), {}, "c", "s", PodPaths(), "cgroupfs", "")
    assert spec["process"]["apparmorProfile"] == "pycri-default"
    assert "selinuxLabel" not in spec["process"] and "mountLabel" not in spec["linux"]
    image = {"config": {"Entrypoint": ["/pause"]}}
    spec = sandbox_spec(_pod(apparmor=SP(profile_type=SP.Localhost, localhost_ref="my-profile")), image, "s",
                        PodPaths(), "cgroupfs")
    assert spec["process"]["apparmorProfile"] == "my-profile"
    monkeypatch.setattr(lsm, "apparmor_enabled", lambda: False)
    monkeypatch.setattr(lsm, "selinux_enabled", lambda: True)
    monkeypatch.setattr(lsm, "selinux_lxc_contexts", lambda: {})
    spec = container_spec(_container(), _pod(selinux_options=cri.SELinuxOption(level="s0:c5,c6")), {}, "c", "s",
                          PodPaths(), "cgroupfs", "")
    assert "apparmorProfile" not in spec["process"]
    assert spec["process"]["selinuxLabel"] == "system_u:system_r:container_t:s0:c5,c6"
    assert spec["linux"]["mountLabel"] == "system_u:object_r:container_file_t:s0:c5,c6"
    with pytest.raises(InvalidArgument, match="apparmor is not enabled"):
        container_spec(_container(apparmor_profile="localhost/x"), _pod(), {}, "c", "s", PodPaths(), "cgroupfs", "")


def _launch_spec(tmp_path, **extra) -> dict:
    (tmp_path / "rootfs").mkdir(exist_ok=True)
    spec = {"process": {"args": ["/bin/true"]}, "root": {"path": str(tmp_path / "rootfs")},
            "linux": {"namespaces": [{"type": "mount"}]},
            "mounts": [{"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid"]},
                       {"destination": "/proc", "type": "proc", "source": "proc"},
                       {"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": []},
                       {"destination": "/m", "type": "bind", "source": "/tmp", "options": ["rbind"]}]}
    for key, value in extra.items():
        section, _, field = key.partition("__")
        spec[section][field] = value
    return spec


def test_launcher_plans_lsm_only_when_asked(tmp_path):
    spec = _launch_spec(tmp_path)
    plan = launch.plan_from_spec(spec, None)
    assert plan.lsm_exec == [] and plan.spec["mounts"] == spec["mounts"] and not plan.warnings
    spec = _launch_spec(tmp_path, process__apparmorProfile="my-profile", process__selinuxLabel="u:r:t:s0:c1,c2",
                        linux__mountLabel="u:object_r:f_t:s0:c1,c2")
    plan = launch.plan_from_spec(spec, None)
    assert plan.lsm_exec == [(launch.plan._APPARMOR_EXEC, b"exec my-profile"),
                             (launch.plan._SELINUX_EXEC, b"u:r:t:s0:c1,c2")]
    opts = {m["destination"]: m.get("options") for m in plan.spec["mounts"]}
    assert opts["/dev"] == ["nosuid", 'context="u:object_r:f_t:s0:c1,c2"']
    assert opts["/dev/pts"] == ['context="u:object_r:f_t:s0:c1,c2"']
    assert opts["/proc"] is None and opts["/m"] == ["rbind"]
    assert spec["mounts"][0]["options"] == ["nosuid"]  # the caller's spec is left alone
    assert not plan.warnings
    with pytest.raises(launch.LaunchError, match="mountLabel"):
        launch.plan_from_spec(_launch_spec(tmp_path, linux__mountLabel='a"b'), None)


def test_launcher_writes_exec_attr(tmp_path):
    target = tmp_path / "exec"
    target.write_bytes(b"")
    launch.process._write_lsm_exec([((str(tmp_path / "missing"), str(target)), b"exec my-profile")])
    assert target.read_bytes() == b"exec my-profile"
    with pytest.raises(FileNotFoundError):
        launch.process._write_lsm_exec([((str(tmp_path / "missing"),), b"x")])


def test_launcher_exec_attr_errors_name_the_file(tmp_path):
    target = tmp_path / "ro"
    target.mkdir()  # opening a directory for writing fails: EISDIR, reported with the path
    with pytest.raises(IsADirectoryError):
        launch.process._write_lsm_exec([((str(target),), b"exec x")])
    full = "/dev/full"
    if os.path.exists(full):
        with pytest.raises(OSError) as info:
            launch.process._write_lsm_exec([((full,), b"exec my-profile")])
        assert info.value.filename == full and "exec my-profile" in info.value.strerror


@pytest.mark.parametrize("label, enabled", [("system_u:system_r:kernel_t:s0\0", True), ("kernel\0", False),
                                           ("", False)])
def test_selinux_counts_as_enabled_only_with_a_policy_loaded(tmp_path, label, enabled):
    """Without a policy every process is labelled "kernel" (as in the UML guest of hack/node.py, whose kernel
    has SELinux built in and mounts selinuxfs): `context=` mounts would fail there."""
    (tmp_path / "selinux").mkdir()
    (tmp_path / "selinux" / "enforce").write_text("0")
    (tmp_path / "current").write_text(label)
    assert lsm.selinux_enabled((str(tmp_path / "selinux"),), str(tmp_path / "current")) is enabled
    assert lsm.selinux_enabled((str(tmp_path / "nothing"),), str(tmp_path / "current")) is False
