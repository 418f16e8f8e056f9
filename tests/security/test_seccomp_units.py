"""Unit tests (no daemon) for seccomp: the RuntimeDefault profile, Docker/OCI profile conversion, the CRI fields,
and the filter libseccomp builds from them."""

from __future__ import annotations

import ctypes
import errno
import json
import os

import pytest

from pycri.oci import seccomp as sp
from pycri.api import api_pb2 as cri
from pycri.errors import InvalidArgument
from pycri.oci.spec import DEFAULT_CAPABILITIES, PodPaths, container_spec, sandbox_spec

ADMIN = [*DEFAULT_CAPABILITIES, "CAP_SYS_ADMIN"]


def allowed(profile: dict) -> dict[str, list]:
    """syscall name -> the args of each ALLOW rule naming it ([] for an unconditional one)."""
    out: dict[str, list] = {}
    for rule in profile["syscalls"]:
        if rule["action"] == "SCMP_ACT_ALLOW":
            for name in rule["names"]:
                out.setdefault(name, []).append(rule.get("args", []))
    return out


def rules_for(profile: dict, name: str) -> list[dict]:
    return [r for r in profile["syscalls"] if name in r["names"]]


def test_runtime_default_without_extra_caps():
    p = sp.to_oci(sp.default_profile(), DEFAULT_CAPABILITIES, arch="amd64", kernel=(6, 1))
    assert p["defaultAction"] == "SCMP_ACT_ERRNO" and p["defaultErrnoRet"] == errno.EPERM
    assert p["architectures"] == ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]
    allow = allowed(p)
    for name in ("read", "execve", "capset", "setresuid", "prctl", "seccomp", "close_range", "arch_prctl",
                 "modify_ldt", "chroot", "ptrace"):  # chroot: CAP_SYS_CHROOT is a default cap; ptrace: kernel>=4.8
        assert allow.get(name) == [[]], name
    for name in ("mount", "umount2", "unshare", "setns", "sethostname", "setdomainname", "reboot", "bpf", "keyctl",
                 "add_key", "kexec_load", "init_module", "open_by_handle_at", "kcmp", "set_tls", "clock_settime",
                 "acct", "iopl", "vhangup", "mbind", "syslog", "perf_event_open", "userfaultfd"):
        assert name not in allow, name
    assert allow["socket"] == [[{"index": 0, "value": sp.AF_VSOCK, "op": "SCMP_CMP_NE"}]]
    assert sorted(a[0]["value"] for a in allow["personality"]) == [0, 8, 0x20000, 0x20008, 0xFFFFFFFF]
    assert allow["clone"] == [[{"index": 0, "value": 0x7E020000, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}]]
    assert rules_for(p, "clone3") == [{"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno.ENOSYS}]


def test_runtime_default_follows_capabilities_kernel_and_arch():
    p = sp.to_oci(sp.default_profile(), ADMIN, arch="x86_64", kernel=(6, 1))
    allow = allowed(p)
    for name in ("mount", "umount2", "unshare", "setns", "sethostname", "clone", "clone3", "bpf"):
        assert allow.get(name) == [[]], name  # unconditional with CAP_SYS_ADMIN
    assert not [r for r in p["syscalls"] if r["action"] != "SCMP_ACT_ALLOW"]  # no ENOSYS clone3
    p = sp.to_oci(sp.default_profile(), ["SYS_PTRACE", "cap_sys_time", "CAP_SYS_MODULE", "CAP_SYS_BOOT"],
                  arch="amd64", kernel=(6, 1))
    allow = allowed(p)
    for name in ("kcmp", "pidfd_getfd", "clock_settime", "settimeofday", "init_module", "finit_module", "reboot"):
        assert name in allow, name
    assert "chroot" not in allow  # CAP_SYS_CHROOT not held
    assert "ptrace" not in allowed(sp.to_oci(sp.default_profile(), [], arch="amd64", kernel=(4, 4)))
    arm = sp.to_oci(sp.default_profile(), [], arch="arm64", kernel=(6, 1))
    assert arm["architectures"] == ["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"]
    assert "set_tls" in allowed(arm) and "arch_prctl" not in allowed(arm)
    assert sp.to_oci(sp.default_profile(), [], arch="aarch64")["architectures"][0] == "SCMP_ARCH_AARCH64"
    assert sp.kernel_version("6.1.0-18-amd64") == (6, 1) and sp.kernel_version("4.8") == (4, 8)


def test_docker_format_is_resolved():
    profile = {
        "defaultAction": "SCMP_ACT_ALLOW",
        "archMap": [{"architecture": "SCMP_ARCH_X86_64", "subArchitectures": ["SCMP_ARCH_X86"]},
                    {"architecture": "SCMP_ARCH_AARCH64", "subArchitectures": ["SCMP_ARCH_ARM"]}],
        "syscalls": [
            {"name": "sethostname", "action": "SCMP_ACT_ERRNO", "errnoRet": 13},
            {"names": ["mount"], "action": "SCMP_ACT_ERRNO", "excludes": {"caps": ["CAP_SYS_ADMIN"]}},
            {"names": ["reboot"], "action": "SCMP_ACT_KILL", "includes": {"caps": ["CAP_SYS_BOOT", "CAP_KILL"]}},
            {"names": ["uname"], "action": "SCMP_ACT_LOG", "includes": {"arches": ["arm64"]}},
            {"names": ["kcmp"], "action": "SCMP_ACT_ERRNO", "includes": {"minKernel": "7.0"}},
            {"names": ["socket"], "action": "SCMP_ACT_ERRNO", "comment": "x",
             "args": [{"index": 0, "value": 16, "op": "SCMP_CMP_EQ"}]},
        ],
    }
    p = sp.to_oci(profile, ["CAP_KILL"], arch="amd64", kernel=(6, 1))
    assert p == {"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"],
                 "syscalls": [
                     {"names": ["sethostname"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13},
                     {"names": ["mount"], "action": "SCMP_ACT_ERRNO"},
                     {"names": ["socket"], "action": "SCMP_ACT_ERRNO",
                      "args": [{"index": 0, "value": 16, "op": "SCMP_CMP_EQ"}]}]}
    p = sp.to_oci(profile, ["CAP_KILL", "CAP_SYS_BOOT", "CAP_SYS_ADMIN"], arch="arm64", kernel=(7, 1))
    assert [r["names"][0] for r in p["syscalls"]] == ["sethostname", "reboot", "uname", "kcmp", "socket"]
    # an OCI-format profile (as containerd reads Localhost files) passes through
    oci = {"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 1, "architectures": ["SCMP_ARCH_X86_64"],
           "flags": ["SECCOMP_FILTER_FLAG_LOG"],
           "syscalls": [{"names": ["read", "write"], "action": "SCMP_ACT_ALLOW"}]}
    assert sp.to_oci(oci, []) == oci


@pytest.mark.parametrize("profile,message", [
    ([], "not a JSON object"),
    ({}, "defaultAction None"),
    ({"defaultAction": "SCMP_ACT_NOTIFY"}, "defaultAction 'SCMP_ACT_NOTIFY'"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_X86_64"],
      "archMap": [{"architecture": "SCMP_ARCH_X86_64"}]}, "both"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_VAX"]}, "unknown architecture"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": {}}, "must be a list"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["read"], "action": "ALLOW"}]}, "action 'ALLOW'"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"action": "SCMP_ACT_ERRNO"}]}, "no syscall names"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"name": "a", "names": ["b"], "action": "SCMP_ACT_ERRNO"}]},
     "both name and names"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ERRNO",
                                                       "args": [{"index": 6, "value": 1, "op": "SCMP_CMP_EQ"}]}]},
     "index must be 0..5"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ERRNO",
                                                       "args": [{"index": 0, "value": 1, "op": "EQ"}]}]}, "op 'EQ'"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ERRNO",
                                                       "args": [{"index": 0, "value": -1, "op": "SCMP_CMP_EQ"}]}]},
     "not an unsigned integer"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ERRNO",
                                                       "includes": ["caps"]}]}, "includes must be an object"),
])
def test_invalid_profiles(profile, message):
    with pytest.raises(ValueError, match=message):
        sp.to_oci(profile, [])


def _sc(cls=cri.LinuxContainerSecurityContext, **kw):
    return cls(**kw)


def test_requested_profile_from_cri_fields():
    SP = cri.SecurityProfile
    assert sp.requested(None) == ("unconfined", "")
    assert sp.requested(_sc()) == ("unconfined", "")  # unset: Unconfined, as containerd and the kubelet
    assert sp.requested(_sc(seccomp=SP())) == ("runtime/default", "")  # set, profile_type 0 = RuntimeDefault
    assert sp.requested(_sc(seccomp=SP(profile_type=SP.Unconfined))) == ("unconfined", "")
    assert sp.requested(_sc(seccomp=SP(profile_type=SP.Localhost, localhost_ref="/p.json"))) == ("localhost", "/p.json")
    assert sp.requested(_sc(seccomp=SP(profile_type=SP.Localhost, localhost_ref="localhost//p.json"))) == \
        ("localhost", "/p.json")
    # the field wins over the deprecated path
    assert sp.requested(_sc(seccomp=SP(profile_type=SP.Unconfined), seccomp_profile_path="runtime/default")) == \
        ("unconfined", "")
    for path, want in (("runtime/default", "runtime/default"), ("docker/default", "runtime/default"),
                       ("unconfined", "unconfined"), ("", "unconfined")):
        assert sp.requested(_sc(seccomp_profile_path=path)) == (want, ""), path
        assert sp.requested(_sc(cri.LinuxSandboxSecurityContext, seccomp_profile_path=path)) == (want, ""), path
    assert sp.requested(_sc(seccomp_profile_path="localhost//etc/p.json")) == ("localhost", "/etc/p.json")
    with pytest.raises(InvalidArgument, match="'bogus' is not runtime/default"):
        sp.requested(_sc(seccomp_profile_path="bogus"))
    with pytest.raises(InvalidArgument, match="localhost_ref must only be set"):
        sp.requested(_sc(seccomp=SP(profile_type=SP.RuntimeDefault, localhost_ref="/p.json")))
    with pytest.raises(InvalidArgument, match="needs localhost_ref"):
        sp.requested(_sc(seccomp=SP(profile_type=SP.Localhost)))


def test_localhost_files(tmp_path):
    SP = cri.SecurityProfile

    def local(path):
        return _sc(seccomp=SP(profile_type=SP.Localhost, localhost_ref=str(path)))

    good = tmp_path / "good.json"
    good.write_text(json.dumps({"defaultAction": "SCMP_ACT_ALLOW",
                                "syscalls": [{"names": ["sethostname"], "action": "SCMP_ACT_ERRNO"}]}))
    assert sp.linux_seccomp(local(good), ADMIN) == {
        "defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["sethostname"], "action": "SCMP_ACT_ERRNO"}]}
    assert sp.linux_seccomp(local(good), ADMIN, privileged=True) is None
    bad_json = tmp_path / "bad.json"
    bad_json.write_text("{nope")
    invalid = tmp_path / "invalid.json"
    invalid.write_text('{"defaultAction": "SCMP_ACT_BOGUS"}')
    unreadable = tmp_path / "dir.json"
    unreadable.mkdir()
    for path, message in ((tmp_path / "missing.json", "cannot be read: No such file"), (bad_json, "is not JSON"),
                          (invalid, "defaultAction 'SCMP_ACT_BOGUS'"), (unreadable, "cannot be read"),
                          ("relative.json", "must be absolute")):
        with pytest.raises(InvalidArgument, match=message) as info:
            sp.linux_seccomp(local(path), [])
        assert str(path) in str(info.value)
        # privileged ignores the profile, but a malformed request is still refused... the file is not read
        assert sp.linux_seccomp(local(path), [], privileged=True) is None


def _container(**sc) -> cri.ContainerConfig:
    return cri.ContainerConfig(metadata=cri.ContainerMetadata(name="c"), image=cri.ImageSpec(image="i"),
                               command=["/bin/sh"], linux=cri.LinuxContainerConfig(
                                   security_context=cri.LinuxContainerSecurityContext(**sc)))


def _pod(**sc) -> cri.PodSandboxConfig:
    return cri.PodSandboxConfig(metadata=cri.PodSandboxMetadata(name="p", namespace="n", uid="u"),
                                linux=cri.LinuxPodSandboxConfig(
                                    security_context=cri.LinuxSandboxSecurityContext(**sc)))


def test_spec_gets_linux_seccomp():
    SP = cri.SecurityProfile
    spec = container_spec(_container(seccomp=SP()), _pod(), {}, "c", "s", PodPaths(), "cgroupfs", "")
    assert spec["linux"]["seccomp"]["defaultAction"] == "SCMP_ACT_ERRNO"
    assert "sethostname" not in allowed(spec["linux"]["seccomp"])
    spec = container_spec(_container(seccomp=SP(), capabilities=cri.Capability(add_capabilities=["SYS_ADMIN"])),
                          _pod(), {}, "c", "s", PodPaths(), "cgroupfs", "")
    assert "sethostname" in allowed(spec["linux"]["seccomp"])  # follows the container's capabilities
    for sc in ({}, {"seccomp": SP(profile_type=SP.Unconfined)}, {"seccomp_profile_path": "unconfined"}):
        spec = container_spec(_container(**sc), _pod(), {}, "c", "s", PodPaths(), "cgroupfs", "")
        assert "seccomp" not in spec["linux"], sc
    spec = container_spec(_container(seccomp=SP(), privileged=True), _pod(privileged=True), {}, "c", "s",
                          PodPaths(), "cgroupfs", "")
    assert "seccomp" not in spec["linux"]
    image = {"config": {"Entrypoint": ["/pause"]}}
    spec = sandbox_spec(_pod(seccomp_profile_path="runtime/default"), image, "s", PodPaths(), "cgroupfs")
    assert spec["linux"]["seccomp"]["defaultAction"] == "SCMP_ACT_ERRNO"
    assert "seccomp" not in sandbox_spec(_pod(), image, "s", PodPaths(), "cgroupfs")["linux"]


def _libseccomp():
    try:
        ctypes.CDLL("libseccomp.so.2")
    except OSError:
        pytest.skip("libseccomp.so.2 is not installed")


@pytest.mark.parametrize("caps", [[], DEFAULT_CAPABILITIES, ADMIN, ["CAP_SYS_PTRACE", "CAP_SYS_NICE", "CAP_BPF"]])
def test_runtime_default_compiles(caps):
    _libseccomp()
    from runtime.launch import seccomp
    seccomp.compile(sp.to_oci(sp.default_profile(), caps)).release()


def test_runtime_default_filter_in_a_child():
    """The filter, loaded in a forked child: denied calls fail with EPERM (clone3: ENOSYS), allowed ones work."""
    _libseccomp()
    from runtime.launch import seccomp
    profile = sp.to_oci(sp.default_profile(), DEFAULT_CAPABILITIES)
    filt = seccomp.compile(profile)
    assert seccomp.compile(json.loads(json.dumps(profile))) is filt  # built once per distinct profile
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        try:
            os.close(r)
            libc = ctypes.CDLL(None, use_errno=True)
            libc.syscall.restype = ctypes.c_long
            filt.load()

            def call(nr, *args):
                rc = libc.syscall(ctypes.c_long(nr), *[ctypes.c_ulong(a) for a in args])
                return rc if rc >= 0 else -ctypes.get_errno()

            # x86_64 numbers: unshare 272, sethostname 170, clone3 435, personality 135, getpid 39, socket 41
            res = {"unshare": call(272, 0x10000000), "sethostname": call(170, 0, 0), "clone3": call(435, 0, 0),
                   "personality_query": call(135, 0xFFFFFFFF), "personality_bad": call(135, 0x0040000),
                   "getpid": call(39) == os.getpid(), "vsock": call(41, 40, 1, 0), "inet": call(41, 2, 1, 0) >= 0}
            status = open("/proc/self/status").read()
            res["mode"] = [ln.split()[1] for ln in status.splitlines() if ln.startswith("Seccomp:")][0]
            os.write(w, json.dumps(res).encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        out = f.read()
    os.waitpid(pid, 0)
    filt.release()
    if os.uname().machine != "x86_64":
        pytest.skip("syscall numbers above are x86_64's")
    res = json.loads(out)
    assert res == {"unshare": -errno.EPERM, "sethostname": -errno.EPERM, "clone3": -errno.ENOSYS,
                   "personality_query": res["personality_query"], "personality_bad": -errno.EPERM,
                   "getpid": True, "vsock": -errno.EPERM, "inet": True, "mode": "2"}
    assert res["personality_query"] >= 0
