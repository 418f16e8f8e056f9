"""Users and groups: the image's User, run_as_user/_username/_group, supplemental groups and their policy, as the
container's process has them (`id`, /proc/self/status) and as ContainerStatus.user reports them."""

from __future__ import annotations

import grpc
import pytest

from pycri.api import api_pb2 as cri
from tests.security.ctx_helpers import proc_status, run_to_exit, security

ID_SCRIPT = "id -u; id -g; id -G; grep -E '^(Uid|Gid|Groups):' /proc/self/status"


def _ids(kubelet, sid, pod, name, image="users", **sc):
    kw = {"linux": security(**sc)} if sc else {}
    status, out = run_to_exit(kubelet, sid, pod, name, ID_SCRIPT, image=image, **kw)
    assert status.exit_code == 0, out
    lines = out.splitlines()
    uid, gid, groups = int(lines[0]), int(lines[1]), sorted(int(g) for g in lines[2].split())
    st = proc_status("\n".join(lines[3:]))
    assert st["Uid"].split() == [str(uid)] * 4 and st["Gid"].split() == [str(gid)] * 4
    kernel_groups = sorted(int(g) for g in st["Groups"].split())
    user = status.user.linux
    # what the runtime reports is what the process has
    assert (user.uid, user.gid) == (uid, gid)
    assert sorted(user.supplemental_groups) == kernel_groups
    assert user.supplemental_groups[0] == gid
    return uid, gid, kernel_groups, groups


def test_image_users(kubelet):
    sid, pod = kubelet.run_pod("users")
    assert _ids(kubelet, sid, pod, "image-uid")[:3] == (1002, 1002, [1002])
    assert _ids(kubelet, sid, pod, "image-name", image="users-www")[:3] == (33, 33, [33])
    # uid 1000 (user1) is listed in group50000: Merge (the default) adds it
    uid, gid, kernel, ids = _ids(kubelet, sid, pod, "merge", run_as_user=cri.Int64Value(value=1000))
    assert (uid, gid, kernel) == (1000, 1000, [1000, 50000]) and ids == [1000, 50000]


def test_run_as_overrides(kubelet):
    sid, pod = kubelet.run_pod("runas")
    assert _ids(kubelet, sid, pod, "by-name", run_as_username="www-data")[:3] == (33, 33, [33])
    # the primary group of uid 1003 from the image's /etc/passwd
    assert _ids(kubelet, sid, pod, "uid-only", run_as_user=cri.Int64Value(value=1003))[:3] == (1003, 1004, [1004])
    assert _ids(kubelet, sid, pod, "uid-gid", run_as_user=cri.Int64Value(value=1003),
                run_as_group=cri.Int64Value(value=1004))[:3] == (1003, 1004, [1004])
    assert _ids(kubelet, sid, pod, "name-gid", run_as_username="user1",
                run_as_group=cri.Int64Value(value=1004))[:3] == (1000, 1004, [1004, 50000])
    # a uid the image does not know: gid 0, as runc does
    assert _ids(kubelet, sid, pod, "unknown-uid", run_as_user=cri.Int64Value(value=4242))[:3] == (4242, 0, [0])
    # run_as_username wins over run_as_user (containerd's rule)
    assert _ids(kubelet, sid, pod, "both", run_as_username="www-data",
                run_as_user=cri.Int64Value(value=1003))[:3] == (33, 33, [33])


def test_supplemental_groups_and_policy(kubelet):
    sid, pod = kubelet.run_pod("groups")
    uid1000 = cri.Int64Value(value=1000)
    assert _ids(kubelet, sid, pod, "strict", run_as_user=uid1000,
                supplemental_groups_policy=cri.SupplementalGroupsPolicy.Strict)[:3] == (1000, 1000, [1000])
    assert _ids(kubelet, sid, pod, "merge-extra", run_as_user=uid1000,
                supplemental_groups=[2000, 3000])[:3] == (1000, 1000, [1000, 2000, 3000, 50000])
    assert _ids(kubelet, sid, pod, "strict-extra", run_as_user=uid1000, supplemental_groups=[2000, 3000],
                supplemental_groups_policy=cri.SupplementalGroupsPolicy.Strict)[:3] == (1000, 1000,
                                                                                       [1000, 2000, 3000])
    # the image default user gets the extra groups too
    assert _ids(kubelet, sid, pod, "default-extra", supplemental_groups=[7])[:3] == (1002, 1002, [7, 1002])


def test_bad_users_rejected(kubelet):
    sid, pod = kubelet.run_pod("badusers")
    with pytest.raises(grpc.RpcError) as err:
        kubelet.create(sid, pod, "group-only", "users", command=["true"],
                       linux=security(run_as_group=cri.Int64Value(value=1004)))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "run_as_group" in err.value.details()
    with pytest.raises(grpc.RpcError) as err:
        kubelet.create(sid, pod, "no-such-user", "users", command=["true"],
                       linux=security(run_as_username="nosuchuser"))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "nosuchuser" in err.value.details()


def test_status_advertises_supplemental_groups_policy(kubelet):
    resp = kubelet.rt.Status(cri.StatusRequest())
    assert resp.features.supplemental_groups_policy is True
