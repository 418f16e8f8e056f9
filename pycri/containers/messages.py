"""A container record as the CRI messages that show it: ContainerStatus (ContainerStatus, and what a pod's status
and events carry) and Container (ListContainers). Built from the record alone."""

from __future__ import annotations

from pycri.api import api_pb2 as cri
from pycri.state.records import CONTAINER_STATE, ContainerRecord


def state_of(rec: ContainerRecord) -> int:
    return CONTAINER_STATE.get(rec.state, cri.CONTAINER_UNKNOWN)


def container_status(rec: ContainerRecord) -> cri.ContainerStatus:
    config = rec.config
    gid = rec.user.get("gid", 0)
    user = cri.ContainerUser(linux=cri.LinuxContainerUser(
        uid=rec.user.get("uid", 0), gid=gid,
        supplemental_groups=[gid] + [g for g in rec.user.get("additionalGids", []) if g != gid]))
    return cri.ContainerStatus(
        id=rec.id, metadata=config.metadata, state=state_of(rec),
        created_at=rec.created_at, started_at=rec.started_at, finished_at=rec.finished_at,
        exit_code=rec.exit_code, image=cri.ImageSpec(image=config.image.image, annotations=config.image.annotations,
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


def container_item(rec: ContainerRecord) -> cri.Container:
    config = rec.config
    return cri.Container(id=rec.id, pod_sandbox_id=rec.sandbox_id, metadata=config.metadata,
                         image=cri.ImageSpec(image=config.image.image), image_ref=rec.image_ref,
                         image_id=rec.image_id, state=state_of(rec), created_at=rec.created_at,
                         labels=config.labels, annotations=config.annotations)
