"""Registry behaviour through a loopback proxy: auth, mirrors, shared and resumed downloads, stalls, corruption."""

from __future__ import annotations

import asyncio
import base64
import socket
import time

import pytest

from pycri.images import ImageError
from tests.fixtures.registry import registry, registry_factory  # noqa: F401

from .conftest import open_manager
from .proxy import Proxy


def run(coro):
    return asyncio.run(coro)


def test_basic_auth_registry(registry_factory, image_root):
    reg = registry_factory(htpasswd={"pycri": "s3cret"})
    user, password = reg.auth
    token = base64.b64encode(f"{user}:{password}".encode()).decode()

    async def main():
        async with open_manager(image_root) as m:
            with pytest.raises(ImageError, match="credentials"):
                await m.pull(reg.ref("busybox"))
            with pytest.raises(ImageError):
                await m.pull(reg.ref("busybox"), {"username": user, "password": "wrong"})
            assert await m.pull(reg.ref("busybox"), {"username": user, "password": password}) == \
                reg.config_digest("busybox")
            assert await m.pull(reg.ref("pause"), {"auth": token}) == reg.config_digest("pause")
            # credentials meant for another server are not sent
            with pytest.raises(ImageError):
                await m.pull(reg.ref("users"), {"auth": token, "server_address": "elsewhere.example:5000"})

    run(main())


def test_bearer_token_flow(registry, image_root):
    async def main():
        async with Proxy(registry.url, bearer=("alice", "pw"), identity_token="refresh-me") as proxy:
            ref = f"{proxy.host}/pycri-test/busybox:latest"
            async with open_manager(image_root) as m:
                with pytest.raises(ImageError, match="refused"):
                    await m.pull(ref, {"username": "alice", "password": "bad"})
                assert await m.pull(ref, {"username": "alice", "password": "pw"}) == \
                    registry.config_digest("busybox")
                get = [t for t in proxy.token_requests if t["method"] == "GET"][-1]
                assert get["service"] == ["pycri-proxy"] and get["scope"] == ["repository:pycri-test/busybox:pull"]
                # identity token: OAuth2 refresh-token POST; the answer's access_token is used
                assert await m.pull(f"{proxy.host}/pycri-test/pause", {"identity_token": "refresh-me"}) == \
                    registry.config_digest("pause")
                assert any(t["method"] == "POST" for t in proxy.token_requests)
        # a registry token is the bearer itself, no token request
        async with Proxy(registry.url, bearer=("x", "y")) as proxy:
            async with open_manager(image_root) as m:
                with pytest.raises(ImageError):
                    await m.pull(f"{proxy.host}/pycri-test/users", {"registry_token": "not-issued"})
                assert proxy.token_requests == []

    run(main())


def _dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_mirror(registry, image_root):
    async def main():
        async with Proxy(registry.url) as proxy:
            mirrors = {"registry.k8s.io": {"mirrors": [f"http://127.0.0.1:{_dead_port()}", f"http://{proxy.host}"],
                                           "fallback_to_host": False}}
            async with open_manager(image_root, registries=mirrors) as m:
                image_id = await m.pull("registry.k8s.io/pycri-test/busybox:latest")
                assert image_id == registry.config_digest("busybox")
                rec = await m.status("registry.k8s.io/pycri-test/busybox")
                assert rec.repo_tags == ["registry.k8s.io/pycri-test/busybox:latest"]
                assert rec.repo_digests == [f"registry.k8s.io/pycri-test/busybox@{registry.digest('busybox')}"]
                assert proxy.blob_gets()
                with pytest.raises(ImageError):
                    await m.pull("registry.k8s.io/pycri-test/nothing:1")

    run(main())


def test_concurrent_pulls_fetch_each_blob_once(registry, image_root):
    meta = registry.images["multilayer"]

    async def main():
        async with Proxy(registry.url) as proxy:
            async with open_manager(image_root) as m:
                ref = f"{proxy.host}/pycri-test/multilayer"
                ids = await asyncio.gather(*[m.pull(ref) for _ in range(4)],
                                           m.pull(f"{ref}@{meta['digest']}"))
                assert set(ids) == {meta["config_digest"]}
                for digest in meta["layers"] + [meta["config_digest"]]:
                    assert len(proxy.blob_gets(digest)) == 1, digest
                assert len(proxy.blob_gets()) == len(meta["layers"]) + 1
                assert m.content.downloads == len(meta["layers"]) + 1
                assert m.content.bytes_fetched == meta["size"] - len(m.content.read(meta["digest"]))

    run(main())


def test_stalled_registry_fails_within_timeout_then_resumes(registry, image_root):
    meta = registry.images["busybox"]
    layer = meta["layers"][0]

    async def main():
        async with Proxy(registry.url, stall_blobs=layer) as proxy:
            async with open_manager(image_root, image_pull_progress_timeout=1.0) as m:
                started = time.monotonic()
                with pytest.raises(ImageError, match=f"layer 0 {layer} .*stalled: no data for 1s"):
                    await m.pull(f"{proxy.host}/pycri-test/busybox")
                assert time.monotonic() - started < 5
                assert not m.content.has(layer) and await m.list() == []
                # what arrived waits in ingest/; the next pull asks for the rest with a Range request
                proxy.stall_blobs = False
                partial = m.content.partial_path(layer)
                assert partial.exists() and partial.stat().st_size == 10
                assert await m.pull(f"{proxy.host}/pycri-test/busybox") == meta["config_digest"]
                assert [s.headers.get("range") for s in proxy.blob_gets(layer)] == [None, "bytes=10-"]
                assert not partial.exists()

    run(main())


def test_corrupt_blob_rejected_not_stored(registry, image_root):
    meta = registry.images["pause"]

    async def main():
        async with Proxy(registry.url, corrupt_blobs=True) as proxy:
            async with open_manager(image_root) as m:
                with pytest.raises(ImageError, match="digest"):
                    await m.pull(f"{proxy.host}/pycri-test/pause")
                assert m.content.digests() <= {meta["digest"]}  # only the verified manifest
                assert list(m.content.ingest_dir.iterdir()) == []
                assert m.snapshots.all() == {} and await m.list() == []
                proxy.corrupt_blobs = False
                assert await m.pull(f"{proxy.host}/pycri-test/pause") == meta["config_digest"]

    run(main())


def test_cancelled_pull_leaves_no_bad_blob(registry, image_root):
    meta = registry.images["busybox"]

    async def main():
        async with Proxy(registry.url, stall_blobs=True) as proxy:
            async with open_manager(image_root) as m:
                task = asyncio.ensure_future(m.pull(f"{proxy.host}/pycri-test/busybox"))
                await asyncio.sleep(0.5)
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
                assert m.content._inflight == {}
                assert not m.content.has(meta["config_digest"])
                proxy.stall_blobs = False
                assert await m.pull(f"{proxy.host}/pycri-test/busybox") == meta["config_digest"]

    run(main())


def test_blob_redirects_followed_without_leaking_auth(registry, image_root):
    async def main():
        async with Proxy(registry.url, redirect_blobs=True) as proxy:
            async with open_manager(image_root) as m:
                assert await m.pull(f"{proxy.host}/pycri-test/pause") == registry.config_digest("pause")
                storage = [s for s in proxy.seen if s.headers.get("storage")]
                assert len(storage) == len(registry.images["pause"]["layers"]) + 1

    run(main())


def test_corrupt_manifest_rejected(registry, image_root):
    meta = registry.images["pause"]

    async def main():
        async with Proxy(registry.url, corrupt_manifests=True) as proxy:
            async with open_manager(image_root) as m:
                # by tag: the body no longer matches the registry's Docker-Content-Digest
                with pytest.raises(ImageError, match="Docker-Content-Digest"):
                    await m.pull(f"{proxy.host}/pycri-test/pause")
                # by digest: the body does not hash to the digest asked for
                with pytest.raises(ImageError, match="expected " + meta["digest"]):
                    await m.pull(f"{proxy.host}/pycri-test/pause@{meta['digest']}")
                assert m.content.digests() == set()

    run(main())


def test_partials_resumed_completed_or_restarted(registry, image_root):
    from pathlib import Path

    meta = registry.images["pause"]
    layer = meta["layers"][0]
    blobs = Path(meta["layout"]) / "blobs" / "sha256"

    async def main():
        async with Proxy(registry.url) as proxy:
            async with open_manager(image_root) as m:
                # a complete, correct partial (a crash just before the rename) is committed without a download
                m.content.partial_path(layer).write_bytes((blobs / layer[7:]).read_bytes())
                # a full-length partial with wrong bytes: the Range is not satisfiable (416), start over
                config = (blobs / meta["config_digest"][7:]).read_bytes()
                m.content.partial_path(meta["config_digest"]).write_bytes(b"X" * len(config))
                assert await m.pull(f"{proxy.host}/pycri-test/pause") == meta["config_digest"]
                assert proxy.blob_gets(layer) == []
                gets = proxy.blob_gets(meta["config_digest"])
                assert [g.headers.get("range") for g in gets] == [f"bytes={len(config)}-", None]
                assert list(m.content.ingest_dir.iterdir()) == []

    run(main())


def test_concurrent_pulls_of_images_sharing_a_base(registry, image_root):
    names = ["busybox", "users", "users-www", "multilayer", "busybox-docker"]

    async def main():
        async with Proxy(registry.url) as proxy:
            async with open_manager(image_root) as m:
                ids = await asyncio.gather(*[m.pull(f"{proxy.host}/pycri-test/{n}") for n in names])
                assert ids == [registry.config_digest(n) for n in names]
                base = registry.images["busybox"]["layers"][0]
                assert len(proxy.blob_gets(base)) == 1
                chains = {c for r in await m.list() for c in r.chain_ids}
                assert len(m.snapshots.all()) == len(chains)
                assert len(chains) < sum(len(registry.images[n]["layers"]) for n in names)

    run(main())


def test_blobs_fall_back_from_mirror_to_host(registry, image_root):
    async def main():
        async with Proxy(registry.url, missing_blobs=True) as mirror:
            mirrors = {registry.host: {"mirrors": [f"http://{mirror.host}"]}}
            async with open_manager(image_root, registries=mirrors) as m:
                assert await m.pull(registry.ref("pause")) == registry.config_digest("pause")
                assert [s for s in mirror.seen if "/manifests/" in s.path]  # resolved on the mirror
                assert len(mirror.blob_gets()) == len(registry.images["pause"]["layers"]) + 1  # then 404s

    run(main())
