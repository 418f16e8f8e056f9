"""Image volumes (CRI Mount.image and image_sub_path, KEP-4639): an image's content, read-only and noexec, at a
path of a container.

The kubelet pulls the image itself (honouring the volume's pullPolicy) and sends its id; pycri never pulls for a
volume, and an image it does not have is NOT_FOUND. One host mount per pod and image (runtime/host/imagevols.py:
an overlay of the image's layers, ro,nosuid,nodev,noexec) at `<pod dir>/imagevols/<image id hex>`, shared by the
pod's containers; each container binds it, or a directory inside it (image_sub_path, resolved inside the mount),
with rbind,rprivate,ro,nosuid,nodev,noexec (and rro when asked).

The count of a mount's users is the container records: each record names the mounts it uses
(`ContainerRecord.image_volumes`), and it is saved before the mount is made; a container's removal drops them from
its record, and the mount goes when no record names it any more (the last container using it is removed), and at
the pod's removal whatever is left. So a daemon restart
keeps the count with the records, and a crash between the record and the mount is undone as any half-made
container is (docs/design.md, "Image volumes").
"""

from __future__ import annotations

import asyncio
import errno
import os

from pycri import log
from pycri.errors import FailedPrecondition, NotFound
from pycri.node import imagevols
from pycri.oci.spec import IMAGE_VOLUME
from pycri.state.records import ContainerRecord, SandboxRecord

_log = log.get("container")

VOLUMES_DIR = "imagevols"


def volumes_dir(pod_dir: str) -> str:
    return os.path.join(pod_dir, VOLUMES_DIR)


class ImageVolumes:
    """The image volumes of the node's containers: made at create, counted by container record, released at
    removal; what the image GC and RemoveImage must know of them."""

    def __init__(self, ctx) -> None:
        self.ctx = ctx  # the Daemon: records, images
        # one mount or unmount at a time (each takes a few ms): a check of the users and the unmount that follows
        # it, or a check of the mount and the mount, are not split by the other
        self._lock = asyncio.Lock()

    # ---- create ----

    async def attach(self, rec: ContainerRecord, sandbox: SandboxRecord, spec: dict) -> None:
        """Fill in the image volume placeholders of spec (pycri/oci/spec.py cri_mounts): resolve each image
        locally, save what the record uses, mount what the pod does not have yet, and point each bind at the
        mount or at the sub path inside it. The caller's clean-up (release) undoes it all on a failure."""
        wanted = [m for m in spec["mounts"] if IMAGE_VOLUME in m]
        if not wanted:
            return
        if sandbox.userns:
            raise FailedPrecondition("ImageVolumeMountFailed: image volumes in user-namespaced pods are not "
                                     "supported yet")
        volumes = []
        for m in wanted:
            ref = m[IMAGE_VOLUME]["image"]
            image = await self.ctx.images.status(ref)
            if image is None or not image.lowerdirs:
                raise NotFound(f"ImageVolumeMountFailed: image {ref!r} not found locally: the kubelet pulls "
                               f"image volumes first")
            target = os.path.join(volumes_dir(sandbox.pod_dir), image.id.split(":", 1)[-1])
            volumes.append({"index": m[IMAGE_VOLUME]["index"], "image_id": image.id,
                            "chain_ids": list(image.chain_ids), "lowerdirs": image.lowerdirs, "mount": target,
                            "source": ""})
        rec.image_volumes = [{k: v for k, v in vol.items() if k != "lowerdirs"} for vol in volumes]
        self.ctx.records.save_container(rec)  # before any mount: a crash after it finds the mount named
        for m, vol, saved in zip(wanted, volumes, rec.image_volumes):
            if self.ctx.images.resolve_id(vol["image_id"]) is None:  # removed while the record was saved
                raise NotFound(f"ImageVolumeMountFailed: image {vol['image_id']} was removed")
            async with self._lock:
                made = await asyncio.to_thread(imagevols.mount, vol["mount"], vol["lowerdirs"],
                                               os.path.join(volumes_dir(sandbox.pod_dir), imagevols.EMPTY))
            if made:
                _log.info("image volume mounted", pod_sandbox_id=sandbox.id, image_id=vol["image_id"],
                          path=vol["mount"])
            sub = m[IMAGE_VOLUME]["subPath"]
            source = vol["mount"]
            if sub.strip("/."):
                try:
                    source = await asyncio.to_thread(imagevols.resolve_sub_path, vol["mount"], sub)
                except OSError as exc:
                    what = ("does not exist" if exc.errno == errno.ENOENT else
                            "is not a directory" if exc.errno == errno.ENOTDIR else
                            f"cannot be used ({exc.strerror or exc})")
                    raise FailedPrecondition(f"ImageVolumeMountFailed: sub path {sub!r} {what} in image volume "
                                             f"{m[IMAGE_VOLUME]['image']!r}") from None
            saved["source"] = m["source"] = source
            del m[IMAGE_VOLUME]
        self.ctx.records.save_container(rec)

    # ---- removal ----

    async def release(self, rec: ContainerRecord) -> None:
        """A container goes: unmount the mounts no other container record names, and drop them from its record
        (saved), so that it no longer counts as their user: containers removed at the same time each see the others
        go, and the last one unmounts. OSError when one could not be unmounted (it stays named, for a retry)."""
        for target in dict.fromkeys(vol["mount"] for vol in rec.image_volumes):
            async with self._lock:
                if not any(vol["mount"] == target for other in self.ctx.records.containers.values()
                           if other.id != rec.id for vol in other.image_volumes):
                    if await asyncio.to_thread(imagevols.unmount, target):
                        _log.info("image volume unmounted", container_id=rec.id, path=target)
                rec.image_volumes = [vol for vol in rec.image_volumes if vol["mount"] != target]
                if rec.id in self.ctx.records.containers:
                    self.ctx.records.save_container(rec)

    async def teardown(self, pod_dir: str) -> None:
        """The pod goes: unmount whatever image volumes are left under its dir (OSError if one stays)."""
        async with self._lock:
            await asyncio.to_thread(imagevols.unmount_all, volumes_dir(pod_dir))

    async def recover(self) -> None:
        """At start, after the half-made containers are undone: unmount the image volumes of the pods that no
        container record names (a crash between an unmount and the record's deletion)."""
        named = {vol["mount"] for rec in self.ctx.records.containers.values() for vol in rec.image_volumes}
        for sandbox in self.ctx.records.sandboxes.values():
            parent = volumes_dir(sandbox.pod_dir) if sandbox.pod_dir else ""
            if not parent or not os.path.isdir(parent):
                continue
            for name in os.listdir(parent):
                target = os.path.join(parent, name)
                if name == imagevols.EMPTY or target in named:
                    continue
                try:
                    await asyncio.to_thread(imagevols.unmount, target)
                    _log.info("image volume no container uses unmounted", pod_sandbox_id=sandbox.id, path=target)
                except OSError as exc:
                    _log.error("image volume not unmounted", pod_sandbox_id=sandbox.id, path=target,
                               error=str(exc))

    # ---- what images and their GC must know ----

    def users(self, image_id: str) -> list[str]:
        """The containers (of any state) that use image_id as a volume."""
        return [rec.id for rec in self.ctx.records.containers.values()
                if any(vol["image_id"] == image_id for vol in rec.image_volumes)]

    def chain_ids(self):
        for rec in self.ctx.records.containers.values():
            for vol in rec.image_volumes:
                yield from vol["chain_ids"]
