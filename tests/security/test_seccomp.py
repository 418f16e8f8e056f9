"""Seccomp profiles, asserted inside real containers: the filter mode in /proc/self/status, syscalls the profile
denies failing with EPERM, per-capability rules, Localhost profiles, the deprecated field, privileged containers,
the sandbox's own profile, and bad requests (plus the AppArmor refusal on a host without AppArmor)."""

from __future__ import annotations

import json
import time

import grpc
import pytest

from pycri.oci import lsm
from pycri.api import api_pb2 as cri
from tests.lifecycle.test_handlers import handler_daemon  # noqa: F401 - fixture
from tests.security.ctx_helpers import privileged_pod_kw, proc_status, run_to_exit, security

SP = cri.SecurityProfile
RUNTIME_DEFAULT = SP(profile_type=SP.RuntimeDefault)
UNCONFINED = SP(profile_type=SP.Unconfined)
# Seccomp mode, then a user namespace (unshare(2): allowed without seccomp, CAP_SYS_ADMIN-only in RuntimeDefault)
PROBE = "grep -E '^Seccomp:' /proc/self/status; unshare -U true; echo UNSHARE=$?"
HOSTNAME = "hostname seccomp-test; echo SETHOST=$?; echo NOW=$(hostname)"
SYS_ADMIN = cri.Capability(add_capabilities=["SYS_ADMIN"])


def localhost(path) -> SP:
    return SP(profile_type=SP.Localhost, localhost_ref=str(path))


def _probe(kubelet, sid, pod, name, script=PROBE, **sc):
    status, out = run_to_exit(kubelet, sid, pod, name, script, **({"linux": security(**sc)} if sc else {}))
    return status, out, proc_status(out)


@pytest.fixture
def deny_sethostname(tmp_path):
    """A Localhost profile (Docker format, as the kubelet's seccomp dir holds them) allowing all but sethostname."""
    path = tmp_path / "profiles" / "no-sethostname.json"
    path.parent.mkdir()
    path.write_text(json.dumps({"defaultAction": "SCMP_ACT_ALLOW", "archMap": [
        {"architecture": "SCMP_ARCH_X86_64", "subArchitectures": ["SCMP_ARCH_X86", "SCMP_ARCH_X32"]},
        {"architecture": "SCMP_ARCH_AARCH64", "subArchitectures": ["SCMP_ARCH_ARM"]}],
        "syscalls": [{"names": ["sethostname"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]}))
    return path


def test_runtime_default_and_unconfined(kubelet):
    sid, pod = kubelet.run_pod("seccomp")
    status, out, st = _probe(kubelet, sid, pod, "default", seccomp=RUNTIME_DEFAULT)
    assert st["Seccomp"] == "2", out
    assert "Operation not permitted" in out and "UNSHARE=1" in out, out
    assert status.exit_code == 0
    # what the kubelet sends unless the pod asks: Unconfined; and the field unset (Unconfined too, as containerd)
    for name, sc in (("unconfined", {"seccomp": UNCONFINED}), ("unset", {})):
        status, out, st = _probe(kubelet, sid, pod, name, **sc)
        assert st["Seccomp"] == "0", (name, out)
        assert "UNSHARE=0" in out, (name, out)
    # the profile's per-capability rules: with CAP_SYS_ADMIN, unshare (and mount, sethostname...) are allowed
    status, out, st = _probe(kubelet, sid, pod, "default-admin", seccomp=RUNTIME_DEFAULT, capabilities=SYS_ADMIN)
    assert st["Seccomp"] == "2" and "UNSHARE=0" in out, out
    # an exec into a confined container is confined the same way
    cid = kubelet.start(sid, pod, "sleeper", command=["sleep", "60"], linux=security(seccomp=RUNTIME_DEFAULT))
    res = kubelet.exec(cid, "sh", "-c", PROBE)
    out = res.stdout.decode() + res.stderr.decode()
    assert proc_status(out)["Seccomp"] == "2" and "UNSHARE=1" in out, out


def test_localhost_profile_blocks_sethostname_even_with_sys_admin(kubelet, deny_sethostname):
    sid, pod = kubelet.run_pod("sethost")  # its own UTS namespace (the default)
    status, out, st = _probe(kubelet, sid, pod, "blocked", HOSTNAME + "; grep -E '^Seccomp:' /proc/self/status",
                             seccomp=localhost(deny_sethostname), capabilities=SYS_ADMIN)
    assert "Operation not permitted" in out and "SETHOST=1" in out and "NOW=sethost" in out, out
    assert st["Seccomp"] == "2"
    # the deprecated field, same file
    status, out, _ = _probe(kubelet, sid, pod, "blocked-old", HOSTNAME,
                            seccomp_profile_path=f"localhost/{deny_sethostname}", capabilities=SYS_ADMIN)
    assert "SETHOST=1" in out and "NOW=sethost" in out, out
    # without the profile CAP_SYS_ADMIN is enough (RuntimeDefault too: moby's profile allows it with the cap)
    status, out, _ = _probe(kubelet, sid, pod, "default-admin", HOSTNAME, seccomp=RUNTIME_DEFAULT,
                            capabilities=SYS_ADMIN)
    assert "SETHOST=0" in out and "NOW=seccomp-test" in out, out
    status, out, _ = _probe(kubelet, sid, pod, "unconfined-admin", "hostname again; echo SETHOST=$?",
                            seccomp=UNCONFINED, capabilities=SYS_ADMIN)
    assert "SETHOST=0" in out, out
    # RuntimeDefault without CAP_SYS_ADMIN: EPERM from the filter (and from the missing capability)
    status, out, _ = _probe(kubelet, sid, pod, "default-plain", HOSTNAME, seccomp=RUNTIME_DEFAULT)
    assert "SETHOST=1" in out, out


def test_privileged_ignores_the_profile(kubelet, deny_sethostname):
    sid, pod = kubelet.run_pod("privsec", **privileged_pod_kw())
    for name, profile in (("priv-local", localhost(deny_sethostname)), ("priv-default", RUNTIME_DEFAULT)):
        status, out, st = _probe(kubelet, sid, pod, name, HOSTNAME + "; grep -E '^Seccomp:' /proc/self/status",
                                 privileged=True, seccomp=profile)
        assert st["Seccomp"] == "0" and "SETHOST=0" in out, (name, out)


def test_deprecated_profile_path(kubelet):
    sid, pod = kubelet.run_pod("oldpath")
    for i, (path, mode) in enumerate((("runtime/default", "2"), ("docker/default", "2"), ("unconfined", "0"),
                                      ("", "0"))):
        status, out, st = _probe(kubelet, sid, pod, f"path{i}", seccomp_profile_path=path)
        assert st["Seccomp"] == mode, (path, out)
        assert ("UNSHARE=1" if mode == "2" else "UNSHARE=0") in out, (path, out)


def test_sandbox_profile(kubelet, deny_sethostname, tmp_path):
    # the infra (pause) process is pid 1 of a pod sharing its pid namespace
    linux = cri.LinuxPodSandboxConfig(security_context=cri.LinuxSandboxSecurityContext(
        seccomp=RUNTIME_DEFAULT, namespace_options=cri.NamespaceOption(pid=cri.NamespaceMode.POD)))
    sid, pod = kubelet.run_pod("sbx", linux=linux)
    status, out, st = _probe(kubelet, sid, pod, "look", "grep -E '^Seccomp:' /proc/1/status")
    assert st["Seccomp"] == "2", out
    # a bad Localhost profile for the sandbox: INVALID_ARGUMENT naming the path
    bad = tmp_path / "nope.json"
    linux = cri.LinuxPodSandboxConfig(security_context=cri.LinuxSandboxSecurityContext(seccomp=localhost(bad)))
    with pytest.raises(grpc.RpcError) as err:
        kubelet.run_pod("sbx-bad", linux=linux)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and str(bad) in err.value.details()


def test_bad_localhost_profiles(kubelet, tmp_path):
    sid, pod = kubelet.run_pod("badprof")
    not_json = tmp_path / "not.json"
    not_json.write_text("defaultAction: allow")
    invalid = tmp_path / "invalid.json"
    invalid.write_text(json.dumps({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["x"],
                                                                                     "action": "SCMP_ACT_NOPE"}]}))
    cases = [({"seccomp": localhost(tmp_path / "missing.json")}, str(tmp_path / "missing.json")),
             ({"seccomp": localhost(not_json)}, str(not_json)),
             ({"seccomp": localhost(invalid)}, str(invalid)),
             ({"seccomp_profile_path": f"localhost/{tmp_path}/gone.json"}, f"{tmp_path}/gone.json"),
             ({"seccomp_profile_path": "bogus"}, "bogus"),
             ({"seccomp": localhost("relative.json")}, "relative.json")]
    for i, (sc, needle) in enumerate(cases):
        with pytest.raises(grpc.RpcError) as err:
            kubelet.create(sid, pod, f"bad{i}", command=["true"], linux=security(**sc))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (sc, err.value)
        assert needle in err.value.details(), (sc, err.value.details())


@pytest.mark.skipif(lsm.apparmor_enabled(), reason="this host has AppArmor")
def test_apparmor_on_a_host_without_it(kubelet):
    sid, pod = kubelet.run_pod("noaa")
    # RuntimeDefault, Unconfined, and SELinux options (ignored without SELinux, as containerd and CRI-O) run
    status, out, _ = _probe(kubelet, sid, pod, "aa-default", "cat /proc/self/attr/current 2>&1; echo ok",
                            apparmor=RUNTIME_DEFAULT, selinux_options=cri.SELinuxOption(level="s0:c1,c2"))
    assert status.exit_code == 0 and "ok" in out, out
    status, out, _ = _probe(kubelet, sid, pod, "aa-old", "echo ok", apparmor_profile="runtime/default")
    assert status.exit_code == 0 and "ok" in out, out
    for i, sc in enumerate(({"apparmor": SP(profile_type=SP.Localhost, localhost_ref="k8s-deny-write")},
                            {"apparmor_profile": "localhost/k8s-deny-write"})):
        with pytest.raises(grpc.RpcError) as err:
            kubelet.create(sid, pod, f"aa-local{i}", command=["true"], linux=security(**sc))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "k8s-deny-write" in err.value.details() and "apparmor is not enabled" in err.value.details()


@pytest.mark.parametrize("handler", ["runc", "crun"])
def test_same_spec_under_runc_and_crun(handler_daemon, registry, tmp_path, deny_sethostname, handler):
    """The linux.seccomp we write is plain OCI: runc and crun (as runtime handlers) enforce it the same way."""
    from tests.lifecycle.conftest import container_config, pod_config
    from tests.security.ctx_helpers import log_stdout

    rt, d = handler_daemon.runtime, handler_daemon
    ref = registry.ref("busybox")
    d.image.PullImage(cri.PullImageRequest(image=cri.ImageSpec(image=ref)), timeout=120)
    pod = pod_config("oci", log_dir=str(tmp_path))
    sid = rt.RunPodSandbox(cri.RunPodSandboxRequest(config=pod, runtime_handler=handler), timeout=120).pod_sandbox_id

    def run(name, script, **sc):
        cid = rt.CreateContainer(cri.CreateContainerRequest(pod_sandbox_id=sid, sandbox_config=pod, config=(
            container_config(name, ref, ["sh", "-c", script], log_path=f"{name}/0.log", linux=security(**sc)))),
            timeout=60).container_id
        rt.StartContainer(cri.StartContainerRequest(container_id=cid), timeout=60)
        for _ in range(400):
            if rt.ContainerStatus(cri.ContainerStatusRequest(container_id=cid)).status.state == cri.CONTAINER_EXITED:
                break
            time.sleep(0.05)
        return log_stdout(tmp_path / name / "0.log")

    out = run("default", PROBE, seccomp=RUNTIME_DEFAULT)
    assert proc_status(out)["Seccomp"] == "2" and "UNSHARE=1" in out, out
    out = run("admin", PROBE, seccomp=RUNTIME_DEFAULT, capabilities=SYS_ADMIN)
    assert proc_status(out)["Seccomp"] == "2" and "UNSHARE=0" in out, out
    out = run("local", HOSTNAME, seccomp=localhost(deny_sethostname), capabilities=SYS_ADMIN)
    assert "SETHOST=1" in out and "NOW=oci" in out, out
