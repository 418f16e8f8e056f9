"""Image manifests and indexes: media types, shape checks of untrusted manifests, platform selection."""

from __future__ import annotations

import json
import platform

from .reference import Reference, validate_digest

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_SCHEMA1 = ("application/vnd.docker.distribution.manifest.v1+json",
                  "application/vnd.docker.distribution.manifest.v1+prettyjws")
MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)
MAX_MANIFEST_SIZE = 4 << 20
MAX_LAYERS = 500  # overlayfs's lower layer limit

_GOARCH = {
    "x86_64": ("amd64", ""), "amd64": ("amd64", ""), "aarch64": ("arm64", ""), "arm64": ("arm64", ""),
    "armv7l": ("arm", "v7"), "armv6l": ("arm", "v6"), "i386": ("386", ""), "i686": ("386", ""),
    "ppc64le": ("ppc64le", ""), "s390x": ("s390x", ""), "riscv64": ("riscv64", ""),
}


class ManifestError(Exception):
    """A manifest or index is malformed, unsupported, or has nothing for this platform."""


def host_platform() -> tuple[str, str, str]:
    """(os, architecture, variant) of this machine in OCI/GOARCH terms."""
    machine = platform.machine().lower()
    arch, variant = _GOARCH.get(machine, (machine, ""))
    return "linux", arch, variant


def decode_manifest(ref: Reference, data: bytes, media_type: str) -> tuple[dict, str]:
    try:
        doc = json.loads(data)
    except ValueError as exc:
        raise ManifestError(f"{ref}: manifest is not valid JSON") from exc
    if not isinstance(doc, dict):
        raise ManifestError(f"{ref}: manifest is not a JSON object")
    if doc.get("schemaVersion") == 1 or media_type in DOCKER_SCHEMA1:
        raise ManifestError(f"{ref}: Docker schema 1 manifests are not supported")
    body_type = doc.get("mediaType")
    if media_type not in MANIFEST_TYPES + INDEX_TYPES:
        media_type = body_type or (OCI_INDEX if "manifests" in doc else OCI_MANIFEST)
    if body_type and body_type != media_type:
        raise ManifestError(f"{ref}: manifest says mediaType {body_type} but was served as {media_type}")
    if media_type not in MANIFEST_TYPES + INDEX_TYPES:
        raise ManifestError(f"{ref}: unsupported manifest media type {media_type!r}")
    return doc, media_type


def select_platform(ref: Reference, index: dict) -> dict:
    """The index entry for this host: linux/<GOARCH>[/variant]; arm64 accepts no variant or v8."""
    os_name, arch, variant = host_platform()
    entries = index.get("manifests")
    if not isinstance(entries, list):
        raise ManifestError(f"{ref}: index has no manifests list")
    candidates = []
    seen = []
    for entry in entries:
        if not isinstance(entry, dict):
            continue
        plat = entry.get("platform") or {}
        if not isinstance(plat, dict):  # untrusted: a platform that is not an object matches nothing
            plat = {}
        seen.append("/".join(str(x) for x in (plat.get("os", "?"), plat.get("architecture", "?"),
                                               plat.get("variant", "")) if x))
        if plat.get("os") != os_name or plat.get("architecture") != arch:
            continue
        got = plat.get("variant", "")
        if got == variant or (arch == "arm64" and got in ("", "v8")) or (not variant and not got):
            candidates.append(entry)
    if not candidates:
        raise ManifestError(f"{ref}: no manifest for {os_name}/{arch} in the index (has {', '.join(seen) or 'none'})")
    chosen = candidates[0]
    try:
        validate_digest(chosen.get("digest"))
    except ValueError as exc:
        raise ManifestError(f"{ref}: index entry for {os_name}/{arch}: {exc}") from exc
    return chosen


def check_manifest(ref: Reference, manifest: dict) -> None:
    """Validate the shape of an image manifest before trusting its descriptors."""
    config = manifest.get("config")
    layers = manifest.get("layers")
    if not isinstance(config, dict) or not isinstance(layers, list):
        raise ManifestError(f"{ref}: image manifest lacks config or layers")
    if len(layers) > MAX_LAYERS:
        raise ManifestError(f"{ref}: image has {len(layers)} layers, more than overlayfs can stack ({MAX_LAYERS})")
    for desc in [config, *layers]:
        if not isinstance(desc, dict):
            raise ManifestError(f"{ref}: invalid descriptor in manifest")
        try:
            validate_digest(desc.get("digest"))
        except ValueError as exc:
            raise ManifestError(f"{ref}: {exc}") from exc
        size = desc.get("size")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ManifestError(f"{ref}: descriptor {desc.get('digest')} has invalid size {size!r}")
