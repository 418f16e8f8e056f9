"""The read path answers from kept messages (docs/design.md, "The read path"): the relist's unfiltered Lists and
the Status calls show every change in the very next call, whichever way it came: a CRI call, a process that
exited on its own, an image tagged by a pull."""

from __future__ import annotations

import json
import os
import signal

from pycri.api import api_pb2 as cri
from tests.lifecycle.test_status_image import _create_by_id


def _relist(kubelet) -> tuple[dict, dict]:
    """The kubelet's relist, as its generic PLEG sends it: no sandbox filter, an empty container filter."""
    pods = kubelet.rt.ListPodSandbox(cri.ListPodSandboxRequest()).items
    containers = kubelet.rt.ListContainers(cri.ListContainersRequest(filter=cri.ContainerFilter())).containers
    return {p.id: p for p in pods}, {c.id: c for c in containers}


def test_the_relist_shows_each_change_in_the_next_call(kubelet):
    sid, pod = kubelet.run_pod("kept")
    pods, _ = _relist(kubelet)
    assert pods[sid].state == cri.SANDBOX_READY
    cid = kubelet.create(sid, pod, "c", command=["sleep", "3600"])
    assert _relist(kubelet)[1][cid].state == cri.CONTAINER_CREATED
    kubelet.rt.StartContainer(cri.StartContainerRequest(container_id=cid))
    assert _relist(kubelet)[1][cid].state == cri.CONTAINER_RUNNING

    other = kubelet.start(sid, pod, "other", command=["sleep", "3600"])
    pid = json.loads(kubelet.rt.ContainerStatus(cri.ContainerStatusRequest(container_id=other, verbose=True))
                     .info["info"])["pid"]
    assert _relist(kubelet)[1][other].state == cri.CONTAINER_RUNNING
    os.kill(pid, signal.SIGKILL)  # an exit no CRI call made: the next relist after it is recorded shows it
    kubelet.until(lambda: _relist(kubelet)[1][other].state == cri.CONTAINER_EXITED, what="the exit in the relist")
    status = kubelet.rt.PodSandboxStatus(cri.PodSandboxStatusRequest(pod_sandbox_id=sid))
    assert {c.id: c.state for c in status.containers_statuses} == {cid: cri.CONTAINER_RUNNING,
                                                                     other: cri.CONTAINER_EXITED}
    assert kubelet.status(other).exit_code == 137

    kubelet.rt.StopContainer(cri.StopContainerRequest(container_id=cid, timeout=0))
    assert _relist(kubelet)[1][cid].state == cri.CONTAINER_EXITED
    kubelet.rt.RemoveContainer(cri.RemoveContainerRequest(container_id=other))
    assert other not in _relist(kubelet)[1]
    assert [c.id for c in kubelet.rt.PodSandboxStatus(
        cri.PodSandboxStatusRequest(pod_sandbox_id=sid)).containers_statuses] == [cid]
    kubelet.rt.StopPodSandbox(cri.StopPodSandboxRequest(pod_sandbox_id=sid))
    assert _relist(kubelet)[0][sid].state == cri.SANDBOX_NOTREADY
    kubelet.rt.RemovePodSandbox(cri.RemovePodSandboxRequest(pod_sandbox_id=sid))
    pods, containers = _relist(kubelet)
    assert sid not in pods and cid not in containers


def test_a_new_tag_of_a_containers_image_is_in_the_next_relist(kubelet):
    ref = kubelet.pull("busybox")
    image = kubelet.img.ImageStatus(cri.ImageStatusRequest(image=cri.ImageSpec(image=ref))).image
    sid, pod = kubelet.run_pod("retag")
    first = kubelet.create(sid, pod, "c", command=["sleep", "3600"])
    assert _relist(kubelet)[1][first].image.image == ref
    # the pod spec names a tag the image does not have yet: the first of its tags is shown until it has it
    other = kubelet.registry.ref("busybox", tag="v2-kept")
    kubelet.registry.push_layout("busybox", kubelet.registry.images["busybox"]["layout"], tag="v2-kept")
    cid = _create_by_id(kubelet, sid, pod, "by-id", image.id, other)
    kubelet.rt.StartContainer(cri.StartContainerRequest(container_id=cid))  # (the record settles: no more saves)
    assert _relist(kubelet)[1][cid].image.image == ref
    assert kubelet.status(cid).image.image == ref
    kubelet.img.PullImage(cri.PullImageRequest(image=cri.ImageSpec(image=other)))
    assert _relist(kubelet)[1][cid].image.image == other
    assert kubelet.status(cid).image.image == other
