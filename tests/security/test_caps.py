"""Capabilities, privileged containers and no_new_privs, read from the container's own /proc/self/status."""

from __future__ import annotations

import os

import grpc
import pytest

from pycri.api import api_pb2 as cri
from tests.security.ctx_helpers import decode_caps, host_caps, privileged_pod_kw, proc_status, run_to_exit, security

CONTAINERD_DEFAULT = {
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW", "CAP_SETGID",
    "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_KILL",
    "CAP_AUDIT_WRITE",
}
STATUS_SCRIPT = "grep -E '^(Cap|NoNewPrivs)' /proc/self/status"


def _caps(kubelet, sid, pod, name, **sc) -> tuple[dict[str, set[str]], dict[str, str]]:
    kw = {"linux": security(**sc)} if sc else {}
    status, out = run_to_exit(kubelet, sid, pod, name, STATUS_SCRIPT, **kw)
    assert status.exit_code == 0, out
    st = proc_status(out)
    sets = {k: decode_caps(st[k]) for k in ("CapEff", "CapPrm", "CapBnd", "CapInh", "CapAmb")}
    return sets, st


def _assert_set(sets, expected: set[str]) -> None:
    expected &= host_caps()
    assert sets["CapEff"] == expected
    assert sets["CapPrm"] == expected
    assert sets["CapBnd"] == expected
    assert sets["CapAmb"] == set()


def cap(add=(), drop=()) -> cri.Capability:
    return cri.Capability(add_capabilities=list(add), drop_capabilities=list(drop))


def test_default_add_drop_and_all(kubelet):
    sid, pod = kubelet.run_pod("caps")
    sets, st = _caps(kubelet, sid, pod, "default")
    _assert_set(sets, set(CONTAINERD_DEFAULT))
    assert st["NoNewPrivs"] == "0"
    sets, _ = _caps(kubelet, sid, pod, "add-drop", capabilities=cap(["NET_ADMIN", "CAP_SYS_TIME"], ["CHOWN", "KILL"]))
    _assert_set(sets, CONTAINERD_DEFAULT - {"CAP_CHOWN", "CAP_KILL"} | {"CAP_NET_ADMIN", "CAP_SYS_TIME"})
    sets, _ = _caps(kubelet, sid, pod, "add-all", capabilities=cap(["ALL"], ["SYS_ADMIN"]))
    _assert_set(sets, host_caps() - {"CAP_SYS_ADMIN"})
    sets, _ = _caps(kubelet, sid, pod, "drop-all", capabilities=cap(["NET_BIND_SERVICE"], ["ALL"]))
    _assert_set(sets, {"CAP_NET_BIND_SERVICE"})
    sets, _ = _caps(kubelet, sid, pod, "none", capabilities=cap([], ["ALL"]))
    _assert_set(sets, set())


def test_capabilities_have_effect(kubelet):
    sid, pod = kubelet.run_pod("capfx")
    # CAP_CHOWN dropped: root cannot give a file away; with the default set it can
    script = "touch /tmp/f && chown 1000 /tmp/f && echo chowned"
    status, out = run_to_exit(kubelet, sid, pod, "chown-ok", script)
    assert status.exit_code == 0 and "chowned" in out
    status, out = run_to_exit(kubelet, sid, pod, "chown-no", script, linux=security(capabilities=cap([], ["CHOWN"])))
    assert status.exit_code != 0 and "chowned" not in out
    # CAP_NET_ADMIN added: the pod's interface can be changed
    script = "ip link set lo mtu 1400 && echo changed"
    status, out = run_to_exit(kubelet, sid, pod, "netadmin-no", script)
    assert status.exit_code != 0
    status, out = run_to_exit(kubelet, sid, pod, "netadmin-yes", script,
                              linux=security(capabilities=cap(["NET_ADMIN"])))
    assert status.exit_code == 0 and "changed" in out


def test_no_new_privs(kubelet):
    sid, pod = kubelet.run_pod("nnp")
    _, st = _caps(kubelet, sid, pod, "nnp", no_new_privs=True)
    assert st["NoNewPrivs"] == "1"


def test_unknown_capability_rejected(kubelet):
    sid, pod = kubelet.run_pod("badcap")
    with pytest.raises(grpc.RpcError) as err:
        kubelet.create(sid, pod, "bad", command=["true"], linux=security(capabilities=cap(["CAP_NOPE"])))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "CAP_NOPE" in err.value.details()


PROBE = ("grep -E '^Cap(Eff|Bnd)' /proc/self/status; echo DEV $(ls /dev | tr '\\n' ' '); "
         "grep -E ' /sys | /proc/sys | /proc/keys ' /proc/self/mountinfo | awk '{print \"MNT\", $5, $6}'; "
         "echo 1 > /sys/kernel/mm/transparent_hugepage/khugepaged/defrag 2>/dev/null && echo SYSWRITE ok "
         "|| echo SYSWRITE failed")


def _probe(kubelet, sid, pod, name, **sc):
    status, out = run_to_exit(kubelet, sid, pod, name, PROBE, linux=security(**sc))
    assert status.exit_code == 0, out
    st = proc_status(out)
    devs = set(next(line for line in out.splitlines() if line.startswith("DEV")).split()[1:])
    mounts = {line.split()[1]: line.split()[2] for line in out.splitlines() if line.startswith("MNT")}
    return st, devs, mounts, out


def test_privileged(kubelet):
    sid, pod = kubelet.run_pod("priv", **privileged_pod_kw())
    st, devs, mounts, out = _probe(kubelet, sid, pod, "priv", privileged=True)
    assert decode_caps(st["CapEff"]) == host_caps() == decode_caps(st["CapBnd"])
    host_nodes = {n for n in os.listdir("/dev") if os.path.exists(f"/dev/{n}")
                  and (os.stat(f"/dev/{n}").st_mode & 0o170000) in (0o020000, 0o060000)} - {"console", "ptmx"}
    assert host_nodes <= devs, host_nodes - devs
    assert mounts["/sys"].split(",")[0] == "rw"
    assert "/proc/keys" not in mounts  # no masked paths
    assert "/proc/sys" not in mounts  # no read-only paths
    # the default in the same pod: the default set, few devices, read-only /sys, masked and read-only /proc parts
    st, devs, mounts, out = _probe(kubelet, sid, pod, "plain")
    assert decode_caps(st["CapEff"]) == CONTAINERD_DEFAULT & host_caps()
    assert devs <= {"null", "zero", "full", "random", "urandom", "tty", "fd", "stdin", "stdout", "stderr", "ptmx",
                    "pts", "shm", "mqueue", "core", "termination-log"}, devs
    assert mounts["/sys"].split(",")[0] == "ro"
    assert "/proc/keys" in mounts and mounts["/proc/sys"].split(",")[0] == "ro"
    assert "SYSWRITE failed" in out


def test_privileged_container_needs_privileged_pod(kubelet):
    sid, pod = kubelet.run_pod("unpriv")
    with pytest.raises(grpc.RpcError) as err:
        kubelet.create(sid, pod, "priv", command=["true"], linux=security(privileged=True))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
