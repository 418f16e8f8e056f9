"""The CRI ImageService over a real gRPC server (unix socket) backed by a real ImageManager and registry."""

from __future__ import annotations

import asyncio
import json

import grpc
import pytest

from pycri.api import api_pb2, api_pb2_grpc
from pycri.server.rpc import service_handler
from pycri.server.image_service import ImageService
from tests.fixtures.registry import registry, registry_factory  # noqa: F401

from .conftest import open_manager


def spec(ref: str) -> api_pb2.ImageSpec:
    return api_pb2.ImageSpec(image=ref)


def test_image_service_rpcs(registry, image_root, tmp_path):
    sock = tmp_path / "cri.sock"
    meta = registry.images["users"]

    async def main():
        async with open_manager(image_root, sandbox_image=registry.ref("pause")) as manager:
            server = grpc.aio.server()
            server.add_generic_rpc_handlers((service_handler("ImageService", ImageService(manager)),))
            server.add_insecure_port(f"unix:{sock}")
            await server.start()
            try:
                async with grpc.aio.insecure_channel(f"unix:{sock}") as channel:
                    await exercise(api_pb2_grpc.ImageServiceStub(channel))
            finally:
                await server.stop(None)

    async def exercise(stub):
        pulled = await stub.PullImage(api_pb2.PullImageRequest(image=spec(registry.ref("users"))))
        assert pulled.image_ref == meta["config_digest"]
        await stub.PullImage(api_pb2.PullImageRequest(image=spec(registry.ref("pause"))))

        status = await stub.ImageStatus(api_pb2.ImageStatusRequest(image=spec(registry.ref("users")), verbose=True))
        image = status.image
        assert image.id == meta["config_digest"] and image.repo_tags == [registry.ref("users")]
        assert image.repo_digests == [f"{registry.host}/pycri-test/users@{meta['digest']}"]
        assert image.uid.value == 1002 and image.username == "" and not image.pinned
        assert image.size == meta["size"]
        info = json.loads(status.info["info"])
        assert info["imageSpec"]["config"]["User"] == "1002" and info["chainID"].startswith("sha256:")

        www = await stub.PullImage(api_pb2.PullImageRequest(image=spec(registry.ref("users-www"))))
        www_status = await stub.ImageStatus(api_pb2.ImageStatusRequest(image=spec(www.image_ref)))
        assert not www_status.image.HasField("uid") and www_status.image.username == "www-data"

        absent = await stub.ImageStatus(api_pb2.ImageStatusRequest(image=spec(registry.ref("nothing"))))
        assert not absent.HasField("image") and not absent.info

        listed = await stub.ListImages(api_pb2.ListImagesRequest())
        assert len(listed.images) == 3
        assert [i.id for i in listed.images if i.pinned] == [registry.config_digest("pause")]
        one = await stub.ListImages(api_pb2.ListImagesRequest(
            filter=api_pb2.ImageFilter(image=spec(meta["config_digest"]))))
        assert [i.id for i in one.images] == [meta["config_digest"]]

        fs = await stub.ImageFsInfo(api_pb2.ImageFsInfoRequest())
        usage = fs.image_filesystems[0]
        assert usage.fs_id.mountpoint == str(image_root) and usage.used_bytes.value > meta["size"]
        assert usage.inodes_used.value > 10 and usage.timestamp > 0

        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.PullImage(api_pb2.PullImageRequest(image=spec("Bad/Ref")))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "lowercase" in err.value.details()
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.PullImage(api_pb2.PullImageRequest(image=spec(registry.ref("users", "missing"))))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND

        await stub.RemoveImage(api_pb2.RemoveImageRequest(image=spec(registry.ref("users"))))
        await stub.RemoveImage(api_pb2.RemoveImageRequest(image=spec(registry.ref("users"))))  # idempotent
        await stub.RemoveImage(api_pb2.RemoveImageRequest(image=spec(www.image_ref)))
        listed = await stub.ListImages(api_pb2.ListImagesRequest())
        assert [i.id for i in listed.images] == [registry.config_digest("pause")]

    asyncio.run(main())


def test_pull_auth_over_cri(registry_factory, image_root, tmp_path):
    reg = registry_factory(htpasswd={"kube": "let-me-in"})
    sock = tmp_path / "cri.sock"

    async def main():
        async with open_manager(image_root) as manager:
            server = grpc.aio.server()
            server.add_generic_rpc_handlers((service_handler("ImageService", ImageService(manager)),))
            server.add_insecure_port(f"unix:{sock}")
            await server.start()
            try:
                async with grpc.aio.insecure_channel(f"unix:{sock}") as channel:
                    stub = api_pb2_grpc.ImageServiceStub(channel)
                    with pytest.raises(grpc.aio.AioRpcError) as err:
                        await stub.PullImage(api_pb2.PullImageRequest(image=spec(reg.ref("pause"))))
                    assert err.value.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.FAILED_PRECONDITION)
                    assert "credentials" in err.value.details()
                    auth = api_pb2.AuthConfig(username="kube", password="let-me-in")
                    pulled = await stub.PullImage(api_pb2.PullImageRequest(image=spec(reg.ref("pause")), auth=auth))
                    assert pulled.image_ref == reg.config_digest("pause")
            finally:
                await server.stop(None)

    asyncio.run(main())
