"""Pod sysctls: namespaced ones (safe and unsafe) are set in the pod's namespaces and seen by its containers; the
host keeps its values; non-namespaced ones and ones of a namespace the pod shares with the host are refused."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from pycri.api import api_pb2 as cri
from tests.security.ctx_helpers import run_to_exit

SYSCTLS = {
    "net.ipv4.ip_unprivileged_port_start": "1001",  # safe (kubelet's list)
    "net.core.somaxconn": "1234",  # unsafe but namespaced (net)
    "kernel.shm_rmid_forced": "1",  # safe, ipc namespace
    "kernel.msgmax": "12345",  # unsafe, ipc namespace
}


def _host(name: str) -> str:
    return Path("/proc/sys", *name.split(".")).read_text().strip()


def _linux(sysctls: dict, **ns) -> cri.LinuxPodSandboxConfig:
    return cri.LinuxPodSandboxConfig(sysctls=sysctls, security_context=cri.LinuxSandboxSecurityContext(
        namespace_options=cri.NamespaceOption(**ns)))


def test_namespaced_sysctls_visible_inside(kubelet):
    host_before = {k: _host(k) for k in SYSCTLS}
    assert all(host_before[k] != v for k, v in SYSCTLS.items())  # else the test proves nothing
    sid, pod = kubelet.run_pod("sysctl", linux=_linux(SYSCTLS))
    script = "; ".join(f"echo {k}=$(cat /proc/sys/{k.replace('.', '/')})" for k in SYSCTLS)
    status, out = run_to_exit(kubelet, sid, pod, "read", script)
    assert status.exit_code == 0, out
    seen = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    assert seen == SYSCTLS
    assert {k: _host(k) for k in SYSCTLS} == host_before


@pytest.mark.parametrize("sysctls, ns, needle", [
    ({"kernel.panic": "10"}, {}, "not namespaced"),
    ({"vm.swappiness": "10"}, {}, "not namespaced"),
    ({"fs.file-max": "100000"}, {}, "not namespaced"),
    ({"net.core.somaxconn": "1024"}, {"network": cri.NamespaceMode.NODE}, "host network"),
    ({"kernel.shm_rmid_forced": "1"}, {"ipc": cri.NamespaceMode.NODE}, "host IPC"),
])
def test_refused_sysctls(kubelet, sysctls, ns, needle):
    with pytest.raises(grpc.RpcError) as err:
        kubelet.run_pod("badsysctl", linux=_linux(sysctls, **ns))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert needle in err.value.details() and next(iter(sysctls)) in err.value.details()
    assert not kubelet.rt.ListPodSandbox(cri.ListPodSandboxRequest()).items


def test_slash_separated_names(kubelet):
    """`net/ipv4/...` (sysctl.d's path form, which kubectl accepts) names the same sysctl as the dot form."""
    sid, pod = kubelet.run_pod("sysctlslash", linux=_linux({"net/ipv4/ip_unprivileged_port_start": "1002",
                                                             "net/core/somaxconn": "1235"}))
    status, out = run_to_exit(kubelet, sid, pod, "read", "cat /proc/sys/net/ipv4/ip_unprivileged_port_start "
                                                          "/proc/sys/net/core/somaxconn")
    assert (status.exit_code, out.split()) == (0, ["1002", "1235"]), out
