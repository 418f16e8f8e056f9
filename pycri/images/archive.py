"""Reading image archives for import: an OCI image layout as a tarball, or a `docker save` tarball.

The archive's blobs are copied into the content store with their digests (and sizes) verified; each image in it is
described as a plan (names, config and layer descriptors, blobs, size) that the manager then unpacks and records.
Names come from the io.containerd.image.name annotation, or org.opencontainers.image.ref.name when it is a full
reference; a docker save archive's RepoTags. Uncompressed docker save layers are stored as they are.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path
from typing import Any

from ..log import get as get_logger
from . import reference
from .content import ContentStore
from .manifests import DOCKER_MANIFEST, INDEX_TYPES, ManifestError, check_manifest, select_platform

log = get_logger("images.archive")


class ArchiveError(Exception):
    """The archive is not an importable image archive."""


class _Counting(io.RawIOBase):
    """The archive file, reporting how far it has been read (progress on a terminal for big imports)."""

    def __init__(self, f, progress) -> None:
        self._f, self._progress = f, progress
        self._total = os.fstat(f.fileno()).st_size

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._f.seek(offset, whence)

    def tell(self) -> int:
        return self._f.tell()

    def readinto(self, b) -> int:
        n = self._f.readinto(b)
        self._progress(self._f.tell(), self._total)
        return n


def plan_archive(content: ContentStore, path: Path, progress=None) -> list[dict]:
    """Copy the archive's blobs into the content store (verified) and describe each image in it.

    progress(done_bytes, total_bytes), if given, is called as the archive is read."""
    try:
        with open(path, "rb") as raw, tarfile.open(
                fileobj=io.BufferedReader(_Counting(raw, progress)) if progress else raw, mode="r:*") as tar:
            members = {_member_key(m.name): m for m in tar.getmembers() if m.isreg()}
            if "index.json" in members and "oci-layout" in members:
                return _plan_oci(content, tar, members)
            if "manifest.json" in members:
                return _plan_docker(content, tar, members)
            raise ArchiveError(f"{path}: neither an OCI layout nor a docker save archive")
    except (tarfile.TarError, OSError, KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ArchiveError(f"{path}: cannot import archive: {exc!r}") from exc


def _read_member(tar: tarfile.TarFile, members: dict, name: str, limit: int | None = None) -> bytes:
    member = members.get(_member_key(name))
    if member is None:
        raise ArchiveError(f"archive has no {name}")
    if limit is not None and member.size > limit:
        raise ArchiveError(f"archive member {name} is too large")
    return tar.extractfile(member).read()


def _ingest_member(content: ContentStore, tar: tarfile.TarFile, members: dict, name: str, digest: str | None,
                   size: int | None) -> tuple[str, int]:
    member = members.get(_member_key(name))
    if member is None:
        raise ArchiveError(f"archive has no {name}")
    return content.ingest_file(digest, size, tar.extractfile(member))


def _plan_oci(content: ContentStore, tar: tarfile.TarFile, members: dict) -> list[dict]:
    index = _json(_read_member(tar, members, "index.json", 4 << 20), "index.json")
    plans = []
    for desc in index.get("manifests") or []:
        digest = reference.validate_digest(desc.get("digest"))
        annotations = desc.get("annotations") or {}
        raw = {}
        data = _read_member(tar, members, f"blobs/sha256/{digest[7:]}", 4 << 20)
        raw[digest] = data
        doc = _json(data, digest)
        manifest_digest = digest
        if desc.get("mediaType") in INDEX_TYPES or "manifests" in doc:
            ref = reference.Reference("import", "archive")
            try:
                chosen = select_platform(ref, doc)
            except ManifestError as exc:
                raise ArchiveError(str(exc)) from exc
            manifest_digest = reference.validate_digest(chosen["digest"])
            data = _read_member(tar, members, f"blobs/sha256/{manifest_digest[7:]}", 4 << 20)
            raw[manifest_digest] = data
            doc = _json(data, manifest_digest)
        try:
            check_manifest(reference.Reference("import", "archive"), doc)
        except ManifestError as exc:
            raise ArchiveError(str(exc)) from exc
        for d, b in raw.items():
            content.write_bytes(d, b)
        for blob in [doc["config"], *doc["layers"]]:
            if not content.has(blob["digest"]):
                _ingest_member(content, tar, members, f"blobs/sha256/{blob['digest'][7:]}", blob["digest"],
                               blob["size"])
        names = []
        full = annotations.get("io.containerd.image.name") or annotations.get("org.opencontainers.image.ref.name")
        if full and ("/" in full or ":" in full):
            try:
                parsed = reference.parse(full)
                names = [str(parsed)] if parsed.tag else []
                names.append(parsed.name + "@" + digest)
            except ValueError:
                log.warning("import: ignored invalid image name", name=full)
        plans.append({"names": names, "config": doc["config"], "layers": doc["layers"],
                      "blobs": list(raw) + [doc["config"]["digest"]] + [l["digest"] for l in doc["layers"]],
                      "manifest_digest": manifest_digest, "target_digest": digest,
                      "size": sum(len(b) for b in raw.values()) + doc["config"]["size"]
                      + sum(l["size"] for l in doc["layers"])})
    return plans


def _plan_docker(content: ContentStore, tar: tarfile.TarFile, members: dict) -> list[dict]:
    entries = _json(_read_member(tar, members, "manifest.json", 4 << 20), "manifest.json")
    if not isinstance(entries, list):
        raise ArchiveError("manifest.json is not a list")
    plans = []
    for entry in entries:
        config_digest, config_size = _ingest_member(content, tar, members, entry["Config"], None, None)
        layers = []
        for name in entry.get("Layers") or []:
            digest, size = _ingest_member(content, tar, members, name, None, None)
            layers.append({"mediaType": "application/vnd.docker.image.rootfs.diff.tar", "digest": digest,
                           "size": size})
        names = []
        for tag in entry.get("RepoTags") or []:
            try:
                names.append(str(reference.parse(tag)))
            except ValueError:
                log.warning("import: ignored invalid tag", name=tag)
        plans.append({"names": names, "config": {"digest": config_digest, "size": config_size},
                      "layers": layers, "blobs": [config_digest] + [l["digest"] for l in layers],
                      "manifest_digest": "", "target_digest": "", "media_type": DOCKER_MANIFEST,
                      "size": config_size + sum(l["size"] for l in layers)})
    return plans


def _member_key(name: str) -> str:
    return "/".join(p for p in name.split("/") if p not in ("", "."))


def _json(data: bytes, what: str) -> Any:
    try:
        return json.loads(data)
    except ValueError as exc:
        raise ArchiveError(f"{what} is not valid JSON") from exc
