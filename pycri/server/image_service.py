"""runtime.v1.ImageService over the ImageManager. Methods not defined here answer UNIMPLEMENTED (see pycri.rpc)."""

from __future__ import annotations

import time

from pycri.api import api_pb2 as cri
from pycri.errors import (FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted, TeardownError,
                          Unavailable)
from pycri.images import ImageAuthError, ImageError, ImageInUse, ImageNotFound, ImageTooLarge


class ImageService:
    def __init__(self, manager, container_fs_usage=None) -> None:
        self.manager = manager
        # async () -> (file system name, used bytes, inodes) of the containers' writable layers, or None;
        # the name is the image root's when they share its device (pycri/stats/collect.py container_fs)
        self.container_fs_usage = container_fs_usage

    async def PullImage(self, request, context):
        ref = request.image.image
        if not ref:
            raise InvalidArgument("PullImage needs an image reference")
        auth = request.auth if request.HasField("auth") else None
        try:
            image_id = await self.manager.pull(ref, auth)
        except ValueError as exc:  # a malformed reference or AuthConfig
            raise InvalidArgument(str(exc)) from None
        except ImageNotFound as exc:
            raise NotFound(str(exc)) from None
        except ImageAuthError as exc:
            raise FailedPrecondition(f"authentication failed: {exc}") from None
        except ImageTooLarge as exc:
            raise ResourceExhausted(str(exc)) from None
        except ImageError as exc:
            raise Unavailable(str(exc)) from None
        return cri.PullImageResponse(image_ref=image_id)

    async def ImageStatus(self, request, context):
        ref = request.image.image
        if not ref:
            raise InvalidArgument("ImageStatus needs an image reference or id")
        try:
            record = await self.manager.status(ref)
        except ValueError as exc:
            raise InvalidArgument(str(exc)) from None
        if record is None:
            return cri.ImageStatusResponse()  # absent: an empty image, not an error (as the CRI asks)
        response = cri.ImageStatusResponse(image=_image(record))
        if request.verbose:
            response.info.update(record.verbose_info())
        return response

    async def ListImages(self, request, context):
        ref = request.filter.image.image if request.HasField("filter") else ""
        try:
            records = await self.manager.list(ref or None)
        except ValueError as exc:
            raise InvalidArgument(str(exc)) from None
        return cri.ListImagesResponse(images=[_image(r) for r in records])

    async def StreamImages(self, request, context):
        ref = request.filter.image.image if request.HasField("filter") else ""
        records = await self.manager.list(ref or None)
        images = [_image(r) for r in records]
        for i in range(0, len(images), 500):
            yield cri.StreamImagesResponse(images=images[i:i + 500])

    async def RemoveImage(self, request, context):
        ref = request.image.image
        if not ref:
            raise InvalidArgument("RemoveImage needs an image reference or id")
        try:
            await self.manager.remove(ref)
        except ValueError as exc:
            raise InvalidArgument(str(exc)) from None
        except ImageInUse as exc:
            raise FailedPrecondition(str(exc)) from None
        except ImageError as exc:  # its files stay on disk: not an OK
            raise TeardownError(str(exc)) from None
        return cri.RemoveImageResponse()

    async def ImageFsInfo(self, request, context):
        """The image file system (`root`) and, when the daemon counts them, the writable layers' file system.

        One file system (container_fs_usage names it as the image root) is one FilesystemUsage in both lists,
        images and writable layers counted together, as CRI-O answers: the 1.29-1.31 kubelet takes two names for
        a split disk. A `<root>/containers` on a device of its own is a file system of its own."""
        used, inodes = await self.manager.fs_info()
        now = time.time_ns()
        root = str(self.manager.root)
        if self.container_fs_usage is None:
            return cri.ImageFsInfoResponse(image_filesystems=[_fs_usage(now, root, used, inodes)])
        mountpoint, layers_used, layers_inodes = await self.container_fs_usage()
        if mountpoint == root:
            usage = _fs_usage(now, root, used + layers_used, inodes + layers_inodes)
            return cri.ImageFsInfoResponse(image_filesystems=[usage], container_filesystems=[usage])
        return cri.ImageFsInfoResponse(image_filesystems=[_fs_usage(now, root, used, inodes)],
                                       container_filesystems=[_fs_usage(now, mountpoint, layers_used, layers_inodes)])


def _fs_usage(now: int, mountpoint: str, used: int, inodes: int) -> cri.FilesystemUsage:
    return cri.FilesystemUsage(timestamp=now, fs_id=cri.FilesystemIdentifier(mountpoint=mountpoint),
                               used_bytes=cri.UInt64Value(value=used), inodes_used=cri.UInt64Value(value=inodes))


def _image(record) -> cri.Image:
    image = cri.Image(id=record.id, repo_tags=record.repo_tags, repo_digests=record.repo_digests, size=record.size,
                      pinned=record.pinned)
    if record.uid is not None:
        image.uid.value = record.uid
    elif record.username:
        image.username = record.username
    return image
