"""Pulls from a real docker-registry on 127.0.0.1: names, digests, platforms, layers on disk, remove and GC."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
import tarfile
from pathlib import Path

import pytest

from pycri.images import ImageError, ImageNotFound
from tests.fixtures.registry import registry, registry_factory  # noqa: F401

from .conftest import open_manager


def run(coro):
    return asyncio.run(coro)


def test_pull_by_tag_default_tag_and_digest(registry, image_root):
    meta = registry.images["busybox"]

    async def main():
        async with open_manager(image_root) as m:
            image_id = await m.pull(registry.ref("busybox"))
            assert image_id == meta["config_digest"]
            name = f"{registry.host}/pycri-test/busybox"
            rec = await m.status(image_id)
            assert rec.repo_tags == [f"{name}:latest"]
            assert rec.repo_digests == [f"{name}@{meta['digest']}"]
            assert rec.size == meta["size"]
            assert rec.spec["Cmd"] == ["sh"] and rec.uid is None and rec.username == ""
            # no tag means :latest; the same image is found under every name and by id or id prefix
            assert await m.pull(name) == image_id
            for key in (name, f"{name}:latest", f"{name}@{meta['digest']}", image_id, image_id[7:],
                        image_id[7:19]):
                assert (await m.status(key)).id == image_id, key
            # by digest and by tag@digest: the digest is what is pulled and recorded, no new tag
            assert await m.pull(f"{name}@{meta['digest']}") == image_id
            assert await m.pull(f"{name}:nosuchtag@{meta['digest']}") == image_id
            rec = await m.status(image_id)
            assert rec.repo_tags == [f"{name}:latest"] and len(await m.list()) == 1
            assert await m.status(f"{name}:other") is None and await m.status("sha256:" + "0" * 64) is None

    run(main())


def test_multi_tag_and_three_images(registry, image_root):
    registry.push_layout("busybox", registry.images["busybox"]["layout"], tag="second")

    async def main():
        async with open_manager(image_root) as m:
            ids = {await m.pull(registry.ref(n)) for n in ("busybox", "users", "pause")}
            assert len(ids) == 3
            assert await m.pull(registry.ref("busybox", "second")) in ids
            records = {r.id: r for r in await m.list()}
            assert records.keys() == ids
            bb = records[registry.config_digest("busybox")]
            assert bb.repo_tags == sorted([registry.ref("busybox"), registry.ref("busybox", "second")])
            assert len(bb.repo_digests) == 1
            users = records[registry.config_digest("users")]
            assert users.uid == 1002 and users.username == ""
            # users and busybox share the base layer: one snapshot for it
            assert users.chain_ids[0] == bb.chain_ids[0] and users.lowerdirs[-1] == bb.lowerdirs[-1]
            assert [r.id for r in await m.list(registry.ref("users"))] == [users.id]
            assert await m.list("nothing/here:x") == []

    run(main())


def test_username_docker_schema2_and_multiarch(registry, image_root):
    async def main():
        async with open_manager(image_root) as m:
            www = await m.status(await m.pull(registry.ref("users-www")))
            assert www.uid is None and www.username == "www-data"
            docker = await m.status(await m.pull(registry.ref("busybox-docker")))
            assert docker.id == registry.config_digest("busybox-docker")
            for name in ("multiarch", "multiarch-docker"):
                meta = registry.images[name]
                rec = await m.status(await m.pull(registry.ref(name)))
                assert rec.id == meta["platforms"]["linux/amd64"]["config_digest"]
                assert rec.config["architecture"] == "amd64"
                # RepoDigests carry the index digest the tag resolved to, as containerd reports
                assert rec.repo_digests == [f"{registry.host}/pycri-test/{name}@{meta['digest']}"]

    run(main())


@pytest.mark.skipif(os.geteuid() != 0, reason="overlay mount needs root")
def test_multilayer_unpacked_right(registry, image_root, tmp_path):
    expect = registry.images["multilayer"]["expect"]

    async def main():
        async with open_manager(image_root) as m:
            rec = await m.status(await m.pull(registry.ref("multilayer")))
            return rec.lowerdirs

    lowerdirs = run(main())
    assert len(lowerdirs) == 4
    # the whiteout layer and the opaque layer are in overlay format on disk
    gone = os.lstat(Path(lowerdirs[1]) / "data" / "gone")
    assert stat.S_ISCHR(gone.st_mode) and gone.st_rdev == 0
    assert os.getxattr(Path(lowerdirs[0]) / "data" / "dir", "trusted.overlay.opaque") == b"y"
    # and overlayfs shows the image as intended
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o", "ro,lowerdir=" + ":".join(lowerdirs), str(mnt)],
                   check=True)
    try:
        for path, text in expect["present"].items():
            assert (mnt / path).read_text() == text, path
        for path, target in expect["symlinks"].items():
            assert os.readlink(mnt / path) == target
        for path in expect["absent"]:
            assert not os.path.lexists(mnt / path), path
        owned = expect["owned"]
        st = os.lstat(mnt / owned["path"])
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (owned["uid"], owned["gid"], owned["mode"])
        assert os.stat(mnt / "bin" / "busybox").st_mode & 0o111
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def test_remove_semantics_and_gc(registry, image_root):
    registry.push_layout("users", registry.images["users"]["layout"], tag="v2")

    async def main():
        async with open_manager(image_root) as m:
            users = await m.pull(registry.ref("users"))
            await m.pull(registry.ref("users", "v2"))
            bb = await m.pull(registry.ref("busybox"))
            assert sorted((await m.status(users)).repo_tags) == sorted([registry.ref("users"),
                                                                          registry.ref("users", "v2")])
            # by one tag: the image goes with all its names (the CRI's rule), its own layer with it,
            # the shared base stays
            base = (await m.status(bb)).chain_ids[0]
            users_top = (await m.status(users)).chain_ids[-1]
            await m.remove(registry.ref("users", "v2"))
            assert await m.status(registry.ref("users")) is None
            assert await m.status(users) is None and await m.status(registry.digest_ref("users")) is None
            assert m.snapshots.exists(base) and not m.snapshots.exists(users_top)
            assert not m.content.has(users)
            await m.remove(registry.ref("users"))  # idempotent
            await m.remove("sha256:" + "1" * 64)
            # by id: every name goes
            await m.pull(registry.ref("busybox", "latest"))
            await m.remove(bb)
            assert await m.list() == []
            assert m.content.digests() == set() and m.snapshots.all() == {}
            assert sorted(os.listdir(image_root / "snapshots")) == []
            used, inodes = await m.fs_info()
            assert inodes <= 4  # only the empty store dirs remain

    run(main())


def test_sandbox_image_pinned(registry, image_root):
    async def main():
        async with open_manager(image_root, sandbox_image=registry.ref("pause")) as m:
            pause = await m.status(await m.pull(registry.ref("pause")))
            other = await m.status(await m.pull(registry.ref("busybox")))
            assert pause.pinned and not other.pinned

    run(main())


def test_invalid_and_missing(registry, image_root):
    async def main():
        async with open_manager(image_root) as m:
            with pytest.raises(ValueError, match="lowercase"):
                await m.pull(f"{registry.host}/pycri-test/BusyBox")
            with pytest.raises(ImageNotFound, match="not found"):
                await m.pull(registry.ref("busybox", "no-such-tag"))
            with pytest.raises(ValueError, match="auth"):
                await m.pull(registry.ref("busybox"), {"auth": "not base64!"})

    run(main())


def test_fs_info_counts(registry, image_root):
    async def main():
        async with open_manager(image_root) as m:
            before = await m.fs_info()
            await m.pull(registry.ref("busybox"))
            after = await m.fs_info()
            assert after[0] - before[0] >= registry.images["busybox"]["size"]
            assert after[1] > before[1] + 10
            assert await m.fs_info() == after  # cached walk
            await m.remove(registry.ref("busybox"))
            assert await m.fs_info() == before  # a removal invalidates the cache

    run(main())


def test_import_oci_and_docker_archives(registry, image_root, tmp_path):
    layout = Path(registry.images["busybox"]["layout"])
    oci_tar = tmp_path / "oci.tar"
    with tarfile.open(oci_tar, "w") as tar:
        index = json.loads((layout / "index.json").read_text())
        index["manifests"][0].setdefault("annotations", {})["io.containerd.image.name"] = "example.com/imp/bb:1"
        data = json.dumps(index).encode()
        for p in sorted(layout.rglob("*")):
            if p.is_file() and p.name != "index.json":
                tar.add(p, arcname=str(p.relative_to(layout)))
        info = tarfile.TarInfo("index.json")
        info.size = len(data)
        tar.addfile(info, __import__("io").BytesIO(data))
    # a docker save archive: manifest.json, the config, uncompressed layer tars
    meta = registry.images["users"]
    dsave = tmp_path / "docker.tar"
    manifest = json.loads((Path(meta["layout"]) / "blobs/sha256" / meta["digest"][7:]).read_text())
    import gzip
    import io
    with tarfile.open(dsave, "w") as tar:
        def add(name, blob):
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
        add(meta["config_digest"][7:] + ".json",
            (Path(meta["layout"]) / "blobs/sha256" / meta["config_digest"][7:]).read_bytes())
        names = []
        for i, layer in enumerate(manifest["layers"]):
            raw = gzip.decompress((Path(meta["layout"]) / "blobs/sha256" / layer["digest"][7:]).read_bytes())
            add(f"l{i}/layer.tar", raw)
            names.append(f"l{i}/layer.tar")
        add("manifest.json", json.dumps([{"Config": meta["config_digest"][7:] + ".json",
                                          "RepoTags": ["imported/users:v1"], "Layers": names}]).encode())

    async def main():
        async with open_manager(image_root) as m:
            assert await m.import_archive(oci_tar) == [registry.config_digest("busybox")]
            rec = await m.status("example.com/imp/bb:1")
            assert rec and rec.repo_digests == [f"example.com/imp/bb@{registry.digest('busybox')}"]
            assert await m.import_archive(dsave) == [meta["config_digest"]]
            rec = await m.status("docker.io/imported/users:v1")
            assert rec.uid == 1002 and len(rec.lowerdirs) == 2
            bad = tmp_path / "bad.tar"
            bad.write_bytes(b"not a tar")
            with pytest.raises(ImageError):
                await m.import_archive(bad)

    run(main())


def push_image(registry, repo: str, layers: list[bytes], tag: str = "latest", diff_ids: list[str] | None = None
               ) -> str:
    """Push an image made of the given gzip layer blobs (diff ids computed unless given); returns its config
    digest."""
    import gzip
    import hashlib

    def digest(b: bytes) -> str:
        return "sha256:" + hashlib.sha256(b).hexdigest()

    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {},
                         "rootfs": {"type": "layers",
                                    "diff_ids": diff_ids or [digest(gzip.decompress(l)) for l in layers]}}).encode()
    pusher = registry.pusher
    for blob in [config, *layers]:
        pusher.push_blob(repo, digest(blob), blob)
    manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                           "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                      "digest": digest(config), "size": len(config)},
                           "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                                       "digest": digest(l), "size": len(l)} for l in layers]}).encode()
    pusher.push_manifest(repo, tag, "application/vnd.oci.image.manifest.v1+json", manifest, digest(manifest))
    return digest(config)


def test_hostile_image_pull_rejected_cleanly(registry, image_root, tmp_path):
    import gzip

    from .test_unpack import entry, make_tar

    canary = tmp_path / "canary"
    canary.mkdir()
    good = gzip.compress(make_tar(entry("ok", data=b"fine")))
    hostile = {
        "dotdot": make_tar(entry("../../../../../../../../" + str(canary / "pwned"), data=b"x")),
        "symlink": make_tar(entry("l", "symlink", link=str(canary)), entry("l/pwned", data=b"x")),
        "hardlink": make_tar(entry("hl", "hardlink", link="/etc/passwd")),
    }
    passwd_links = os.stat("/etc/passwd").st_nlink

    async def main():
        async with open_manager(image_root) as m:
            for name, tar in hostile.items():
                push_image(registry, f"pycri-test/hostile-{name}", [good, gzip.compress(tar)])
                with pytest.raises(ImageError, match="escapes|symlink|hardlink"):
                    await m.pull(f"{registry.host}/pycri-test/hostile-{name}")
            assert await m.list() == []
            # the good base layer stays as a snapshot (reusable), nothing else, no temp dirs
            assert len(m.snapshots.all()) == 1
            assert sorted(os.listdir(image_root / "snapshots")) == ["1"]

    run(main())
    assert os.listdir(canary) == []
    assert os.stat("/etc/passwd").st_nlink == passwd_links


def test_ensure_pulls_once(registry, image_root):
    from .proxy import Proxy

    async def main():
        async with Proxy(registry.url) as proxy:
            async with open_manager(image_root) as m:
                ref = f"{proxy.host}/pycri-test/pause:latest"
                records = await asyncio.gather(*[m.ensure(ref) for _ in range(3)])
                assert {r.id for r in records} == {registry.config_digest("pause")}
                manifests = [s for s in proxy.seen if "/manifests/" in s.path]
                assert len(manifests) == 1  # one pull, not three
                assert (await m.ensure(ref)).id == records[0].id
                assert len([s for s in proxy.seen if "/manifests/" in s.path]) == 1  # present: no request

    run(main())


def test_gc_keeps_snapshots_containers_use(registry, image_root):
    async def main():
        async with open_manager(image_root) as m:
            rec = await m.status(await m.pull(registry.ref("busybox")))
            in_use = set(rec.chain_ids)
            m.usage_provider = lambda: in_use
            await m.remove(rec.id)
            assert await m.status(rec.id) is None
            assert all(os.path.isdir(d) for d in rec.lowerdirs)  # a running container keeps its rootfs
            in_use = set()
            m.usage_provider = lambda: in_use
            assert await m.gc() == (0, 1)
            assert not any(os.path.exists(d) for d in rec.lowerdirs)

    run(main())
