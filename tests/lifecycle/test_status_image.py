"""The image a pod's status shows (kubectl get pod -o yaml: `image`): the kubelet creates containers with the
image's id and the pod spec's reference beside it (`user_specified_image`); what ContainerStatus answers in
`image` is what users see. containerd answers a tag of that image; the digest stays in `image_ref`. ListContainers
shows the same (containerd echoes the config there; `crictl ps` then shows an id); its `image_id` is what the
kubelet's image GC counts as in use."""

from __future__ import annotations

from pycri.api import api_pb2 as cri
from tests.lifecycle.conftest import container_config


def _create_by_id(kubelet, sid, pod, name: str, image_id: str, user_ref: str = "") -> str:
    config = container_config(name, image_id, ["sleep", "3600"], log_path=f"{name}/0.log")
    config.image.user_specified_image = user_ref
    return kubelet.rt.CreateContainer(cri.CreateContainerRequest(pod_sandbox_id=sid, config=config,
                                                                 sandbox_config=pod)).container_id


def test_a_container_created_by_image_id_shows_the_images_tag(kubelet):
    ref = kubelet.pull("busybox")
    image = kubelet.img.ImageStatus(cri.ImageStatusRequest(image=cri.ImageSpec(image=ref))).image
    sid, pod = kubelet.run_pod("tagged")
    cid = _create_by_id(kubelet, sid, pod, "c", image.id, ref)
    st = kubelet.status(cid)
    assert st.image.image == ref, st.image
    assert st.image_id == image.id and st.image_ref == image.repo_digests[0]
    listed = kubelet.rt.ListContainers(cri.ListContainersRequest(filter=cri.ContainerFilter(id=cid))).containers
    assert listed[0].image_id == image.id and listed[0].image.image == ref


def test_of_several_tags_the_pod_specs_is_shown_and_an_untagged_image_shows_its_id(kubelet):
    ref = kubelet.pull("busybox")
    image = kubelet.img.ImageStatus(cri.ImageStatusRequest(image=cri.ImageSpec(image=ref))).image
    other = kubelet.registry.ref("busybox", tag="v2-status")
    kubelet.registry.push_layout("busybox", kubelet.registry.images["busybox"]["layout"], tag="v2-status")
    kubelet.img.PullImage(cri.PullImageRequest(image=cri.ImageSpec(image=other)))
    tags = kubelet.img.ImageStatus(cri.ImageStatusRequest(image=cri.ImageSpec(image=ref))).image.repo_tags
    assert sorted(tags) == sorted([ref, other])
    sid, pod = kubelet.run_pod("several")
    by_spec = _create_by_id(kubelet, sid, pod, "spec", image.id, other)
    no_spec = _create_by_id(kubelet, sid, pod, "none", image.id)
    assert kubelet.status(by_spec).image.image == other
    assert kubelet.status(no_spec).image.image == sorted(tags)[0]
    kubelet.img.RemoveImage(cri.RemoveImageRequest(image=cri.ImageSpec(image=image.id)))
    assert kubelet.status(by_spec).image.image == image.id  # the image is gone: what the kubelet gave
