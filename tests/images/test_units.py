"""Small units: platform choice, credentials, endpoints, user parsing, chain ids, start-up clean-up."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os

import pytest

from pycri.config import RegistryConfig
from pycri.images import manifests as mf
from pycri.images import registry as reg
from pycri.images.manager import user_from_config
from pycri.images.reference import parse
from pycri.images.snapshots import chain_ids

from .conftest import open_manager

INDEX = {"manifests": [
    {"digest": "sha256:" + "1" * 64, "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
    {"digest": "sha256:" + "2" * 64, "platform": {"os": "windows", "architecture": "amd64"}},
    {"digest": "sha256:" + "3" * 64, "platform": {"os": "linux", "architecture": "amd64"}},
    {"digest": "sha256:" + "4" * 64, "platform": {"os": "linux", "architecture": "arm", "variant": "v7"}},
]}


@pytest.mark.parametrize("machine, expect", [("x86_64", "3"), ("aarch64", "1"), ("armv7l", "4")])
def test_platform_selection(monkeypatch, machine, expect):
    monkeypatch.setattr(mf.platform, "machine", lambda: machine)
    assert mf.select_platform(parse("x"), INDEX)["digest"] == "sha256:" + expect * 64


def test_platform_entry_with_bad_digest(monkeypatch):
    monkeypatch.setattr(mf.platform, "machine", lambda: "x86_64")
    index = {"manifests": [{"digest": "sha256:../../x", "platform": {"os": "linux", "architecture": "amd64"}}]}
    with pytest.raises(mf.ManifestError, match="digest"):
        mf.select_platform(parse("x"), index)


def test_platform_missing(monkeypatch):
    monkeypatch.setattr(mf.platform, "machine", lambda: "s390x")
    with pytest.raises(mf.ManifestError, match="linux/s390x.*linux/arm64/v8"):
        mf.select_platform(parse("x"), INDEX)


def test_credentials():
    assert reg.Credentials.from_auth(None) is None and reg.Credentials.from_auth({}) is None
    c = reg.Credentials.from_auth({"auth": base64.b64encode(b"u:p:x").decode(), "server_address": "https://h:5000/"})
    assert (c.username, c.password, c.server_address) == ("u", "p:x", "h:5000")
    assert c.applies_to("h:5000") and not c.applies_to("other")
    assert reg.Credentials.from_auth({"identity_token": "t"}).identity_token == "t"
    with pytest.raises(ValueError):
        reg.Credentials.from_auth({"auth": base64.b64encode(b"nocolon").decode()})


def test_endpoints():
    client = reg.RegistryClient({
        "docker.io": RegistryConfig(mirrors=["https://mirror.example/prefix", "http://127.0.0.1:1"]),
        "insecure.example": RegistryConfig(insecure=True),
        "only.example": RegistryConfig(mirrors=["https://m.example"], fallback_to_host=False),
    })
    try:
        assert [e.base for e in client.endpoints("docker.io")] == [
            "https://mirror.example/prefix/v2", "http://127.0.0.1:1/v2", "https://registry-1.docker.io/v2"]
        assert client.endpoints("insecure.example")[0].base == "http://insecure.example/v2"
        assert client.endpoints("localhost:5000")[0].base == "http://localhost:5000/v2"
        assert client.endpoints("quay.io")[0].base == "https://quay.io/v2"
        assert [e.base for e in client.endpoints("only.example")] == ["https://m.example/v2"]
    finally:
        asyncio.run(client.aclose())


def test_user_from_config():
    assert user_from_config("") == (None, "")
    assert user_from_config("1000") == (1000, "")
    assert user_from_config("1000:1000") == (1000, "")
    assert user_from_config("www-data:www-data") == (None, "www-data")


def test_chain_ids():
    a, b = "sha256:" + "a" * 64, "sha256:" + "b" * 64
    assert chain_ids([a, b]) == [a, "sha256:" + hashlib.sha256(f"{a} {b}".encode()).hexdigest()]


def test_startup_cleans_half_made_state(image_root):
    async def main():
        async with open_manager(image_root) as m:
            snaps = m.snapshots.dir
        (snaps / "tmp-dead").mkdir()
        (snaps / "7" / "fs").mkdir(parents=True)
        (image_root / "ingest" / "x.tmp").write_bytes(b"x")
        fresh, old = image_root / "ingest" / ("0" * 64 + ".partial"), image_root / "ingest" / ("1" * 64 + ".partial")
        fresh.write_bytes(b"x")
        old.write_bytes(b"x")
        os.utime(old, (0, 0))
        async with open_manager(image_root) as m:
            assert list(snaps.iterdir()) == []
            # a recent partial download waits to be resumed; a day-old one is dropped
            assert list((image_root / "ingest").iterdir()) == [fresh]

    asyncio.run(main())


@pytest.mark.parametrize("manifest, message", [
    ({"config": {"digest": "sha256:../../../etc/passwd", "size": 1}, "layers": []}, "digest"),
    ({"config": {"digest": "sha256:" + "a" * 64, "size": -1}, "layers": []}, "size"),
    ({"config": {"digest": "sha256:" + "a" * 64, "size": True}, "layers": []}, "size"),
    ({"config": {"digest": "sha256:" + "a" * 64, "size": 1}, "layers": ["x"]}, "descriptor"),
    ({"config": {"digest": "sha256:" + "a" * 64, "size": 1}}, "lacks"),
    ({"config": {"digest": "sha256:" + "a" * 64, "size": 1},
      "layers": [{"digest": "sha256:" + "b" * 64, "size": 1}] * 501}, "layers"),
])
def test_hostile_manifests(manifest, message):
    with pytest.raises(mf.ManifestError, match=message):
        mf.check_manifest(parse("x"), manifest)


def test_schema1_and_mismatched_media_type():
    with pytest.raises(mf.ManifestError, match="schema 1"):
        mf.decode_manifest(parse("x"), b'{"schemaVersion": 1}', "")
    with pytest.raises(mf.ManifestError, match="served as"):
        mf.decode_manifest(parse("x"), b'{"schemaVersion": 2, "mediaType": "%s"}' % mf.OCI_INDEX.encode(),
                             mf.OCI_MANIFEST)
    with pytest.raises(mf.ManifestError, match="JSON"):
        mf.decode_manifest(parse("x"), b"\xff", mf.OCI_MANIFEST)


def test_parallel_extraction_waits_for_lowers_only_for_hardlinks(tmp_path):
    """The child layer starts before its parent exists; its hardlink into the parent makes it wait and retry."""
    from pycri.images.snapshots import Snapshots
    from pycri.images.unpack import UnpackOptions
    from pycri.state.store import Store

    from .test_unpack import entry, make_tar

    parent_tar = make_tar(entry("base", data=b"from the parent"))
    child_tar = make_tar(entry("copy", "hardlink", link="base"), entry("own", data=b"x"))
    diff = ["sha256:" + hashlib.sha256(t).hexdigest() for t in (parent_tar, child_tar)]
    chains = chain_ids(diff)
    blobs = []
    for i, t in enumerate((parent_tar, child_tar)):
        blobs.append(tmp_path / f"l{i}")
        blobs[-1].write_bytes(t)
    store = Store(tmp_path / "db")

    async def main():
        snaps = Snapshots(tmp_path / "root", store)
        child = asyncio.ensure_future(snaps.ensure(chains[1], [chains[0]], blobs[1], media_type="",
                                                   diff_id=diff[1], options=UnpackOptions()))
        parent = asyncio.ensure_future(snaps.ensure(chains[0], [], blobs[0], media_type="", diff_id=diff[0],
                                                    options=UnpackOptions()))
        child_fs, parent_fs = await asyncio.gather(child, parent)
        assert (child_fs / "copy").read_bytes() == b"from the parent"
        assert (child_fs / "copy").stat().st_ino != (parent_fs / "base").stat().st_ino
        assert snaps.lowerdirs(chains) == [str(child_fs), str(parent_fs)]
        # an orphan child whose parent never comes fails clearly instead of hanging
        with pytest.raises(Exception, match="lower snapshot .* is missing"):
            other = chain_ids(["sha256:" + "e" * 64, diff[1]])
            await snaps.ensure(other[1], [other[0]], blobs[1], media_type="", diff_id=diff[1],
                               options=UnpackOptions())
        assert not list((tmp_path / "root" / "snapshots").glob("tmp-*"))

    try:
        asyncio.run(main())
    finally:
        store.close()

