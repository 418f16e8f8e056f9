"""A container record as the CRI messages that show it: ContainerStatus (ContainerStatus, and what a pod's status
and events carry) and Container (ListContainers). Built from the record and the image's tags; the serialized forms
the read path answers with are kept on the record (`status_bytes`, `item_bytes`) until it or an image name changes."""

from __future__ import annotations

import functools
from collections.abc import Sequence

from pycri.api import api_pb2 as cri
from pycri.images import reference
from pycri.state.records import C_CREATING, CONTAINER_STATE, ContainerRecord


def state_of(rec: ContainerRecord) -> int:
    return CONTAINER_STATE.get(rec.state, cri.CONTAINER_UNKNOWN)


def shown_image(spec: cri.ImageSpec, tags: Sequence[str]) -> str:
    """The image ContainerStatus names (what `kubectl get pod` shows): the kubelet creates by image id, and
    containerd answers a tag of that image. Of its tags, the one the pod spec (`user_specified_image`) or the
    config names, else the first; an image without tags (or removed since) shows what the config gave."""
    if not tags:
        return spec.image
    for ref in (spec.user_specified_image, spec.image):
        if ref and (name := _normalised(ref)) in tags:
            return name
    return tags[0]


@functools.lru_cache(maxsize=4096)
def _normalised(ref: str) -> str:
    """A reference as the image store names it ("" when it is none); cached: List and Status ask per container."""
    try:
        return str(reference.parse(ref))
    except ValueError:
        return ""


def container_status(rec: ContainerRecord, image_tags: Sequence[str] = ()) -> cri.ContainerStatus:
    """image_tags: the sorted tags of the container's image (ImageManager.repo_tags), for `image.image`."""
    config = rec.config
    gid = rec.user.get("gid", 0)
    user = cri.ContainerUser(linux=cri.LinuxContainerUser(
        uid=rec.user.get("uid", 0), gid=gid,
        supplemental_groups=[gid] + [g for g in rec.user.get("additionalGids", []) if g != gid]))
    return cri.ContainerStatus(
        id=rec.id, metadata=config.metadata, state=state_of(rec),
        created_at=rec.created_at, started_at=rec.started_at, finished_at=rec.finished_at,
        exit_code=rec.exit_code, image=cri.ImageSpec(image=shown_image(config.image, image_tags),
                                                     annotations=config.image.annotations,
                                                     user_specified_image=config.image.user_specified_image),
        image_ref=rec.image_ref, image_id=rec.image_id, reason=rec.reason, message=rec.message,
        labels=config.labels, annotations=config.annotations, mounts=_mounts(rec), log_path=rec.log_path,
        resources=cri.ContainerResources(linux=rec.resources) if rec.resources_pb else None, user=user,
        stop_signal=config.stop_signal)


def _mounts(rec: ContainerRecord):
    """The request's mounts; an image volume's with the image id it resolved to and the host path it binds (the
    kubelet's image GC reads the id there, as CRI-O's tests say)."""
    if not rec.image_volumes:
        return rec.config.mounts
    mounts = [cri.Mount.FromString(m.SerializeToString()) for m in rec.config.mounts]
    for vol in rec.image_volumes:
        if vol["index"] < len(mounts):
            mounts[vol["index"]].image.image = vol["image_id"]
            mounts[vol["index"]].host_path = vol["source"]
    return mounts


def container_item(rec: ContainerRecord, image_tags: Sequence[str] = ()) -> cri.Container:
    config = rec.config
    return cri.Container(id=rec.id, pod_sandbox_id=rec.sandbox_id, metadata=config.metadata,
                         image=cri.ImageSpec(image=shown_image(config.image, image_tags)), image_ref=rec.image_ref,
                         image_id=rec.image_id, state=state_of(rec), created_at=rec.created_at,
                         labels=config.labels, annotations=config.annotations)


def status_bytes(rec: ContainerRecord, images) -> bytes:
    """The serialized ContainerStatus of rec. images: the ImageManager (its tags and their generation)."""
    return _kept(rec, "status", container_status, images)


def item_bytes(rec: ContainerRecord, images) -> bytes:
    """The serialized Container of rec, as ListContainers answers it."""
    return _kept(rec, "item", container_item, images)


def _kept(rec: ContainerRecord, kind: str, build, images) -> bytes:
    generation = images.names_generation
    kept = rec.shown.get(kind)
    if kept is None or kept[0] != generation:
        kept = rec.shown[kind] = (generation, build(rec, images.repo_tags(rec.image_id)).SerializeToString())
    return kept[1]


def shown_of(records, sandbox_ids) -> list[ContainerRecord]:
    """The containers of these sandboxes that a pod's status shows (CREATING ones are not shown yet), oldest first.
    records: pycri/state/records.py Records."""
    recs = [c for sid in sandbox_ids for c in records.containers_of(sid) if c.state != C_CREATING]
    return sorted(recs, key=lambda c: c.created_at)


def statuses_of(records, images, sandbox_ids) -> list[cri.ContainerStatus]:
    """The ContainerStatus of every container of these sandboxes that a pod shows: what its events carry."""
    return [cri.ContainerStatus.FromString(status_bytes(c, images)) for c in shown_of(records, sandbox_ids)]
